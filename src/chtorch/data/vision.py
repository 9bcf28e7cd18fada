"""Image classification datasets of the paper's MLP study, read from their standard files.

Zhang et al., NeurIPS 2025 (arXiv:2501.19107), §2.1 / Table 4: MNIST, Fashion-MNIST, EMNIST
(``balanced`` split, 47 classes) and CIFAR-10, each fed to a 3-hidden-layer MLP. ``digits``
(scikit-learn's bundled 8×8 handwritten digits) is added as a tiny dataset that needs no files.

The file formats live in their own modules (re-exported here): :mod:`chtorch.data.idx` (IDX, the
MNIST family, gzip or raw) and :mod:`chtorch.data.cifar` (CIFAR-10 python batches); the dataset
table (files, checksums, mirrors, statistics) is :mod:`chtorch.data.vision_table`, the CIFAR
augmentation :mod:`chtorch.data.augment`. Every decompression is capped: an IDX file by the size
its header declares, a CIFAR batch by :data:`~chtorch.data.cifar.MAX_CIFAR_BATCH_BYTES`.

:func:`load_dataset` finds the files (see :func:`chtorch.data.files.search_dirs`), verifies their
checksums, optionally downloads them from the canonical sources, and returns a :class:`VisionData`
with float32 images scaled to ``[0, 1]`` and (by default) normalised with the dataset's standard
per-channel mean/std — the values of the paper's code (the official MLP code's ``mlp_and_cnn/load_data.py``).
"""

from __future__ import annotations

import math
import os
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from chtorch._io import atomic_write_bytes
from chtorch.data.augment import random_crop_flip
from chtorch.data.cifar import MAX_CIFAR_BATCH_BYTES, read_cifar_batch
from chtorch.data.files import (
    ENV_VAR,
    DataError,
    DataFormatError,
    DataNotFoundError,
    cache_dir,
    download,
    find_file,
    read_verified,
    search_dirs,
    verify_bytes,
    verify_file,
)
from chtorch.data.idx import IDX_IMAGES, IDX_LABELS, idx_content, parse_idx, read_idx
from chtorch.data.vision_table import (
    _CIFAR_ARCHIVE,
    _CIFAR_DIR,
    _EMNIST_ZIP,
    DATASETS,
    MIRRORS,
    DatasetInfo,
    _File,
    _known_digests,
    dataset_info,
    dataset_names,
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

#: The largest member chtorch extracts from EMNIST's gzip.zip (the balanced files are 4-30 MB).
MAX_ZIP_MEMBER_BYTES = 256 << 20

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
        read_verified(
            image_path,
            image_file.checksums,
            verify=verify,
            hint=_hint(info, dirs, [image_file.name]),
            known=known,
            decompress=idx_content,
        ),
        image_path,
        expected_magic=IDX_IMAGES,
    )
    labels = parse_idx(
        read_verified(
            label_path,
            label_file.checksums,
            verify=verify,
            hint=_hint(info, dirs, [label_file.name]),
            known=known,
            decompress=idx_content,
        ),
        label_path,
        expected_magic=IDX_LABELS,
    )
    _, h, w = info.shape
    if tuple(images.shape[1:]) != (h, w):
        raise DataFormatError(
            f"{image_path}: expected {info.title} images of shape (N, {h}, {w}), found {tuple(images.shape)}"
        )
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


def _extract_emnist_if_needed(
    info: DatasetInfo, root: str | os.PathLike[str] | None, download_ok: bool, verify: bool
) -> None:
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
        zip_path = download(
            [m + _EMNIST_ZIP.name for m in MIRRORS[info.name]], target / _EMNIST_ZIP.name, _EMNIST_ZIP.checksums
        )
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
                size = archive.getinfo(members[f.name]).file_size
                if size > MAX_ZIP_MEMBER_BYTES:
                    raise DataFormatError(
                        f"{zip_path}: member {f.name} declares {size} bytes, more "
                        f"than an EMNIST file holds ({MAX_ZIP_MEMBER_BYTES}); "
                        "download gzip.zip again"
                    )
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
        paths = [p for p in found if p is not None]
        if len(paths) == len(files):
            parts = [
                read_cifar_batch(
                    read_verified(p, f.checksums, verify=verify, known=known, max_bytes=MAX_CIFAR_BATCH_BYTES), str(p)
                )
                for p, f in zip(paths, files)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    # 2. The archive itself, read in place (no extraction needed).
    archive = find_file(dirs, _CIFAR_ARCHIVE.names)
    if archive is None and download_ok:
        target = _download_target(info, root)
        archive = download(
            [m + _CIFAR_ARCHIVE.name for m in MIRRORS[info.name]],
            target / _CIFAR_ARCHIVE.name,
            _CIFAR_ARCHIVE.checksums,
        )
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
                size = tar.getmember(member_name).size  # the tar header's size, before reading a byte
                if size > MAX_CIFAR_BATCH_BYTES:
                    raise DataFormatError(
                        f"{archive}: member {member_name} declares {size} bytes, more than a CIFAR-10 batch holds "
                        f"({MAX_CIFAR_BATCH_BYTES}); download the archive again"
                    )
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
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install scikit-learn (or chtorch[cli])"
        ) from exc
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
