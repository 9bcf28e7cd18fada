"""Untrusted data files: decompression is capped by what the format's header declares (a
small gzip holding gigabytes is refused without filling memory), downloads are capped, and files
written atomically get the user's umask."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from chtorch._io import atomic_write_bytes
from chtorch.data import DataFormatError, DownloadError, load_dataset, read_cifar_batch, read_idx, vision
from chtorch.data import cifar as cifar_module
from chtorch.data.files import download, gunzip_capped, maybe_decompress
from chtorch.data.idx import idx_content


def idx_header(dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def zeros_gzip(prefix: bytes, n_zeros: int) -> bytes:
    """gzip of ``prefix`` + ``n_zeros`` zero bytes, compressed in a stream (never held whole)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(prefix)]
    block = bytes(1 << 20)
    for _ in range(n_zeros >> 20):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(bytes(n_zeros & ((1 << 20) - 1))))
    parts.append(compressor.flush())
    return b"".join(parts)


def test_idx_bomb_with_honest_header_stops_at_the_declared_size(tmp_path: Path) -> None:
    # Header says 10 images of 28x28 (7840 bytes); the gzip holds 256 MiB more.
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(zeros_gzip(idx_header((10, 28, 28)), 256 << 20))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataFormatError, match="more data after the 7856 bytes its IDX header declares"):
        read_idx(path)


def test_idx_header_declaring_too_much_is_refused_before_decompressing(tmp_path: Path) -> None:
    raw = zeros_gzip(idx_header((60000, 4096, 4096)), 1024)  # declares 1 TB
    with pytest.raises(DataFormatError, match="more than chtorch reads"):
        idx_content(raw, "x.gz")
    with pytest.raises(DataFormatError, match="more than chtorch reads"):
        idx_content(zeros_gzip(idx_header((10, 28, 28)), 7840), "x.gz", max_bytes=1000)


def test_idx_content_of_good_truncated_and_damaged_gzip() -> None:
    body = idx_header((3, 2, 2)) + bytes(range(12))
    assert idx_content(gzip.compress(body), "x") == body
    assert idx_content(body, "x") == body  # raw files pass through
    two_members = gzip.compress(body[:10]) + gzip.compress(body[10:])
    assert idx_content(two_members, "x") == body
    with pytest.raises(DataFormatError, match="damaged gzip data"):
        idx_content(gzip.compress(body)[:-12], "x")


def test_load_dataset_refuses_an_idx_bomb(tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    root.mkdir()
    root.joinpath("train-images-idx3-ubyte.gz").write_bytes(zeros_gzip(idx_header((60000, 28, 28)), 512 << 20))
    root.joinpath("train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(bytes([0, 0, 8, 1]) + (60000).to_bytes(4, "big") + bytes(60000))
    )
    with pytest.raises(DataFormatError, match="more data after"):
        load_dataset("mnist", tmp_path, verify=True)


def test_gunzip_capped() -> None:
    data = os.urandom(1000)
    assert gunzip_capped(gzip.compress(data), "x") == data
    assert maybe_decompress(data, "x") == data
    with pytest.raises(DataFormatError, match="decompresses to more than 999 bytes"):
        gunzip_capped(gzip.compress(data), "x", max_bytes=999)
    with pytest.raises(DataFormatError, match="decompresses to more than"):
        maybe_decompress(zeros_gzip(b"", 64 << 20), "bomb.gz", max_bytes=1 << 20)
    with pytest.raises(DataFormatError, match="damaged gzip data"):
        gunzip_capped(gzip.compress(data)[:-20], "x")
    with pytest.raises(DataFormatError, match="garbage after"):
        gunzip_capped(gzip.compress(data) + b"junk", "x")
    assert gunzip_capped(gzip.compress(data) + bytes(8), "x") == data  # zero padding is allowed, as gzip does


def _cifar_batch(n: int) -> bytes:
    return pickle.dumps({b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}, protocol=2)


def test_cifar_batch_capped(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(gzip.compress(_cifar_batch(20)))
    assert read_cifar_batch(path)[0].shape == (20, 3, 32, 32)
    monkeypatch.setattr(cifar_module, "MAX_CIFAR_BATCH_BYTES", 10_000)
    with pytest.raises(DataFormatError, match="decompresses to more than 10000 bytes"):
        read_cifar_batch(path)


def test_cifar_archive_member_declaring_too_much(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "cifar10"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)]:
            data = _cifar_batch(4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert load_dataset("cifar10", tmp_path, verify=False).images.shape == (20, 3, 32, 32)
    monkeypatch.setattr(vision, "MAX_CIFAR_BATCH_BYTES", 1000)
    with pytest.raises(DataFormatError, match="declares .* bytes, more than a CIFAR-10 batch holds"):
        load_dataset("cifar10", tmp_path, verify=False)


def test_downloads_are_capped(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(5000))
    with pytest.raises(DownloadError, match="more than the 4096"):
        download(source.as_uri(), tmp_path / "out" / "big.bin", max_bytes=4096)
    assert not (tmp_path / "out" / "big.bin").exists()
    assert download(source.as_uri(), tmp_path / "out" / "big.bin", max_bytes=5000).read_bytes() == bytes(5000)


def test_download_stops_streaming_at_the_cap(tmp_path: Path, monkeypatch) -> None:
    import urllib.request

    class Endless:
        headers: dict[str, str] = {}

        def read(self, n: int) -> bytes:
            return bytes(n)

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc) -> None:  # noqa: ANN002
            pass

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Endless())
    with pytest.raises(DownloadError, match="sent more than the 3000000 bytes"):
        download("https://example.invalid/x", tmp_path / "x", max_bytes=3_000_000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        path = atomic_write_bytes(tmp_path / f"f{mask}", b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
