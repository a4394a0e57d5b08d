"""Shared fixtures: hermetic settings and tiny synthetic datasets written by digitlab's own writer."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from digitlab.data.datasets import FILE_ROLES, DatasetSpec, IdxFileSpec
from digitlab.data.idx import hash_uncompressed, write_idx

MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@pytest.fixture(autouse=True)
def _hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty cache, and no download can leave this machine."""
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    # Port 9 (discard) on loopback refuses at once: a test that forgets to stub the network fails fast.
    monkeypatch.setenv("DIGITLAB_MIRRORS", "http://127.0.0.1:9/")


def make_arrays(
    n_train: int = 40, n_test: int = 20, seed: int = 0, *, shuffle_labels: bool = False
) -> dict[str, np.ndarray]:
    """Random, distinct 28x28 'digits' (a bright blob each) with every class present.

    Labels cycle 0..9 in order; ``shuffle_labels`` permutes them by ``seed``, so that two seeds
    give different bytes in all four files.
    """
    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        x[:, 4:24, 6:22] = rng.integers(0, 256, size=(n, 20, 16), dtype=np.uint8)
        return x

    def labels(n: int) -> np.ndarray:
        y = (np.arange(n) % 10).astype(np.uint8)
        if shuffle_labels:
            rng.shuffle(y)
        return y

    train_images, test_images = images(n_train), images(n_test)
    return {
        "train_images": train_images,
        "train_labels": labels(n_train),
        "test_images": test_images,
        "test_labels": labels(n_test),
    }


def write_dataset(
    folder: Path,
    arrays: dict[str, np.ndarray],
    *,
    name: str = "tiny",
    gz: bool = True,
    shapes: dict[str, tuple[int, ...]] | None = None,
    mirrors: tuple[str, ...] = (),
    npm_package: str | None = None,
    system_dir: Path | None = None,
) -> DatasetSpec:
    """Write ``arrays`` as IDX files into ``folder`` and return a spec that matches their hashes.

    ``shapes`` overrides what the spec claims, to make a spec the files contradict. ``mirrors``,
    ``npm_package`` and ``system_dir`` go into the spec as they are (the system dir defaults to an
    empty sibling of ``folder``, so no real system copy is ever found).
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for role in FILE_ROLES:
        path = write_idx(folder / (MNIST_NAMES[role] + (".gz" if gz else "")), arrays[role])
        shape = (shapes or {}).get(role, arrays[role].shape)
        files[role] = IdxFileSpec(MNIST_NAMES[role], tuple(shape), hash_uncompressed(path))
    return DatasetSpec(
        name=name,
        description="tiny synthetic test set",
        files=files,
        class_names=tuple(str(d) for d in range(10)),
        mirrors=mirrors,
        npm_package=npm_package,
        system_dir=system_dir or folder.parent / "no-system-dir",
    )


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[DatasetSpec, Path]:
    """A valid tiny dataset: (spec, folder holding its four .gz files)."""
    folder = tmp_path / "tiny"
    return write_dataset(folder, make_arrays()), folder


def pytest_configure(config: pytest.Config) -> None:
    """Without $DIGITLAB_DATA_DIR, point it at a verified MNIST already on this machine (the user cache where
    `digitlab data fetch` put it, or the system data dir), before ``_hermetic`` hides the user cache."""
    if os.environ.get("DIGITLAB_DATA_DIR"):
        return
    from digitlab.core.errors import DigitlabError
    from digitlab.data.datasets import get_dataset
    from digitlab.data.sources import dataset_folder

    try:
        folder = dataset_folder(get_dataset("mnist"), verify=False)  # loading verifies every byte it reads
    except DigitlabError:
        return
    os.environ["DIGITLAB_DATA_DIR"] = str(folder.parent)


def mnist_file(name: str) -> Path:
    """A real MNIST file (gzip or raw, as it was fetched) under $DIGITLAB_DATA_DIR/mnist/."""
    folder = mnist_dir()
    assert folder is not None
    return next(p for p in (folder / f"{name}.gz", folder / name) if p.exists())


def mnist_dir() -> Path | None:
    """The real MNIST folder from $DIGITLAB_DATA_DIR, or None when it is not there."""
    root = os.environ.get("DIGITLAB_DATA_DIR")
    folder = Path(root) / "mnist" if root else None
    if folder and all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in MNIST_NAMES.values()):
        return folder
    return None


@pytest.fixture(scope="session")
def mnist_dataset():
    """The real MNIST, loaded once. Fails (not skips) under CI=true when the files are missing."""
    if mnist_dir() is None:
        message = ("real MNIST not found: `make test` fetches it as `make run` does; or run `digitlab data fetch "
                   "--dataset mnist` once, or set DIGITLAB_DATA_DIR to a folder holding mnist/")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from digitlab.data.loading import load_dataset

    return load_dataset("mnist", download=False)


def chromium_path() -> str:
    """Debian's chromium for the browser tests: a failure under CI=true when missing, a skip elsewhere."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium not found: `make test` installs Debian's chromium package")
        pytest.skip("chromium not installed (make test installs it)")
    return path


def assert_one_line_error(result, needle: str) -> None:
    """Exit 2, and the whole output is one ``digitlab: error:`` line naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("digitlab: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in result.output and not result.stdout


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny models gain nothing from more; a busy machine loses)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL_CNN = ["data.train_subset=5000", "data.n_val=200", "train.batch_size=64", "train.eval_batch_size=500",
             "model.args={blocks: [{filters: 8, pool_first: true, batch_norm: true}, "
             "{filters: 16, pool_first: true, batch_norm: true}], dense: []}"]


@pytest.fixture(scope="session")
def small_cnn(mnist_dataset, tmp_path_factory: pytest.TempPathFactory):
    """A small CNN trained once on 5,000 MNIST digits, for the tests that read real digits."""
    import torch

    from digitlab.inference import Predictor
    from digitlab.training import config_from_recipe, train_run

    root = tmp_path_factory.mktemp("small-cnn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from more, and a busy machine loses (10x CPU)
    try:
        with pytest.MonkeyPatch.context() as mp:  # the function-scoped hermetic fixture does not reach here
            mp.setenv("DIGITLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
            mp.setenv("DIGITLAB_MIRRORS", "http://127.0.0.1:9/")
            run = train_run(config_from_recipe("fast", SMALL_CNN), out_root=root, show_progress=False,
                            evaluate_test=False)
    finally:
        torch.set_num_threads(threads)
    return Predictor.from_run(run.run_dir)
