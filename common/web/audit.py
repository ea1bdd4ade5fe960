"""Audit log of sign-ins, uploads, analyses and account changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from common.web.database import AuditEvent

logger = logging.getLogger(__name__)

#: Actions written to the audit log.
ACTIONS = (
    "sign-in",
    "sign-in-failed",
    "sign-in-locked",
    "sign-out",
    "upload",
    "upload-rejected",
    "analysis",
    "analysis-failed",
    "download",
    "user-created",
    "user-disabled",
    "user-enabled",
    "password-changed",
    "password-change-failed",
    "password-set",
    "sign-in-unlocked",
    "upload-too-large",
)


@dataclass(frozen=True)
class AuditPage:
    """One page of audit events, newest first."""

    events: list[AuditEvent]
    page: int
    pages: int
    total: int


class AuditLog:
    """Append-only audit log in the web database.

    Parameters
    ----------
    sessions : sessionmaker
        Session factory from :func:`common.web.database.open_database`.
    """

    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions

    def record(
        self,
        action: str,
        *,
        username: str = "",
        remote_addr: str = "",
        file_name: str = "",
        file_sha256: str = "",
        model_version: str = "",
        detail: str = "",
    ) -> None:
        """Append one event.

        Raises
        ------
        ValueError
            If ``action`` is not one of :data:`ACTIONS`.
        """
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}; expected one of {list(ACTIONS)}")
        with self._sessions.begin() as db:
            db.add(
                AuditEvent(
                    action=action,
                    username=username[:64],
                    remote_addr=remote_addr[:64],
                    file_name=file_name[:255],
                    file_sha256=file_sha256,
                    model_version=model_version[:128],
                    detail=detail[:2000],
                )
            )
        logger.info("audit: %s by %r %s", action, username[:64], file_sha256 or detail[:80])

    def page(self, page: int, per_page: int = 50) -> AuditPage:
        """Return events of page ``page`` (1-based), newest first; out-of-range pages are clamped."""
        with self._sessions() as db:
            total = int(db.scalar(select(func.count()).select_from(AuditEvent)) or 0)
            pages = max(1, -(-total // per_page))
            page = min(max(1, page), pages)
            events = list(
                db.scalars(
                    select(AuditEvent)
                    .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
                    .offset((page - 1) * per_page)
                    .limit(per_page)
                )
            )
        return AuditPage(events=events, page=page, pages=pages, total=total)
