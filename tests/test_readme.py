"""The README's examples, run against a small run trained here (every example in the README runs in
`make test`).

How the README's code blocks are found (keep to this when editing README.md):

- ```python blocks run in order, in one namespace, from the repository root, as a notebook would.
- ```console blocks hold ``$ command`` lines, each followed by the output it printed. The output is
  shown to the reader, not compared (the README's comes from a full ``default`` run, this test's from a
  small one); each command must exit 0, and an answer that is JSON must not be an ``{"error": ...}``.
  ``$ digitlab ...`` and ``$ curl ...`` lines run, from the repository root; a line ending in `` &``
  starts a server in the background, which the test waits for (``GET /readyz``) and stops when its
  block ends. Any other command fails the test: a new kind of example must be taught to it.
- ```sh blocks and plain ``` blocks are not run (``make`` targets, ``torchrun`` jobs, reference lists).

Substitutions: a run directory written as ``runs/YYYYMMDD-HHMMSS-<model>-<recipe>`` becomes the run
trained here, and port 8000 a free port of 127.0.0.1. Heavy work is made light, on purpose: the
README's ``digitlab train`` command (which trains the run the other examples use) and ``train(...)``
in Python get the overrides of ``TINY`` (a small CNN on 1,000 digits for one epoch, instead of
``default`` on 55,000 for 6) and a temporary ``--out``.
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from digitlab.cli import app
from drive import stop_group, wait_ready

pytestmark = pytest.mark.mnist

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# A small CNN on 1,000 digits for one epoch, without augmentation: seconds, and it still reads clear digits
TINY = ["data.train_subset=1000", "data.n_val=300", "train.batch_size=100", "train.eval_batch_size=1000",
        "model.args={blocks: [{filters: 8, pool_first: true, batch_norm: true}, "
        "{filters: 16, pool_first: true, batch_norm: true}], dense: []}", "train.epochs=1",
        "augment.rotation=0", "augment.translate=0", "augment.scale=[1.0, 1.0]"]
RUN_DIR = re.compile(r"runs/\d{8}-\d{6}-[A-Za-z0-9_.-]+")
# A string model (its run directory names the crnn): a tiny CRNN on a few synthetic strings, one epoch
STRING_TINY = ["model.args.channels=[8,16,16,16]", "model.args.hidden_size=16", "model.args.num_layers=1",
               "strings.per_epoch=64", "strings.val=32", "strings.test=0", "train.batch_size=32",
               "data.train_subset=1000", "data.n_val=300", "data.synthetic_styles=0", "train.epochs=1"]
PORT = "8000"
# train("default") in a python block: the recipe stays, the tiny overrides and a temporary folder are added
PY_TRAIN = re.compile(r"\btrain\((?P<recipe>\"[^\"]+\"|'[^']+')\)")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.S | re.M)
SERVER_START_S = 90
COMMAND_TIMEOUT_S = 120
STOP_TIMEOUT_S = 10
runner = CliRunner()


def blocks(lang: str) -> list[tuple[int, str]]:
    """The README's code blocks in ``lang``: (line number of the fence, body)."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group("body")) for m in FENCE.finditer(text)
            if m.group("lang") == lang]


def commands(body: str) -> list[str]:
    """The ``$ `` lines of a console block, without the prompt."""
    return [line[2:].strip() for line in body.splitlines() if line.startswith("$ ")]


def free_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def shell_env() -> dict[str, str]:
    """This environment, with the interpreter's bin folder first: ``digitlab`` is this checkout's."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def is_train(cmd: str) -> bool:
    return shlex.split(cmd)[:2] == ["digitlab", "train"]


def is_string_train(cmd: str) -> bool:
    return is_train(cmd) and "--recipe strings" in cmd


def tiny_train_args(cmd: str, out: Path) -> list[str]:
    """The README's ``digitlab train ...`` as CLI arguments, made small (``TINY``, ``STRING_TINY`` for the string
    recipe) and written under ``out``."""
    args = shlex.split(cmd)[1:]
    for override in STRING_TINY if is_string_train(cmd) else TINY:
        args += ["--set", override]
    return [*args, "--out", str(out)]


@pytest.fixture(scope="module")
def readme_run(mnist_dataset, tmp_path_factory: pytest.TempPathFactory):
    """The run the README's examples use, trained by the README's own ``digitlab train`` command (made small)."""
    train_lines = [c for _, body in blocks("console") for c in commands(body) if is_train(c)]
    string_lines = [c for c in train_lines if is_string_train(c)]
    train_lines = [c for c in train_lines if not is_string_train(c)]
    assert train_lines, "README.md has no `$ digitlab train` example to make its run with"
    root = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped hermetic fixture does not reach here
        mp.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("DIGITLAB_MIRRORS", "http://127.0.0.1:9/")
        mp.chdir(REPO)
        result = runner.invoke(app, tiny_train_args(train_lines[0], root / "runs"))
        strings = runner.invoke(app, tiny_train_args(string_lines[0], root / "string-runs")) if string_lines else None
    assert result.exit_code == 0, result.output
    found = re.search(r"^run directory: (.+)$", result.output, re.M)
    assert found, result.output
    run = Path(found.group(1).strip())
    assert (run / "model.safetensors").is_file() and (run / "rejection.safetensors").is_file(), result.output
    string_run = None
    if strings is not None:
        assert strings.exit_code == 0, strings.output
        string_run = Path(re.search(r"^run directory: (.+)$", strings.output, re.M).group(1).strip())
    return SimpleNamespace(run=run, string_run=string_run, root=root, train_output=result.output, namespace={})


def substitute(text: str, run: Path, port: str, string_run: Path | None = None) -> str:
    """The README's run directories become the runs trained here (a string model's, named ``-crnn-``, the
    string run), its port a free one."""
    def run_for(m: re.Match[str]) -> str:
        return str(string_run if string_run is not None and "-crnn-" in m.group(0) else run)

    return RUN_DIR.sub(run_for, text).replace(f"127.0.0.1:{PORT}", f"127.0.0.1:{port}").replace(
        f"--port {PORT}", f"--port {port}")


def check_answer(cmd: str, output: str) -> None:
    text = output.strip()
    if text.startswith("{"):
        answer = json.loads(text)
        assert "error" not in answer, f"{cmd}: {text}"


def test_readme_has_examples_of_each_kind() -> None:
    assert blocks("python"), "README.md has no ```python example"
    console = [c for _, body in blocks("console") for c in commands(body)]
    names = {shlex.split(c)[1] for c in console if c.startswith("digitlab ")}
    assert {"predict", "train", "evaluate", "report", "serve"} <= names, names
    for line, body in blocks("console"):
        assert commands(body), f"README.md:{line}: a console block with no `$ ` command"


@pytest.mark.parametrize(("line", "body"), blocks("console"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_console_example_runs(line: int, body: str, readme_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    port = free_port()
    servers: list[subprocess.Popen] = []
    try:
        for raw in commands(body):
            cmd = substitute(raw, readme_run.run, port, readme_run.string_run)
            where = f"README.md:{line}: {raw}"
            if is_train(raw):  # already run, made small, to make the run the other examples use
                continue
            if cmd.endswith("&"):
                assert cmd.startswith("digitlab serve "), f"{where}: only `digitlab serve` may run in the background"
                server = subprocess.Popen(["bash", "-c", f"exec {cmd[:-1]}"], env=shell_env(), cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
                servers.append(server)
                problem = wait_ready(f"http://127.0.0.1:{port}", server, SERVER_START_S)
                assert problem is None, problem
            elif cmd.startswith("digitlab "):
                result = runner.invoke(app, shlex.split(cmd)[1:])
                assert result.exit_code == 0, f"{where}\n{result.output}"
                assert result.output.strip(), f"{where}: printed nothing"
                check_answer(where, result.output)
            elif cmd.startswith("curl "):
                done = subprocess.run(["bash", "-c", cmd], env=shell_env(), cwd=REPO, capture_output=True,
                                      text=True, timeout=COMMAND_TIMEOUT_S)
                assert done.returncode == 0, f"{where}\n{done.stderr}"
                check_answer(where, done.stdout)
            else:
                pytest.fail(f"{where}: tests/test_readme.py does not know how to run this kind of command")
    finally:
        for server in servers:
            stop_group(server, STOP_TIMEOUT_S)


@pytest.mark.parametrize(("line", "body"), blocks("python"), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_python_example_runs(line: int, body: str, readme_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    code = substitute(body, readme_run.run, PORT, readme_run.string_run)
    code = PY_TRAIN.sub(lambda m: f"train({m['recipe']}, overrides=_README_TINY, out=_README_OUT)", code)
    namespace = readme_run.namespace  # one namespace for every block, as in a notebook
    namespace.update(_README_TINY=list(TINY), _README_OUT=str(readme_run.root / "python-runs"))
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
