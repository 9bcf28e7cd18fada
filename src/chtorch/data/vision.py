"""Image classification datasets of the paper's MLP study, read from their standard files.

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §2.1 / Table 4: MNIST, Fashion-MNIST, EMNIST
(``balanced`` split, 47 classes) and CIFAR-10, each fed to a 3-hidden-layer MLP. ``digits``
(scikit-learn's bundled 8×8 handwritten digits) is added as a tiny dataset that needs no files.

The readers are pure functions from bytes/files to tensors:

* :func:`parse_idx` / :func:`read_idx`: the IDX format of LeCun et al. (MNIST family), gzip or raw.
* :func:`read_cifar_batch`: one pickled CIFAR-10 "python version" batch (restricted unpickler).

:func:`load_dataset` finds the files (see :func:`chtorch.data.files.search_dirs`), verifies their
checksums, optionally downloads them from the canonical sources, and returns a :class:`VisionData`
with float32 images scaled to ``[0, 1]`` and (by default) normalised with the dataset's standard
per-channel mean/std — the values of the paper's code (R2 ``mlp_and_cnn/load_data.py``).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from chtorch.data.files import (
    ENV_VAR,
    Checksums,
    DataError,
    DataFormatError,
    DataNotFoundError,
    atomic_write_bytes,
    cache_dir,
    download,
    find_file,
    read_verified,
    search_dirs,
    verify_bytes,
    verify_file,
)
from chtorch.rng import make_generator

__all__ = [
    "VisionData",
    "DatasetInfo",
    "DATASETS",
    "MIRRORS",
    "dataset_info",
    "dataset_names",
    "parse_idx",
    "read_idx",
    "read_cifar_batch",
    "load_dataset",
    "random_crop_flip",
]

# --------------------------------------------------------------------------------------------
# IDX reader
# --------------------------------------------------------------------------------------------

# IDX type code -> big-endian numpy dtype (LeCun's format description).
_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
IDX_IMAGES = 0x00000803  # uint8, 3 dims (N, H, W)
IDX_LABELS = 0x00000801  # uint8, 1 dim (N,)
_IDX_HELP = (
    "an IDX magic number is 0x0000TTDD with TT the type code (08 uint8, 09 int8, 0B int16, "
    "0C int32, 0D float32, 0E float64) and DD the number of dimensions; MNIST-family images use "
    "0x00000803 and labels 0x00000801"
)


def _magic_name(magic: int) -> str:
    return {IDX_IMAGES: "uint8 images (N, H, W)", IDX_LABELS: "uint8 labels (N,)"}.get(
        magic, f"type 0x{(magic >> 8) & 0xFF:02X}, {magic & 0xFF} dims"
    )


def parse_idx(data: bytes, source: str | os.PathLike[str] = "<bytes>", *, expected_magic: int | None = None) -> torch.Tensor:
    """Decode uncompressed IDX bytes into a tensor of shape ``dims`` (uint8 stays uint8).

    Validation is strict: a bad or unexpected magic number, a truncated header or body, or extra
    bytes after the data raise :class:`~chtorch.data.files.DataFormatError` naming ``source`` and
    what was expected. With ``expected_magic`` (e.g. ``0x00000803``) any other magic is an error.
    """
    n = len(data)
    if n < 4:
        raise DataFormatError(f"{source}: {n} bytes is too short for an IDX file (it needs a 4-byte magic number; {_IDX_HELP})")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_TYPES or ndim == 0:
        raise DataFormatError(
            f"{source}: not an IDX file: magic number 0x{magic:08X}"
            + (f", expected 0x{expected_magic:08X} ({_magic_name(expected_magic)})" if expected_magic else "")
            + f" ({_IDX_HELP})"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DataFormatError(
            f"{source}: IDX magic number 0x{magic:08X} ({_magic_name(magic)}), expected "
            f"0x{expected_magic:08X} ({_magic_name(expected_magic)}); is this the right file?"
        )
    header = 4 + 4 * ndim
    if n < header:
        raise DataFormatError(f"{source}: truncated IDX header: {ndim} dimensions need a {header}-byte header, the file has {n} bytes")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[type_code])
    count = math.prod(dims)
    expected = count * dtype.itemsize
    have = n - header
    if have != expected:
        what = "truncated" if have < expected else f"{have - expected} unexpected bytes at the end"
        raise DataFormatError(
            f"{source}: {what}: the header says dims {dims} of {dtype.name}, which is {expected} "
            f"bytes after the {header}-byte header, but the file has {have}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header) if count else np.empty(0, dtype)
    # Copy into native byte order: np.frombuffer views read-only memory, torch needs it writable.
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True).reshape(dims))


def read_idx(path: str | os.PathLike[str], *, expected_magic: int | None = None) -> torch.Tensor:
    """Read an IDX file (gzip-compressed or raw, decided by content) into a tensor.

    Images (magic ``0x00000803``) come back as uint8 ``(N, H, W)``, labels (``0x00000801``) as
    uint8 ``(N,)``. Errors are :class:`~chtorch.data.files.DataError` subclasses naming the file.
    """
    content = read_verified(path, None)
    return parse_idx(content, path, expected_magic=expected_magic)


# --------------------------------------------------------------------------------------------
# CIFAR-10 reader
# --------------------------------------------------------------------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what a CIFAR batch needs (numpy arrays), so a tampered file
    cannot run code on load."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if module in {"numpy.core.multiarray", "numpy._core.multiarray"} and name in {"_reconstruct", "scalar"}:
            # Resolve through the current module path (numpy 2 moved numpy.core to numpy._core).
            core = getattr(np, "_core", None) or np.core  # type: ignore[attr-defined]
            return getattr(core.multiarray, name)
        if (module, name) == ("_codecs", "encode"):
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(source: str | os.PathLike[str] | bytes, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one CIFAR-10 python batch (``data_batch_1`` ... ``test_batch``).

    ``source`` is a path or the file's bytes. Returns ``(images, labels)``: uint8 ``(N, 3, 32, 32)``
    (the stored rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32×32 plane) and
    int64 ``(N,)``. The pickle must be a dict with ``b"data"`` (uint8, ``(N, 3072)``) and
    ``b"labels"`` (N ints in 0..9); anything else raises ``DataFormatError``.
    """
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), name or "<bytes>"
    else:
        data = read_verified(source, None)
        label = name or str(source)
    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataFormatError(f"{label}: not a CIFAR-10 python batch (unpickling failed: {exc})") from exc
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataFormatError(f"{label}: a CIFAR-10 batch is a dict with b'data' and b'labels'; found {keys}")
    images = np.asarray(obj[b"data"])
    labels = np.asarray(obj[b"labels"])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{label}: b'data' must be uint8 of shape (N, 3072), found {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{label}: b'labels' must be {len(images)} integers (one per image), found {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{label}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return (
        torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()),
        torch.from_numpy(labels.astype(np.int64)),
    )


# --------------------------------------------------------------------------------------------
# Dataset table
# --------------------------------------------------------------------------------------------


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
    files: dict[str, tuple[_File, ...]] = field(default_factory=dict)
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class VisionData:
    """An in-memory image classification split.

    ``images``: float32 ``(N, C, H, W)``, or ``(N, C*H*W)`` when loaded with ``flatten=True``;
    pixel values scaled to ``[0, 1]`` and, when ``normalized``, standardised per channel as
    ``(x - mean[c]) / std[c]``. ``labels``: int64 ``(N,)`` in ``0 .. n_classes-1``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    name: str
    split: str
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalized: bool = True

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_features(self) -> int:
        """Length of a flattened image, ``C * H * W`` (the MLP's input size)."""
        return math.prod(self.shape)


def _hint(info: DatasetInfo, dirs: Sequence[Path], names: Sequence[str]) -> str:
    where = ", ".join(str(d) for d in dirs)
    mirrors = MIRRORS.get(info.name, ())
    url = f" from {mirrors[0]}" if mirrors else ""
    return (
        f"Put {', '.join(names)}{url} into one of: {where} (set {ENV_VAR}=<data root> holding "
        f"{info.subdirs[0]}/ or the files directly, or pass root=...), or call "
        f"load_dataset({info.name!r}, download=True)."
    )


def _download_target(info: DatasetInfo, root: str | os.PathLike[str] | None) -> Path:
    # With an explicit root, files go where the user said data lives; otherwise into the cache
    # (never into $CHTORCH_DATA, which is often a shared read-only folder).
    return Path(root).expanduser() / info.name if root is not None else cache_dir(info.name)


def _locate(
    info: DatasetInfo,
    split_files: Sequence[_File],
    root: str | os.PathLike[str] | None,
    download_ok: bool,
) -> list[Path]:
    """Paths of ``split_files``, all taken from the first directory that holds every one of them,
    downloading the missing ones when allowed."""
    dirs = search_dirs(info.name, root, subdirs=info.subdirs)
    for d in dirs:
        found = [find_file([d], f.names) for f in split_files]
        if all(p is not None for p in found):
            return found  # type: ignore[return-value]
    if download_ok:
        target = _download_target(info, root)
        paths = []
        for f in split_files:
            existing = find_file([target], f.names)
            if existing is None:
                existing = download([m + f.name for m in MIRRORS[info.name]], target / f.name, f.checksums)
            paths.append(existing)
        return paths
    missing = [f.name for f in split_files]
    raise DataNotFoundError(
        f"{info.title}: missing {', '.join(missing)} (need all of them in one directory). "
        + _hint(info, dirs, missing)
        + " Expected checksums: "
        + " | ".join(f"{f.name}: {f.checksums.describe()}" for f in split_files)
    )


def _load_idx_split(
    info: DatasetInfo, split: str, root: str | os.PathLike[str] | None, download_ok: bool, verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    image_file, label_file = info.files[split]
    if info.name == "emnist_balanced":
        _extract_emnist_if_needed(info, root, download_ok, verify)
    image_path, label_path = _locate(info, (image_file, label_file), root, download_ok)
    dirs = search_dirs(info.name, root, subdirs=info.subdirs)
    known = _known_digests()
    images = parse_idx(
        read_verified(image_path, image_file.checksums, verify=verify, hint=_hint(info, dirs, [image_file.name]), known=known),
        image_path,
        expected_magic=IDX_IMAGES,
    )
    labels = parse_idx(
        read_verified(label_path, label_file.checksums, verify=verify, hint=_hint(info, dirs, [label_file.name]), known=known),
        label_path,
        expected_magic=IDX_LABELS,
    )
    _, h, w = info.shape
    if tuple(images.shape[1:]) != (h, w):
        raise DataFormatError(f"{image_path}: expected {info.title} images of shape (N, {h}, {w}), found {tuple(images.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{image_path} holds {images.shape[0]} images but {label_path} holds {labels.shape[0]} labels; "
            "the two files must come from the same split"
        )
    if labels.numel() and int(labels.max()) >= info.n_classes:
        raise DataFormatError(f"{label_path}: label {int(labels.max())} is out of range for {info.n_classes} classes")
    if info.name == "emnist_balanced":
        # EMNIST stores each image transposed (column-major); transpose back to upright.
        images = images.transpose(1, 2).contiguous()
    return images.unsqueeze(1), labels.long()


def _extract_emnist_if_needed(info: DatasetInfo, root: str | os.PathLike[str] | None, download_ok: bool, verify: bool) -> None:
    """NIST distributes EMNIST only as one ``gzip.zip`` (all six splits). If the balanced files are
    missing but the zip is present (or may be downloaded), extract the four balanced members."""
    dirs = search_dirs(info.name, root, subdirs=info.subdirs)
    wanted = [f for files in info.files.values() for f in files]
    for d in dirs:
        if all(find_file([d], f.names) for f in wanted):
            return
    zip_path = find_file(dirs, _EMNIST_ZIP.names)
    target = _download_target(info, root)
    if zip_path is None:
        if not download_ok:
            return  # _locate raises the "missing file" error with instructions
        zip_path = download([m + _EMNIST_ZIP.name for m in MIRRORS[info.name]], target / _EMNIST_ZIP.name, _EMNIST_ZIP.checksums)
        downloaded = True
    else:
        downloaded = False
        if verify:
            verify_file(zip_path, _EMNIST_ZIP.checksums, hint="Download gzip.zip again from NIST.")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = {Path(n).name: n for n in archive.namelist()}
            for f in wanted:
                if f.name not in members:
                    raise DataFormatError(f"{zip_path}: member {f.name} not found; is this the EMNIST gzip.zip?")
                atomic_write_bytes(target / f.name, archive.read(members[f.name]))
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{zip_path}: not a zip file ({exc}); download gzip.zip again") from exc
    if downloaded:
        zip_path.unlink()  # 0.5 GB holding five splits we do not use


def _load_cifar_split(
    info: DatasetInfo, split: str, root: str | os.PathLike[str] | None, download_ok: bool, verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    files = info.files[split]
    dirs = search_dirs(info.name, root, subdirs=info.subdirs)
    known = _known_digests()
    # 1. Extracted batches: <dir>/cifar-10-batches-py/<batch> or <dir>/<batch>.
    for d in dirs:
        found = [find_file([d], (f"{_CIFAR_DIR}/{f.name}", f.name)) for f in files]
        if all(p is not None for p in found):
            parts = [
                read_cifar_batch(read_verified(p, f.checksums, verify=verify, known=known), str(p))
                for p, f in zip(found, files)  # type: ignore[arg-type]
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    # 2. The archive itself, read in place (no extraction needed).
    archive = find_file(dirs, _CIFAR_ARCHIVE.names)
    if archive is None and download_ok:
        target = _download_target(info, root)
        archive = download([m + _CIFAR_ARCHIVE.name for m in MIRRORS[info.name]], target / _CIFAR_ARCHIVE.name, _CIFAR_ARCHIVE.checksums)
    if archive is None:
        names = [f"{_CIFAR_DIR}/{f.name}" for f in files]
        raise DataNotFoundError(
            f"{info.title}: missing {', '.join(names)} and {_CIFAR_ARCHIVE.name}. "
            + _hint(info, dirs, [_CIFAR_ARCHIVE.name])
            + f" Expected checksum of {_CIFAR_ARCHIVE.name}: {_CIFAR_ARCHIVE.checksums.describe()}"
        )
    try:
        with tarfile.open(archive, "r:*") as tar:
            parts = []
            for f in files:
                member_name = f"{_CIFAR_DIR}/{f.name}"
                try:
                    member = tar.extractfile(member_name)
                except KeyError:
                    member = None
                if member is None:
                    raise DataFormatError(f"{archive}: member {member_name} not found; is this cifar-10-python.tar.gz?")
                raw = member.read()
                label = f"{archive}:{member_name}"
                if verify:
                    verify_bytes(raw, raw, f.checksums, label, known=known)
                parts.append(read_cifar_batch(raw, label))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataFormatError(f"{archive}: damaged tar.gz archive ({exc}); download it again") from exc
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _load_digits_split(split: str, seed: int = 0, test_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits (1797 images, 8×8, values 0..16, returned as float32 scaled
    to ``[0, 1]`` by 1/16) with a stratified split:
    in each class, a fixed-seed permutation puts ``round(test_fraction * n_class)`` images in the
    test split. Deterministic for a given torch version; both splits sorted by original index."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn (or chtorch[cli])") from exc
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)  # (1797, 8, 8), 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    generator = make_generator(seed, "digits-split")
    test_mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(10):
        idx = torch.nonzero(labels == c).flatten()
        perm = idx[torch.randperm(len(idx), generator=generator)]
        test_mask[perm[: round(test_fraction * len(idx))]] = True
    keep = test_mask if split == "test" else ~test_mask
    return (images[keep] / 16.0).unsqueeze(1), labels[keep]


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    flatten: bool = False,
    normalize: bool = True,
    download: bool = False,
    verify: bool = True,
) -> VisionData:
    """Load one split of ``name`` (``mnist``, ``fashion_mnist``, ``emnist_balanced``, ``cifar10``,
    ``digits``) into memory.

    Files are searched in ``<root>/<name>/`` and ``root``; without ``root``, under
    ``$CHTORCH_DATA`` the same way, then in ``~/.cache/chtorch/<name>``. Missing files are
    downloaded from the canonical sources when ``download=True`` (into ``<root>/<name>`` or the
    cache), checksum-verified, and written atomically. ``verify=False`` skips the checksum check
    (the format is still validated).

    Returns :class:`VisionData`: float32 images ``(N, C, H, W)`` (``(N, C*H*W)`` with
    ``flatten=True``) scaled to ``[0, 1]`` and, with ``normalize=True``, standardised per channel
    with the dataset's ``mean``/``std``; int64 labels ``(N,)``.
    """
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if info.name == "digits":
        images, labels = _load_digits_split(split)
    elif info.name == "cifar10":
        images, labels = _load_cifar_split(info, split, root, download, verify)
    else:
        images, labels = _load_idx_split(info, split, root, download, verify)
    # 8-bit datasets come as uint8 (0..255); digits comes already scaled to [0, 1].
    x = images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images
    if normalize:
        c = info.shape[0]
        x.sub_(torch.tensor(info.mean).view(1, c, 1, 1)).div_(torch.tensor(info.std).view(1, c, 1, 1))
    if flatten:
        x = x.reshape(x.shape[0], -1)
    return VisionData(x, labels, info.n_classes, info.name, split, info.shape, info.mean, info.std, normalize)


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def random_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flip: bool = True,
    fill: Sequence[float] | float = 0.0,
) -> torch.Tensor:
    """Batched random crop with padding and random horizontal flip, as the paper's code uses for
    CIFAR-10 (R2 ``load_data.py``: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``).

    ``images``: ``(B, C, H, W)``. Each image is padded by ``padding`` pixels of value ``fill`` (one
    value or one per channel: for normalised images use ``(0 - mean) / std`` to match padding the
    raw image with black), cropped back to ``H×W`` at a random offset, and mirrored with
    probability 1/2. All randomness comes from ``generator``. Returns a new ``(B, C, H, W)`` tensor.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = images.shape
    fill_t = torch.as_tensor(fill, dtype=images.dtype).reshape(-1)
    if fill_t.numel() not in (1, c):
        raise ValueError(f"fill must be one value or {c} (one per channel), got {fill_t.numel()}")
    padded = images.new_empty(b, c, h + 2 * padding, w + 2 * padding)
    padded[:] = fill_t.to(images.device).view(1, -1, 1, 1)
    padded[:, :, padding : padding + h, padding : padding + w] = images
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flipped = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    rows = oy[:, None] + torch.arange(h)  # (B, H)
    col_offsets = torch.where(flipped[:, None], torch.arange(w - 1, -1, -1), torch.arange(w))
    cols = ox[:, None] + col_offsets  # (B, W)
    dev = images.device
    out = padded[
        torch.arange(b, device=dev)[:, None, None], :, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]
    ]  # advanced indexing puts the indexed dims first: (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
