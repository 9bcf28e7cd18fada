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
from chtorch.data.text import (
    RandomWindows,
    SequentialWindows,
    load_corpus,
    split_documents,
    split_tokens,
    tokenize_corpus,
)
from chtorch.data.tokenization import (
    SPECIAL_TOKENS,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    train_bpe,
    train_word_level,
)
from chtorch.data.translation import (
    TranslationBatch,
    encode_pairs,
    filter_pairs,
    read_multi30k,
    read_parallel,
    token_batches,
)
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
    "RandomWindows",
    "SequentialWindows",
    "load_corpus",
    "split_documents",
    "split_tokens",
    "tokenize_corpus",
    "SPECIAL_TOKENS",
    "BPETokenizer",
    "CharTokenizer",
    "load_tokenizer",
    "train_bpe",
    "train_word_level",
    "TranslationBatch",
    "encode_pairs",
    "filter_pairs",
    "read_multi30k",
    "read_parallel",
    "token_batches",
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
