"""Datasets in their standard file formats, checksums and downloads, and in-memory loaders.

The library core never touches files; everything that reads or writes data lives here.
"""

from chtorch.data.files import (
    ENV_VAR,
    ChecksumError,
    Checksums,
    DataError,
    DataFormatError,
    DataNotFoundError,
    DownloadError,
)
from chtorch.data.loader import TensorLoader
from chtorch.data.vision import (
    DATASETS,
    DatasetInfo,
    VisionData,
    dataset_info,
    dataset_names,
    load_dataset,
    parse_idx,
    random_crop_flip,
    read_cifar_batch,
    read_idx,
)

__all__ = [
    "ENV_VAR",
    "ChecksumError",
    "Checksums",
    "DataError",
    "DataFormatError",
    "DataNotFoundError",
    "DownloadError",
    "TensorLoader",
    "DATASETS",
    "DatasetInfo",
    "VisionData",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "parse_idx",
    "random_crop_flip",
    "read_cifar_batch",
    "read_idx",
]
