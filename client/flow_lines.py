"""Read a flow CSV for detection one line per flow, scoring a malformed line as a row of empty values.

Detection gives every flow a verdict in file order, so one bad line must not
stop it. One-off detection (:func:`read_flow_chunks`, plain or gzip) and
``--follow`` (:func:`client.detect.follow_chunks`) both feed the file's bytes
to a :class:`FlowLineReader`, which

- treats every non-blank line as one flow; blank lines are skipped, as the
  training loader skips them;
- parses each block of complete lines with the training loader's fast reader
  (:func:`common.loading.parse_flow_text`), so values, header whitespace
  stripping, the byte-order mark, CRLF and the padding of short lines are
  handled exactly as in training;
- checks the lines one by one only when that parse fails, when it returns
  another number of rows than the block has lines (a quote left open
  swallows the lines after it), or when the header text occurs again. A
  malformed line becomes a row of empty values, which keeps row numbers in
  step with the file and the windows in place, and one WARNING per block
  counts the malformed lines and names the first one's data row.

A line is malformed when it has more fields than the header, a quote that is
not closed on the same line, text that is not UTF-8, a carriage return
inside it, or when it repeats the header line. A quoted value that spans
lines is therefore read as malformed lines: flow exporters write one flow
per line.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from common.exceptions import DataValidationError, EmptyDataError
from common.loading import parse_flow_text

logger = logging.getLogger(__name__)

#: Bytes of text read per block by :func:`read_flow_chunks` (about 69,000 WUSTL-EHMS-2020 rows of 242 bytes).
DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024

#: Maximum bytes of one line. Flow records are a few hundred bytes, so a longer line means the file is not a flow CSV.
MAX_LINE_BYTES = 16 * 1024 * 1024

_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"

# A field that pandas' parser reads without crossing a line end: unquoted (a
# quote after its first character is an ordinary one), or quoted with "" for
# a quote and closed on the same line. The parser keeps any text after the
# closing quote up to the next comma, quotes included, unless that text starts
# with a quote, which would make the closing quote an escaped one.
_FIELD = rb'(?:"(?:[^"]|"")*"(?:[^,"][^,]*)?|(?:[^",][^,]*)?)'


class FlowLineReader:
    """Parse the bytes of a flow CSV, fed block by block, into frames of complete lines.

    Parameters
    ----------
    path : Path
        The file, named in messages.
    step : str
        The step that starts the WARNING lines, ``"detect"`` or ``"follow"``.

    Attributes
    ----------
    header : bytes
        The header line without byte-order mark and line end; empty until it is read.
    rows_read : int
        Data rows returned so far, malformed lines included.
    """

    def __init__(self, path: Path, step: str) -> None:
        self.path = path
        self.step = step
        self.header = b""
        self.rows_read = 0
        self._header_in_file = False
        self._pending = b""
        self._n_fields = 0
        self._empty_line = b""
        self._valid_quoted_line: re.Pattern[bytes] | None = None

    def start_file(self) -> None:
        """Start reading a new file from its beginning (the followed file was rotated).

        The new file's header must equal the first file's header.
        """
        self._pending = b""
        self._header_in_file = False

    def feed(self, block: bytes) -> pd.DataFrame | None:
        """Add ``block`` and return the data rows of the lines it completes, or ``None`` if it completes none.

        Returns
        -------
        pandas.DataFrame of shape (n_lines, n_columns) or None
            Object columns of ``str`` named by the stripped header, RangeIndex from 0.

        Raises
        ------
        DataValidationError
            If the header is not UTF-8 text, repeats a name after stripping,
            differs from the first file's header after :meth:`start_file`,
            or if a line grows beyond :data:`MAX_LINE_BYTES`.
        """
        self._pending += block
        cut = self._pending.rfind(b"\n") + 1
        complete, self._pending = self._pending[:cut], self._pending[cut:]
        # Lines that end in a carriage return alone never complete, so --follow would wait for ever.
        self._check_line_endings(self._pending)
        if len(self._pending) > MAX_LINE_BYTES:
            raise DataValidationError(
                f"{self.path}: no line break in {len(self._pending)} bytes after data row {self.rows_read}, more "
                f"than the limit of {MAX_LINE_BYTES} bytes for one line; this is not a flow CSV"
            )
        return self._parse(complete) if complete else None

    def finish(self) -> pd.DataFrame | None:
        """Return the data row of a last line that has no newline (at the end of a whole file), or ``None``."""
        rest, self._pending = self._pending, b""
        return self._parse(rest + b"\n") if rest.strip() else None

    def _parse(self, complete: bytes) -> pd.DataFrame | None:
        lines = complete if self._header_in_file else self._take_header(complete)
        if not lines.strip():
            return None
        stray_return = self._check_line_endings(lines)
        frame, malformed = self._parse_lines(lines, stray_return)
        if malformed:
            logger.warning(
                "%s: %d malformed line(s) in %s (more fields than the header's %d, an unclosed quote, text that "
                "is not UTF-8, a stray carriage return or a repeated header) are scored as empty rows, first at "
                "row %d; check the flow exporter",
                self.step,
                len(malformed),
                self.path,
                self._n_fields,
                self.rows_read + malformed[0],
            )
        self.rows_read += len(frame)
        return frame

    def _take_header(self, complete: bytes) -> bytes:
        """Read the header from the first non-blank line of ``complete`` and return the lines after it."""
        lines = complete
        while lines and not self._header_in_file:
            line, _, lines = lines.partition(b"\n")
            line = line.removeprefix(_BYTE_ORDER_MARK).rstrip(b"\r")
            if line.strip():
                self._set_header(line)
        return lines

    def _set_header(self, line: bytes) -> None:
        if self.header and line != self.header:
            raise DataValidationError(
                f"{self.path} was replaced by a file with another header; restart detection "
                "if the exporter's columns changed"
            )
        if b"\r" in line:
            raise self._carriage_return_error()
        # The loader's parser rejects a header that is not UTF-8 or repeats a name, with its own message.
        columns = parse_flow_text(line + b"\n", self.path).columns
        self.header = line
        self._header_in_file = True
        self._n_fields = len(columns)
        # A quoted empty first field keeps the line from being blank when the header has one column.
        self._empty_line = b'""' + b"," * (self._n_fields - 1)
        self._valid_quoted_line = re.compile(_FIELD + rb"(?:," + _FIELD + rb"){0,%d}" % (self._n_fields - 1))

    def _check_line_endings(self, text: bytes) -> bool:
        """Reject text in which one line contains two or more bare carriage returns.

        One stray carriage return is a malformed line, but two or more in one
        line mean that the exporter ends its rows with a carriage return alone,
        and every row would otherwise be lost in one long line.

        Returns
        -------
        bool
            Whether ``text`` contains a carriage return that does not end a line.
        """
        bare_returns = text.count(b"\r") - text.count(b"\r\n")
        if bare_returns >= 2:
            for line in text.split(b"\n"):
                if line.rstrip(b"\r").count(b"\r") >= 2:
                    raise self._carriage_return_error()
        return bare_returns > 0

    def _carriage_return_error(self) -> DataValidationError:
        return DataValidationError(
            f"{self.path} ends its lines with a carriage return only (classic Mac OS line endings); "
            "convert them to LF or CRLF"
        )

    def _parse_lines(self, lines: bytes, stray_return: bool) -> tuple[pd.DataFrame, list[int]]:
        """Parse complete lines and return the frame with the positions of the lines blanked as malformed.

        ``stray_return`` is whether ``lines`` contains a carriage return that does not end a line.
        """
        header = self.header + b"\n"
        if self.header not in lines:
            try:
                frame = parse_flow_text(header + lines, self.path, self.rows_read)
            except DataValidationError:
                pass
            else:
                # Without a stray carriage return, which ends a row for the parser, an equal row and line
                # count means that no quote swallowed a line. Only a block with blank lines needs the slower
                # exact count. A quote left open in the last line swallows only its newline, so that line is
                # checked apart.
                if (
                    not stray_return
                    and len(frame) in (lines.count(b"\n"), _count_rows(lines))
                    and not self._has_open_quote(_last_line(lines))
                ):
                    return frame, []
        repaired, malformed = self._blank_malformed_lines(lines, stray_return)
        return parse_flow_text(header + repaired, self.path, self.rows_read), malformed

    def _blank_malformed_lines(self, lines: bytes, check_return: bool) -> tuple[bytes, list[int]]:
        """Return the non-blank lines with every malformed one replaced by empty fields, and the replaced positions."""
        # The rarer checks run per line only when the whole block contains what they look for.
        try:
            lines.decode("utf-8")
            check_text = False
        except UnicodeDecodeError:
            check_text = True
        check_header = self.header in lines
        data_lines: list[bytes] = []
        malformed: list[int] = []
        for raw_line in lines.split(b"\n"):
            line = raw_line.rstrip(b"\r")
            if not line or line.isspace():
                continue
            bad = self._has_open_quote(line) if b'"' in line else line.count(b",") >= self._n_fields
            if not bad and (check_header or check_return or check_text):
                bad = (
                    (check_header and line.removeprefix(_BYTE_ORDER_MARK) == self.header)
                    or (check_return and b"\r" in line)
                    or (check_text and not _is_utf8(line))
                )
            if bad:
                malformed.append(len(data_lines))
                line = self._empty_line
            data_lines.append(line)
        return b"\n".join(data_lines) + b"\n", malformed

    def _has_open_quote(self, line: bytes) -> bool:
        """Return whether a line with quotes leaves one open or has more fields than the header."""
        assert self._valid_quoted_line is not None
        return b'"' in line and self._valid_quoted_line.fullmatch(line) is None


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _last_line(lines: bytes) -> bytes:
    """Return the last non-blank line of ``lines`` without copying the lines before it."""
    end = len(lines)
    while end and lines[end - 1] in b" \t\r\n":
        end -= 1
    return lines[lines.rfind(b"\n", 0, end) + 1 : end]


def _count_rows(lines: bytes) -> int:
    """Return the number of non-blank lines, which the parser reads as rows."""
    return sum(1 for line in lines.split(b"\n") if line.strip())


def read_flow_chunks(path: str | os.PathLike[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[pd.DataFrame]:
    """Yield the data rows of a plain or gzip flow CSV in chunks, one row per non-blank line.

    Only one block of ``chunk_bytes`` of text (decompressed) and the rows
    parsed from it are in memory at a time, so a capture of any size can be
    scored. Gzip is detected from the file's first two bytes, whatever its
    suffix. Rows keep their file order across chunks, and every chunk has a
    RangeIndex from 0. A malformed line is a row of empty values, with a
    WARNING (see :class:`FlowLineReader`).

    Parameters
    ----------
    path : str or path-like
        An existing CSV file, UTF-8 (a byte-order mark is allowed), LF or CRLF line endings.
    chunk_bytes : int, default=16 MiB
        Bytes of text read per block.

    Yields
    ------
    pandas.DataFrame, shape (n_chunk_rows, n_columns)
        Object columns of ``str`` named by the stripped header.

    Raises
    ------
    EmptyDataError
        If the file has no header or no data rows.
    DataValidationError
        If ``path`` is a folder or cannot be read or decompressed, if its
        header is not UTF-8 text or repeats a name after stripping, or if a
        line is longer than :data:`MAX_LINE_BYTES`.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, got {chunk_bytes}")
    path = Path(path)
    if path.is_dir():
        raise DataValidationError(f"{path} is a directory, not a CSV file")
    reader = FlowLineReader(path, step="detect")
    with _open_flow_file(path) as stream:
        while block := _read_block(stream, chunk_bytes, path):
            frame = reader.feed(block)
            if frame is not None:
                yield frame
    frame = reader.finish()
    if frame is not None:
        yield frame
    if not reader.header:
        raise EmptyDataError(f"{path} is empty: it has no header row")
    if reader.rows_read == 0:
        raise EmptyDataError(f"{path} has a header but no data rows")


def _open_flow_file(path: Path) -> io.BufferedIOBase:
    try:
        with path.open("rb") as probe:
            compressed = probe.read(2) == _GZIP_MAGIC
        return gzip.GzipFile(path, "rb") if compressed else path.open("rb")
    except OSError as error:
        raise DataValidationError(f"cannot read {path}: {error}") from error


def _read_block(stream: io.BufferedIOBase, size: int, path: Path) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as error:
        raise DataValidationError(f"cannot read {path}: {error}") from error
