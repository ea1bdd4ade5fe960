"""Flower ServerApp: agree on preprocessing with the sites, then run FedAvg rounds with checkpoints.

A run has four steps:

1. wait until ``min-sites`` SuperNodes are connected;
2. query every site for the statistics and class counts of its local
   training rows, and merge the statistics into the federation's
   :class:`~common.preprocessing.Preprocessor`;
3. build the initial CNN-LSTM with a fixed seed;
4. run ``num-rounds`` rounds of :class:`~server.strategy.FederatedIDSStrategy`,
   saving a checkpoint after each round's evaluation and, when
   ``signing-key`` is set, publishing it as a signed bundle in the registry
   (:mod:`server.registry`).

``app`` reads its settings from the run config (``flwr run``). A simulation
driver, whose ``run_simulation`` passes an empty run config, uses
:func:`build_server_app` with overrides instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import keras
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from common.config import DatasetConfig
from common.exceptions import FedIDSError, PreprocessingError
from common.model import build_model_from_config, get_weights
from common.preprocessing import UNKNOWN_CATEGORY, FeatureStatistics, Preprocessor
from server.checkpoints import CheckpointWriter
from server.registry import publisher_from_settings
from server.settings import FederationSettings
from server.strategy import FederatedIDSStrategy, FederationError, NodeFailure, trim_reason

logger = logging.getLogger(__name__)

#: Seconds between two polls of the connected node ids.
_NODE_POLL_SECONDS = 0.5

#: Top-level packages whose log lines the ServerApp prints when logging has no handler yet.
_PROJECT_LOGGERS = ("server", "common")


@dataclass
class SiteReport:
    """One site's reply to the query: statistics and class counts of its local training rows."""

    node_id: int
    statistics: FeatureStatistics
    class_counts: list[int]
    n_rows: int
    n_train_rows: int
    site_name: str = ""

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "site_name": self.site_name,
            "n_rows": self.n_rows,
            "n_train_rows": self.n_train_rows,
            "class_counts": dict(zip(classes, self.class_counts, strict=True)),
        }


def wait_for_nodes(grid: Grid, min_sites: int, timeout: float) -> list[int]:
    """Poll the grid until at least ``min_sites`` nodes are connected and return their ids.

    The ServerApp can start before the simulated nodes register, so an
    empty node list at first is normal.

    Raises
    ------
    FederationError
        If fewer than ``min_sites`` nodes are connected after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    node_ids = sorted(grid.get_node_ids())
    if len(node_ids) < min_sites:
        logger.info("nodes: %d connected, waiting up to %.0f s for %d", len(node_ids), timeout, min_sites)
    while len(node_ids) < min_sites:
        if time.monotonic() >= deadline:
            raise FederationError(
                f"nodes: only {len(node_ids)} of the required {min_sites} sites (min-sites) connected within "
                f"{timeout:.0f} s (node-wait-timeout); start more SuperNodes, raise node-wait-timeout "
                "or lower min-sites"
            )
        time.sleep(_NODE_POLL_SECONDS)
        node_ids = sorted(grid.get_node_ids())
    logger.info("nodes: %d connected: %s", len(node_ids), node_ids)
    return node_ids


def parse_site_reply(reply: Message, node_id: int, dataset: DatasetConfig, n_classes: int) -> SiteReport:
    """Decode and check a site's query reply.

    Raises
    ------
    PreprocessingError
        If a record or key is missing, a value has the wrong type, or the
        statistics do not describe the dataset's features.
    """
    records = reply.content.config_records
    if "site" not in records:
        raise PreprocessingError(f"query reply has no ConfigRecord 'site' (records: {sorted(records)})")
    site = records["site"]
    missing = [key for key in ("statistics", "class-counts", "n-rows", "n-train-rows") if key not in site]
    if missing:
        raise PreprocessingError(f"query reply lacks key(s) {missing} in ConfigRecord 'site'")
    statistics_text, counts_text = site["statistics"], site["class-counts"]
    if not (isinstance(statistics_text, str) and isinstance(counts_text, str)):
        raise PreprocessingError("query reply: statistics and class-counts must be JSON strings")
    try:
        statistics = FeatureStatistics.from_dict(json.loads(statistics_text))
        counts = json.loads(counts_text)
    except json.JSONDecodeError as error:
        raise PreprocessingError(f"query reply contains invalid JSON: {error}") from error
    if statistics.features != tuple(dataset.numeric_features) or statistics.log_transform != dataset.log_transform:
        raise PreprocessingError(
            f"statistics describe other numeric features or log_transform than dataset {dataset.name!r}; "
            "the site may use another dataset configuration"
        )
    vocabularies = {
        column: [value for value in counts_by_value if value != UNKNOWN_CATEGORY]
        for column, counts_by_value in statistics.category_counts.items()
    }
    expected = {column: list(vocabulary) for column, vocabulary in dataset.categorical_features.items()}
    if vocabularies != expected:
        raise PreprocessingError(
            f"statistics have categorical vocabularies {vocabularies}, but dataset {dataset.name!r} has {expected}"
        )
    if not (isinstance(counts, list) and len(counts) == n_classes and all(_is_count(c) for c in counts)):
        raise PreprocessingError(f"class-counts must be a list of {n_classes} counts >= 0, got {counts!r}")
    n_rows, n_train_rows = site["n-rows"], site["n-train-rows"]
    if not (_is_count(n_rows) and _is_count(n_train_rows)):
        raise PreprocessingError(f"n-rows and n-train-rows must be counts >= 0, got {n_rows!r} and {n_train_rows!r}")
    if sum(counts) != n_train_rows or statistics.n_rows != n_train_rows:
        raise PreprocessingError(
            f"class-counts sum to {sum(counts)} and the statistics cover {statistics.n_rows} rows, "
            f"but n-train-rows is {n_train_rows}"
        )
    # A deployed SuperNode names its hospital; simulations and older sites send no name.
    site_name = site.get("site-name", "")
    if not isinstance(site_name, str):
        raise PreprocessingError(f"site-name must be a string, got {site_name!r}")
    return SiteReport(node_id, statistics, [int(c) for c in counts], n_rows, n_train_rows, site_name)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def query_sites(
    grid: Grid, settings: FederationSettings, node_ids: Sequence[int], dataset: DatasetConfig
) -> tuple[list[SiteReport], list[NodeFailure]]:
    """Ask every node for its training statistics and sort the replies into reports and failures."""
    n_classes = dataset.task(settings.task).n_classes
    messages = [
        Message(
            RecordDict({"config": ConfigRecord(settings.message_config(0))}),
            dst_node_id=node_id,
            message_type=MessageType.QUERY,
        )
        for node_id in node_ids
    ]
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
    sent = {message.metadata.message_id: message.metadata.dst_node_id for message in messages}

    reports: list[SiteReport] = []
    failures: list[NodeFailure] = []
    answered: set[str] = set()
    for reply in replies:
        answered.add(reply.metadata.reply_to_message_id)
        node_id = sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            failures.append(NodeFailure(node_id, "query", trim_reason(reply.error.reason), int(reply.error.code)))
            continue
        try:
            reports.append(parse_site_reply(reply, node_id, dataset, n_classes))
        except PreprocessingError as error:
            failures.append(NodeFailure(node_id, "query", trim_reason(f"malformed reply: {error}")))
    for message_id, node_id in sent.items():
        if message_id not in answered:
            failures.append(NodeFailure(node_id, "query", f"no reply within {settings.round_timeout:.0f} s"))

    classes = dataset.task(settings.task).classes
    for report in reports:
        logger.info(
            "query: node %d (site %s): %d rows, %d training rows, class counts %s",
            report.node_id,
            report.site_name or "unnamed",
            report.n_rows,
            report.n_train_rows,
            dict(zip(classes, report.class_counts, strict=True)),
        )
    for failure in failures:
        logger.warning("query: node %d failed: %s", failure.node_id, failure.reason)
    logger.info(
        "query: %d of %d sites replied in %.1f s", len(reports), len(node_ids), time.monotonic() - started
    )
    return reports, failures


def merge_statistics(
    reports: Sequence[SiteReport], settings: FederationSettings, dataset: DatasetConfig
) -> tuple[FeatureStatistics, Preprocessor]:
    """Merge the sites' statistics into the federation's preprocessor.

    Raises
    ------
    FederationError
        If fewer than ``min-sites`` sites replied, or none has training rows.
    """
    if len(reports) < settings.min_sites:
        raise FederationError(
            f"query: only {len(reports)} site(s) replied without error, fewer than min-sites "
            f"{settings.min_sites}; check the failures logged above"
        )
    merged = FeatureStatistics.merge([report.statistics for report in reports])
    try:
        preprocessor = Preprocessor.from_statistics(merged, dataset, settings.task, window=settings.window)
    except PreprocessingError as error:
        raise FederationError(f"query: cannot build the federation's preprocessing: {error}") from error
    logger.info(
        "query: merged statistics of %d sites, %d training rows, %d model inputs",
        len(reports),
        merged.n_rows,
        preprocessor.n_features,
    )
    return merged, preprocessor


def build_initial_model(
    settings: FederationSettings, dataset: DatasetConfig, preprocessor: Preprocessor
) -> keras.Model:
    """Build the seeded initial CNN-LSTM that round 1 starts from."""
    keras.utils.set_random_seed(settings.seed)
    model_config = dataclasses.replace(dataset.model, learning_rate=settings.learning_rate)
    return build_model_from_config(preprocessor.n_features, preprocessor.window, preprocessor.n_classes, model_config)


def run_federation(grid: Grid, settings: FederationSettings) -> None:
    """Run the whole federation: wait for sites, query, merge, then the FedAvg rounds.

    Raises
    ------
    FederationError
        If too few sites connect or reply to the query.
    ConfigError
        If the run folder already exists or the signing key cannot be loaded.
    """
    started = time.monotonic()
    logger.info(
        "run: starting %s, dataset %s, task %s, %d rounds, W=%d, min-sites %d",
        settings.run_name,
        settings.dataset,
        settings.task,
        settings.num_rounds,
        settings.window,
        settings.min_sites,
    )
    dataset = settings.dataset_config()
    # Load the signing key before any site is contacted, so a wrong path fails at once.
    publisher = publisher_from_settings(
        settings.registry_dir, settings.signing_key, settings.registry_keep, settings.run_name, dataset.source
    )
    node_ids = wait_for_nodes(grid, settings.min_sites, settings.node_wait_timeout)
    reports, failures = query_sites(grid, settings, node_ids, dataset)
    merged, preprocessor = merge_statistics(reports, settings, dataset)

    model = build_initial_model(settings, dataset, preprocessor)
    writer = CheckpointWriter(
        f"{settings.checkpoint_dir}/{settings.run_name}", preprocessor=preprocessor, model=model
    )
    writer.start_run(
        settings.to_run_config(),
        node_ids,
        [report.to_dict(preprocessor.classes) for report in reports],
        [failure.to_dict() for failure in failures],
        merged,
    )
    strategy = FederatedIDSStrategy(
        preprocessor,
        min_sites=settings.min_sites,
        round_timeout=settings.round_timeout,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
    )
    strategy.site_names.update({report.node_id: report.site_name for report in reports if report.site_name})

    def save_checkpoint(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Flower calls this after each round's evaluation and once for round 0,
        # whose untrained model is never published.
        folder = writer.save_round(server_round, arrays, strategy.rounds.get(server_round))
        if publisher is not None and server_round > 0:
            publisher.publish_round(server_round, folder, writer.model)
        return None

    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(get_weights(model)),
            num_rounds=settings.num_rounds,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(settings.message_config(0)),
            evaluate_config=ConfigRecord(settings.message_config(0)),
            evaluate_fn=save_checkpoint,
        )
    except BaseException as error:
        writer.finish("failed", error=f"{type(error).__name__}: {error}")
        raise
    writer.finish("finished")
    final = writer.last_history_line or {}
    logger.info(
        "run: finished %s: %d rounds in %.1f s, final F1 %s, loss %s, checkpoints in %s",
        settings.run_name,
        settings.num_rounds,
        time.monotonic() - started,
        _format_optional(final.get("f1")),
        _format_optional(final.get("loss")),
        writer.run_dir.resolve(),
    )


def _format_optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ensure_log_output() -> None:
    """Send this project's INFO lines to stderr when the hosting process has not configured logging.

    Only the project's loggers get a handler. Configuring the root logger
    would also print every HTTP request that Flower's log upload makes
    through httpx in ``flwr run``.
    """
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in _PROJECT_LOGGERS:
        project_logger = logging.getLogger(name)
        if not project_logger.handlers:
            project_logger.addHandler(handler)
            project_logger.setLevel(logging.INFO)


def _main(grid: Grid, context: Context, overrides: Mapping[str, Any] | None) -> None:
    _ensure_log_output()
    try:
        settings = FederationSettings.from_run_config(context.run_config, overrides)
        run_federation(grid, settings)
    except FedIDSError as error:
        logger.error("run: failed: %s", error)
        raise


def build_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """Create a ServerApp whose settings are ``overrides`` on top of the run config and the defaults.

    Parameters
    ----------
    overrides : mapping of str to value, optional
        Run-config keys (see :data:`server.settings.DEFAULTS`), for example
        ``{"site-dir": "/tmp/sites", "num-rounds": 2}``. Validated when the
        run starts.
    """
    frozen = dict(overrides or {})
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        _main(grid, context, frozen)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation with the settings of ``context.run_config``."""
    _main(grid, context, None)
