"""Image datasets: real MNIST, the IDX reader, checksums and downloads (file:// only)."""

from __future__ import annotations

import gzip
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chtorch import _io
from chtorch.data import (
    ChecksumError,
    DataError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
    dataset_info,
    load_dataset,
    parse_idx,
    read_idx,
    vision,
)
from chtorch.data import files as data_files

# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------

_SHARED = Path(os.environ.get("CHTORCH_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
_MNIST_DIR = _SHARED / "mnist"
_MNIST_NAMES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
needs_mnist = pytest.mark.skipif(
    not all((_MNIST_DIR / n).is_file() for n in _MNIST_NAMES),
    reason=f"real MNIST files not found in {_MNIST_DIR} (set CHTORCH_DATA to the shared data folder)",
)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path_factory):
    """No test reads the user's cache or env, and nothing may leave this machine: urlopen refuses
    every scheme but file://."""
    monkeypatch.delenv("CHTORCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    real_urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        text = url if isinstance(url, str) else url.full_url
        if not text.startswith("file:"):
            raise AssertionError(f"a test tried to download {text}")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture(scope="module")
def mnist_train():
    if not all((_MNIST_DIR / n).is_file() for n in _MNIST_NAMES):
        pytest.skip(f"real MNIST files not found in {_MNIST_DIR}")
    return load_dataset("mnist", _SHARED, "train", normalize=False)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """Encode ``array`` as IDX (big-endian) with the given type code."""
    dtypes = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=dtypes[type_code]).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    return path


# ------------------------------------------------------------------------------------------------
# real MNIST
# ------------------------------------------------------------------------------------------------


@needs_mnist
def test_mnist_train_matches_published_facts(mnist_train):
    d = mnist_train
    assert d.images.shape == (60000, 1, 28, 28) and d.images.dtype == torch.float32
    assert d.labels.dtype == torch.int64 and d.n_classes == 10 and len(d) == 60000
    assert d.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert torch.bincount(d.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert d.images.mean().item() == pytest.approx(0.1307, abs=5e-5)
    assert d.images.std().item() == pytest.approx(0.3081, abs=5e-5)
    assert d.images.min() == 0.0 and d.images.max() == 1.0


@needs_mnist
def test_mnist_test_split_normalized_and_flattened():
    d = load_dataset("mnist", _SHARED, "test", flatten=True)
    assert d.images.shape == (10000, 784) and d.in_features == 784 and d.split == "test"
    assert d.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(d.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Standardised with the *training* statistics: the test split lands near, not exactly at, 0/1.
    assert abs(d.images.mean().item()) < 0.02 and abs(d.images.std().item() - 1.0) < 0.02
    raw = load_dataset("mnist", _SHARED, "test", normalize=False)
    torch.testing.assert_close(d.images, ((raw.images - 0.1307) / 0.3081).reshape(10000, 784))


@needs_mnist
def test_read_idx_on_real_files():
    images = read_idx(_MNIST_DIR / "t10k-images-idx3-ubyte.gz", expected_magic=0x00000803)
    labels = read_idx(_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels[:5].tolist() == [7, 2, 1, 0, 4]
    with pytest.raises(DataFormatError, match=r"t10k-labels.*0x00000801.*expected 0x00000803"):
        read_idx(_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", expected_magic=0x00000803)


@needs_mnist
@pytest.mark.parametrize("layout", ["env-root", "env-files", "root-files"])
def test_root_resolution_layouts(monkeypatch, layout):
    if layout == "env-root":  # $CHTORCH_DATA/mnist/<files>
        monkeypatch.setenv("CHTORCH_DATA", str(_SHARED))
        d = load_dataset("mnist", split="test")
    elif layout == "env-files":  # $CHTORCH_DATA/<files>
        monkeypatch.setenv("CHTORCH_DATA", str(_MNIST_DIR))
        d = load_dataset("mnist", split="test")
    else:  # root=<dir with the files>
        d = load_dataset("MNIST", root=_MNIST_DIR, split="test")
    assert len(d) == 10000 and d.labels[:5].tolist() == [7, 2, 1, 0, 4]


@needs_mnist
def test_uncompressed_copy_passes_and_corrupt_copy_is_detected(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    images = gzip.decompress((_MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    # Uncompressed files under the uncompressed names: verified by the content sha256.
    (root / "t10k-images-idx3-ubyte").write_bytes(images)
    (root / "t10k-labels-idx1-ubyte").write_bytes(labels)
    assert load_dataset("mnist", tmp_path, "test").labels[:5].tolist() == [7, 2, 1, 0, 4]
    # One changed pixel, re-gzipped: the format is fine, the checksum is not.
    (root / "t10k-images-idx3-ubyte").unlink()
    bad = bytearray(images)
    bad[5000] ^= 0xFF
    write_gz(root / "t10k-images-idx3-ubyte.gz", bytes(bad))
    with pytest.raises(ChecksumError) as info:
        load_dataset("mnist", tmp_path, "test")
    text = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in text
    assert "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7" in text  # expected content sha256
    assert "9fb629c4189551a2d022fa330f9573f3" in text  # expected md5 of the original .gz
    assert "CHTORCH_DATA" in text and "verify=False" in text
    # verify=False skips the digest but still loads a well-formed file.
    d = load_dataset("mnist", tmp_path, "test", verify=False, normalize=False)
    assert d.images.flatten()[5000 - 16].item() == pytest.approx((images[5000] ^ 0xFF) / 255)


@needs_mnist
def test_mnist_files_posing_as_fashion_mnist_are_named(tmp_path):
    for n in _MNIST_NAMES[2:]:
        shutil.copy(_MNIST_DIR / n, tmp_path / n)
    with pytest.raises(ChecksumError, match=r"this file is the MNIST file t10k-"):
        load_dataset("fashion_mnist", tmp_path, "test")


def test_missing_files_error_says_what_and_where(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist", tmp_path, "train")
    text = str(info.value)
    for needle in (
        "train-images-idx3-ubyte.gz",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        str(tmp_path / "fashion_mnist"),
        "CHTORCH_DATA",
        "download=True",
        "fashion-mnist.s3-website",
    ):
        assert needle in text
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)


def test_unknown_dataset_and_split_are_rejected():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'.*mnist"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_dataset("digits", split="val")
    assert dataset_info("FMNIST").name == "fashion_mnist" and dataset_info("emnist").n_classes == 47


# ------------------------------------------------------------------------------------------------
# downloads (file:// URLs only)
# ------------------------------------------------------------------------------------------------


@needs_mnist
def test_download_into_cache_with_mirror_fallback(monkeypatch, tmp_path):
    cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    missing_mirror = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setitem(vision.MIRRORS, "mnist", (missing_mirror, _MNIST_DIR.as_uri() + "/"))
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", split="test")  # download=False by default: nothing is fetched
    d = load_dataset("mnist", split="test", download=True)
    assert d.labels[:5].tolist() == [7, 2, 1, 0, 4]
    target = cache / "chtorch" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # Second call finds the cached files; a mirror that no longer works does not matter.
    monkeypatch.setitem(vision.MIRRORS, "mnist", (missing_mirror,))
    assert len(load_dataset("mnist", split="test", download=True)) == 10000


def test_failed_download_leaves_no_file(monkeypatch, tmp_path):
    source = tmp_path / "mirror"
    write_gz(source / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    write_gz(source / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(2, np.uint8)))
    monkeypatch.setitem(vision.MIRRORS, "mnist", (source.as_uri() + "/",))
    with pytest.raises(DownloadError) as info:
        load_dataset("mnist", tmp_path / "data", "test", download=True)
    text = str(info.value)
    assert "checksum mismatch" in text and "t10k-images-idx3-ubyte.gz" in text and "by hand" in text
    target = tmp_path / "data" / "mnist"
    assert not target.exists() or list(target.iterdir()) == []  # atomic: no partial or bad file


def test_download_function_verifies_and_replaces_atomically(tmp_path):
    payload = b"hello chtorch" * 1000
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    good = data_files.Checksums(file=(data_files.digest(payload, "sha256"),))
    dest = tmp_path / "out" / "file.bin"
    assert data_files.download(src.as_uri(), dest, good) == dest and dest.read_bytes() == payload
    # Content digest of a gzip download: accepted through the decompressed bytes.
    gz = tmp_path / "src.gz"
    gz.write_bytes(gzip.compress(payload))
    by_content = data_files.Checksums(content=(data_files.digest(payload, "md5"),))
    data_files.download(gz.as_uri(), tmp_path / "out" / "file.gz", by_content)
    bad = data_files.Checksums(file=("md5:" + "0" * 32,))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        data_files.download(src.as_uri(), tmp_path / "out" / "bad.bin", bad)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.bin", "file.gz"]


def test_atomic_write_removes_temporary_on_error(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with _io.atomic_write(target) as (handle, _):
            handle.write(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    _io.atomic_write_bytes(target, b"done")
    assert target.read_bytes() == b"done" and list(tmp_path.iterdir()) == [target]


def test_checksums_reject_malformed_digests():
    with pytest.raises(ValueError, match="md5:<hex>"):
        data_files.Checksums(file=("crc32:1234",))


# ------------------------------------------------------------------------------------------------
# IDX parsing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_code", "values", "dtype"),
    [
        (0x08, [0, 1, 255], torch.uint8),
        (0x09, [-128, 0, 127], torch.int8),
        (0x0B, [-2, 256, 32767], torch.int16),
        (0x0C, [-1, 65536, 2**31 - 1], torch.int32),
        (0x0D, [0.5, -1.25, 3.0], torch.float32),
        (0x0E, [1e-300, -2.5, 7.0], torch.float64),
    ],
)
def test_parse_idx_all_type_codes(type_code, values, dtype):
    array = np.array(values).reshape(3, 1)
    out = parse_idx(idx_bytes(array, type_code))
    assert out.dtype == dtype and out.shape == (3, 1)
    assert out.flatten().tolist() == pytest.approx(values)


def test_parse_idx_is_big_endian():
    # Hand-written: int32, 1 dim of length 2, values 0x00000100 = 256 and 0xFFFFFFFE = -2.
    data = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFE])
    assert parse_idx(data).tolist() == [256, -2]


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"\x00\x00\x08", r"3 bytes is too short"),
        (b"\x01\x00\x08\x03" + b"\x00" * 12, r"not an IDX file: magic number 0x01000803"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x00", r"not an IDX file: magic number 0x00000701"),
        (b"\x00\x00\x08\x00", r"not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", r"truncated IDX header: 3 dimensions need a 16-byte header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", r"truncated: the header says dims \(5,\).*5 bytes.*has 3"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abcd", r"2 unexpected bytes at the end"),
    ],
)
def test_parse_idx_rejects_bad_input_clearly(data, pattern):
    with pytest.raises(DataFormatError, match=pattern) as info:
        parse_idx(data, "some/file.idx")
    assert str(info.value).startswith("some/file.idx: ")


def test_read_idx_errors_name_the_file(tmp_path):
    images = idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28))
    truncated = write_gz(tmp_path / "trunc-idx3-ubyte.gz", images[:-10])
    with pytest.raises(DataFormatError, match=r"trunc-idx3-ubyte\.gz: truncated"):
        read_idx(truncated)
    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes(gzip.compress(images)[:-20])
    with pytest.raises(DataFormatError, match=r"cut\.gz: damaged gzip data"):
        read_idx(cut_gzip)
    labels = write_gz(tmp_path / "labels.gz", idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataFormatError, match=r"labels\.gz: IDX magic number 0x00000801 .* expected 0x00000803"):
        read_idx(labels, expected_magic=0x00000803)
    with pytest.raises(DataNotFoundError, match="absent.gz"):
        read_idx(tmp_path / "absent.gz")
    raw = tmp_path / "raw-idx"
    raw.write_bytes(images)  # uncompressed file: format decided by content
    assert torch.equal(read_idx(raw), read_idx(write_gz(tmp_path / "ok.gz", images)))


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_parse_idx_fuzz_random_bytes(data):
    try:
        out = parse_idx(data)
    except DataFormatError:
        return
    assert isinstance(out, torch.Tensor) and out.numel() * out.element_size() == len(data) - 4 - 4 * data[3]


@given(
    type_code=st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0A, 0x10]),
    dims=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    body=st.binary(max_size=400),
)
@settings(max_examples=300, deadline=None)
def test_parse_idx_fuzz_plausible_headers(type_code, dims, body):
    """Valid-looking headers with random bodies reach the size checks: a tensor of exactly ``dims``
    comes back when the body length fits, our error otherwise."""
    header = bytes([0, 0, type_code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    try:
        out = parse_idx(header + body)
    except DataFormatError:
        return
    assert list(out.shape) == dims


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@given(data=st.binary(max_size=200), compress=st.booleans(), cut=st.integers(0, 30))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_read_idx_fuzz_files(fuzz_dir, data, compress, cut):
    blob = gzip.compress(data) if compress else data
    blob = blob[: max(0, len(blob) - cut)]
    path = fuzz_dir / "fuzz.bin"
    path.write_bytes(blob)
    try:
        read_idx(path)
    except DataError as exc:
        assert "fuzz.bin" in str(exc)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_parse_idx_roundtrip(dims, seed):
    array = np.random.default_rng(seed).integers(0, 256, size=dims, dtype=np.uint8)
    assert np.array_equal(parse_idx(idx_bytes(array)).numpy(), array)
