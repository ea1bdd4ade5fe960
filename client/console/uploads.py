"""Saving an uploaded traffic file to the site's disk, with its SHA-256 and a decompression limit."""

from __future__ import annotations

import gzip
import hashlib
import logging
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from werkzeug.utils import secure_filename

from common.exceptions import DataValidationError

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class UploadError(DataValidationError):
    """An uploaded file is malformed or decompresses beyond the configured limit."""


@dataclass(frozen=True)
class SavedUpload:
    """An uploaded file on disk.

    Attributes
    ----------
    path : Path
        Where it was saved.
    display_name : str
        The name the browser sent, without folders, for pages and the audit log.
    sha256 : str
        Hex SHA-256 of the bytes as uploaded (compressed, if gzip).
    size : int
        Bytes as uploaded.
    gzip : bool
        Whether the file is gzip-compressed.
    """

    path: Path
    display_name: str
    sha256: str
    size: int
    gzip: bool


def display_name(file_name: str | None) -> str:
    """Return the last component of a browser-sent file name, without control characters, at most 255 characters.

    Every character of Unicode category C is dropped: C0 and C1 controls,
    bidirectional overrides and isolates such as U+202E (format, Cf), which
    would make a name like ``evil\u202ecsv.exe`` display as ``evilexe.vsc``,
    and surrogate, private-use and unassigned code points.
    """
    visible = "".join(character for character in file_name or "" if unicodedata.category(character)[0] != "C")
    name = PureWindowsPath(PurePosixPath(visible).name).name.strip()
    return name[:255] or "upload.csv"


def save_upload(stream: IO[bytes], folder: Path, file_name: str | None) -> SavedUpload:
    """Copy an upload into ``folder`` while hashing it.

    Parameters
    ----------
    stream : binary file object
        The upload's content.
    folder : Path
        Destination folder; created if missing.
    file_name : str or None
        The name the browser sent.

    Returns
    -------
    SavedUpload
    """
    shown = display_name(file_name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (secure_filename(shown) or "upload.csv")
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as target:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
            target.write(chunk)
            size += len(chunk)
    with path.open("rb") as source:
        compressed = source.read(2) == _GZIP_MAGIC
    logger.info("upload: saved %s (%d bytes, sha256 %s)", shown, size, digest.hexdigest())
    return SavedUpload(path=path, display_name=shown, sha256=digest.hexdigest(), size=size, gzip=compressed)


def check_decompressed_size(upload: SavedUpload, limit: int) -> None:
    """Decompress a gzip upload in chunks without keeping the output, stopping past ``limit`` bytes.

    Detection keeps a prediction for every row in memory and takes time in
    proportion to the text, so this runs first and a small gzip bomb is
    rejected before detection starts. Plain files pass.

    Raises
    ------
    UploadError
        If the gzip data is corrupt or decompresses to more than ``limit`` bytes.
    """
    if not upload.gzip:
        return
    shown = upload.display_name
    total = 0
    try:
        with gzip.open(upload.path, "rb") as source:
            while chunk := source.read(_CHUNK_BYTES):
                total += len(chunk)
                if total > limit:
                    raise UploadError(
                        f"{shown} decompresses to more than {limit // (1024 * 1024)} MiB, this console's limit "
                        "for gzip uploads; split the capture into smaller files"
                    )
    except (OSError, EOFError, zlib.error) as error:
        raise UploadError(f"{shown} starts like a gzip file but cannot be decompressed: {error}") from error
