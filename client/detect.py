"""Detection at a hospital site: score a flow CSV with a verified model bundle.

Command::

    python -m client.detect --model BUNDLE --input TRAFFIC.csv --out PREDICTIONS.csv \\
        [--summary SUMMARY.json] [--follow] [--public-key bundle-signing.pub]

``BUNDLE`` is a bundle folder or ``.tar.gz`` archive, for example the
``current`` link that ``client.pull`` maintains. Its signature and
checksums are verified before anything is loaded.

How flows are scored:

- the input is read one flow per line (``client.flow_lines``, with the
  training loader's parser) and cleaned by the same loader as training
  (``common.loading``) with the bundle's own dataset rules, and transformed
  by the bundle's own preprocessing (agreed minimum and maximum,
  vocabularies). Two rules differ from training so that every flow gets a
  verdict: missing numeric values are always imputed with the federation's
  mean instead of dropping the row, and duplicate rows are kept;
- flows are windowed in file (capture) order. The model decides about the
  last flow of each window of W flows, so the first W - 1 flows of a file
  (or of a ``--follow`` stream) have no full window and are **not scored**.
  They get no row in the predictions, ``rows_scored`` is ``rows_read - (W -
  1)``, and the summary lists them as ``unscored_rows``. Padding them with
  copies of the first flow would feed the model windows it never saw in
  training;
- a malformed line (more fields than the header, an unclosed quote, a
  repeated header) is scored as a row of empty values, so the rows after it
  keep their numbers, and a WARNING counts such lines;
- an *episode* is a maximal run of consecutive scored flows predicted as
  an attack, reported with its first and last data row (0-based, header
  excluded), its flow count, its most frequent attack class and its peak
  attack probability.

The work is vectorised over all rows (arrays, sliding windows, run-length
encoding of the attack flags); Python loops run only per batch and per episode.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import pandas as pd

from client.flow_lines import DEFAULT_CHUNK_BYTES, FlowLineReader, read_flow_chunks
from common.bundle import PUBLIC_KEY_ENV, Bundle, load_bundle, load_public_key
from common.config import DatasetConfig
from common.exceptions import DataFileNotFoundError, DataValidationError, FedIDSError, ModelMismatchError
from common.inference import RUNTIMES, Predictor, make_predictor
from common.loading import clean_flows, delimiter_hint, map_labels

logger = logging.getLogger(__name__)

#: Windows built and scored at once; bounds memory on large files
#: (65,536 windows of 16 flows x 37 inputs are 155 MB of float32).
WINDOWS_PER_STEP = 65_536

#: Decimal places of probabilities in the predictions CSV.
PROBABILITY_DECIMALS = 6

#: Seconds between the WARNINGs that --follow logs while its input file does not exist.
MISSING_INPUT_WARNING_SECONDS = 60.0

#: Exit status of a successful run, also when SIGINT or SIGTERM ends --follow.
EXIT_OK = 0


@dataclass
class Episode:
    """A maximal run of consecutive scored flows predicted as an attack.

    Attributes
    ----------
    first_row, last_row : int
        Data rows (0-based, header excluded) of the first and last flow.
    predicted : str
        The most frequent attack class among the episode's flows.
    flows : int
        Number of flows in the episode.
    peak_probability : float
        Highest attack probability (1 - probability of the normal class).
    """

    first_row: int
    last_row: int
    predicted: str
    flows: int
    peak_probability: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DetectionResult:
    """Per-flow predictions and their summary.

    Attributes
    ----------
    predictions : pandas.DataFrame
        One row per scored flow with the columns ``row`` (0-based data row of
        the input), ``predicted`` (class name), ``probability`` (of the
        predicted class) and ``attack_probability`` (1 - probability of the
        normal class). When the input has the bundle's label column, ``label``
        is the true class, ``""`` where the label is missing.
    class_counts : dict of str to int
        Predicted class to number of flows, every class listed.
    episodes : list of Episode
    model_version : str
    signature_verified : bool
    rows_read : int
        Data rows in the input.
    rows_scored : int
        Rows with a prediction; the first W - 1 rows have none.
    seconds : float
        Wall time of reading, cleaning, scoring and summarising.
    runtime : str
        ``"onnx"`` or ``"keras"``.
    source : str
        The input file, or ``"<frame>"``.
    window : int
        Flows per window (W).
    normal_class : str
        The benign class; every other class is an attack.
    mostly_imputed_rows : int
        Scored flows with more than half of their numeric features missing.
    empty_columns : tuple of str
        Numeric columns that held no number in a batch of at least
        ``EMPTY_COLUMN_MIN_ROWS`` flows, so imputed values stood in for them.
    """

    predictions: pd.DataFrame
    class_counts: dict[str, int]
    episodes: list[Episode]
    model_version: str
    signature_verified: bool
    rows_read: int
    rows_scored: int
    seconds: float
    runtime: str = ""
    source: str = "<frame>"
    window: int = 1
    normal_class: str = "normal"
    mostly_imputed_rows: int = 0
    empty_columns: tuple[str, ...] = ()

    def to_summary(self) -> dict[str, Any]:
        """Return counts, episodes, model version, verification, row counts and time as JSON-safe values."""
        unscored = self.rows_read - self.rows_scored
        return {
            "source": self.source,
            "model_version": self.model_version,
            "signature_verified": self.signature_verified,
            "runtime": self.runtime,
            "window": self.window,
            "rows_read": self.rows_read,
            "rows_scored": self.rows_scored,
            "unscored_rows": None if unscored <= 0 else {"first_row": 0, "last_row": unscored - 1},
            "mostly_imputed_rows": self.mostly_imputed_rows,
            "empty_columns": list(self.empty_columns),
            "class_counts": dict(self.class_counts),
            "episodes": [episode.to_dict() for episode in self.episodes],
            "seconds": round(self.seconds, 4),
        }

    def write_predictions(self, path: str | os.PathLike[str]) -> Path:
        """Write the predictions as CSV (header, one line per scored flow) and return the path."""
        target = Path(path)
        _write_prediction_rows(self.predictions, target, header=True, mode="w")
        return target


def _write_prediction_rows(frame: pd.DataFrame, path: Path, *, header: bool, mode: Literal["w", "a"]) -> None:
    frame.to_csv(path, index=False, header=header, mode=mode, float_format=f"%.{PROBABILITY_DECIMALS}f")


# ---------------------------------------------------------------------------
# The streaming core shared by whole files and --follow
# ---------------------------------------------------------------------------


@dataclass
class _OpenEpisode:
    first_row: int
    last_row: int
    flows: int
    peak: float
    class_counts: np.ndarray


#: Rows a chunk needs before a numeric column without any number is reported.
#: A few rows without a value can be normal, but a whole batch points to the exporter.
EMPTY_COLUMN_MIN_ROWS = 20


def detection_config(config: DatasetConfig) -> DatasetConfig:
    """Return the dataset rules for detection: impute missing values and keep duplicates, so every row is scored."""
    return dataclasses.replace(config, missing_values="impute", drop_duplicates=False)


@dataclass
class FlowDetector:
    """Score flows chunk by chunk, carrying windows and open episodes across chunks.

    Parameters
    ----------
    bundle : Bundle
        A verified bundle.
    predictor : Predictor
        The runtime that turns windows into probabilities.
    """

    bundle: Bundle
    predictor: Predictor
    rows_read: int = 0
    rows_scored: int = 0
    mostly_imputed_rows: int = 0
    # Numeric columns without a single number in a chunk of at least
    # EMPTY_COLUMN_MIN_ROWS rows, in the order they were first found.
    empty_columns: list[str] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    _context: np.ndarray | None = None
    _open: _OpenEpisode | None = None
    _counts: np.ndarray | None = None
    # Unknown label values already warned about, so that a --follow run or a
    # file read in many chunks logs each value once instead of once per batch.
    _reported_labels: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        preprocessor = self.bundle.preprocessor
        self.config = detection_config(self.bundle.dataset_config)
        self.task = self.config.task(preprocessor.task)
        self.classes = np.array(preprocessor.classes, dtype=object)
        self.normal_index = preprocessor.classes.index(preprocessor.normal_class)
        self.window = preprocessor.window
        self._context = np.empty((0, preprocessor.n_features), dtype=np.float32)
        self._counts = np.zeros(preprocessor.n_classes, dtype=np.int64)

    @property
    def class_counts(self) -> dict[str, int]:
        assert self._counts is not None
        return {str(name): int(count) for name, count in zip(self.classes, self._counts, strict=True)}

    def check_columns(self, columns: Sequence[str], source: str) -> None:
        """Raise DataValidationError naming every input column of the bundle's preprocessing that is missing."""
        present = set(columns)
        missing = [name for name in self.bundle.preprocessor.input_columns if name not in present]
        if missing:
            raise DataValidationError(
                f"{source}: missing {len(missing)} column(s) that model {self.bundle.version} needs: {missing}; "
                f"the flow exporter must write the same columns as the {self.bundle.preprocessor.dataset!r} "
                f"training data.{delimiter_hint(list(columns))}"
            )

    def process(self, frame: pd.DataFrame, source: str) -> pd.DataFrame:
        """Score one chunk of raw flows (all columns as read) and return its predictions.

        Rows are numbered after the rows of earlier chunks.
        """
        self.check_columns([str(column) for column in frame.columns], source)
        offset = self.rows_read
        self.rows_read += len(frame)
        if len(frame) == 0:
            return self._empty_predictions(frame)

        table = clean_flows(frame, self.config, self.task, source=source, require_labels=False)
        self._warn_mostly_missing(table.features, len(frame), source)
        X = self.bundle.preprocessor.transform(table.features)
        assert table.source_rows is not None and self._context is not None
        rows = table.source_rows + offset

        # Windows end at every row of this chunk that has W - 1 predecessors, counting the carried context.
        history = np.concatenate([self._context, X])
        first_scored = max(self.window - 1 - len(self._context), 0)
        probabilities = self._score(history, len(X) - first_scored)
        self._context = history[len(history) - (self.window - 1) :] if self.window > 1 else history[:0]
        scored_rows = rows[first_scored:]

        predictions = self._predictions(scored_rows, probabilities)
        if self.task.label_column in frame.columns:
            predictions["label"] = self._labels(frame, table.source_rows[first_scored:], source)
        self.rows_scored += len(scored_rows)
        return predictions

    def _warn_mostly_missing(self, features: pd.DataFrame, n_rows: int, source: str) -> None:
        """Count and log rows whose numeric features are mostly empty, infinite or not numbers.

        Such rows (cut-off lines, text where numbers belong) are still scored,
        so that every flow keeps its place in the windows, but their verdict
        rests on the federation's imputed means rather than on the traffic.
        ``features`` is the cleaned table, where every such value is NaN.
        """
        columns = list(self.config.numeric_features)
        if not columns:
            return
        missing = np.isnan(features[columns].to_numpy(dtype=np.float64))
        empty_columns = [column for column, empty in zip(columns, missing.all(axis=0), strict=True) if empty]
        if empty_columns and n_rows >= EMPTY_COLUMN_MIN_ROWS:
            self.empty_columns += [column for column in empty_columns if column not in self.empty_columns]
            logger.warning(
                "detect: column(s) %s in %s hold no numbers in %d flow(s), so the federation's imputed values "
                "stand in for them; check the flow exporter",
                empty_columns,
                source,
                n_rows,
            )
        missing_share = missing.mean(axis=1)
        count = int(np.count_nonzero(missing_share > 0.5))
        if count:
            self.mostly_imputed_rows += count
            logger.warning(
                "detect: %d of %d flow(s) in %s have more than half of their %d numeric features empty, "
                "infinite or not numbers; their verdicts rest on imputed values, so check the flow exporter",
                count,
                n_rows,
                source,
                len(columns),
            )

    def _score(self, history: np.ndarray, n_windows: int) -> np.ndarray:
        """Return probabilities of shape (n_windows, n_classes) for the last n_windows windows of ``history``."""
        n_classes = len(self.classes)
        if n_windows <= 0:
            return np.empty((0, n_classes), dtype=np.float32)
        start = len(history) - n_windows - (self.window - 1)
        parts = []
        for step_start in range(0, n_windows, WINDOWS_PER_STEP):
            step_end = min(step_start + WINDOWS_PER_STEP, n_windows)
            block = history[start + step_start : start + step_end + self.window - 1]
            parts.append(self.predictor.predict(_windows(block, self.window)))
        probabilities = np.concatenate(parts)
        if not np.all(np.isfinite(probabilities)):
            # NaN probabilities would all be read as the first class, so a broken model would hide every attack.
            raise ModelMismatchError(
                "the model returned NaN or infinite probabilities (its weights are probably not finite); "
                "pull another model version"
            )
        return probabilities

    def _predictions(self, rows: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
        predicted = probabilities.argmax(axis=1)
        probability = probabilities[np.arange(len(predicted)), predicted]
        attack_probability = 1.0 - probabilities[:, self.normal_index]
        assert self._counts is not None
        self._counts += np.bincount(predicted, minlength=len(self.classes))
        self._update_episodes(rows, predicted, attack_probability)
        return pd.DataFrame(
            {
                "row": rows.astype(np.int64),
                "predicted": self.classes[predicted],
                "probability": probability.astype(np.float64),
                "attack_probability": attack_probability.astype(np.float64),
            }
        )

    def _labels(self, frame: pd.DataFrame, positions: np.ndarray, source: str) -> np.ndarray:
        values = frame[self.task.label_column].iloc[positions]
        try:
            indices = map_labels(values, self.task, self.config, source)
        except DataValidationError:
            indices = self._labels_known_only(values, source)
        names = np.array([*self.classes, ""], dtype=object)
        return names[indices]  # index -1 (missing or unknown label) picks the trailing ""

    def _labels_known_only(self, values: pd.Series, source: str) -> np.ndarray:
        """Map each label value on its own, so that only the rows with an unknown value lose their label."""
        indices = np.full(len(values), -1, dtype=np.int64)
        unknown: dict[str, int] = {}
        for value in pd.unique(values):
            matches = (values == value).to_numpy() if not pd.isna(value) else values.isna().to_numpy()
            try:
                indices[matches] = map_labels(values[matches].iloc[:1], self.task, self.config, source)[0]
            except DataValidationError:
                unknown[str(value).strip()] = int(matches.sum())
        new = {value: count for value, count in unknown.items() if value not in self._reported_labels}
        if not new:
            logger.debug("detect: %d more row(s) of %s with unknown labels %s", sum(unknown.values()), source, unknown)
            return indices
        self._reported_labels.update(new)
        listed = ", ".join(f"{value!r} ({count})" for value, count in new.items())
        logger.warning(
            "detect: %d row(s) of %s have %r values that the model's task %r does not know: %s; their "
            "label is left blank in the predictions (labels are only compared with the predictions, "
            "never model inputs); later rows with these values are blanked without another warning",
            sum(new.values()),
            source,
            self.task.label_column,
            self.task.name,
            listed,
        )
        return indices

    def _update_episodes(self, rows: np.ndarray, predicted: np.ndarray, attack_probability: np.ndarray) -> None:
        if len(predicted) == 0:
            return  # nothing scored, so a running episode neither grows nor ends
        attack = predicted != self.normal_index
        if not attack.any():
            self._close()
            return
        # Run-length encoding: +1 where a run of attack flows starts, -1 after it ends.
        edges = np.diff(np.concatenate([[0], attack.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        bounds = np.column_stack([starts, ends]).ravel()
        # reduceat needs every index inside the array, so a sentinel row sits at position len(rows).
        peaks = np.maximum.reduceat(np.append(attack_probability, 0.0), bounds)[::2]
        one_hot = np.zeros((len(predicted) + 1, len(self.classes)), dtype=np.int64)
        one_hot[np.arange(len(predicted)), predicted] = 1
        class_counts = np.add.reduceat(one_hot, bounds, axis=0)[::2]

        for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if index == 0 and start == 0 and self._open is not None:
                episode = self._open
                episode.last_row = int(rows[end - 1])
                episode.flows += end - start
                episode.peak = max(episode.peak, float(peaks[index]))
                episode.class_counts += class_counts[index]
            else:
                self._close()
                self._open = _OpenEpisode(
                    int(rows[start]), int(rows[end - 1]), end - start, float(peaks[index]), class_counts[index].copy()
                )
            if end < len(rows):
                self._close()

    def _close(self) -> None:
        if self._open is None:
            return
        counts = self._open.class_counts.copy()
        counts[self.normal_index] = -1
        episode = Episode(
            first_row=self._open.first_row,
            last_row=self._open.last_row,
            predicted=str(self.classes[int(counts.argmax())]),
            flows=self._open.flows,
            peak_probability=round(self._open.peak, PROBABILITY_DECIMALS),
        )
        self.episodes.append(episode)
        self._open = None

    @property
    def open_episode(self) -> Episode | None:
        """The episode still running at the last scored flow, if any (closed by :meth:`finish`)."""
        return None if self._open is None else Episode(
            self._open.first_row, self._open.last_row, "", self._open.flows, self._open.peak
        )

    def finish(self) -> None:
        """Close an episode that runs to the last scored flow."""
        self._close()

    def _empty_predictions(self, frame: pd.DataFrame) -> pd.DataFrame:
        empty = pd.DataFrame(
            {
                "row": np.empty(0, dtype=np.int64),
                "predicted": np.empty(0, dtype=object),
                "probability": np.empty(0),
                "attack_probability": np.empty(0),
            }
        )
        if self.task.label_column in frame.columns:
            empty["label"] = np.empty(0, dtype=object)
        return empty


def _windows(block: np.ndarray, window: int) -> np.ndarray:
    """Return the windows of ``block`` of shape (n_rows - W + 1, W, n_features) as one contiguous array."""
    if window == 1:
        return block[:, np.newaxis, :]
    view = np.lib.stride_tricks.sliding_window_view(block, window, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


# ---------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------


def _predictor_for(
    bundle: Bundle, predictor: Predictor | None, runtime: str, batch_size: int | None, threads: int | None = None
) -> Predictor:
    if predictor is not None:
        return predictor
    return make_predictor(bundle, runtime, batch_size=batch_size, threads=threads)


def detect_frame(
    bundle: Bundle,
    frame: pd.DataFrame,
    *,
    source: str = "<frame>",
    batch_size: int | None = None,
    runtime: str = "auto",
    predictor: Predictor | None = None,
) -> DetectionResult:
    """Score raw flows with a verified bundle.

    Parameters
    ----------
    bundle : Bundle
        From :func:`common.bundle.load_bundle`.
    frame : pandas.DataFrame of shape (n_rows, n_columns)
        Raw flows in capture order, for example :func:`common.loading.read_flow_csv`
        output. Columns other than the bundle's inputs and label are ignored.
    source : str
        Name of the input in messages and the summary.
    batch_size : int, optional
        Windows per runtime call (runtime default when omitted).
    runtime : {"auto", "onnx", "keras"}
        See :func:`common.inference.make_predictor`.
    predictor : Predictor, optional
        A ready runtime; built from ``runtime`` when omitted. Pass one to
        score many frames without rebuilding it.

    Returns
    -------
    DetectionResult

    Raises
    ------
    DataValidationError
        If the frame lacks input columns of the bundle's preprocessing (all
        of them are named).
    """
    started = time.perf_counter()
    detector = FlowDetector(bundle, _predictor_for(bundle, predictor, runtime, batch_size))
    predictions = detector.process(frame, source)
    detector.finish()
    return _result(detector, predictions, source, time.perf_counter() - started)


def detect_file(
    bundle: Bundle,
    path: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    runtime: str = "auto",
    predictor: Predictor | None = None,
) -> DetectionResult:
    """Score a plain or gzip flow CSV chunk by chunk and return the predictions of all its flows.

    The file is read as :func:`detect_to_csv` reads it, so the predictions
    are equal. A malformed line is scored as a row of empty values with a
    WARNING (see :mod:`client.flow_lines`). Only the predictions of earlier
    chunks are kept, not their rows.

    Raises
    ------
    DataFileNotFoundError, EmptyDataError, DataValidationError
        If the file is missing, empty, not CSV, or lacks the bundle's input columns.
    """
    started = time.perf_counter()
    _require_input(path)
    detector = FlowDetector(bundle, _predictor_for(bundle, predictor, runtime, batch_size))
    parts = [detector.process(frame, str(path)) for frame in read_flow_chunks(path)]
    detector.finish()
    return _result(detector, pd.concat(parts, ignore_index=True), str(path), time.perf_counter() - started)


def detect_to_csv(
    bundle: Bundle,
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    batch_size: int | None = None,
    runtime: str = "auto",
    predictor: Predictor | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> DetectionResult:
    """Score a flow CSV chunk by chunk and write the predictions of each chunk to ``out`` as it is scored.

    ``stop_requested`` is asked after every chunk; when it returns true, the
    scoring ends with :class:`DetectionStoppedError` and ``out`` is not written.

    Memory stays bounded by the chunk size whatever the size of the capture,
    because neither the rows nor the predictions of earlier chunks are kept.
    Windows and alert episodes continue across chunks, so the predictions
    equal those of :func:`detect_file`. A malformed line is scored as a row
    of empty values with a WARNING (see :mod:`client.flow_lines`). ``out`` is
    written under a temporary name and renamed when the whole file has been
    scored, so a failure leaves no partial predictions file.

    Returns
    -------
    DetectionResult
        Counts, episodes and timing, with empty ``predictions`` (they are in ``out``).

    Raises
    ------
    DataFileNotFoundError, EmptyDataError, DataValidationError
        As :func:`detect_file`, for the chunk that has the problem.
    """
    started = time.perf_counter()
    _require_input(path)
    target = Path(out)
    if not target.parent.is_dir():
        raise DataFileNotFoundError(f"output folder not found: {target.parent}; create it or choose another --out")
    partial = target.with_name(target.name + ".partial")
    detector = FlowDetector(bundle, _predictor_for(bundle, predictor, runtime, batch_size))
    written_header = False
    try:
        for frame in read_flow_chunks(path, chunk_bytes=chunk_bytes):
            predictions = detector.process(frame, str(path))
            _write_prediction_rows(predictions, partial, header=not written_header, mode="a" if written_header else "w")
            written_header = True
            if stop_requested is not None and stop_requested():
                raise DetectionStoppedError(f"{target} was not written")
        if stop_requested is not None and stop_requested():
            raise DetectionStoppedError(f"{target} was not written")
        detector.finish()
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    empty = detector._empty_predictions(pd.DataFrame())
    return _result(detector, empty, str(path), time.perf_counter() - started)


def _require_input(path: str | os.PathLike[str]) -> None:
    """Raise DataFileNotFoundError naming the traffic file when it does not exist."""
    if not Path(path).exists():
        raise DataFileNotFoundError(f"input file not found: {path}; check --input")


def _result(detector: FlowDetector, predictions: pd.DataFrame, source: str, seconds: float) -> DetectionResult:
    return DetectionResult(
        predictions=predictions,
        class_counts=detector.class_counts,
        episodes=list(detector.episodes),
        model_version=str(detector.bundle.version),
        signature_verified=detector.bundle.signature_verified,
        rows_read=detector.rows_read,
        rows_scored=detector.rows_scored,
        seconds=seconds,
        runtime=detector.predictor.name,
        source=source,
        window=detector.window,
        normal_class=str(detector.classes[detector.normal_index]),
        mostly_imputed_rows=detector.mostly_imputed_rows,
        empty_columns=tuple(detector.empty_columns),
    )


# ---------------------------------------------------------------------------
# --follow: score rows as a flow exporter appends them
# ---------------------------------------------------------------------------


class DetectionStoppedError(Exception):
    """Raised by :func:`detect_to_csv` when its ``stop_requested`` callback returns true."""


class _Interrupt:
    """The first SIGINT or SIGTERM during a one-off scoring, checked between chunks.

    The handler only records the signal. An exception raised from it could
    land inside TensorFlow, which has swallowed a KeyboardInterrupt and
    scored on to the end.
    """

    signum: int | None = None

    @classmethod
    def handle(cls, signum: int, _frame: FrameType | None) -> None:
        if cls.signum is None:
            cls.signum = signum

    @classmethod
    def requested(cls) -> bool:
        return cls.signum is not None


class _Stop:
    """Set by SIGINT or SIGTERM, so --follow finishes its summary instead of dying mid-write."""

    requested = False

    @classmethod
    def handle(cls, signum: int, frame: FrameType | None) -> None:
        if not cls.requested:
            logger.info("follow: %s received; finishing the summary and stopping", signal.Signals(signum).name)
        cls.requested = True


def follow_chunks(
    path: Path, *, poll_seconds: float, idle_timeout: float, max_chunk_bytes: int = 8 * 1024 * 1024
) -> Iterator[pd.DataFrame]:
    """Yield frames of the complete lines appended to a CSV file, starting with the rows already in it.

    A line is processed only when its newline has been written, so a row the
    exporter is still writing is never split. A malformed line (more fields
    than the header, an unclosed quote, a repeated header) does not stop the
    generator. As in one-off detection, :class:`client.flow_lines.FlowLineReader`
    makes it a row of empty values, which keeps the row numbers in step with
    the file, and a WARNING names it. When the file is
    replaced (rotated by renaming), the new file is read from its start; its
    header must equal the first file's, and its rows are numbered on from the
    last row of the file before. The generator ends after
    ``idle_timeout`` seconds without a new line (0 waits for ever) or when
    SIGINT or SIGTERM arrives.

    A file that does not exist yet is waited for (also at most
    ``idle_timeout`` seconds), because an exporter may create it after
    detection starts.

    Raises
    ------
    DataFileNotFoundError
        If the file's folder is missing or removed (also while following),
        or the file is still missing after ``idle_timeout`` seconds.
    DataValidationError
        If the path is a folder, or the file is gzip-compressed, shrinks
        (truncated in place), is replaced by a file with another header, or
        has a line longer than :data:`client.flow_lines.MAX_LINE_BYTES`.
    """
    if not _wait_for_file(path, poll_seconds=poll_seconds, idle_timeout=idle_timeout):
        return
    reader = FlowLineReader(path, step="follow")
    last_data = time.monotonic()
    missing_since: float | None = None
    missing_warnings = 0
    while True:
        with path.open("rb") as stream:
            if stream.read(2) == b"\x1f\x8b":
                raise DataValidationError(f"{path}: --follow reads plain CSV only; this file is gzip-compressed")
            stream.seek(0)
            identity = os.fstat(stream.fileno()).st_ino
            reader.start_file()
            position = 0
            replaced = False
            while not _Stop.requested:
                chunk = stream.read(max_chunk_bytes)
                if chunk:
                    position += len(chunk)
                    frame = reader.feed(chunk)
                    if frame is not None:
                        last_data = time.monotonic()
                        yield frame
                    continue
                current = _stat_or_none(path)
                if current is None and not path.parent.is_dir():
                    raise DataFileNotFoundError(
                        f"input folder {path.parent} was removed while following {path.name}; check --input"
                    )
                now = time.monotonic()
                if current is None:
                    # A rotation recreates the file at once, so a long gap means it was deleted.
                    missing_since = now if missing_since is None else missing_since
                    if now - missing_since >= MISSING_INPUT_WARNING_SECONDS * (missing_warnings + 1):
                        missing_warnings += 1
                        logger.warning(
                            "follow: %s has been missing for %.0f s; it was deleted, or the exporter stopped "
                            "while rotating it",
                            path,
                            now - missing_since,
                        )
                else:
                    missing_since, missing_warnings = None, 0
                if current is not None and current.st_ino != identity:
                    logger.info(
                        "follow: %s was replaced (rotated); reading the new file from its start, as row %d on",
                        path,
                        reader.rows_read,
                    )
                    replaced = True
                    break
                if current is not None and current.st_size < position:
                    raise DataValidationError(
                        f"{path} shrank from {position} to {current.st_size} bytes (truncated in place); "
                        "restart detection on the new file"
                    )
                if idle_timeout > 0 and now - last_data >= idle_timeout:
                    logger.info("follow: no new rows in %s for %.0f s, stopping", path, idle_timeout)
                    return
                time.sleep(poll_seconds)
        if not replaced:
            return


def _wait_for_file(path: Path, *, poll_seconds: float, idle_timeout: float) -> bool:
    """Wait until ``path`` exists; return ``False`` when a stop signal arrives first.

    Raises
    ------
    DataFileNotFoundError
        If ``idle_timeout`` passes first or the file's folder is removed.
    """
    if path.is_file():
        return True
    if path.exists():
        raise DataValidationError(f"--input {path} is not a regular file; give the CSV file the exporter writes")
    if not path.parent.is_dir():
        raise DataFileNotFoundError(f"input folder not found: {path.parent}; check --input")
    logger.warning("follow: %s not found; waiting for it to be created (check --input if it never is)", path)
    started = last_warning = time.monotonic()
    while not _Stop.requested:
        time.sleep(poll_seconds)
        if path.is_file():
            logger.info("follow: %s was created; reading it", path)
            return True
        if not path.parent.is_dir():
            raise DataFileNotFoundError(
                f"input folder {path.parent} was removed while waiting for {path.name}; check --input"
            )
        now = time.monotonic()
        if idle_timeout > 0 and now - started >= idle_timeout:
            # Nothing was scored, so a silent success would hide a wrong path or a stopped exporter.
            raise DataFileNotFoundError(
                f"{path} not found after waiting {idle_timeout:g} s (--idle-timeout); "
                "check --input and that the flow exporter is running"
            )
        if now - last_warning >= MISSING_INPUT_WARNING_SECONDS:
            logger.warning("follow: still waiting for %s after %.0f s", path, now - started)
            last_warning = now
    return False


def _stat_or_none(path: Path) -> os.stat_result | None:
    """Return the file's status, or ``None`` while it is missing (between a rotation's rename and create)."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def follow_file(
    bundle: Bundle,
    path: Path,
    out: Path,
    *,
    runtime: str = "auto",
    batch_size: int | None = None,
    poll_seconds: float = 0.5,
    idle_timeout: float = 0.0,
    summary_path: Path | None = None,
    predictor: Predictor | None = None,
) -> DetectionResult:
    """Score a growing CSV file, appending predictions to ``out`` after every new batch of rows.

    Returns the totals when the file has been idle for ``idle_timeout``
    seconds or the process receives SIGINT or SIGTERM. The summary file is
    rewritten after every batch, so it is current while the command runs.
    Predictions are not kept in memory, so a site can follow an exporter for
    weeks: the result's ``predictions`` is empty and ``out`` has them all.
    """
    started = time.perf_counter()
    detector = FlowDetector(bundle, _predictor_for(bundle, predictor, runtime, batch_size))
    logger.info("follow: scoring %s as rows arrive (W=%d, runtime %s)", path, detector.window, detector.predictor.name)
    written_header = False
    reported = 0
    announced_start: int | None = None
    for frame in follow_chunks(path, poll_seconds=poll_seconds, idle_timeout=idle_timeout):
        predictions = detector.process(frame, str(path))
        _write_prediction_rows(predictions, out, header=not written_header, mode="a" if written_header else "w")
        written_header = True
        for episode in detector.episodes[reported:]:
            _print_alert(episode)
        reported = len(detector.episodes)
        running = detector.open_episode
        if running is not None and running.first_row != announced_start:
            # Announce an attack while it is still going on, not only when it ends.
            announced_start = running.first_row
            print(
                f"alert: attack in progress since row {running.first_row} "
                f"({running.flows} flows so far, peak attack probability {running.peak_probability:.3f})",
                flush=True,
            )
        if summary_path is not None:
            _write_summary(_result(detector, predictions, str(path), time.perf_counter() - started), summary_path)
    detector.finish()
    for episode in detector.episodes[reported:]:
        _print_alert(episode)
    if not written_header:
        _write_prediction_rows(detector._empty_predictions(pd.DataFrame()), out, header=True, mode="w")
    empty = detector._empty_predictions(pd.DataFrame())
    return _result(detector, empty, str(path), time.perf_counter() - started)


def _print_alert(episode: Episode) -> None:
    print(
        f"alert: rows {episode.first_row}-{episode.last_row}: {episode.predicted} "
        f"({episode.flows} flows, peak attack probability {episode.peak_probability:.3f})",
        flush=True,
    )


def _write_summary(result: DetectionResult, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(result.to_summary(), indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client.detect",
        description="Score a flow CSV with a signed model bundle and write per-flow predictions.",
    )

    parser.add_argument("--model", required=True, type=Path, help="bundle folder or .tar.gz archive")
    parser.add_argument("--input", required=True, type=Path, help="flow CSV (plain or gzip) in capture order")
    parser.add_argument("--out", required=True, type=Path, help="predictions CSV to write")
    parser.add_argument("--summary", type=Path, help="also write the summary (counts, episodes) as JSON here")
    parser.add_argument(
        "--public-key",
        type=Path,
        help=f"coordinator's public key PEM (default: the file named by ${PUBLIC_KEY_ENV})",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="load a bundle without a valid signature check (development only; checksums are still checked)",
    )

    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="inference runtime (default: auto)")
    parser.add_argument("--batch-size", type=int, help="windows per runtime call (default: runtime's own)")
    parser.add_argument(
        "--threads", type=int, help="parallel ONNX Runtime workers (default: one per CPU core; ignored by Keras)"
    )
    parser.add_argument("--follow", action="store_true", help="keep reading rows appended to --input")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        help="with --follow, stop after this many seconds without a new row (default: 0, run until interrupted)",
    )
    parser.add_argument(
        "--poll-seconds", type=float, help="with --follow, seconds between checks for new rows (default: 0.5)"
    )
    return parser


def _one_line(result: DetectionResult) -> str:
    attack_flows = sum(count for name, count in result.class_counts.items() if name != result.normal_class)
    verified = "signature verified" if result.signature_verified else "signature NOT verified"
    return (
        f"detect: scored {result.rows_scored} of {result.rows_read} flows from {result.source}: "
        f"{attack_flows} predicted as attack in {len(result.episodes)} episode(s); "
        f"model {result.model_version} ({verified}), runtime {result.runtime}, {result.seconds:.2f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 success, 1 bad input or bundle, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    follow_only = [
        option
        for option, value in (("--idle-timeout", args.idle_timeout), ("--poll-seconds", args.poll_seconds))
        if value is not None
    ]
    if follow_only and not args.follow:
        verb = "work" if len(follow_only) > 1 else "works"
        parser.error(f"{' and '.join(follow_only)} only {verb} with --follow")
    args.idle_timeout = 0.0 if args.idle_timeout is None else args.idle_timeout
    args.poll_seconds = 0.5 if args.poll_seconds is None else args.poll_seconds
    # A zero poll interval would spin a core, and a negative or NaN idle timeout would never expire.
    if not (math.isfinite(args.poll_seconds) and args.poll_seconds > 0):
        parser.error(f"--poll-seconds must be a finite number above 0, got {args.poll_seconds}")
    if not (math.isfinite(args.idle_timeout) and args.idle_timeout >= 0):
        parser.error(f"--idle-timeout must be 0 (no limit) or a finite number of seconds, got {args.idle_timeout}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # --follow replaces these handlers with ones that finish the summary first.
    _Interrupt.signum = None
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous_handlers = [(number, signal.signal(number, _Interrupt.handle)) for number in stop_signals]
    try:
        for option, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
            if value is not None and value < 1:
                raise DataValidationError(f"{option} must be at least 1, got {value}")
        for option, target in (("--out", args.out), ("--summary", args.summary)):
            if target is not None and not target.resolve().parent.is_dir():
                raise DataValidationError(f"{option} {target}: folder {target.parent} not found; create it first")
            if target is not None and target.is_dir():
                raise DataValidationError(f"{option} {target} is a folder; give a file name inside it")
            # The output is written beside the target and renamed over it, which would
            # replace a device, a pipe or a symbolic link instead of writing through it.
            if target is not None and (target.is_symlink() or (target.exists() and not target.is_file())):
                raise DataValidationError(
                    f"{option} {target} is not a regular file (a link, device or pipe); give a plain file name"
                )
        if args.summary is not None and args.summary.resolve() == args.out.resolve():
            raise DataValidationError(f"--summary {args.summary} is also --out; give two different files")
        written = [path.resolve() for path in (args.out, args.summary) if path is not None]
        if args.input.resolve() in written:
            raise DataValidationError(
                f"--input {args.input} is also an output file; choose another --out or --summary "
                "so that the capture is not overwritten"
            )
        public_key = load_public_key(args.public_key) if args.public_key is not None else None
        bundle = load_bundle(args.model, public_key, require_signature=not args.allow_unsigned)
        predictor = make_predictor(bundle, args.runtime, batch_size=args.batch_size, threads=args.threads)
        # A signal that came while the bundle and runtime were loading ends the command before any scoring.
        if _Interrupt.requested():
            raise DetectionStoppedError(f"{args.out} was not written")
        if args.follow:
            signal.signal(signal.SIGINT, _Stop.handle)
            signal.signal(signal.SIGTERM, _Stop.handle)
            result = follow_file(
                bundle,
                args.input,
                args.out,
                poll_seconds=args.poll_seconds,
                idle_timeout=args.idle_timeout,
                summary_path=args.summary,
                predictor=predictor,
            )
        else:
            result = detect_to_csv(
                bundle, args.input, args.out, predictor=predictor, stop_requested=_Interrupt.requested
            )
        if args.summary is not None:
            _write_summary(result, args.summary)
    except (FedIDSError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except DetectionStoppedError as stopped:
        signum = _Interrupt.signum or signal.SIGINT
        print(f"{'interrupted' if signum == signal.SIGINT else 'terminated'}; {stopped}", file=sys.stderr)
        return 128 + signum
    finally:
        for number, handler in previous_handlers:
            signal.signal(number, handler)
    print(_one_line(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
