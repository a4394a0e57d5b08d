"""digitlab: handwritten digit recognition from raw MNIST-format data to a deployed model.

Usage: ``digitlab --help`` on the command line, or ``from digitlab.data import load_dataset``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("digitlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
