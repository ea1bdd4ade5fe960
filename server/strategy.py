"""FedAvg for the intrusion detector, with per-site bookkeeping and exact federation-wide metrics.

Weights are averaged by Federated Averaging (McMahan et al., 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data"),
weighted by each site's ``num-examples``. On top of Flower's FedAvg this
strategy

- adds the federation's preprocessing to every train and evaluate message;
- matches replies to the sent messages by ``reply_to_message_id``, so each
  error, malformed reply and timeout is recorded with its node id;
- keeps the global weights when fewer than ``min-sites`` sites return a
  valid reply, or when no site trained on any window;
- sums the sites' confusion matrices and score histograms instead of
  averaging them, and computes the metrics from the sums with
  :func:`common.metrics.metrics_from_counts`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg

from common.exceptions import FedIDSError
from common.metrics import metrics_from_counts
from common.preprocessing import Preprocessor

logger = logging.getLogger(__name__)

#: Keys of a train reply's MetricRecord ``"metrics"``.
TRAIN_METRIC_KEYS = ("num-examples", "train-loss", "train-accuracy", "train-seconds")

#: Keys of an evaluate reply's MetricRecord ``"metrics"``: counts on the
#: site's test block, then the confusion matrix on its validation block.
EVALUATE_METRIC_KEYS = (
    "num-examples",
    "eval-loss",
    "confusion",
    "histograms",
    "histogram-bins",
    "val-num-examples",
    "val-confusion",
)

#: Scalar federation-wide metrics returned to Flower and written to history.jsonl.
SCALAR_METRICS = ("f1", "macro_f1", "precision", "recall", "fpr", "roc_auc", "accuracy")

#: Maximum length of a failure reason in logs and checkpoints.
MAX_REASON_CHARS = 300

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Flower's error reason: "<class 'module.Kind'>:<'message'>".
_WRAPPED_REASON = re.compile(r"^<class '(?P<kind>[^']+)'>:<'(?P<message>.*?)(?:'>)?$", re.DOTALL)
# The last line of a Python traceback, for example "common.exceptions.DataValidationError: file.csv: ...".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)(?:\([\w.]*\))?: \S")
# Exceptions that Ray and Flower wrap around the site's own exception.
_WRAPPER_PREFIXES = ("ray.", "flwr.")


class FederationError(FedIDSError, RuntimeError):
    """The federation cannot continue because too few sites connected or replied."""


def trim_reason(reason: str | None) -> str:
    """Shorten an error reason from a site to one readable line of at most 300 characters.

    ANSI colour codes are removed. In simulation, Flower reports a ClientApp
    exception as ``<class '...RayTaskError(ClientAppException)'>:<'...'>``
    around a whole traceback, whose first line names only Ray's actor. The
    site's own exception line (``common.exceptions.DataValidationError: ...``)
    is kept instead when the text contains one. Otherwise the first line is kept.
    """
    text = _ANSI_ESCAPE.sub("", reason or "").strip()
    kind = ""
    wrapped = _WRAPPED_REASON.match(text)
    if wrapped:
        kind, text = wrapped["kind"], wrapped["message"]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return kind or "no reason given"
    site_exceptions = [
        line for line in lines if _EXCEPTION_LINE.match(line) and not line.startswith(_WRAPPER_PREFIXES)
    ]
    if site_exceptions:
        chosen = site_exceptions[-1]
    elif len(lines) == 1 and kind:
        chosen = f"{kind}: {lines[0]}"
    else:
        chosen = lines[0]
    if len(chosen) > MAX_REASON_CHARS:
        chosen = chosen[: MAX_REASON_CHARS - 3] + "..."
    return chosen


@dataclass
class NodeFailure:
    """A site that replied with an error, replied with a malformed result or did not reply in time."""

    node_id: int
    phase: str
    reason: str
    code: int | None = None
    site: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "site": self.site,
            "phase": self.phase,
            "reason": self.reason,
            "code": self.code,
        }


@dataclass
class PhaseOutcome:
    """Outcome of the messages of one phase (train or evaluate) of a round.

    Attributes
    ----------
    sent : list of int
        Node ids the phase's messages went to.
    ok : dict of int to int
        Node id to ``num-examples`` of every valid reply.
    seconds : dict of int to float
        Node id to the local training time it reported, for train replies.
    failures : list of NodeFailure
        Error replies and malformed replies.
    timed_out : list of int
        Nodes whose reply did not arrive within the round timeout.
    aggregated : bool
        Whether the valid replies were aggregated.
    note : str
        Why they were not, when ``aggregated`` is false.
    """

    phase: str
    sent: list[int] = field(default_factory=list)
    ok: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    failures: list[NodeFailure] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    aggregated: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "ok": [{"node_id": node, "num_examples": count} for node, count in self.ok.items()],
            "failures": [failure.to_dict() for failure in self.failures],
            "timed_out": self.timed_out,
            "aggregated": self.aggregated,
            "note": self.note,
        }


@dataclass
class RoundRecord:
    """Outcome of one federated round, as written to its checkpoint."""

    server_round: int
    started: float = field(default_factory=time.monotonic)
    train: PhaseOutcome = field(default_factory=lambda: PhaseOutcome("train"))
    evaluate: PhaseOutcome = field(default_factory=lambda: PhaseOutcome("evaluate"))
    train_metrics: dict[str, int | float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    loss: float | None = None
    # Metrics on the sites' validation blocks, which (unlike the test blocks)
    # may be used to choose a round.
    validation_metrics: dict[str, Any] | None = None
    #: Node id to the hospital name the site reported in the query; unnamed sites are absent.
    site_names: dict[int, str] = field(default_factory=dict)

    @property
    def failures(self) -> list[NodeFailure]:
        """Failures of both phases, timeouts included."""
        timeouts = [
            NodeFailure(node, outcome.phase, "no reply before the round timeout", site=self.site_names.get(node, ""))
            for outcome in (self.train, self.evaluate)
            for node in outcome.timed_out
        ]
        return self.train.failures + self.evaluate.failures + timeouts

    @property
    def sites_ok(self) -> list[int]:
        """Nodes with a valid reply in both phases."""
        return sorted(set(self.train.ok) & set(self.evaluate.ok))


class FederatedIDSStrategy(FedAvg):
    """Federated Averaging (McMahan et al., 2017) with per-site failure records and summed evaluation counts.

    See McMahan, Moore, Ramage, Hampson and Agüera y Arcas, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data", AISTATS 2017.

    Parameters
    ----------
    preprocessor : Preprocessor
        The federation's agreed preprocessing; sent with every train and
        evaluate message, and the source of the class list for metrics.
    min_sites : int
        Minimum number of sites sampled per phase and of valid replies
        needed to update the weights or report metrics.
    round_timeout : float
        Seconds Flower waits for replies in each phase; used in log lines.
    fraction_train, fraction_evaluate : float
        Share of the connected nodes sampled for training and evaluation.
    """

    def __init__(
        self,
        preprocessor: Preprocessor,
        *,
        min_sites: int,
        round_timeout: float,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_sites,
            min_evaluate_nodes=min_sites,
            min_available_nodes=min_sites,
            weighted_by_key="num-examples",
            arrayrecord_key="arrays",
            configrecord_key="config",
            train_metrics_aggr_fn=aggregate_train_metrics,
        )
        self.preprocessor = preprocessor
        self.min_sites = min_sites
        self.round_timeout = round_timeout
        self.preprocessing_json = json.dumps(preprocessor.to_dict(), allow_nan=False)
        self.rounds: dict[int, RoundRecord] = {}
        #: Node id to hospital name, filled by the ServerApp from the query replies.
        self.site_names: dict[int, str] = {}
        self._sent: dict[str, list[Message]] = {"train": [], "evaluate": []}
        self._sent_shapes: dict[str, tuple[tuple[int, ...], str]] = {}
        # Histograms of several sites only add up with equal bins: the first
        # valid evaluate reply of a round sets the bin count for the others.
        self._histogram_bins: int | None = None

    def round_record(self, server_round: int) -> RoundRecord:
        """Return the record of ``server_round``, creating it on first use."""
        if server_round not in self.rounds:
            self.rounds[server_round] = RoundRecord(server_round, site_names=self.site_names)
        return self.rounds[server_round]

    # ---- train -----------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Add the preprocessing to a copy of the config and remember the messages sent per node."""
        record = self.round_record(server_round)
        record.started = time.monotonic()
        self._sent_shapes = {key: (tuple(array.shape), str(array.dtype)) for key, array in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, self._round_config(config), grid))
        self._sent["train"] = messages
        record.train.sent = sorted(message.metadata.dst_node_id for message in messages)
        logger.info("round %d: train: sent the global model to %d sites", server_round, len(messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record failures and timeouts, then average the valid replies weighted by ``num-examples``.

        Returns ``(None, None)``, which keeps the previous global weights,
        when fewer than ``min_sites`` valid replies arrived or every valid
        reply has ``num-examples`` 0.
        """
        record = self.round_record(server_round)
        outcome = record.train
        valid = self._sort_replies(server_round, outcome, list(replies), self._train_reply_problem)
        if len(valid) < self.min_sites:
            return self._skip(server_round, outcome, f"only {len(valid)} valid replies, fewer than min-sites")
        total = sum(outcome.ok.values())
        if total == 0:
            return self._skip(server_round, outcome, "no site trained on any window (num-examples 0 everywhere)")
        contributing = sum(1 for count in outcome.ok.values() if count > 0)
        if contributing < self.min_sites:
            # Flower's sampler and the min-sites rule count replies, not
            # contributions, so the average may rest on fewer sites than min-sites.
            logger.warning(
                "round %d: train: only %d of %d valid replies trained on any window; the average rests on them",
                server_round,
                contributing,
                len(valid),
            )
        try:
            arrays, metrics = super().aggregate_train(server_round, valid)
        except InconsistentMessageReplies as error:
            return self._skip(server_round, outcome, f"Flower rejected the replies: {error}")
        if arrays is None:
            return self._skip(server_round, outcome, "Flower returned no aggregate")
        outcome.aggregated = True
        record.train_metrics = dict(metrics or {})  # type: ignore[arg-type]
        logger.info(
            "round %d: train: aggregated %d sites (%d with training windows), %d windows, loss %.4f, accuracy %.4f",
            server_round,
            len(valid),
            contributing,
            total,
            record.train_metrics.get("train-loss", math.nan),
            record.train_metrics.get("train-accuracy", math.nan),
        )
        return arrays, metrics

    # ---- evaluate --------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Add the preprocessing to a copy of the config and remember the messages sent per node."""
        messages = list(super().configure_evaluate(server_round, arrays, self._round_config(config), grid))
        self._sent["evaluate"] = messages
        self.round_record(server_round).evaluate.sent = sorted(message.metadata.dst_node_id for message in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Sum the valid replies' confusion matrices and histograms into federation-wide metrics.

        Returns
        -------
        MetricRecord or None
            The scalar metrics of :data:`SCALAR_METRICS` that are defined,
            plus ``loss`` (example-weighted mean of ``eval-loss``) and
            ``num-examples``. ``None`` when fewer than ``min_sites`` valid
            replies arrived or no site had a test window. The full metrics
            (per class, confusion matrix) go to the round record.
        """
        record = self.round_record(server_round)
        outcome = record.evaluate
        self._histogram_bins = None
        valid = self._sort_replies(server_round, outcome, list(replies), self._evaluate_reply_problem)
        if len(valid) < self.min_sites:
            self._skip(server_round, outcome, f"only {len(valid)} valid replies, fewer than min-sites")
            return None

        n_classes = self.preprocessor.n_classes
        bins = int(_metrics_of(valid[0])["histogram-bins"])  # type: ignore[arg-type]
        confusion = np.zeros(n_classes * n_classes, dtype=np.int64)
        histograms = np.zeros(n_classes * 2 * bins, dtype=np.int64)
        validation_confusion = np.zeros(n_classes * n_classes, dtype=np.int64)
        total = 0
        weighted_loss = 0.0
        for reply in valid:
            metrics = _metrics_of(reply)
            count = int(metrics["num-examples"])  # type: ignore[arg-type]
            confusion += np.asarray(metrics["confusion"], dtype=np.int64)
            histograms += np.asarray(metrics["histograms"], dtype=np.int64)
            validation_confusion += np.asarray(metrics["val-confusion"], dtype=np.int64)
            total += count
            weighted_loss += float(metrics["eval-loss"]) * count  # type: ignore[arg-type]
        if validation_confusion.sum() > 0:
            record.validation_metrics = metrics_from_counts(
                validation_confusion.reshape(n_classes, n_classes),
                None,
                self.preprocessor.classes,
                self.preprocessor.normal_class,
            )
        if total == 0:
            self._skip(server_round, outcome, "no site has a test window")
            return None

        outcome.aggregated = True
        scores = metrics_from_counts(
            confusion.reshape(n_classes, n_classes),
            histograms.reshape(n_classes, 2, bins),
            self.preprocessor.classes,
            self.preprocessor.normal_class,
        )
        record.metrics = scores
        record.loss = weighted_loss / total
        logger.info(
            "round %d: evaluate: aggregated %d sites, %d test windows, F1 %.4f, loss %.4f",
            server_round,
            len(valid),
            total,
            scores["f1"],
            record.loss,
        )
        scalars: dict[str, int | float] = {
            key: float(scores[key]) for key in SCALAR_METRICS if scores.get(key) is not None
        }
        scalars["loss"] = record.loss
        scalars["num-examples"] = total
        return MetricRecord(scalars)  # type: ignore[arg-type]

    # ---- helpers ---------------------------------------------------------

    def _round_config(self, config: ConfigRecord) -> ConfigRecord:
        # FedAvg writes "server-round" into the record it gets, so a copy keeps
        # the caller's train_config unchanged between rounds.
        round_config = ConfigRecord(dict(config))
        round_config["preprocessing"] = self.preprocessing_json
        return round_config

    def _skip(self, server_round: int, outcome: PhaseOutcome, note: str) -> tuple[None, None]:
        outcome.aggregated = False
        outcome.note = note
        kept = "keeping the global weights" if outcome.phase == "train" else "no metrics this round"
        logger.warning("round %d: %s: %s (min-sites %d); %s", server_round, outcome.phase, note, self.min_sites, kept)
        return None, None

    def _sort_replies(
        self,
        server_round: int,
        outcome: PhaseOutcome,
        replies: list[Message],
        problem_of: Callable[[Message], str | None],
    ) -> list[Message]:
        """Split replies into valid ones and failures, and find the nodes that timed out.

        Replies are matched to sent messages by ``reply_to_message_id``,
        because errors created by the SuperLink carry ``src_node_id`` 1
        rather than the site's node id.
        """
        sent = {message.metadata.message_id: message.metadata.dst_node_id for message in self._sent[outcome.phase]}
        answered: set[str] = set()
        valid: list[Message] = []
        for reply in replies:
            message_id = reply.metadata.reply_to_message_id
            answered.add(message_id)
            node_id = sent.get(message_id, reply.metadata.src_node_id)
            site = self.site_names.get(node_id, "")
            if reply.has_error():
                failure = NodeFailure(
                    node_id, outcome.phase, trim_reason(reply.error.reason), int(reply.error.code), site
                )
            else:
                problem = problem_of(reply)
                if problem is None:
                    valid.append(reply)
                    metrics = _metrics_of(reply)
                    outcome.ok[node_id] = int(metrics["num-examples"])  # type: ignore[arg-type]
                    if "train-seconds" in metrics:
                        outcome.seconds[node_id] = float(metrics["train-seconds"])  # type: ignore[arg-type]
                    continue
                failure = NodeFailure(node_id, outcome.phase, trim_reason(f"malformed reply: {problem}"), site=site)
            outcome.failures.append(failure)
            logger.warning(
                "node %s (site %s) failed in round %d (%s): %s",
                failure.node_id,
                site or "unnamed",
                server_round,
                failure.phase,
                failure.reason,
            )
        outcome.timed_out = sorted(node for message_id, node in sent.items() if message_id not in answered)
        for node_id in outcome.timed_out:
            logger.warning(
                "node %s (site %s) timed out in round %d (%s): no reply within %.0f s",
                node_id,
                self.site_names.get(node_id, "unnamed"),
                server_round,
                outcome.phase,
                self.round_timeout,
            )
        return valid

    def _train_reply_problem(self, reply: Message) -> str | None:
        """Describe what is wrong with a train reply, or return ``None`` if it is valid."""
        content = reply.content
        if set(content.array_records) != {"arrays"} or set(content.metric_records) != {"metrics"}:
            return (
                f"expected ArrayRecord 'arrays' and MetricRecord 'metrics', got ArrayRecords "
                f"{sorted(content.array_records)} and MetricRecords {sorted(content.metric_records)}"
            )
        metrics = content.metric_records["metrics"]
        problem = _metric_keys_problem(metrics, TRAIN_METRIC_KEYS)
        if problem:
            return problem
        for key in TRAIN_METRIC_KEYS[1:]:
            value = metrics[key]
            if not isinstance(value, int | float) or not math.isfinite(value):
                return f"metric {key!r} must be a finite number, got {value!r}"
        arrays = content.array_records["arrays"]
        received = {key: (tuple(array.shape), str(array.dtype)) for key, array in arrays.items()}
        if received != self._sent_shapes:
            return (
                f"weights do not match the global model: expected {len(self._sent_shapes)} arrays "
                f"{list(self._sent_shapes.values())}, got {len(received)} arrays {list(received.values())}"
            )
        for key, array in arrays.items():
            if not np.all(np.isfinite(array.numpy())):
                return f"weight array {key!r} contains NaN or infinite values"
        return None

    def _evaluate_reply_problem(self, reply: Message) -> str | None:
        """Describe what is wrong with an evaluate reply, or return ``None`` if it is valid."""
        content = reply.content
        if set(content.metric_records) != {"metrics"}:
            return f"expected MetricRecord 'metrics', got {sorted(content.metric_records)}"
        metrics = content.metric_records["metrics"]
        problem = _metric_keys_problem(metrics, EVALUATE_METRIC_KEYS)
        if problem:
            return problem

        count = int(metrics["num-examples"])  # type: ignore[arg-type]
        loss = metrics["eval-loss"]
        if not isinstance(loss, int | float) or not math.isfinite(loss) or loss < 0:
            return f"eval-loss must be a finite number >= 0, got {loss!r}"
        bins = metrics["histogram-bins"]
        if not isinstance(bins, int) or bins < 1:
            return f"histogram-bins must be a positive integer, got {bins!r}"
        if self._histogram_bins is not None and bins != self._histogram_bins:
            return f"histogram-bins is {bins}, but the first valid reply of this round used {self._histogram_bins}"

        n_classes = self.preprocessor.n_classes
        confusion = _count_array(metrics["confusion"], n_classes * n_classes, "confusion")
        if isinstance(confusion, str):
            return confusion
        histograms = _count_array(metrics["histograms"], n_classes * 2 * bins, "histograms")
        if isinstance(histograms, str):
            return histograms

        if int(confusion.sum()) != count:
            return f"confusion matrix sums to {int(confusion.sum())}, but num-examples is {count}"
        validation_confusion = _count_array(metrics["val-confusion"], n_classes * n_classes, "val-confusion")
        if isinstance(validation_confusion, str):
            return validation_confusion
        validation_count = metrics["val-num-examples"]
        if validation_count != int(validation_confusion.sum()):
            return (
                f"val-confusion sums to {int(validation_confusion.sum())}, but val-num-examples is "
                f"{validation_count!r}"
            )
        per_class = histograms.reshape(n_classes, 2 * bins).sum(axis=1)
        if not np.all(per_class == count):
            return f"each class's histograms must sum to num-examples {count}, got {per_class.tolist()}"
        self._histogram_bins = bins
        return None


def _metrics_of(reply: Message) -> MetricRecord:
    return reply.content.metric_records["metrics"]


def _metric_keys_problem(metrics: MetricRecord, expected: tuple[str, ...]) -> str | None:
    keys = set(metrics)
    if keys != set(expected):
        missing = sorted(set(expected) - keys)
        unexpected = sorted(keys - set(expected))
        return f"metric keys differ from the protocol: missing {missing}, unexpected {unexpected}"
    count = metrics["num-examples"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return f"num-examples must be an integer >= 0, got {count!r}"
    return None


def _count_array(values: Any, length: int, name: str) -> np.ndarray | str:
    """Return ``values`` as int64 counts of the given length, or a description of the problem."""
    if not isinstance(values, list) or len(values) != length:
        size = len(values) if isinstance(values, list) else type(values).__name__
        return f"{name} must be a list of {length} counts, got {size}"
    array = np.asarray(values)
    if array.dtype.kind != "i" or np.any(array < 0):
        return f"{name} must contain integer counts >= 0"
    return array.astype(np.int64)


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Combine the train metrics of several sites.

    ``train-loss`` and ``train-accuracy`` are averaged weighted by
    ``weighted_by_key``; ``train-seconds`` is the maximum, because the
    slowest site sets the round's duration; ``num-examples`` is the sum.
    The caller guarantees a positive total weight.
    """
    metrics = [next(iter(record.metric_records.values())) for record in records]
    weights = np.array([float(metric[weighted_by_key]) for metric in metrics])  # type: ignore[arg-type]
    total = float(weights.sum())

    def weighted_mean(key: str) -> float:
        values = np.array([float(metric[key]) for metric in metrics])  # type: ignore[arg-type]
        return float(np.dot(weights, values) / total)

    return MetricRecord(
        {
            "train-loss": weighted_mean("train-loss"),
            "train-accuracy": weighted_mean("train-accuracy"),
            "train-seconds": max(float(metric["train-seconds"]) for metric in metrics),  # type: ignore[arg-type]
            "num-examples": int(total),
        }
    )
