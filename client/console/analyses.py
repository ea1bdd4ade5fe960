"""Stored analyses: one database row each, plus predictions and episodes on the site's disk.

Layout under ``<instance-dir>/analyses/<analysis-id>/``: ``predictions.csv``
(written by :meth:`DetectionResult.write_predictions`), ``result.json``
(class counts, alert episodes and model details) and ``timeline.svg``. The
uploaded traffic itself is deleted once it has been scored.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from common.web.database import Base, utc_now

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
RESULT_FILE = "result.json"
TIMELINE_FILE = "timeline.svg"

STATUS_OK = "ok"
STATUS_FAILED = "failed"

_ANALYSIS_ID = re.compile(r"^[0-9a-f]{16}$")


class Analysis(Base):
    """One uploaded file and the outcome of scoring it."""

    __tablename__ = "analyses"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now, index=True)
    username: Mapped[str] = mapped_column(String(64))
    file_name: Mapped[str] = mapped_column(String(255))
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str] = mapped_column(Text, default="")
    model_version: Mapped[str] = mapped_column(String(128), default="")
    signature_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_scored: Mapped[int] = mapped_column(Integer, default=0)
    attack_flows: Mapped[int] = mapped_column(Integer, default=0)
    episodes: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


@dataclass(frozen=True)
class HistoryPage:
    """One page of analyses, newest first."""

    analyses: list[Analysis]
    page: int
    pages: int
    total: int


@dataclass(frozen=True)
class FlowPage:
    """One page of the predictions table.

    Attributes
    ----------
    rows : list of dict
        Prediction rows with the keys of the predictions CSV.
    columns : list of str
        Columns of the predictions CSV, in file order.
    page, pages, total : int
        1-based page number, number of pages and matching rows.
    """

    rows: list[dict[str, Any]]
    columns: list[str]
    page: int
    pages: int
    total: int


def new_analysis_id() -> str:
    """Return a random 16-hex-digit analysis id."""
    return secrets.token_hex(8)


def is_analysis_id(text: str) -> bool:
    """Tell whether ``text`` has the form of an analysis id, so it is safe as a folder name."""
    return bool(_ANALYSIS_ID.match(text))


class AnalysisStore:
    """Analyses in the web database and their files under ``root``.

    Parameters
    ----------
    sessions : sessionmaker
        Session factory of the console's database.
    root : Path
        Folder that contains one subfolder per analysis.
    """

    def __init__(self, sessions: sessionmaker, root: Path) -> None:
        self._sessions = sessions
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, analysis_id: str) -> Path:
        """Return the folder of an analysis.

        Raises
        ------
        ValueError
            If ``analysis_id`` is not a valid id, so no path outside ``root`` is ever built.
        """
        if not is_analysis_id(analysis_id):
            raise ValueError(f"invalid analysis id {analysis_id!r}")
        return self.root / analysis_id

    def add(self, analysis: Analysis) -> None:
        with self._sessions.begin() as db:
            db.add(analysis)

    def get(self, analysis_id: str) -> Analysis | None:
        if not is_analysis_id(analysis_id):
            return None
        with self._sessions() as db:
            return db.get(Analysis, analysis_id)

    def history(self, page: int, per_page: int = 25) -> HistoryPage:
        """Return page ``page`` (1-based, clamped) of all analyses, newest first."""
        with self._sessions() as db:
            total = int(db.scalar(select(func.count()).select_from(Analysis)) or 0)
            pages = max(1, -(-total // per_page))
            page = min(max(1, page), pages)
            analyses = list(
                db.scalars(
                    select(Analysis)
                    .order_by(Analysis.created_at.desc(), Analysis.id)
                    .offset((page - 1) * per_page)
                    .limit(per_page)
                )
            )
        return HistoryPage(analyses=analyses, page=page, pages=pages, total=total)

    def discard_files(self, analysis_id: str) -> None:
        """Delete an analysis folder, for example after a failed analysis."""
        shutil.rmtree(self.folder(analysis_id), ignore_errors=True)

    # Files -----------------------------------------------------------------

    def write_result(self, analysis_id: str, result: dict[str, Any]) -> None:
        path = self.folder(analysis_id) / RESULT_FILE
        path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")

    def read_result(self, analysis_id: str) -> dict[str, Any]:
        with (self.folder(analysis_id) / RESULT_FILE).open(encoding="utf-8") as stream:
            data: dict[str, Any] = json.load(stream)
        return data

    def predictions_path(self, analysis_id: str) -> Path:
        return self.folder(analysis_id) / PREDICTIONS_FILE

    def timeline_path(self, analysis_id: str) -> Path:
        return self.folder(analysis_id) / TIMELINE_FILE

    def read_predictions(self, analysis_id: str) -> pd.DataFrame:
        """Read the predictions CSV, with the class columns as text."""
        return pd.read_csv(
            self.predictions_path(analysis_id), dtype={"predicted": str, "label": str}, keep_default_na=False
        )


def flow_page(
    predictions: pd.DataFrame, normal_class: str, *, attacks_only: bool, page: int, per_page: int
) -> FlowPage:
    """Select one page of predictions, optionally only the flows predicted as an attack.

    Parameters
    ----------
    predictions : pandas.DataFrame, shape (n_flows, n_columns)
        The predictions CSV.
    normal_class : str
        The benign class; every other predicted class is an attack.
    attacks_only : bool
        Keep only rows whose predicted class is not ``normal_class``.
    page, per_page : int
        1-based page (clamped to the valid range) and rows per page.
    """
    selected = predictions[predictions["predicted"] != normal_class] if attacks_only else predictions
    total = len(selected)
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    chunk = selected.iloc[(page - 1) * per_page : page * per_page]
    return FlowPage(
        rows=[{str(key): value for key, value in record.items()} for record in chunk.to_dict(orient="records")],
        columns=[str(column) for column in predictions.columns],
        page=page,
        pages=pages,
        total=total,
    )


def page_of_row(predictions: pd.DataFrame, row: int, per_page: int) -> int:
    """Return the 1-based page of the unfiltered table that shows file row ``row``."""
    position = int(predictions["row"].searchsorted(row))
    return position // per_page + 1
