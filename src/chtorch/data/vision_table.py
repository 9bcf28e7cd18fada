"""The image datasets of the paper's MLP study: their files, checksums, mirrors and statistics.

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §2.1 / Table 4. :mod:`chtorch.data.vision` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from chtorch.data.files import Checksums

__all__ = ["DatasetInfo", "DATASETS", "MIRRORS", "dataset_info", "dataset_names"]


@dataclass(frozen=True)
class _File:
    """One distributed file: canonical name, other accepted names, checksums."""

    name: str
    checksums: Checksums = Checksums()
    alt_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.alt_names)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: classes, image shape ``(C, H, W)``, standard normalisation,
    folder names tried under a data root, and the files of each split."""

    name: str
    title: str
    n_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    subdirs: tuple[str, ...]
    files: Mapping[str, tuple[_File, ...]] = field(default_factory=dict)
    source: str = ""

    @property
    def in_features(self) -> int:
        """Length of a flattened image, ``C * H * W``."""
        return math.prod(self.shape)


def _idx_file(name: str, md5: str | None = None, sha256_content: str | None = None) -> _File:
    raw = name.removesuffix(".gz")
    # Also accept the uncompressed name and the "train-images.idx3-ubyte" spelling of some mirrors.
    dotted = raw.replace("-idx", ".idx")
    return _File(
        name,
        Checksums(
            file=(f"md5:{md5}",) if md5 else (),
            content=(f"sha256:{sha256_content}",) if sha256_content else (),
        ),
        alt_names=(raw, dotted) if dotted != raw else (raw,),
    )


_MNIST = {
    # md5 of the original .gz (torchvision's table); sha256 of the decompressed IDX bytes (the same
    # for any re-compression, e.g. the project's shared data, see shared/data/README.md).
    "train": (
        _idx_file(
            "train-images-idx3-ubyte.gz",
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        _idx_file(
            "train-labels-idx1-ubyte.gz",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
    ),
    "test": (
        _idx_file(
            "t10k-images-idx3-ubyte.gz",
            "9fb629c4189551a2d022fa330f9573f3",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        _idx_file(
            "t10k-labels-idx1-ubyte.gz",
            "ec29112dd5afa0611ce80d1b7f02629c",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
}
_FASHION = {
    # Only the md5s of the distributed .gz files are published (zalandoresearch/fashion-mnist).
    "train": (
        _idx_file("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        _idx_file("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    ),
    "test": (
        _idx_file("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        _idx_file("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
}
_EMNIST = {
    # NIST publishes a checksum only for the whole gzip.zip (_EMNIST_ZIP); the members are
    # format-checked (IDX header and sizes) but not digest-checked.
    split: (
        _idx_file(f"emnist-balanced-{split}-images-idx3-ubyte.gz"),
        _idx_file(f"emnist-balanced-{split}-labels-idx1-ubyte.gz"),
    )
    for split in ("train", "test")
}
_EMNIST_ZIP = _File("gzip.zip", Checksums(file=("md5:58c8d27c78d21e728a6bc7b3cc06412e",)), ("emnist-gzip.zip",))
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR = {
    "train": tuple(
        _File(f"data_batch_{i}", Checksums(file=(f"md5:{md5}",)))
        for i, md5 in enumerate(
            (
                "c99cafc152244af753f735de768cd75f",
                "d4bba439e000b95fd0a9bffe97cbabec",
                "54ebc095f3ab1f0389bbae665268c751",
                "634d18415352ddfa80567beed471001a",
                "482c414d41f54cd18b22e5b47cb7c3cb",
            ),
            start=1,
        )
    ),
    "test": (_File("test_batch", Checksums(file=("md5:40351d587109b95175f43aff81a1287e",))),),
}
_CIFAR_ARCHIVE = _File("cifar-10-python.tar.gz", Checksums(file=("md5:c58f30108f718f92721af3b95e74349a",)))

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist",
        "MNIST",
        10,
        (1, 28, 28),
        (0.1307,),
        (0.3081,),
        ("mnist", "MNIST", "MNIST/raw"),
        _MNIST,
        "LeCun, Cortes & Burges; files as on https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        "Fashion-MNIST",
        10,
        (1, 28, 28),
        (0.2860,),
        (0.3530,),
        ("fashion_mnist", "fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
        _FASHION,
        "Xiao, Rasul & Vollgraf 2017 (zalandoresearch/fashion-mnist)",
    ),
    "emnist_balanced": DatasetInfo(
        "emnist_balanced",
        "EMNIST balanced",
        47,
        (1, 28, 28),
        (0.1736,),
        (0.3317,),
        ("emnist_balanced", "emnist", "EMNIST", "EMNIST/raw", "gzip"),
        _EMNIST,
        "Cohen et al. 2017; gzip.zip from https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        "CIFAR-10",
        10,
        (3, 32, 32),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        ("cifar10", "cifar-10", "CIFAR10"),
        _CIFAR,
        "Krizhevsky 2009; https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    # Mean/std over all 1797 images scaled by 1/16 (computed once; checked by the tests).
    "digits": DatasetInfo(
        "digits",
        "scikit-learn digits",
        10,
        (1, 8, 8),
        (0.3053,),
        (0.3760,),
        (),
        {},
        "UCI optical recognition of handwritten digits, bundled with scikit-learn",
    ),
}

#: Base URLs tried in order for each downloadable dataset (file name appended). Module-level so a
#: deployment can point at a local mirror; the tests replace them with ``file://`` URLs.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    "emnist_balanced": ("https://biometrics.nist.gov/cs_links/EMNIST/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

_ALIASES = {
    "fmnist": "fashion_mnist",
    "fashion-mnist": "fashion_mnist",
    "fashionmnist": "fashion_mnist",
    "emnist": "emnist_balanced",
    "emnist-balanced": "emnist_balanced",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset` (aliases such as ``"fmnist"`` also work)."""
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (case-insensitive; aliases allowed)."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {dataset_names()} (aliases: {sorted(_ALIASES)})")
    return DATASETS[key]


def _known_digests() -> dict[str, str]:
    """digest -> 'the <dataset> <file>' for every file with a published digest (to name a file
    that belongs to another dataset)."""
    known: dict[str, str] = {}
    for info in DATASETS.values():
        for split_files in info.files.values():
            for f in split_files:
                for d in (*f.checksums.file, *f.checksums.content):
                    known[d.lower()] = f"the {info.title} file {f.name}"
    return known
