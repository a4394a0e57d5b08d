"""digitlab: handwritten digit recognition from raw MNIST-format data to a deployed model.

Usage: ``digitlab --help`` on the command line, or in Python::

    from digitlab import Predictor, train
    result = train("fast", {"train.epochs": 1})
    print(Predictor.from_path(result.run_dir).predict_image("digit.png"))

The names below load on first use (PEP 562): ``import digitlab`` imports neither torch nor
matplotlib, scikit-learn or onnxruntime, and changes no global state (backends, threads, warnings).
"""

from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_WHERE = {
    "Predictor": "digitlab.inference.predictor",
    "read_digits": "digitlab.inference.strings",
    "open_reader": "digitlab.inference.strings",
    "StringReader": "digitlab.inference.sequence",
    "prepare_image": "digitlab.inference.prepare",
    "load_dataset": "digitlab.data.loading",
    "train": "digitlab.api",
    "evaluate": "digitlab.api",
    "calibrate": "digitlab.api",
}

__all__ = [
    "Predictor",
    "StringReader",
    "__version__",
    "calibrate",
    "evaluate",
    "load_dataset",
    "open_reader",
    "prepare_image",
    "read_digits",
    "train",
]

if TYPE_CHECKING:
    from digitlab.api import calibrate, evaluate, train
    from digitlab.data.loading import load_dataset
    from digitlab.inference.predictor import Predictor
    from digitlab.inference.prepare import prepare_image
    from digitlab.inference.sequence import StringReader
    from digitlab.inference.strings import open_reader, read_digits

    __version__: str


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("digitlab")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()  # reading the metadata is slow: only when asked (docs/decisions.md#deferred-imports)
    elif name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'digitlab' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    # The public names (loaded or not), the dunders and the subpackages already imported; not the helpers.
    subpackages = {n for n, v in globals().items() if isinstance(v, ModuleType) and v.__name__ == f"{__name__}.{n}"}
    return sorted({*__all__, *subpackages, *(n for n in globals() if n.startswith("__"))})
