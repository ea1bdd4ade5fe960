"""Read the coordinator's run folders for the dashboard.

The folders are written by :class:`server.checkpoints.CheckpointWriter`:
``run.json``, ``history.jsonl`` and ``round-NNN/metrics.json`` under
``<checkpoint-dir>/<run-name>/``. A run in progress may have a half-written
last history line or a round folder without metrics yet. Both are skipped
with a warning, so the page still shows the rest.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.checkpoints import HISTORY_FILE, RUN_FILE, round_folder_name

logger = logging.getLogger(__name__)

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class SiteOutcome:
    """Outcome of one site in one round."""

    node_id: int
    trained: bool
    evaluated: bool
    train_examples: int | None
    evaluate_examples: int | None
    train_seconds: float | None


@dataclass(frozen=True)
class RoundDetail:
    """One completed round: federation-wide metrics and each site's part in it.

    Attributes
    ----------
    round : int
        Round number, from 1.
    metrics : dict
        The round's history line: ``f1``, ``macro_f1``, ``precision``,
        ``recall``, ``fpr``, ``roc_auc``, ``accuracy``, ``loss``,
        ``n_sites_ok``, ``failures`` and ``seconds``. A value is ``None``
        when the round could not compute it.
    sites : list of SiteOutcome
        Sites with a valid train or evaluate reply.
    failures : list of dict
        ``node_id``, ``phase``, ``reason`` and ``code`` of every error reply,
        malformed reply and timeout.
    notes : list of str
        Why a phase's replies were not aggregated, when they were not.
    """

    round: int
    metrics: dict[str, Any]
    sites: list[SiteOutcome] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunSummary:
    """One run folder as listed on the dashboard's first page."""

    name: str
    status: str
    started_at: str
    finished_at: str
    updated_at: dt.datetime
    dataset: str
    task: str
    num_rounds: int | None
    completed_rounds: int
    sites: int
    last: dict[str, Any] | None
    error: str


@dataclass(frozen=True)
class RunDetail:
    """A run with its rounds and the sites that reported when it started."""

    summary: RunSummary
    rounds: list[RoundDetail]
    sites: list[dict[str, Any]]
    query_failures: list[dict[str, Any]]
    settings: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open(encoding="utf-8") as stream:
            data = json.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("runs: skipped unreadable %s: %s", path, error)
        return None
    return data if isinstance(data, dict) else None


def read_history(path: Path) -> list[dict[str, Any]]:
    """Return the history lines of a run, skipping blank, malformed or half-written lines.

    Parameters
    ----------
    path : Path
        A run's ``history.jsonl``.

    Returns
    -------
    list of dict
        One dict per round with an integer ``round``, in file order.
    """
    lines: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return lines
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("runs: skipped malformed line %d of %s", number, path)
            continue
        if isinstance(entry, dict) and isinstance(entry.get("round"), int):
            lines.append(entry)
        else:
            logger.warning("runs: skipped line %d of %s without an integer 'round'", number, path)
    return lines


def _run_folders(checkpoint_dir: Path) -> list[Path]:
    if not checkpoint_dir.is_dir():
        return []
    return [
        folder for folder in checkpoint_dir.iterdir()
        if folder.is_dir() and _RUN_NAME.match(folder.name) and (folder / RUN_FILE).is_file()
    ]


def _summary(folder: Path, info: dict[str, Any], history: list[dict[str, Any]]) -> RunSummary:
    settings = info.get("settings") if isinstance(info.get("settings"), dict) else {}
    assert isinstance(settings, dict)
    dataset = str(settings.get("dataset", ""))
    num_rounds = settings.get("num-rounds")
    updated = max(
        (path.stat().st_mtime for path in (folder / RUN_FILE, folder / HISTORY_FILE) if path.exists()),
        default=0.0,
    )
    return RunSummary(
        name=folder.name,
        status=str(info.get("status", "unknown")),
        started_at=str(info.get("started_at", "")),
        finished_at=str(info.get("finished_at", "") or ""),
        updated_at=dt.datetime.fromtimestamp(updated, dt.UTC),
        # The setting may be a config name or a path to its TOML file.
        dataset=Path(dataset).stem if dataset.endswith(".toml") else dataset,
        task=str(settings.get("task", "")),
        num_rounds=num_rounds if isinstance(num_rounds, int) else None,
        completed_rounds=len(history),
        sites=len(info.get("sites") or []),
        last=history[-1] if history else None,
        error=str(info.get("error", "") or ""),
    )


def list_runs(checkpoint_dir: Path) -> list[RunSummary]:
    """Return every run under ``checkpoint_dir``, running ones first, then newest first."""
    runs = []
    for folder in _run_folders(checkpoint_dir):
        info = _read_json(folder / RUN_FILE)
        if info is None:
            continue
        runs.append(_summary(folder, info, read_history(folder / HISTORY_FILE)))
    runs.sort(key=lambda run: (run.status != "running", -run.updated_at.timestamp(), run.name))
    return runs


def load_run(checkpoint_dir: Path, name: str) -> RunDetail | None:
    """Return a run with its rounds, or ``None`` if ``name`` is not a run folder of ``checkpoint_dir``."""
    if not _RUN_NAME.match(name):
        return None
    folder = checkpoint_dir / name
    info = _read_json(folder / RUN_FILE) if folder.is_dir() else None
    if info is None:
        return None
    history = read_history(folder / HISTORY_FILE)
    rounds = [_round_detail(folder, line) for line in history]
    settings = info.get("settings")
    return RunDetail(
        summary=_summary(folder, info, history),
        rounds=rounds,
        sites=[site for site in info.get("sites") or [] if isinstance(site, dict)],
        query_failures=[failure for failure in info.get("query_failures") or [] if isinstance(failure, dict)],
        settings=settings if isinstance(settings, dict) else {},
    )


def _round_detail(folder: Path, line: dict[str, Any]) -> RoundDetail:
    number = int(line["round"])
    saved = _read_json(folder / round_folder_name(number) / _METRICS_FILE) or {}
    trained = {int(entry["node_id"]): entry for entry in saved.get("trained") or [] if "node_id" in entry}
    evaluated = {int(entry["node_id"]): entry for entry in saved.get("evaluated") or [] if "node_id" in entry}
    sites = [
        SiteOutcome(
            node_id=node,
            trained=node in trained,
            evaluated=node in evaluated,
            train_examples=trained.get(node, {}).get("num_examples"),
            evaluate_examples=evaluated.get(node, {}).get("num_examples"),
            train_seconds=trained.get(node, {}).get("train_seconds"),
        )
        for node in sorted(set(trained) | set(evaluated))
    ]
    failures = [failure for failure in saved.get("failures") or [] if isinstance(failure, dict)]
    timeout_reason = "no reply before the round timeout"
    failures += [
        {"node_id": entry.get("node_id"), "phase": entry.get("phase", ""), "reason": timeout_reason, "code": None}
        for entry in saved.get("timed_out") or []
        if isinstance(entry, dict)
    ]
    notes = [
        f"{phase}: {saved[key]}" for phase, key in (("train", "train_note"), ("evaluate", "evaluate_note"))
        if saved.get(key)
    ]
    return RoundDetail(round=number, metrics=line, sites=sites, failures=failures, notes=notes)
