"""Every module's ``Usage`` example names only what exists: each function or class it calls is defined
somewhere in digitlab (or is a builtin), and each ``Class.method`` it calls is on that class. A renamed
function (``load_recipe``, gone long ago) then fails here instead of in a reader's hands."""

import builtins
import importlib
import keyword
import pkgutil
import re
from types import ModuleType

import pytest

import digitlab

PLACEHOLDERS = {"SomeError"}  # core.errors: "raise SomeError(...) with a subclass of DigitlabError"
CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*)\s*\(")
CLASS_CALL = re.compile(r"(?<![\w.])([A-Z]\w*)\.(\w+)\s*\(")
ASSIGNED = re.compile(r"(?:^|;|\bfor)\s*([A-Za-z_][\w, ]*?)\s*(?:=(?!=)|\bin\b)", re.MULTILINE)


def all_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(digitlab.__path__, "digitlab.")]
    return [importlib.import_module(n) for n in ["digitlab", *names] if not n.endswith("__main__")]


MODULES = all_modules()
KNOWN = {name: obj for module in MODULES for name, obj in vars(module).items()} | vars(builtins)


def usage_code(doc: str) -> str:
    """The code of a module doc's usage: the indented block after ``Usage::``, or the inline ``code``
    spans of a ``Usage:`` paragraph."""
    match = re.search(r"^Usage[^\n]*?::\n\n((?:(?: {4}.*)?\n)+)", doc, re.MULTILINE)
    if match:
        return re.sub(r"#.*", "", match.group(1))  # comments are prose
    match = re.search(r"^Usage:(.*?)(?:\n\n|\Z)", doc, re.MULTILINE | re.DOTALL)
    return "\n".join(re.findall(r"``(.+?)``", match.group(1), re.DOTALL)) if match else ""


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_usage_names_exist(module: ModuleType) -> None:
    code = usage_code(module.__doc__ or "")
    local = {n.strip() for names in ASSIGNED.findall(code) for n in names.split(",")}
    missing = [name for name in CALL.findall(code)
               if name not in KNOWN and name not in local and name not in PLACEHOLDERS and not keyword.iskeyword(name)]
    missing += [f"{cls}.{attr}" for cls, attr in CLASS_CALL.findall(code)
                if cls in KNOWN and isinstance(KNOWN[cls], type) and not hasattr(KNOWN[cls], attr)]
    assert not missing, f"{module.__name__}'s Usage calls what digitlab does not define: {missing}"


def test_the_checker_sees_a_missing_name() -> None:
    doc = "Run one.\n\nUsage::\n\n    cfg = load_recipe('default')\n    RunDir.create_new('runs')\n\nMore.\n"
    code = usage_code(doc)
    assert "load_recipe" in CALL.findall(code) and "load_recipe" not in KNOWN
    assert ("RunDir", "create_new") in CLASS_CALL.findall(code) and not hasattr(KNOWN["RunDir"], "create_new")
    inline = "train_run(config_from_recipe('default'))"
    assert usage_code(f"Usage: ``{inline}``.") == inline
