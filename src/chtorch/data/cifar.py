"""The CIFAR-10 "python version" batch format: a pickled dict with ``b"data"`` (uint8 ``(N, 3072)``)
and ``b"labels"``, read with a restricted unpickler (no code runs) and a size cap
(:data:`MAX_CIFAR_BATCH_BYTES`; a batch holds 10000 images, 31 MB) checked before reading or
decompressing a batch.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import torch

from chtorch.data.files import DataFormatError, read_verified

__all__ = ["MAX_CIFAR_BATCH_BYTES", "read_cifar_batch"]

#: The largest CIFAR batch chtorch reads: a real one is 31,035,704 bytes (twice that leaves room).
MAX_CIFAR_BATCH_BYTES = 64 << 20


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


def read_cifar_batch(
    source: str | os.PathLike[str] | bytes, name: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one CIFAR-10 python batch (``data_batch_1`` ... ``test_batch``).

    ``source`` is a path or the file's bytes. Returns ``(images, labels)``: uint8 ``(N, 3, 32, 32)``
    (the stored rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32×32 plane) and
    int64 ``(N,)``. The pickle must be a dict with ``b"data"`` (uint8, ``(N, 3072)``) and
    ``b"labels"`` (N ints in 0..9); anything else raises ``DataFormatError``.
    """
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), name or "<bytes>"
    else:
        data = read_verified(source, None, max_bytes=MAX_CIFAR_BATCH_BYTES)
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
        raise DataFormatError(
            f"{label}: b'labels' must be {len(images)} integers (one per image), found {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{label}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return (
        torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()),
        torch.from_numpy(labels.astype(np.int64)),
    )
