"""Tables of the web consoles and the database engine that stores them.

The tables are created on start with ``create_all``; there are no migrations
yet, so a schema change needs a new database.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from common.exceptions import ConfigError

ROLE_ADMINISTRATOR = "administrator"
ROLE_ANALYST = "analyst"
ROLES = (ROLE_ADMINISTRATOR, ROLE_ANALYST)


def utc_now() -> dt.datetime:
    """Return the current time in UTC without a time zone, as SQLite stores it."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of every table; apps add their own tables to its metadata."""


class User(Base):
    """An account with its Argon2 password hash and role."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)

    @property
    def is_administrator(self) -> bool:
        return self.role == ROLE_ADMINISTRATOR


class LoginSession(Base):
    """A signed-in browser. The cookie contains the token, and the table only its SHA-256."""

    __tablename__ = "login_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class LoginAttempt(Base):
    """One sign-in attempt, counted for rate limiting."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    remote_addr: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now, index=True)
    succeeded: Mapped[bool] = mapped_column(Boolean)


class AuditEvent(Base):
    """One entry of the audit log: who did what, when, on which file and with which model."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now, index=True)
    username: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32), index=True)
    remote_addr: Mapped[str] = mapped_column(String(64), default="")
    file_name: Mapped[str] = mapped_column(String(255), default="")
    file_sha256: Mapped[str] = mapped_column(String(64), default="")
    model_version: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


def _enable_sqlite_foreign_keys(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _redacted(url: str) -> str:
    """Hide a password in a database URL before it reaches a message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def open_database(url: str) -> sessionmaker:
    """Connect to ``url``, create missing tables and return a session factory.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL, for example ``sqlite:////srv/console/web.db``.

    Raises
    ------
    ConfigError
        If the URL is invalid, its driver is not installed or the database
        cannot be opened.
    """
    try:
        engine: Engine = create_engine(url)
    except (ArgumentError, ImportError) as error:
        raise ConfigError(f"invalid database URL {_redacted(url)!r}: {error}") from error
    if engine.dialect.name == "sqlite":
        # SQLite ignores foreign keys (and so ON DELETE CASCADE) unless each connection enables them.
        event.listen(engine, "connect", _enable_sqlite_foreign_keys)
    try:
        Base.metadata.create_all(engine)
    except OperationalError as error:
        raise ConfigError(f"cannot open the database {_redacted(url)!r}: {error.orig}") from error
    return sessionmaker(engine, expire_on_commit=False)
