"""Per-round checkpoints and the run summary of a federated run.

Layout under ``<checkpoint-dir>/<run-name>/``:

- ``run.json``: settings, connected node ids, the sites' query reports and
  a summary of the merged statistics. It is rewritten at the end with the
  final round and status;
- ``preprocessing.json``: the federation's agreed preprocessing;
- ``round-<NNN>/``: ``model.keras``, ``preprocessing.json`` and
  ``metrics.json`` of the global model after round NNN (``round-000`` holds
  the initial model). ``metrics`` in ``metrics.json`` are computed on the
  sites' test blocks, ``validation_metrics`` on their validation blocks;
- ``history.jsonl``: one JSON line per completed round with the headline
  metrics, for plots and for comparing runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from flwr.app import ArrayRecord

from common.bundle import save_model, write_json
from common.exceptions import ConfigError
from common.model import set_weights
from common.preprocessing import FeatureStatistics, Preprocessor
from server.strategy import SCALAR_METRICS, RoundRecord

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"
PREPROCESSING_FILE = "preprocessing.json"


def round_folder_name(server_round: int) -> str:
    """Return the folder name of a round's checkpoint, for example ``round-003``."""
    return f"round-{server_round:03d}"


def statistics_summary(statistics: FeatureStatistics) -> dict[str, Any]:
    """Summarise merged statistics for run.json: row count, range per feature and category counts."""
    never_seen = [name for name, count in zip(statistics.features, statistics.count, strict=True) if count == 0]
    return {
        "n_rows": statistics.n_rows,
        "log_transform": statistics.log_transform,
        "numeric_features": len(statistics.features),
        "features_never_seen": never_seen,
        "minimum": dict(zip(statistics.features, _json_floats(statistics.minimum), strict=True)),
        "maximum": dict(zip(statistics.features, _json_floats(statistics.maximum), strict=True)),
        "category_counts": statistics.category_counts,
    }


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(value) else float(value) for value in values.tolist()]


class CheckpointWriter:
    """Write the run folder of one federated run.

    Parameters
    ----------
    run_dir : path-like
        ``<checkpoint-dir>/<run-name>``. It must not hold an earlier run's
        run.json, so two runs never append to one history.
    preprocessor : Preprocessor
        The federation's preprocessing, saved beside every model.
    model : keras.Model
        A model of the federation's architecture; each round's weights are
        loaded into it before it is saved.

    Raises
    ------
    ConfigError
        If ``run_dir`` already contains a run.
    """

    def __init__(self, run_dir: str | os.PathLike[str], preprocessor: Preprocessor, model: keras.Model) -> None:
        self.run_dir = Path(run_dir)
        if (self.run_dir / RUN_FILE).exists():
            raise ConfigError(
                f"checkpoint folder {self.run_dir} already contains a run; choose another run-name "
                "or leave run-name empty for a timestamp"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.preprocessor = preprocessor
        self.model = model
        self._run_info: dict[str, Any] = {}
        self._started = time.monotonic()
        self.last_round: int | None = None
        self.last_history_line: dict[str, Any] | None = None

    @property
    def history_path(self) -> Path:
        return self.run_dir / HISTORY_FILE

    def start_run(
        self,
        settings: dict[str, Any],
        node_ids: Sequence[int],
        sites: Sequence[dict[str, Any]],
        failures: Sequence[dict[str, Any]],
        statistics: FeatureStatistics,
    ) -> Path:
        """Write run.json and the federation's preprocessing.json; return the run.json path.

        Parameters
        ----------
        settings : dict
            The run's settings under their run-config keys.
        node_ids : sequence of int
            Nodes connected when the run started.
        sites : sequence of dict
            Query report of every site that replied (node id, rows, class counts).
        failures : sequence of dict
            Sites whose query failed, with node id and reason.
        statistics : FeatureStatistics
            The merged statistics behind the preprocessing.
        """
        self.preprocessor.save(self.run_dir / PREPROCESSING_FILE)
        self._run_info = {
            "run_name": self.run_dir.name,
            "status": "running",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": settings,
            "node_ids": [int(node) for node in node_ids],
            "sites": list(sites),
            "query_failures": list(failures),
            "statistics": statistics_summary(statistics),
            "final_round": None,
        }
        path = self.run_dir / RUN_FILE
        write_json(path, self._run_info)
        logger.info("run: wrote %s", path.resolve())
        return path

    def save_round(self, server_round: int, arrays: ArrayRecord, record: RoundRecord | None) -> Path:
        """Save the global model of ``server_round`` with its metrics, and append its history line.

        Parameters
        ----------
        server_round : int
            0 for the initial model, then 1, 2, ...
        arrays : ArrayRecord
            The global weights after the round.
        record : RoundRecord or None
            The strategy's record of the round; ``None`` for round 0, which
            gets no history line.

        Returns
        -------
        Path
            The round's folder.
        """
        folder = self.run_dir / round_folder_name(server_round)
        set_weights(self.model, arrays.to_numpy_ndarrays())
        summary = self.round_summary(server_round, record)
        save_model(folder, self.model, self.preprocessor, summary)
        self.last_round = server_round
        if record is not None:
            self.last_history_line = self.history_line(server_round, record, summary["seconds"])
            self._append_history(self.last_history_line)
        logger.info("round %d: checkpoint: saved the global model to %s", server_round, folder)
        return folder

    @staticmethod
    def round_summary(server_round: int, record: RoundRecord | None) -> dict[str, Any]:
        """Return the content of a round's metrics.json."""
        if record is None:
            return {
                "round": server_round,
                "initial_model": True,
                "metrics": None,
                "validation_metrics": None,
                "loss": None,
                "train_metrics": {},
                "trained": [],
                "evaluated": [],
                "failures": [],
                "timed_out": [],
                "seconds": 0.0,
            }
        return {
            "round": server_round,
            "initial_model": False,
            "metrics": record.metrics,
            "validation_metrics": record.validation_metrics,
            "loss": record.loss,
            "train_metrics": record.train_metrics,
            "trained": [
                {"node_id": node, "num_examples": count, "train_seconds": record.train.seconds.get(node)}
                for node, count in record.train.ok.items()
            ],
            "evaluated": [{"node_id": node, "num_examples": count} for node, count in record.evaluate.ok.items()],
            "train_aggregated": record.train.aggregated,
            "train_note": record.train.note,
            "evaluate_aggregated": record.evaluate.aggregated,
            "evaluate_note": record.evaluate.note,
            "failures": [failure.to_dict() for failure in record.train.failures + record.evaluate.failures],
            "timed_out": [
                {"node_id": node, "site": record.site_names.get(node, ""), "phase": outcome.phase}
                for outcome in (record.train, record.evaluate)
                for node in outcome.timed_out
            ],
            "seconds": round(time.monotonic() - record.started, 3),
        }

    @staticmethod
    def history_line(server_round: int, record: RoundRecord, seconds: float) -> dict[str, Any]:
        """Return one history.jsonl entry.

        ``failures`` counts error replies, malformed replies and timeouts of
        both phases; ``n_sites_ok`` counts sites with a valid reply in both.
        """
        metrics = record.metrics or {}
        line: dict[str, Any] = {"round": server_round}
        line.update({key: metrics.get(key) for key in SCALAR_METRICS})
        line["loss"] = record.loss
        line["val_f1"] = None if record.validation_metrics is None else record.validation_metrics.get("f1")
        line["n_sites_ok"] = len(record.sites_ok)
        line["failures"] = len(record.failures)
        line["seconds"] = seconds
        return line

    def _append_history(self, line: dict[str, Any]) -> None:
        with self.history_path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(line, allow_nan=False) + "\n")

    def finish(self, status: str, error: str = "") -> Path:
        """Rewrite run.json with the run's end state and the last saved round.

        Parameters
        ----------
        status : str
            ``"finished"`` or ``"failed"``.
        error : str
            Why the run failed, if it did.
        """
        self._run_info.update(
            {
                "status": status,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.monotonic() - self._started, 3),
                "final_round": self.last_round,
                "final_metrics": self.last_history_line,
                "final_checkpoint": None if self.last_round is None else round_folder_name(self.last_round),
                "error": error,
            }
        )
        path = self.run_dir / RUN_FILE
        write_json(path, self._run_info)
        return path
