"""Read a site's flow CSV and clean it into model-ready features and labels.

:func:`load_flows` reads one exporter file (plain or gzip) as text and cleans
it against a :class:`~common.config.DatasetConfig`. Cleaning keeps only the
configured feature columns, so identifier columns never reach the model. It
maps raw labels to class indices, turns non-numeric tokens and infinities into
missing values, applies the configured missing-value policy and drops exact
duplicate rows. Every repair is counted in a :class:`CleaningReport` and
logged.

Numeric columns are parsed with Apache Arrow (``pyarrow.compute.cast``).
On the 16,318-row WUSTL-EHMS-2020 capture, pandas 2.3's ``to_numeric`` took
about five times as long (one measurement, pyarrow 26).

NOTE: pyarrow is installed through flwr-datasets, which needs the datasets
package, but pyproject.toml does not list it directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import logging
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from common.config import DATA_DIR_ENV, DatasetConfig, TaskConfig
from common.exceptions import DataFileNotFoundError, DataValidationError, EmptyDataError

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"

#: Tokens (compared in lower case, after stripping) that mark a missing value
#: rather than a malformed one. They are counted as missing, not as non-numeric.
MISSING_MARKERS = frozenset({"", "na", "n/a", "#n/a", "<na>", "nan", "-nan", "+nan", "null", "none"})

# Decimal numbers with optional sign, fraction and exponent, plus inf, infinity
# and nan (any case). This is the set of tokens that Arrow's string-to-float64
# cast accepts (checked on pyarrow 26 with 100,000 random tokens), so a column
# parses the same way whether or not it contains malformed tokens.
_NUMBER_PATTERN = r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)$"

#: Maximum number of columns named in a warning. Further columns are only counted.
_TOP_COLUMNS = 5


@dataclass
class CleaningReport:
    """Counts of every repair that :func:`clean_flows` made to one file.

    Per-column dictionaries list only columns with a non-zero count. Cell
    counts cover the rows that have a label, because rows without one are
    dropped first.

    Attributes
    ----------
    source : str
        File path, or ``"<frame>"`` for a frame that was not read from a file.
    rows_read : int
        Data rows in the input.
    non_numeric_tokens : dict of str to int
        Numeric column to the number of non-empty tokens that were not numbers
        (for example a service name in a port column). They became missing.
        Markers such as ``NaN``, ``NA`` or ``null`` count as missing, not here.
    infinities : dict of str to int
        Numeric column to the number of +inf or -inf values that became missing.
    rows_without_label : int
        Rows dropped because their label was empty or a missing-value marker.
    missing_values : dict of str to int
        Numeric column to the number of missing values after coercion (empty,
        missing-value marker, non-numeric token or infinity). Empty
        categorical values are not counted; they stay ``""``.
    rows_dropped_missing : int
        Rows dropped for a missing numeric value when the dataset's
        ``missing_values`` policy is ``"drop"``.
    values_left_for_imputation : int
        Missing numeric cells kept in the final table when the policy is
        ``"impute"``. The Preprocessor fills them with the federation-wide mean.
    duplicates_dropped : int
        Rows dropped because they repeat an earlier row in every column of
        the input, identifiers included.
    rows_kept : int
        Rows in the cleaned table.
    """

    source: str
    rows_read: int
    non_numeric_tokens: dict[str, int]
    infinities: dict[str, int]
    rows_without_label: int
    missing_values: dict[str, int]
    rows_dropped_missing: int
    values_left_for_imputation: int
    duplicates_dropped: int
    rows_kept: int

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-serialisable types."""
        return dataclasses.asdict(self)


@dataclass
class FlowTable:
    """Cleaned features and labels of one file.

    Attributes
    ----------
    features : pandas.DataFrame, shape (n_rows, n_features)
        Exactly ``config.feature_columns``, in that order. Numeric columns are
        float64 and may hold NaN under the ``"impute"`` policy. Categorical
        columns hold stripped ``str`` values, with ``""`` for missing ones.
        The index is a RangeIndex in capture (file) order.
    labels : numpy.ndarray of int64, shape (n_rows,), or None
        Class index of each row, its position in ``task.classes``. ``None``
        when the table was loaded with ``require_labels=False``.
    task : TaskConfig
        Task whose classes the labels index.
    report : CleaningReport
        What cleaning changed in the whole file.
    source_rows : numpy.ndarray of int64, shape (n_rows,), or None
        Position of each row among the data rows of the file it was read
        from, so that a row can be traced back to its raw record.
    """

    features: pd.DataFrame
    labels: np.ndarray | None
    task: TaskConfig
    report: CleaningReport
    source_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.features):
            raise ValueError(
                f"labels have {len(self.labels)} rows but features have {len(self.features)}"
            )

    def __len__(self) -> int:
        return len(self.features)

    def take(self, indices: np.ndarray | slice) -> FlowTable:
        """Select rows by position.

        Parameters
        ----------
        indices : numpy.ndarray of int, shape (k,), boolean mask of shape (n_rows,), or slice
            Rows to keep. Integer positions come out in the order given, so
            sorted positions keep capture order.

        Returns
        -------
        FlowTable
            The selected rows with a fresh RangeIndex. The report is shared
            with this table because it describes the whole file.
        """
        features = self.features.iloc[indices].reset_index(drop=True)
        labels = None if self.labels is None else self.labels[indices]
        source_rows = None if self.source_rows is None else self.source_rows[indices]
        return FlowTable(
            features=features, labels=labels, task=self.task, report=self.report, source_rows=source_rows
        )


def read_flow_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a flow CSV, plain or gzip-compressed, with every value as text.

    Gzip is detected from the file's first two bytes, whatever its suffix.
    Values are kept exactly as written (no NA detection, no type inference)
    so that :func:`clean_flows` can count what it coerces. Header names are
    stripped of surrounding whitespace; an empty header cell becomes
    ``"Unnamed: <position>"``.

    Parameters
    ----------
    path : str or path-like
        The CSV file, UTF-8 (a byte-order mark is allowed), any line endings.

    Returns
    -------
    pandas.DataFrame, shape (n_rows, n_columns)
        Object columns of ``str``, RangeIndex 0..n_rows-1 in file order.

    Raises
    ------
    DataFileNotFoundError
        If ``path`` does not exist.
    EmptyDataError
        If the file has no header or no data rows.
    DataValidationError
        If ``path`` is a directory or unreadable, is not UTF-8 CSV, has a row
        with more fields than the header, or two header names that are equal
        after stripping whitespace.
    """
    path, compression = _checked_csv_path(path)
    with _csv_errors(path):
        raw = _read_text_with_arrow(path, compression)
        if raw is None:
            # With header=None the parser rejects a row with more fields than
            # the header. With header=0, pandas would silently use its first
            # field as the index.
            raw = pd.read_csv(
                path,
                header=None,
                dtype=str,
                na_filter=False,
                compression=compression,
                encoding="utf-8-sig",
            )

    names = _header_names(raw.iloc[0].tolist(), path)
    if len(raw) < 2:
        raise EmptyDataError(f"{path} has a header but no data rows")
    frame = raw.iloc[1:].reset_index(drop=True)
    frame.columns = pd.Index(names)
    return frame


def parse_flow_text(text: bytes, path: Path, rows_before: int = 0) -> pd.DataFrame:
    """Parse a header line and the records after it as :func:`read_flow_csv` parses a whole file.

    ``path`` names the source in messages, and ``rows_before`` counts the
    data rows that came before ``text`` in it.

    Raises
    ------
    DataValidationError
        If the text is not UTF-8 CSV, a row has more fields than the header,
        or two header names are equal after stripping whitespace.
    """
    try:
        with _csv_errors(path):
            raw = _read_text_with_arrow(io.BytesIO(text), None)
            if raw is None:
                raw = pd.read_csv(io.BytesIO(text), header=None, dtype=str, na_filter=False, encoding="utf-8-sig")
    except DataValidationError as error:
        row = _data_row_of_line(text, str(error), rows_before)
        if row is None:
            raise
        # The parsed text restarts at the header, so its line numbers are not the file's.
        raise DataValidationError(
            f"{error} (data row {row} of the file, counted from 0 like the predictions' row)"
        ) from error
    frame = raw.iloc[1:].reset_index(drop=True)
    frame.columns = pd.Index(_header_names(raw.iloc[0].tolist(), path))
    return frame


def _data_row_of_line(text: bytes, message: str, rows_before: int) -> int | None:
    """Return the file's 0-based data row of the line a parser error names, or ``None`` if it names none.

    ``text`` starts with the header (its line 1), and blank lines are skipped
    like the parser skips them. A quoted field that spans lines makes the
    result an estimate.
    """
    match = re.search(r"\bline (\d+)", message)
    if match is None:
        return None
    lines = text.split(b"\n")[1 : int(match.group(1)) - 1]
    return rows_before + sum(1 for line in lines if line.rstrip(b"\r"))


def _checked_csv_path(path: str | os.PathLike[str]) -> tuple[Path, Literal["gzip"] | None]:
    """Return the path and its compression, detected from the first two bytes.

    Raises
    ------
    DataFileNotFoundError
        If ``path`` does not exist.
    DataValidationError
        If ``path`` is a directory or cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileNotFoundError(
            f"data file not found: {path}; check --data-dir or the {DATA_DIR_ENV} "
            "environment variable, which must name the folder that holds the dataset files"
        )
    if path.is_dir():
        raise DataValidationError(f"{path} is a directory, not a CSV file")
    with _csv_errors(path), path.open("rb") as handle:
        magic = handle.read(2)
    return path, "gzip" if magic == _GZIP_MAGIC else None


@contextlib.contextmanager
def _csv_errors(path: Path) -> Iterator[None]:
    """Turn the errors of reading a CSV file into the project's exceptions, naming the file."""
    try:
        yield
    except pd.errors.EmptyDataError as error:
        raise EmptyDataError(f"{path} is empty: it has no header row") from error
    except pd.errors.ParserError as error:
        raise DataValidationError(f"{path} is not a valid CSV file: {str(error).strip()}") from error
    except UnicodeDecodeError as error:
        raise DataValidationError(
            f"{path} is not UTF-8 text ({error}); convert it to UTF-8, or gzip it if it "
            "uses another compression"
        ) from error
    except (OSError, EOFError, zlib.error) as error:
        raise DataValidationError(f"cannot read {path}: {error}") from error


#: Columns that the Arrow reader reads as text. A wider file is read by pandas.
_ARROW_MAX_COLUMNS = 4096
_ARROW_TEXT_COLUMNS = {f"f{position}": pa.string() for position in range(_ARROW_MAX_COLUMNS)}


def _read_text_with_arrow(source: Path | io.BytesIO, compression: Literal["gzip"] | None) -> pd.DataFrame | None:
    """Read every field as text with Arrow's multi-threaded CSV reader, header row included.

    Returns the same frame as ``pandas.read_csv(header=None, dtype=str,
    na_filter=False)`` in about half the time on the project's datasets, or
    ``None`` for a file that Arrow rejects. Arrow rejects a row with fewer or
    more fields than the header, text that is not UTF-8 and an empty file. The
    pandas reader then pads short rows or raises the error that
    :func:`read_flow_csv` turns into a message.
    """
    import pyarrow.csv as pa_csv

    read_options = pa_csv.ReadOptions(autogenerate_column_names=True)
    convert_options = pa_csv.ConvertOptions(
        column_types=_ARROW_TEXT_COLUMNS,
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        null_values=[],
    )
    parse_options = pa_csv.ParseOptions(newlines_in_values=True)
    try:
        if isinstance(source, io.BytesIO):
            table = pa_csv.read_csv(
                source, read_options=read_options, parse_options=parse_options, convert_options=convert_options
            )
        else:
            with pa.input_stream(str(source), compression=compression) as stream:
                table = pa_csv.read_csv(
                    stream, read_options=read_options, parse_options=parse_options, convert_options=convert_options
                )
    except (pa.ArrowException, OSError, EOFError, zlib.error):
        return None
    if not all(pa.types.is_string(field.type) for field in table.schema):
        return None
    frame = table.to_pandas()
    frame.columns = pd.RangeIndex(table.num_columns)
    return frame


def _header_names(header: list[str], path: Path) -> list[str]:
    """Strip the header names and reject names that collide after stripping."""
    names = [name.strip() or f"Unnamed: {position}" for position, name in enumerate(header)]
    spellings: dict[str, list[str]] = {}
    for name, original in zip(names, header, strict=True):
        spellings.setdefault(name, []).append(original)
    collisions = {name: found for name, found in spellings.items() if len(found) > 1}
    if collisions:
        listed = "; ".join(
            " and ".join(repr(spelling) for spelling in found) + f" (both {name!r})"
            for name, found in collisions.items()
        )
        raise DataValidationError(
            f"{path} has duplicate column names after stripping whitespace: {listed}; "
            "rename or remove the extra columns"
        )
    return names


def clean_flows(
    frame: pd.DataFrame,
    config: DatasetConfig,
    task: TaskConfig | str | None = None,
    *,
    source: str = "<frame>",
    require_labels: bool = True,
) -> FlowTable:
    """Validate and clean raw flows into features and class indices.

    The steps run in this order. The report counts the rows and values that
    steps 2, 3, 5 and 6 change.

    1. Check that the task's label column (if ``require_labels``) and every
       feature column exist. Other columns are ignored.
    2. Map labels with ``task.class_for_value`` after stripping them and
       writing integral floats without a decimal point (``"1.0"`` becomes
       ``"1"``). Rows with an empty label or a missing-value marker are
       dropped. Any other unknown value is an error.
    3. Parse numeric features. Non-numeric tokens and +/-inf become NaN.
    4. Strip categorical features. Missing values become ``""``.
    5. Apply ``config.missing_values``: ``"drop"`` drops rows with a missing
       numeric value and ``"impute"`` keeps the NaN.
    6. If ``config.drop_duplicates``, drop rows that equal an earlier row in
       every column of ``frame``. Identifiers take part, so distinct flows
       with equal features are kept.

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n_rows, n_columns)
        Raw flows, usually from :func:`read_flow_csv`. It is not modified.
    config : DatasetConfig
        Dataset whose feature columns and policies apply.
    task : TaskConfig, str or None
        The task, its name, or ``None`` for the dataset's default task.
    source : str
        File name used in messages and the report.
    require_labels : bool
        If false, the label column may be absent, labels are not read and
        :attr:`FlowTable.labels` is ``None``.

    Returns
    -------
    FlowTable
        ``features`` of shape (n_kept, n_features) and ``labels`` of shape
        (n_kept,), in the order of ``frame``.

    Raises
    ------
    ConfigError
        If ``task`` names no task of ``config``.
    DataValidationError
        If a required column is missing or repeated, or a label value is not
        in the task.
    EmptyDataError
        If no row is left.
    """
    task_config = task if isinstance(task, TaskConfig) else config.task(task)
    _check_columns(frame, config, task_config, source, require_labels)
    rows_read = len(frame)

    labels: np.ndarray | None = None
    rows_without_label = 0
    positions = np.arange(rows_read, dtype=np.int64)
    if require_labels:
        labels = _map_labels(frame[task_config.label_column], task_config, config, source)
        has_label = labels >= 0
        rows_without_label = int(rows_read - np.count_nonzero(has_label))
        if rows_without_label:
            frame = frame.loc[has_label].reset_index(drop=True)
            labels = labels[has_label]
            positions = positions[has_label]

    numeric, non_numeric_tokens, infinities = _parse_numeric(frame, config.numeric_features)
    missing_per_column = np.isnan(numeric).sum(axis=0)
    missing_values = _nonzero_counts(config.numeric_features, missing_per_column)

    keep = np.ones(len(frame), dtype=bool)
    rows_dropped_missing = 0
    if config.missing_values == "drop" and missing_values:
        keep &= ~np.isnan(numeric).any(axis=1)
        rows_dropped_missing = int(len(frame) - np.count_nonzero(keep))

    duplicates_dropped = 0
    if config.drop_duplicates:
        # Exact duplicates share every label and feature token, so they share
        # the drop decisions above and the whole frame can be compared at once.
        duplicate = _duplicate_rows(frame, numeric)
        duplicates_dropped = int(np.count_nonzero(duplicate & keep))
        keep &= ~duplicate

    rows = np.flatnonzero(keep)
    report = CleaningReport(
        source=source,
        rows_read=rows_read,
        non_numeric_tokens=non_numeric_tokens,
        infinities=infinities,
        rows_without_label=rows_without_label,
        missing_values=missing_values,
        rows_dropped_missing=rows_dropped_missing,
        values_left_for_imputation=int(np.isnan(numeric[rows]).sum()),
        duplicates_dropped=duplicates_dropped,
        rows_kept=len(rows),
    )
    _log_report(report, task_config, config)
    if not len(rows):
        raise EmptyDataError(_no_rows_message(report, task_config, config))

    features = pd.DataFrame(numeric[rows], columns=pd.Index(config.numeric_features))
    for column in config.categorical_features:
        features[column] = _strip_categorical(frame[column].iloc[rows])
    return FlowTable(
        features=features,
        labels=None if labels is None else labels[rows],
        task=task_config,
        report=report,
        source_rows=positions[rows],
    )


def load_flows(
    path: str | os.PathLike[str],
    config: DatasetConfig,
    task: TaskConfig | str | None = None,
    *,
    require_labels: bool = True,
) -> FlowTable:
    """Read a flow CSV with :func:`read_flow_csv` and clean it with :func:`clean_flows`.

    Parameters
    ----------
    path : str or path-like
        Plain or gzip CSV file.
    config : DatasetConfig
        Dataset whose feature columns and policies apply.
    task : TaskConfig, str or None
        The task, its name, or ``None`` for the dataset's default task.
    require_labels : bool
        If false, the label column may be absent and labels are not read.

    Returns
    -------
    FlowTable
        Cleaned features of shape (n_kept, n_features) and labels of shape (n_kept,).
    """
    frame = read_flow_csv(path)
    return clean_flows(frame, config, task, source=str(path), require_labels=require_labels)


def map_labels(column: pd.Series, task: TaskConfig, config: DatasetConfig, source: str = "<frame>") -> np.ndarray:
    """Map raw label values to class indices, as :func:`clean_flows` does.

    Parameters
    ----------
    column : pandas.Series of shape (n_rows,)
        Raw label values, for example the task's label column of
        :func:`read_flow_csv` output.
    task : TaskConfig
    config : DatasetConfig
        Names the configuration file in error messages.
    source : str
        File name used in messages.

    Returns
    -------
    numpy.ndarray of int64, shape (n_rows,)
        Class index per row, -1 where the label is empty or a missing-value marker.

    Raises
    ------
    DataValidationError
        If a value is neither a known label nor a missing-value marker.
    """
    return _map_labels(column, task, config, source)


def delimiter_hint(columns: Sequence[str]) -> str:
    """Return a sentence for a header that looks split by another delimiter than the comma, else ``""``."""
    for delimiter, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")):
        if any(column.count(delimiter) >= 2 for column in columns):
            return f" The header seems to be separated by {name}; flow files must be comma-separated."
    return ""


def _check_columns(
    frame: pd.DataFrame,
    config: DatasetConfig,
    task: TaskConfig,
    source: str,
    require_labels: bool,
) -> None:
    """Raise DataValidationError unless every required column occurs exactly once."""
    required = list(config.feature_columns)
    if require_labels:
        required.append(task.label_column)
    present = [str(column) for column in frame.columns]
    missing = [column for column in required if column not in frame.columns]
    if missing:
        # Only columns that the configuration does not use can be misspellings of a missing one.
        unused = [column for column in present if column not in required]
        hints = []
        for column in missing:
            matches = difflib.get_close_matches(column, unused, n=3, cutoff=0.6)
            if matches:
                hints.append(f"for {column!r} the file has {' or '.join(repr(match) for match in matches)}")
        did_you_mean = f" Similar unused names: {'; '.join(hints)}." if hints else ""
        raise DataValidationError(
            f"{source}: missing required column(s) {missing} for dataset {config.name!r}, "
            f"task {task.name!r}.{did_you_mean}{delimiter_hint(present)} Rename the file's columns or fix "
            f"the column names in {config.source}"
        )
    repeated = sorted({column for column in required if list(frame.columns).count(column) > 1})
    if repeated:
        raise DataValidationError(
            f"{source}: column(s) {repeated} occur more than once; keep one of each"
        )


def _map_labels(
    column: pd.Series,
    task: TaskConfig,
    config: DatasetConfig,
    source: str,
) -> np.ndarray:
    """Return each row's class index, -1 for a missing label.

    Only the distinct raw values are mapped in Python. The rows then look up
    their class through ``pandas.factorize`` codes.
    """
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    class_index = {name: index for index, name in enumerate(task.classes)}
    # Slot -1 (the last one) is the factorize code of NaN and None.
    lookup = np.full(len(uniques) + 1, -1, dtype=np.int64)
    unknown: dict[str, int] = {}
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    for position, raw_value in enumerate(uniques):
        value = _label_text(raw_value)
        class_name = task.class_for_value(value)
        if class_name is None:
            integral = _integral_text(value)
            class_name = None if integral is None else task.class_for_value(integral)
        if class_name is not None:
            lookup[position] = class_index[class_name]
        elif value.lower() not in MISSING_MARKERS:
            unknown[value] = unknown.get(value, 0) + int(counts[position])
    if unknown:
        listed = ", ".join(
            f"{value!r} ({count} row{'s' if count != 1 else ''})"
            for value, count in sorted(unknown.items(), key=lambda item: -item[1])
        )
        known = sorted(task.label_values) if task.label_values else list(task.classes)
        raise DataValidationError(
            f"{source}: column {task.label_column!r} has values that task {task.name!r} does not "
            f"know: {listed}; known values are {known}. Add each value to [tasks.{task.name}] "
            f"classes or label_values in {config.source}"
        )
    return lookup[codes]


def _label_text(raw_value: object) -> str:
    if isinstance(raw_value, float) and np.isnan(raw_value):
        return ""
    return str(raw_value).strip()


def _integral_text(value: str) -> str | None:
    """Return ``"1"`` for ``"1.0"`` and other integral numbers, else ``None``."""
    try:
        number = float(value)
    except ValueError:
        return None
    if not np.isfinite(number) or not number.is_integer():
        return None
    return str(int(number))


def _parse_numeric(
    frame: pd.DataFrame, columns: tuple[str, ...]
) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """Parse the numeric columns into one float64 matrix of shape (n_rows, n_columns).

    Returns the matrix, with NaN for every missing, non-numeric or infinite
    value, and the non-zero counts of non-numeric tokens and of infinities
    per column.
    """
    # Column-major, so that each parsed column is written in one contiguous block.
    matrix = np.empty((len(frame), len(columns)), dtype=np.float64, order="F")
    non_numeric: dict[str, int] = {}
    for position, column in enumerate(columns):
        values, bad_tokens = _parse_numeric_column(frame[column])
        matrix[:, position] = values
        if bad_tokens:
            non_numeric[column] = bad_tokens
    infinite = np.isinf(matrix)
    infinities = _nonzero_counts(columns, infinite.sum(axis=0))
    if infinities:
        matrix[infinite] = np.nan
    return matrix, non_numeric, infinities


def _parse_numeric_column(column: pd.Series) -> tuple[np.ndarray, int]:
    """Parse one column to float64 and count its non-numeric tokens."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan), 0

    text = _arrow_strings(column)
    try:
        # Fast path: every token is a number as written, or missing.
        parsed = pc.cast(text, pa.float64())
        bad_tokens = 0
    except pa.ArrowInvalid:
        trimmed = pc.utf8_trim_whitespace(text)
        is_number = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_PATTERN, ignore_case=True), False)
        is_missing = pc.or_(
            pc.is_in(pc.utf8_lower(trimmed), value_set=pa.array(sorted(MISSING_MARKERS))),
            pc.is_null(trimmed),
        )
        is_bad = pc.and_(pc.invert(is_number), pc.invert(is_missing))
        bad_tokens = pc.sum(pc.cast(is_bad, pa.int64())).as_py() or 0
        parsed = pc.cast(pc.if_else(is_number, trimmed, pa.scalar(None, pa.string())), pa.float64())
    return parsed.to_numpy(zero_copy_only=False), int(bad_tokens)


def _arrow_strings(column: pd.Series) -> pa.Array:
    """Convert a text column to an Arrow string array, with null for NaN or None."""
    values = column.to_numpy(dtype=object)
    try:
        return pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # A column that mixes text with other objects: parse their str() form.
        return pa.array(column.astype(str).to_numpy(dtype=object), type=pa.string())


def _strip_categorical(column: pd.Series) -> np.ndarray:
    """Return stripped text values of shape (n_rows,), ``""`` where missing.

    Integral floats (from a frame that pandas parsed as numbers) are written
    without a decimal point, so ``6.0`` matches the vocabulary entry ``"6"``.
    """
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    texts = [_category_text(value) for value in uniques]
    lookup = np.array([*texts, ""], dtype=object)
    return lookup[codes]


def _category_text(value: object) -> str:
    if isinstance(value, float | np.floating):
        integral = _integral_text(str(value))
        return integral if integral is not None else str(value)
    return str(value).strip()


def _duplicate_rows(frame: pd.DataFrame, numeric: np.ndarray) -> np.ndarray:
    """Flag rows of shape (n_rows,) that equal an earlier row in every column.

    Comparing all text columns of a large frame is slow, so rows are first
    grouped by a hash of their parsed numeric features. Rows equal in every
    column also have equal features, so only rows whose hash occurs more than
    once need the exact comparison.
    """
    if numeric.shape[1] == 0:
        return frame.duplicated(keep="first").to_numpy()
    row_hash = _hash_rows(numeric)
    candidates = np.flatnonzero(pd.Series(row_hash).duplicated(keep=False).to_numpy())
    if len(candidates) > len(frame) // 2:
        # Copying most of the frame costs more than comparing all of it.
        return frame.duplicated(keep="first").to_numpy()
    duplicate = np.zeros(len(frame), dtype=bool)
    if len(candidates):
        subset = frame.iloc[candidates]
        duplicate[candidates] = subset.duplicated(keep="first").to_numpy()
    return duplicate


def _hash_rows(matrix: np.ndarray) -> np.ndarray:
    """Mix the bit patterns of each row of a float64 matrix into one uint64."""
    # Adding 0.0 turns -0.0 into 0.0, and NaN payloads are unified, because
    # pandas compares those values as equal.
    canonical = np.where(np.isnan(matrix), np.nan, matrix + 0.0)
    bits = canonical.view(np.uint64)
    row_hash = np.zeros(matrix.shape[0], dtype=np.uint64)
    multiplier = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for position in range(matrix.shape[1]):
            row_hash = (row_hash ^ bits[:, position]) * multiplier
            row_hash ^= row_hash >> np.uint64(29)
    return row_hash


def _nonzero_counts(columns: tuple[str, ...], counts: np.ndarray) -> dict[str, int]:
    return {column: int(count) for column, count in zip(columns, counts, strict=True) if count}


def _top_columns(counts: Mapping[str, int]) -> str:
    """Format the columns with the largest counts, for example ``Sport (3), Dur (1)``."""
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    listed = ", ".join(f"{column} ({count})" for column, count in ranked[:_TOP_COLUMNS])
    rest = len(ranked) - _TOP_COLUMNS
    return f"{listed} and {rest} more column(s)" if rest > 0 else listed


def _no_rows_message(report: CleaningReport, task: TaskConfig, config: DatasetConfig) -> str:
    causes = [f"{report.rows_read} read"]
    if report.rows_without_label:
        causes.append(f"{report.rows_without_label} without a {task.label_column!r} value")
    if report.rows_dropped_missing:
        causes.append(f"{report.rows_dropped_missing} with missing numeric values")
    if report.duplicates_dropped:
        causes.append(f"{report.duplicates_dropped} duplicates")
    advice = "check the file's contents against the dataset configuration"
    if report.rows_dropped_missing:
        advice = f'set missing_values = "impute" in {config.source} to keep rows with missing values'
    elif report.rows_without_label:
        advice = f"check the {task.label_column!r} column, or load without labels"
    return f"{report.source}: no rows left after cleaning ({', '.join(causes)}); {advice}"


def _log_report(report: CleaningReport, task: TaskConfig, config: DatasetConfig) -> None:
    source = report.source
    if report.non_numeric_tokens:
        total = sum(report.non_numeric_tokens.values())
        logger.warning(
            "clean: replaced %d non-numeric token(s) with missing values in %s: %s",
            total, source, _top_columns(report.non_numeric_tokens),
        )
    if report.infinities:
        total = sum(report.infinities.values())
        logger.warning(
            "clean: replaced %d infinite value(s) with missing values in %s: %s",
            total, source, _top_columns(report.infinities),
        )
    if report.rows_without_label:
        logger.warning(
            "clean: dropped %d row(s) without a %r value from %s",
            report.rows_without_label, task.label_column, source,
        )
    if report.rows_dropped_missing:
        logger.warning(
            "clean: dropped %d row(s) with missing numeric values from %s (missing_values = \"drop\"): %s",
            report.rows_dropped_missing, source, _top_columns(report.missing_values),
        )
    if report.duplicates_dropped:
        logger.warning(
            "clean: dropped %d exact duplicate row(s) from %s",
            report.duplicates_dropped, source,
        )
    logger.info(
        "clean: kept %d of %d rows from %s (%d without label, %d with missing values dropped, "
        "%d duplicates; %d values left for imputation, policy %r)",
        report.rows_kept, report.rows_read, source, report.rows_without_label,
        report.rows_dropped_missing, report.duplicates_dropped,
        report.values_left_for_imputation, config.missing_values,
    )
