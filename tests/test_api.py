"""The public API at the package's top level: lazy names, nothing heavy and no global state at import;
``train``, ``calibrate`` and ``evaluate`` compose the library as the CLI does."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import digitlab
from digitlab import api

# each public name and where it is defined, as "module:name"
DEFINED = ["digitlab.inference.predictor:Predictor", "digitlab.inference.strings:read_digits",
           "digitlab.inference.strings:open_reader", "digitlab.inference.sequence:StringReader",
           "digitlab.inference.prepare:prepare_image", "digitlab.data.loading:load_dataset", "digitlab.api:train",
           "digitlab.api:evaluate", "digitlab.api:calibrate"]
API = {where.split(":")[1]: where.split(":")[0] for where in DEFINED}
HEAVY = ("torch", "matplotlib", "skops", "onnxruntime", "onnx", "sklearn", "scipy", "skimage")


def run_python(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned here."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_digitlab_loads_nothing_heavy() -> None:
    seen = run_python(
        "import json, sys\n"
        "import digitlab\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    assert seen == []


def test_resolving_every_name_leaves_global_state_alone() -> None:
    # The caller chose a backend, a thread count, warning filters and logging before digitlab came in; the
    # third-party packages are imported first, so that their own import-time filters (SciPy adds one) are not
    # counted against digitlab.
    state = run_python(
        "import json, logging, os, sys, warnings\n"
        "import matplotlib\n"
        "matplotlib.use('svg')\n"
        "import PIL.Image, scipy.ndimage, skimage.filters, skimage.morphology, torch\n"
        "torch.set_num_threads(3)\n"
        "before = (list(map(repr, warnings.filters)), list(logging.root.handlers), logging.root.level, "
        "dict(os.environ))\n"
        "import digitlab\n"
        f"for name in {list(API)!r}:\n"
        "    getattr(digitlab, name)\n"
        "after = (list(map(repr, warnings.filters)), list(logging.root.handlers), logging.root.level, "
        "dict(os.environ))\n"
        "print(json.dumps({'backend': matplotlib.get_backend(), 'threads': torch.get_num_threads(), "
        "'same': before == after, 'pyplot': 'matplotlib.pyplot' in sys.modules}))\n"
    )
    assert state == {"backend": "svg", "threads": 3, "same": True, "pyplot": False}


def test_importing_explore_keeps_the_callers_backend() -> None:
    state = run_python(
        "import json, sys\n"
        "import matplotlib\n"
        "matplotlib.use('pdf')\n"
        "import digitlab.data.explore\n"
        "print(json.dumps({'backend': matplotlib.get_backend(), 'pyplot': 'matplotlib.pyplot' in sys.modules}))\n"
    )
    assert state == {"backend": "pdf", "pyplot": False}


def test_explore_draws_without_pyplot(tiny, tmp_path: Path) -> None:
    import matplotlib

    from digitlab.data.explore import explore_dataset
    from digitlab.data.loading import load_dataset

    spec, folder = tiny
    backend, had_pyplot = matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules
    figures = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None
    explore_dataset(load_dataset(spec, folder, download=False), tmp_path / "out")
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    if had_pyplot:  # another test drew through pyplot: its open figures are the same, none added
        assert sys.modules["matplotlib.pyplot"].get_fignums() == figures


@pytest.mark.parametrize("name", sorted(API))
def test_each_name_resolves_to_its_module(name: str) -> None:
    import importlib

    assert getattr(digitlab, name) is getattr(importlib.import_module(API[name]), name)


def test_from_import_and_dir() -> None:
    from digitlab import Predictor, calibrate, evaluate, load_dataset, prepare_image, read_digits, train  # noqa: F401

    listed = dir(digitlab)
    assert set(API) <= set(listed) and "__version__" in listed
    assert set(digitlab.__all__) == set(API) | {"__version__"}
    assert "import_module" not in listed and "_WHERE" not in listed  # the module's helpers stay out
    assert isinstance(digitlab.__version__, str) and digitlab.__version__


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="module 'digitlab' has no attribute 'Predicter'"):
        digitlab.Predicter  # noqa: B018
    with pytest.raises(ImportError):
        from digitlab import Predicter  # noqa: F401
    assert not hasattr(digitlab, "_nope")


def test_overrides_are_set_strings() -> None:
    assert api._override_strings(None) == []
    assert api._override_strings("train.epochs=2") == ["train.epochs=2"]
    assert api._override_strings(["train.epochs=2", "seed=1"]) == ["train.epochs=2", "seed=1"]
    assert api._override_strings({"train.epochs": 2, "model.args.dense": [64, 32], "data.data_dir": None,
                                  "train.optimizer": "sgd"}) == [
        "train.epochs=2", "model.args.dense=[64, 32]", "data.data_dir=null", 'train.optimizer="sgd"']


def test_train_builds_the_config_like_the_cli_then_calibrates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import digitlab.inference.rejection as rejection
    import digitlab.training as training

    seen: dict[str, Any] = {}

    def fake_train_run(cfg: Any, **kwargs: Any) -> Any:
        seen["cfg"], seen["train"] = cfg, kwargs
        return SimpleNamespace(run_dir=str(tmp_path / "run"), device="cpu")

    def fake_calibrate_run(run_path: Any, **kwargs: Any) -> str:
        seen["calibrate"] = (run_path, kwargs)
        return "fitted"

    monkeypatch.setattr(training, "train_run", fake_train_run)
    monkeypatch.setattr(rejection, "calibrate_run", fake_calibrate_run)
    lines: list[str] = []
    result = digitlab.train("fast", {"train.epochs": 2, "data.train_subset": 300}, out=tmp_path, seed=7,
                            log=lines.append)
    assert result.run_dir == str(tmp_path / "run")
    cfg = seen["cfg"]
    assert (cfg.recipe, cfg.train.epochs, cfg.data.train_subset, cfg.seed) == ("fast", 2, 300, 7)
    assert cfg == training.config_from_recipe("fast", ["train.epochs=2", "data.train_subset=300", "seed=7"])
    assert seen["train"] == {"out_root": tmp_path, "show_progress": False, "log": lines.append}
    # calibrated where it trained
    assert seen["calibrate"] == (str(tmp_path / "run"), {"device": "cpu", "show_progress": False, "log": lines.append})

    seen.clear()
    digitlab.train("fast", ["train.epochs=1"], calibrate=False)
    assert seen["cfg"].train.epochs == 1 and "calibrate" not in seen


def test_calibrate_and_evaluate_pass_their_arguments_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import digitlab.evaluation.evaluate as evaluation
    import digitlab.inference.rejection as rejection

    monkeypatch.setattr(rejection, "calibrate_run", lambda run, **kw: ("calibrated", run, kw))
    monkeypatch.setattr(evaluation, "evaluate_run", lambda run, **kw: {"run": run, **kw})
    assert digitlab.calibrate("runs/x", device="cpu") == ("calibrated", "runs/x", {"device": "cpu"})
    assert digitlab.evaluate("runs/x", split="val", robustness=True) == {"run": "runs/x", "split": "val",
                                                                          "robustness": True}


def test_a_torch_run_loads_without_scikit_learn_or_matplotlib(mnist_dataset, tmp_path: Path) -> None:
    result = digitlab.train("fast", {"train.epochs": 1, "data.train_subset": 500, "data.n_val": 200},
                            out=tmp_path, seed=0, calibrate=False)
    seen = run_python(
        "import json, sys\n"
        "from digitlab import Predictor\n"
        f"Predictor.from_path({result.run_dir!r})\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    assert seen == ["torch"]
