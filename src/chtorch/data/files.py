"""Data files: where they live, checksums, downloads and atomic cache writes.

Everything here is dataset-agnostic so the vision, text and translation readers share one set of
rules:

* **Where files are looked for** (:func:`search_dirs`): an explicit ``root`` argument, else the
  directory in the ``CHTORCH_DATA`` environment variable, else the per-user cache
  ``~/.cache/chtorch/<name>`` (``$XDG_CACHE_HOME`` is honoured). Under a data root both layouts are
  accepted: ``<root>/<name>/<file>`` and ``<root>/<file>``.
* **What a file must contain** (:class:`Checksums`): the digests of the file *as distributed* and,
  for compressed files, the digests of the *decompressed content*. Either match is enough, so a
  re-compressed copy of the same data (e.g. the MNIST files in the project's shared data folder,
  written with ``gzip -n -9``) is accepted, while a truncated or corrupt file, or another dataset's
  file under the same name, is rejected.
* **Downloads** (:func:`download`) stream into a temporary file next to the target, are verified,
  and only then renamed into place with :func:`os.replace`, so an interrupted download never leaves
  a file that looks complete. They stop at ``max_bytes`` (default :data:`MAX_DOWNLOAD_BYTES`).
* **Untrusted compressed files** are decompressed with a cap (:func:`maybe_decompress`,
  ``max_bytes``; the format readers pass one derived from the format's header), so a small gzip
  holding gigabytes is refused before it fills memory. Raw file digests are checked before any
  decompression.
* **Permissions**: files written atomically get ``0666`` less the user's umask, like any other.

Errors derive from :class:`DataError` and say which file, what was expected and how to fix it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from chtorch._io import atomic_write

__all__ = [
    "ENV_VAR",
    "DataError",
    "DataFormatError",
    "ChecksumError",
    "DataNotFoundError",
    "DownloadError",
    "Checksums",
    "digest",
    "maybe_decompress",
    "gunzip_capped",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_DOWNLOAD_BYTES",
    "read_verified",
    "verify_bytes",
    "verify_file",
    "download",
    "cache_dir",
    "search_dirs",
    "find_file",
]

log = logging.getLogger("chtorch.data")

#: Environment variable naming a data root (``<root>/<name>/...`` or the files directly in it).
ENV_VAR = "CHTORCH_DATA"

_CHUNK = 1 << 20
#: Default cap of a decompressed file (the format readers pass tighter, header-derived caps).
MAX_DECOMPRESSED_BYTES = 1 << 30
#: Default cap of one download (the largest canonical file, EMNIST's gzip.zip, is 0.56 GB).
MAX_DOWNLOAD_BYTES = 2 << 30
_GZIP_MAGIC = b"\x1f\x8b"
_ALGORITHMS = ("md5", "sha256")


class DataError(Exception):
    """Base class of every data-file error raised by :mod:`chtorch.data`."""


class DataFormatError(DataError, ValueError):
    """A file exists but its content is not in the expected format (bad magic, truncated, ...)."""


class ChecksumError(DataError, ValueError):
    """A file's digest matches none of the accepted digests."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A required data file is in none of the searched directories."""


class DownloadError(DataError, OSError):
    """Every source URL of a file failed (no network, HTTP error, checksum mismatch)."""


def _parse_digest(text: str) -> tuple[str, str]:
    algorithm, sep, value = text.partition(":")
    if not sep or algorithm not in _ALGORITHMS or not value:
        raise ValueError(f"digest {text!r} must look like 'md5:<hex>' or 'sha256:<hex>'")
    return algorithm, value.lower()


@dataclass(frozen=True)
class Checksums:
    """Accepted digests of one data file, each written ``"md5:<hex>"`` or ``"sha256:<hex>"``.

    ``file``: digests of the bytes as distributed (e.g. the ``.gz`` from the canonical mirror).
    ``content``: digests of the decompressed bytes (for an uncompressed file, of the file itself).
    A file passes when its bytes match any ``file`` digest or its content matches any ``content``
    digest. With no digest at all the file is accepted unchecked (only its format is validated).
    """

    file: tuple[str, ...] = ()
    content: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for text in (*self.file, *self.content):
            _parse_digest(text)

    def __bool__(self) -> bool:
        return bool(self.file or self.content)

    def describe(self) -> str:
        """Human-readable list of the accepted digests, for error messages."""
        parts = [f"{d} (file as distributed)" for d in self.file]
        parts += [f"{d} (decompressed content)" for d in self.content]
        return "; ".join(parts) if parts else "(no checksum known)"


def digest(data: bytes, algorithm: str = "sha256") -> str:
    """``"<algorithm>:<hex>"`` of ``data`` (md5 is used for integrity only, never for security)."""
    if algorithm == "md5":
        h = hashlib.md5(data, usedforsecurity=False)
    elif algorithm == "sha256":
        h = hashlib.sha256(data)
    else:
        raise ValueError(f"unknown digest algorithm {algorithm!r}; use one of {_ALGORITHMS}")
    return f"{algorithm}:{h.hexdigest()}"


def _matches(data: bytes, accepted: Sequence[str]) -> bool:
    algorithms = {_parse_digest(d)[0] for d in accepted}
    actual = {digest(data, a) for a in algorithms}
    return any(d.lower() in actual for d in accepted)


def _damaged(source: str | os.PathLike[str], exc: object) -> DataFormatError:
    return DataFormatError(
        f"{source}: damaged gzip data ({exc}). The file is truncated or corrupt: delete it and download it again."
    )


def gunzip_capped(data: bytes, source: str | os.PathLike[str], max_bytes: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Decompress gzip ``data`` (one or several members), refusing more than ``max_bytes`` of output
    as soon as it is exceeded (never holding more than ``max_bytes + 1`` bytes)."""
    out = bytearray()
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = data
    try:
        while True:
            chunk = decoder.decompress(pending, max_bytes + 1 - len(out))
            out += chunk
            if len(out) > max_bytes:
                raise DataFormatError(
                    f"{source}: decompresses to more than {max_bytes} "
                    "bytes, more than this file can hold; it is damaged or "
                    "not a dataset file: delete it and download it again"
                )
            pending = decoder.unconsumed_tail
            if decoder.eof:
                rest = decoder.unused_data
                if rest.startswith(_GZIP_MAGIC):  # another gzip member
                    decoder, pending = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
                    continue
                if rest.strip(b"\0"):
                    raise _damaged(source, f"{len(rest)} bytes of garbage after the compressed data")
                return bytes(out)
            if not pending and not chunk:
                raise _damaged(source, "compressed file ended before the end-of-stream marker was reached")
    except zlib.error as exc:
        raise _damaged(source, exc) from exc


def maybe_decompress(data: bytes, source: str | os.PathLike[str], max_bytes: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """Gunzip ``data`` if it starts with the gzip magic bytes, else return it unchanged.

    The format is decided by content, not by file name, so raw files and ``.gz`` files may be
    named either way. A damaged gzip stream, or one holding more than ``max_bytes``, raises
    :class:`DataFormatError` naming ``source``.
    """
    if not data.startswith(_GZIP_MAGIC):
        return data
    return gunzip_capped(data, source, max_bytes)


def verify_bytes(
    raw: bytes,
    content: bytes,
    checksums: Checksums,
    source: str | os.PathLike[str],
    *,
    hint: str = "",
    known: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`ChecksumError` unless ``raw`` matches a ``file`` digest or ``content`` matches
    a ``content`` digest of ``checksums``.

    ``hint`` is appended to the error (where to get or put the file). ``known`` maps digests of
    other datasets' files to a description, so that a file from the wrong dataset is named as such.
    """
    if not checksums:
        return
    if checksums.file and _matches(raw, checksums.file):
        return
    if checksums.content and _matches(content, checksums.content):
        return
    actual = digest(raw, "sha256")
    lines = [
        f"checksum mismatch for {source}:",
        f"  found    {actual} (file)"
        + (f", {digest(content, 'sha256')} (decompressed content)" if content is not raw else ""),
        f"  expected {checksums.describe()}",
    ]
    if known:
        found = {digest(b, a) for b in (raw, content) for a in _ALGORITHMS}
        for d, what in known.items():
            if d.lower() in found:
                lines.append(f"  this file is {what}")
                break
    lines.append(
        "  The file is corrupt, truncated or from another dataset: delete "
        "it and download it again, or pass verify=False to skip the check."
    )
    if hint:
        lines.append("  " + hint)
    raise ChecksumError("\n".join(lines))


def read_verified(
    path: str | os.PathLike[str],
    checksums: Checksums | None = None,
    *,
    verify: bool = True,
    hint: str = "",
    known: Mapping[str, str] | None = None,
    decompress: Callable[[bytes, Path], bytes] | None = None,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> bytes:
    """Read ``path``, verify it against ``checksums`` (unless ``verify=False``) and return its
    content, gunzipped when the file is gzip-compressed.

    A file that matches a digest of the file as distributed is accepted before anything is
    decompressed. ``decompress(raw, path)`` replaces the default (:func:`maybe_decompress` capped at
    ``max_bytes``): a format reader passes one whose cap comes from the format's header."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"{path}: file not found. {hint}".rstrip()) from exc
    decompress = decompress or (lambda data, source: maybe_decompress(data, source, max_bytes))
    if verify and checksums and checksums.file and _matches(raw, checksums.file):
        return decompress(raw, path)
    content = decompress(raw, path)
    if verify and checksums:
        verify_bytes(raw, content, checksums, path, hint=hint, known=known)
    return content


def verify_file(
    path: str | os.PathLike[str], checksums: Checksums, *, hint: str = "", known: Mapping[str, str] | None = None
) -> None:
    """Verify a possibly large file against ``checksums``, streaming it for the ``file`` digests;
    only when none matches is it read whole (and gunzipped) to check the ``content`` digests."""
    if not checksums:
        return
    path = Path(path)
    hashers = {a: hashlib.new(a, usedforsecurity=False) for a in {_parse_digest(d)[0] for d in checksums.file}}
    if hashers:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                for h in hashers.values():
                    h.update(chunk)
        found = {f"{a}:{h.hexdigest()}" for a, h in hashers.items()}
        if any(d.lower() in found for d in checksums.file):
            return
    raw = path.read_bytes()
    verify_bytes(raw, maybe_decompress(raw, path), checksums, path, hint=hint, known=known)


def download(
    urls: str | Sequence[str],
    dest: str | os.PathLike[str],
    checksums: Checksums | None = None,
    *,
    timeout: float = 60.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download the first working URL of ``urls`` to ``dest``, verified against ``checksums``.

    The data streams into a temporary file in ``dest``'s directory and is renamed into place only
    after it verified, so ``dest`` is either absent or complete. Each URL is tried in turn; if all
    fail a :class:`DownloadError` lists every URL with its error and says how to place the file by
    hand. ``file://`` URLs work too (used by the tests; nothing is downloaded at test time). A
    source that announces or sends more than ``max_bytes`` is abandoned (a wrong URL, a hostile
    server) before it fills the disk.
    """
    dest = Path(dest)
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("download() needs at least one URL")
    failures: list[str] = []
    for url in url_list:
        log.info("downloading %s -> %s", url, dest)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https/file only)
                announced = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
                if announced and announced.isdigit() and int(announced) > max_bytes:
                    raise DownloadError(
                        f"the source announces {int(announced)} bytes, more than the {max_bytes} allowed for this file"
                    )
                received = 0
                with atomic_write(dest) as (handle, tmp):
                    # Hash while streaming: archives can be large (EMNIST's is 0.5 GB).
                    algorithms = {_parse_digest(d)[0] for d in checksums.file} if checksums else set()
                    hashers = {a: hashlib.new(a, usedforsecurity=False) for a in algorithms}
                    while chunk := response.read(_CHUNK):
                        received += len(chunk)
                        if received > max_bytes:
                            raise DownloadError(
                                f"the source sent more than the {max_bytes} bytes allowed for this file"
                            )
                        handle.write(chunk)  # type: ignore[attr-defined]
                        for h in hashers.values():
                            h.update(chunk)
                    handle.flush()  # type: ignore[attr-defined]
                    found = {f"{a}:{h.hexdigest()}" for a, h in hashers.items()}
                    if checksums and not any(d.lower() in found for d in checksums.file):
                        # No file digest matched (or none is known): check the content.
                        raw = tmp.read_bytes()
                        verify_bytes(raw, maybe_decompress(raw, url, max_bytes), checksums, url)
            return dest
        except (OSError, DataError, ValueError) as exc:
            # urllib's URLError/HTTPError and socket timeouts are OSErrors.
            failures.append(f"  {url}: {type(exc).__name__}: {exc}")
    raise DownloadError(
        f"could not download {dest.name}:\n"
        + "\n".join(failures)
        + f"\n  Download it by hand from one of these URLs and put it at {dest}"
        + (f" (expected {checksums.describe()})" if checksums else "")
        + "."
    )


def cache_dir(name: str) -> Path:
    """Per-user cache directory of dataset ``name``: ``$XDG_CACHE_HOME/chtorch/<name>``, by default
    ``~/.cache/chtorch/<name>``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "chtorch" / name


def search_dirs(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    subdirs: Sequence[str] = (),
) -> list[Path]:
    """Directories searched for dataset ``name``, in order.

    With an explicit ``root``: ``<root>/<sub>`` for each of ``subdirs`` (default ``(name,)``), then
    ``root`` itself. Otherwise the same under ``$CHTORCH_DATA`` when it is set, followed by the
    cache directory :func:`cache_dir` (``name``).
    """
    subs = list(subdirs) or [name]

    def under(base: Path) -> list[Path]:
        return [base / s for s in subs] + [base]

    if root is not None:
        return under(Path(root).expanduser())
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += under(Path(env).expanduser())
    dirs.append(cache_dir(name))
    return dirs


def find_file(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """First existing ``dir / name`` over ``dirs`` (outer loop) and ``names`` (inner loop)."""
    for d in dirs:
        for n in names:
            candidate = d / n
            if candidate.is_file():
                return candidate
    return None
