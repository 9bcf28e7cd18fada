"""Image datasets beyond MNIST: the EMNIST and CIFAR-10 readers (on synthetic files), scikit-learn's
digits, the tensor loader."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chtorch.data import (
    ChecksumError,
    DataFormatError,
    DataNotFoundError,
    TensorLoader,
    dataset_info,
    load_dataset,
    random_crop_flip,
    read_cifar_batch,
    vision,
)

# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


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
# EMNIST (synthetic files: the real ones are not in the shared data)
# ------------------------------------------------------------------------------------------------


def _emnist_files(n: int = 3, max_label: int = 46) -> dict[str, bytes]:
    upright = np.zeros((n, 28, 28), np.uint8)
    upright[:, 2, :] = 200  # a horizontal bar near the top: asymmetric under transposition
    upright[:, 5:9, 20] = 99
    stored = np.ascontiguousarray(upright.transpose(0, 2, 1))  # how EMNIST stores them
    labels = np.array([0, max_label, 7][:n], np.uint8)
    files = {}
    for split in ("train", "test"):
        files[f"emnist-balanced-{split}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(stored))
        files[f"emnist-balanced-{split}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels))
    return files


def test_emnist_images_are_turned_upright(tmp_path):
    for name, blob in _emnist_files().items():
        (tmp_path / name).write_bytes(blob)
    d = load_dataset("emnist_balanced", tmp_path, "train", normalize=False)
    assert d.n_classes == 47 and d.images.shape == (3, 1, 28, 28) and d.labels.tolist() == [0, 46, 7]
    assert torch.all(d.images[:, 0, 2, :] == 200 / 255)  # the bar is a row again
    assert torch.all(d.images[:, 0, 5:9, 20] == 99 / 255)


def test_emnist_label_out_of_range_is_rejected(tmp_path):
    for name, blob in _emnist_files(max_label=47).items():
        (tmp_path / name).write_bytes(blob)
    with pytest.raises(DataFormatError, match="label 47 is out of range for 47 classes"):
        load_dataset("emnist", tmp_path, "test")


def test_emnist_extracted_from_nist_zip(tmp_path):
    zip_path = tmp_path / "gzip.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, blob in _emnist_files().items():
            archive.writestr(f"gzip/{name}", blob)
    with pytest.raises(ChecksumError, match="58c8d27c78d21e728a6bc7b3cc06412e"):
        load_dataset("emnist_balanced", tmp_path, "test")  # not the real zip
    d = load_dataset("emnist_balanced", tmp_path, "test", verify=False)
    assert len(d) == 3 and (tmp_path / "emnist_balanced" / "emnist-balanced-test-images-idx3-ubyte.gz").is_file()


def test_mismatched_image_and_label_counts(tmp_path):
    write_gz(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    write_gz(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataFormatError, match="3 images but .* 2 labels"):
        load_dataset("mnist", tmp_path, verify=False)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 (synthetic batches)
# ------------------------------------------------------------------------------------------------


def _cifar_batch(n: int, seed: int, protocol: int = 2) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    blob = pickle.dumps({b"batch_label": b"synthetic", b"labels": labels, b"data": data}, protocol=protocol)
    return blob, data, labels


@pytest.mark.parametrize("protocol", [2, 4])
def test_read_cifar_batch_layout(tmp_path, protocol):
    blob, data, labels = _cifar_batch(4, 0, protocol)
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    images, out_labels = read_cifar_batch(path)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert out_labels.dtype == torch.int64 and out_labels.tolist() == labels
    # Row n holds 1024 red, then green, then blue values, each plane row-major.
    n, c, r, k = 2, 1, 7, 30
    assert images[n, c, r, k].item() == data[n, c * 1024 + r * 32 + k]


def test_read_cifar_batch_rejects_bad_content():
    with pytest.raises(DataFormatError, match="b'data' and b'labels'"):
        read_cifar_batch(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}), "x")
    with pytest.raises(DataFormatError, match=r"uint8 of shape \(N, 3072\)"):
        read_cifar_batch(pickle.dumps({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}), "x")
    with pytest.raises(DataFormatError, match="2 integers"):
        read_cifar_batch(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "x")
    with pytest.raises(DataFormatError, match=r"labels must lie in 0..9"):
        read_cifar_batch(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "x")
    with pytest.raises(DataFormatError, match="unpickling failed"):
        read_cifar_batch(b"not a pickle", "x")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_unpickler_refuses_code():
    with pytest.raises(DataFormatError, match="is not allowed in a CIFAR batch"):
        read_cifar_batch(pickle.dumps({b"data": _Evil(), b"labels": []}), "evil")


@given(st.binary(max_size=300))
@settings(max_examples=150, deadline=None)
def test_read_cifar_batch_fuzz(data):
    try:
        images, labels = read_cifar_batch(data, "fuzz")
    except DataFormatError as exc:
        assert str(exc).startswith("fuzz: ")
        return
    assert images.shape[1:] == (3, 32, 32) and len(labels) == len(images)


def _write_cifar_tree(base: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {}
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        blob, data, labels = _cifar_batch(2 + i, seed=i)
        (folder / name).write_bytes(blob)
        truth[name] = (data, labels)
    return truth


def test_load_cifar10_from_folder_and_archive(tmp_path):
    tree = tmp_path / "tree"
    truth = _write_cifar_tree(tree)
    with pytest.raises(ChecksumError, match="40351d587109b95175f43aff81a1287e"):
        load_dataset("cifar10", tree, "test")  # synthetic batches fail the published md5
    test = load_dataset("cifar10", tree, "test", verify=False, normalize=False)
    assert test.images.shape == (7, 3, 32, 32) and test.labels.tolist() == truth["test_batch"][1]
    train = load_dataset("cifar10", tree, "train", verify=False, flatten=True)
    assert train.images.shape == (2 + 3 + 4 + 5 + 6, 3072) and train.in_features == 3072
    expected = np.concatenate([truth[f"data_batch_{j}"][0] for j in range(1, 6)]).astype(np.float32) / 255
    mean = np.repeat(np.array(train.mean, np.float32), 1024)
    std = np.repeat(np.array(train.std, np.float32), 1024)
    np.testing.assert_allclose(train.images.numpy(), (expected - mean) / std, rtol=1e-5, atol=1e-5)
    # The same batches read straight from a cifar-10-python.tar.gz archive.
    archive_root = tmp_path / "archive"
    archive_root.mkdir()
    with tarfile.open(archive_root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tree / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_archive = load_dataset("cifar10", archive_root, "train", verify=False, flatten=True)
    assert torch.equal(from_archive.images, train.images) and torch.equal(from_archive.labels, train.labels)
    with pytest.raises(ChecksumError, match=r"cifar-10-python\.tar\.gz:cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", archive_root, "train")


def test_cifar_damaged_archive(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(gzip.compress(b"x" * 1000)[:50])
    with pytest.raises(DataFormatError, match="damaged tar.gz archive"):
        load_dataset("cifar10", tmp_path, verify=False)


def test_cifar_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"cifar-10-python\.tar\.gz.*c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", tmp_path)


# ------------------------------------------------------------------------------------------------
# digits (scikit-learn, offline)
# ------------------------------------------------------------------------------------------------


def test_digits_split_is_stratified_deterministic_and_disjoint():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    train = load_dataset("digits", normalize=False)
    test = load_dataset("digits", split="test", normalize=False)
    assert train.images.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    all_images = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16
    # Every image lands in exactly one split; per class, round(20%) go to test.
    counts = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)
    assert torch.bincount(test.labels, minlength=10).tolist() == [round(0.2 * int(c)) for c in counts]
    both = torch.cat([train.images, test.images]).reshape(1797, 64)
    assert torch.equal(both.sum(0), all_images.reshape(1797, 64).sum(0))
    again = load_dataset("digits", split="test", normalize=False)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    # The recorded normalisation constants are the statistics of the whole dataset.
    info = dataset_info("digits")
    assert all_images.mean().item() == pytest.approx(info.mean[0], abs=1e-3)
    assert all_images.std().item() == pytest.approx(info.std[0], abs=1e-3)


def test_dataset_table_is_consistent():
    for name in ("mnist", "fashion_mnist", "emnist_balanced", "cifar10", "digits"):
        info = dataset_info(name)
        assert len(info.mean) == len(info.std) == info.shape[0]
        assert info.in_features == int(np.prod(info.shape))
        if name != "digits":
            assert set(info.files) == {"train", "test"} and info.name in vision.MIRRORS


# ------------------------------------------------------------------------------------------------
# TensorLoader
# ------------------------------------------------------------------------------------------------


def _epoch(loader: TensorLoader) -> list[torch.Tensor]:
    return [batch[0] for batch in loader]


def test_loader_covers_each_sample_once_with_aligned_tensors():
    x = torch.arange(103)
    y = x * 10
    loader = TensorLoader(x, y, batch_size=16, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 7 and [len(b[0]) for b in batches] == [16] * 6 + [7]
    assert all(torch.equal(bx * 10, by) for bx, by in batches)
    seen = torch.cat([b[0] for b in batches])
    assert sorted(seen.tolist()) == list(range(103)) and not torch.equal(seen, x)


def test_loader_shuffle_determinism_and_epochs():
    x = torch.arange(50)
    a, b = TensorLoader(x, batch_size=8, seed=1), TensorLoader(x, batch_size=8, seed=1)
    first_a, first_b = torch.cat(_epoch(a)), torch.cat(_epoch(b))
    assert torch.equal(first_a, first_b)
    second = torch.cat(_epoch(a))  # iter() advanced the epoch
    assert not torch.equal(first_a, second) and a.epoch == 2
    a.set_epoch(0)
    assert torch.equal(torch.cat(_epoch(a)), first_a)
    other_seed = torch.cat(_epoch(TensorLoader(x, batch_size=8, seed=2)))
    assert not torch.equal(other_seed, first_a)
    resumed = TensorLoader(x, batch_size=8, seed=0)
    resumed.load_state_dict({"epoch": 1, "seed": 1})
    assert torch.equal(torch.cat(_epoch(resumed)), second)


def test_loader_does_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    list(TensorLoader(torch.arange(20), batch_size=4))
    assert torch.equal(before, torch.get_rng_state())


def test_loader_no_shuffle_and_drop_last():
    x = torch.arange(10)
    loader = TensorLoader(x, batch_size=4, shuffle=False, drop_last=True)
    assert len(loader) == 2 and [b.tolist() for b in _epoch(loader)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in _epoch(TensorLoader(x, batch_size=4, shuffle=False))][-1] == [8, 9]


@given(
    n=st.integers(0, 120),
    world_size=st.integers(1, 6),
    batch_size=st.integers(1, 17),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    epoch=st.integers(0, 5),
)
@settings(max_examples=120, deadline=None)
def test_loader_shards_are_disjoint_and_equal(n, world_size, batch_size, shuffle, drop_last, epoch):
    base = TensorLoader(torch.arange(n), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=7)
    shards = []
    for rank in range(world_size):
        loader = base.shard(rank, world_size)
        loader.set_epoch(epoch)
        batches = _epoch(loader)
        assert len(batches) == len(loader)
        assert all(len(b) == batch_size for b in (batches if drop_last else batches[:-1]))
        samples = torch.cat(batches) if batches else torch.empty(0, dtype=torch.long)
        expected = n // world_size - (n // world_size % batch_size if drop_last else 0)
        assert len(samples) == expected
        shards.append(set(samples.tolist()))
    union = set().union(*shards)
    assert len(union) == sum(len(s) for s in shards)  # pairwise disjoint
    assert union <= set(range(n))
    if not drop_last:
        assert len(union) == world_size * (n // world_size)


def test_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="share their first dimension"):
        TensorLoader(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TensorLoader(torch.zeros(3), batch_size=0)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        TensorLoader(torch.zeros(3), batch_size=1, rank=2, world_size=2)


# ------------------------------------------------------------------------------------------------
# augmentation
# ------------------------------------------------------------------------------------------------


def test_random_crop_flip_identity_and_flip():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 5, 7, generator=g)
    assert torch.equal(random_crop_flip(images, g, padding=0, flip=False), images)
    out = random_crop_flip(images, g, padding=0, flip=True)
    for i in range(6):
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))


def test_random_crop_flip_is_a_window_of_the_padded_image():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 2, 6, 6, generator=g)
    fill = (-1.0, -2.0)
    out = random_crop_flip(images, g, padding=2, fill=fill)
    padded = torch.empty(8, 2, 10, 10)
    padded[:, 0], padded[:, 1] = fill
    padded[:, :, 2:8, 2:8] = images
    for i in range(8):
        windows = [
            w
            for dy in range(5)
            for dx in range(5)
            for w in (padded[i, :, dy : dy + 6, dx : dx + 6], padded[i, :, dy : dy + 6, dx : dx + 6].flip(-1))
        ]
        assert any(torch.equal(out[i], w) for w in windows)
    again = random_crop_flip(images, torch.Generator().manual_seed(5), padding=2, fill=fill)
    assert torch.equal(again, random_crop_flip(images, torch.Generator().manual_seed(5), padding=2, fill=fill))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_crop_flip(images[0], g)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_and_augmentation_on_cuda():
    x = torch.arange(40, device="cuda")
    cpu = [b.tolist() for b in _epoch(TensorLoader(x.cpu(), batch_size=8, seed=4))]
    gpu = _epoch(TensorLoader(x, batch_size=8, seed=4))
    assert all(b.device.type == "cuda" for b in gpu) and [b.tolist() for b in gpu] == cpu
    images = torch.rand(4, 3, 8, 8)
    out_cpu = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    out_gpu = random_crop_flip(images.cuda(), torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out_gpu.cpu(), out_cpu)
