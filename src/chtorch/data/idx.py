"""The IDX format of LeCun et al. (the MNIST family): a 4-byte magic number ``0x0000TTDD`` (TT the
element type, DD the number of dimensions), DD big-endian uint32 sizes, then the elements.

:func:`idx_content` decompresses a gzip-compressed IDX file with a cap derived from its own header
(the declared dims): a small gzip that holds gigabytes is refused after reading its header, not
after filling memory. :func:`parse_idx` validates and decodes the bytes.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib

import numpy as np
import torch

from chtorch.data.files import DataFormatError, read_verified

__all__ = ["IDX_IMAGES", "IDX_LABELS", "MAX_IDX_BYTES", "idx_content", "parse_idx", "read_idx"]

#: The largest IDX content chtorch reads (EMNIST's largest file is 0.1 GB).
MAX_IDX_BYTES = 1 << 30

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


def parse_idx(
    data: bytes, source: str | os.PathLike[str] = "<bytes>", *, expected_magic: int | None = None
) -> torch.Tensor:
    """Decode uncompressed IDX bytes into a tensor of shape ``dims`` (uint8 stays uint8).

    Validation is strict: a bad or unexpected magic number, a truncated header or body, or extra
    bytes after the data raise :class:`~chtorch.data.files.DataFormatError` naming ``source`` and
    what was expected. With ``expected_magic`` (e.g. ``0x00000803``) any other magic is an error.
    """
    n = len(data)
    if n < 4:
        raise DataFormatError(
            f"{source}: {n} bytes is too short for an IDX file (it needs a 4-byte magic number; {_IDX_HELP})"
        )
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
        raise DataFormatError(
            f"{source}: truncated IDX header: {ndim} dimensions need a {header}-byte header, the file has {n} bytes"
        )
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
    content = read_verified(path, None, decompress=idx_content)
    return parse_idx(content, path, expected_magic=expected_magic)


def idx_content(raw: bytes, source: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """The IDX bytes of ``raw`` (gunzipped when it is gzip), reading no more than the header
    declares: the dims give the size, a size over ``max_bytes`` is refused before decompressing
    further, and data after the declared size is an error. Non-IDX content is returned as far as
    read, for :func:`parse_idx` to explain."""
    if not raw.startswith(b"\x1f\x8b"):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            head = stream.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_TYPES or head[3] == 0:
                return head
            head += stream.read(4 * head[3])
            if len(head) < 4 + 4 * head[3]:
                return head
            dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(head[3]))
            size = len(head) + math.prod(dims) * np.dtype(_IDX_TYPES[head[2]]).itemsize
            if size > max_bytes:
                raise DataFormatError(
                    f"{source}: the IDX header declares dims {dims}, "
                    f"{size} bytes, more than chtorch reads ({max_bytes}); "
                    "the file is damaged or not a dataset file: delete it and download it again"
                )
            body = stream.read(size - len(head))
            if len(body) == size - len(head) and stream.read(1):
                raise DataFormatError(
                    f"{source}: more data after the {size} bytes its IDX "
                    f"header declares (dims {dims}); the file is damaged "
                    "or not a dataset file: delete it and download it again"
                )
            return head + body
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(
            f"{source}: damaged gzip data ({exc}). The file is truncated or corrupt: delete it and download it again."
        ) from exc
