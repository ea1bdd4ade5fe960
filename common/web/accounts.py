"""Accounts, sign-in with rate limiting, and server-side login sessions.

Passwords are hashed with Argon2id (argon2-cffi's defaults, the RFC 9106
low-memory profile). A sign-in is refused without checking the password
while the user name or the client address has too many recent failures, so
a locked account cannot be guessed at any faster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.exceptions import FedIDSError
from common.web.database import ROLE_ADMINISTRATOR, ROLES, LoginAttempt, LoginSession, User, utc_now

logger = logging.getLogger(__name__)

MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class AccountError(FedIDSError, ValueError):
    """A user name, password or role is invalid, or the user already exists."""


@dataclass(frozen=True)
class SignInResult:
    """Outcome of :meth:`AccountStore.sign_in`.

    Attributes
    ----------
    user : User or None
        The signed-in user; ``None`` when the sign-in failed.
    token : str
        The new session token for the cookie; empty on failure.
    locked_seconds : float
        Seconds until another attempt is allowed, when locked out; else 0.
    """

    user: User | None
    token: str = ""
    locked_seconds: float = 0.0

    @property
    def locked(self) -> bool:
        return self.locked_seconds > 0


def normalize_username(username: str) -> str:
    """Return the stored form of a user name: stripped and in lower case."""
    return username.strip().lower()


def check_password_rules(username: str, password: str) -> None:
    """Raise AccountError unless the password is long enough and differs from the user name."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"password too short: use at least {MIN_PASSWORD_CHARS} characters, got {len(password)}")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"password too long: use at most {MAX_PASSWORD_CHARS} characters")
    if password.strip().lower() == username:
        raise AccountError("password must differ from the user name")


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AccountStore:
    """Users, sign-in attempts and login sessions in one database.

    Parameters
    ----------
    sessions : sessionmaker
        Session factory from :func:`common.web.database.open_database`.
    session_lifetime : datetime.timedelta
        How long a login session stays valid.
    max_failures : int
        Failed sign-ins allowed per user name within ``window``.
    max_failures_per_address : int
        Failed sign-ins allowed per client address within ``window``.
    window : datetime.timedelta
        Period over which failures are counted.
    hasher : argon2.PasswordHasher or None
        Hasher to use; ``None`` uses argon2-cffi's default parameters.
    """

    def __init__(
        self,
        sessions: sessionmaker,
        *,
        session_lifetime: dt.timedelta,
        max_failures: int,
        max_failures_per_address: int,
        window: dt.timedelta,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self._sessions = sessions
        self.session_lifetime = session_lifetime
        self.max_failures = max_failures
        self.max_failures_per_address = max_failures_per_address
        self.window = window
        self._hasher = hasher or PasswordHasher()
        # Checked against when the user name does not exist, so that an
        # unknown name takes as long as a wrong password.
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))

    # Users ---------------------------------------------------------------

    def create_user(self, username: str, password: str, role: str) -> User:
        """Add a user with a hashed password.

        Raises
        ------
        AccountError
            If the name is invalid or taken, the role unknown or the password
            shorter than 12 characters or equal to the name.
        """
        name = normalize_username(username)
        if not USERNAME_PATTERN.match(name):
            raise AccountError(
                f"invalid user name {username!r}: use 1 to 64 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if role not in ROLES:
            raise AccountError(f"unknown role {role!r}; choose one of {list(ROLES)}")
        check_password_rules(name, password)
        with self._sessions.begin() as db:
            if db.scalar(select(User).where(User.username == name)) is not None:
                raise AccountError(f"user {name!r} already exists")
            user = User(username=name, password_hash=self._hasher.hash(password), role=role, active=True)
            db.add(user)
        logger.info("accounts: created %s %r", role, name)
        return user

    def list_users(self) -> list[User]:
        with self._sessions() as db:
            return list(db.scalars(select(User).order_by(User.username)))

    def count_administrators(self) -> int:
        with self._sessions() as db:
            return int(db.scalar(select(func.count()).select_from(User).where(User.role == ROLE_ADMINISTRATOR)) or 0)

    def set_active(self, username: str, active: bool) -> User:
        """Enable or disable a user; disabling also ends the user's login sessions.

        Raises
        ------
        AccountError
            If the user does not exist.
        """
        name = normalize_username(username)
        with self._sessions.begin() as db:
            user = db.scalar(select(User).where(User.username == name))
            if user is None:
                raise AccountError(f"user {name!r} does not exist")
            user.active = active
            if not active:
                db.query(LoginSession).filter(LoginSession.user_id == user.id).delete()
        return user

    def change_password(
        self,
        username: str,
        current_password: str,
        new_password: str,
        *,
        keep_token: str,
        remote_addr: str,
        now: dt.datetime | None = None,
    ) -> SignInResult:
        """Replace a user's password after checking the current one, and end the user's other sessions.

        A wrong current password counts as a failed sign-in, and the check is
        skipped during a lock-out, so a stolen session cannot be used to guess
        the password any faster than the sign-in form allows.

        Parameters
        ----------
        username : str
            The signed-in user.
        current_password, new_password : str
            What the user typed.
        keep_token : str
            Session token of the browser that made the change; it stays valid.
        remote_addr : str
            Client address, for the rate limits.
        now : datetime or None
            Current UTC time without time zone; ``None`` reads the clock.

        Returns
        -------
        SignInResult
            The user on success; no user on a wrong current password; the
            seconds left when locked out.

        Raises
        ------
        AccountError
            If the new password breaks the rules of :func:`check_password_rules`.
        """
        now = now or utc_now()
        name = normalize_username(username)
        address = remote_addr[:64]
        with self._sessions.begin() as db:
            locked_seconds = self._locked_seconds(db, name, address, now)
            if locked_seconds > 0:
                logger.warning("password: change for %r from %s rejected, locked for %.0f s", name, address,
                               locked_seconds)
                return SignInResult(user=None, locked_seconds=locked_seconds)
            user = db.scalar(select(User).where(User.username == name))
            if user is None or not self._verify(user.password_hash, current_password):
                db.add(LoginAttempt(username=name, remote_addr=address, at=now, succeeded=False))
                logger.warning("password: change for %r from %s rejected, wrong current password", name, address)
                return SignInResult(user=None)
            check_password_rules(name, new_password)
            user.password_hash = self._hasher.hash(new_password)
            ended = (
                db.query(LoginSession)
                .filter(LoginSession.user_id == user.id, LoginSession.token_sha256 != _token_digest(keep_token))
                .delete()
            )
        logger.info("password: %r changed their password from %s, ended %d other session(s)", name, address, ended)
        return SignInResult(user=user, token=keep_token)

    def set_password(self, username: str, new_password: str) -> int:
        """Replace a user's password without the current one, end all their sessions and clear their lock-out.

        For administrators at the machine, who are trusted; see :meth:`unlock`
        for what clearing the lock-out removes.

        Returns
        -------
        int
            Number of login sessions ended.

        Raises
        ------
        AccountError
            If the user does not exist or the password breaks the rules.
        """
        name = normalize_username(username)
        with self._sessions.begin() as db:
            user = db.scalar(select(User).where(User.username == name))
            if user is None:
                raise AccountError(f"user {name!r} does not exist")
            check_password_rules(name, new_password)
            user.password_hash = self._hasher.hash(new_password)
            ended = db.query(LoginSession).filter(LoginSession.user_id == user.id).delete()
            db.query(LoginAttempt).filter(LoginAttempt.username == name, LoginAttempt.succeeded.is_(False)).delete()
        logger.info("password: set a new password for %r, ended %d session(s)", name, ended)
        return int(ended)

    def unlock(self, *, username: str | None = None, address: str | None = None) -> int:
        """Delete failed sign-in attempts so that the lock-outs they caused end now.

        Parameters
        ----------
        username : str or None
            Delete the failures recorded for this user name. They also stop
            counting towards the limit of the addresses they came from.
        address : str or None
            Delete the failures recorded from this client address, whatever
            user names they tried.

        Without either argument every failure is deleted, which ends all
        lock-outs. Successful attempts stay, so the per-user count still
        restarts from the last successful sign-in.

        Returns
        -------
        int
            Number of failed attempts deleted.
        """
        with self._sessions.begin() as db:
            query = db.query(LoginAttempt).filter(LoginAttempt.succeeded.is_(False))
            if username is not None:
                query = query.filter(LoginAttempt.username == normalize_username(username)[:64])
            if address is not None:
                query = query.filter(LoginAttempt.remote_addr == address[:64])
            deleted = query.delete()
        logger.info("unlock: deleted %d failed sign-in attempt(s) for user %r, address %r", deleted,
                    username or "(any)", address or "(any)")
        return int(deleted)

    def user_exists(self, username: str) -> bool:
        with self._sessions() as db:
            return db.scalar(select(User.id).where(User.username == normalize_username(username))) is not None

    # Sign-in ---------------------------------------------------------------

    def sign_in(self, username: str, password: str, remote_addr: str, now: dt.datetime | None = None) -> SignInResult:
        """Check a password under the rate limits and open a login session on success.

        Parameters
        ----------
        username, password : str
            What the user typed.
        remote_addr : str
            Client address, for the per-address limit.
        now : datetime or None
            Current UTC time without time zone; ``None`` reads the clock.

        Returns
        -------
        SignInResult
            The user and session token, a failure, or a lock-out with the
            seconds until the next attempt is allowed.
        """
        now = now or utc_now()
        name = normalize_username(username)[:64]
        address = remote_addr[:64]
        with self._sessions.begin() as db:
            locked_seconds = self._locked_seconds(db, name, address, now)
            if locked_seconds > 0:
                logger.warning("sign-in: rejected %r from %s, locked for %.0f s", name, address, locked_seconds)
                return SignInResult(user=None, locked_seconds=locked_seconds)

            user = db.scalar(select(User).where(User.username == name))
            verified = self._verify(user.password_hash if user is not None else self._dummy_hash, password)
            succeeded = bool(verified and user is not None and user.active)
            db.add(LoginAttempt(username=name, remote_addr=address, at=now, succeeded=succeeded))
            # Attempts older than the window no longer count; the audit log keeps the history.
            db.query(LoginAttempt).filter(LoginAttempt.at < now - self.window).delete()
            if not succeeded or user is None:
                logger.warning("sign-in: failed for %r from %s", name, address)
                return SignInResult(user=None)

            if self._hasher.check_needs_rehash(user.password_hash):
                user.password_hash = self._hasher.hash(password)
            token = secrets.token_urlsafe(32)
            db.add(LoginSession(token_sha256=_token_digest(token), user_id=user.id, created_at=now,
                                expires_at=now + self.session_lifetime))
            db.query(LoginSession).filter(LoginSession.expires_at < now).delete()
        logger.info("sign-in: %r signed in from %s", name, address)
        return SignInResult(user=user, token=token)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _locked_seconds(self, db: Session, name: str, address: str, now: dt.datetime) -> float:
        """Return the seconds until the name and the address are both below their failure limits."""
        since = now - self.window
        waits = [0.0]
        for column, value, limit, reset_by_success in (
            (LoginAttempt.username, name, self.max_failures, True),
            # An insider could otherwise reset the limit of an address by
            # signing in to their own account between guesses at others.
            (LoginAttempt.remote_addr, address, self.max_failures_per_address, False),
        ):
            start = since
            if reset_by_success:
                last_success = db.scalar(
                    select(func.max(LoginAttempt.at)).where(column == value, LoginAttempt.succeeded.is_(True))
                )
                if last_success is not None:
                    start = max(since, last_success)
            failures = list(
                db.scalars(
                    select(LoginAttempt.at)
                    .where(column == value, LoginAttempt.succeeded.is_(False), LoginAttempt.at > start)
                    .order_by(LoginAttempt.at.desc())
                    .limit(limit)
                )
            )
            if len(failures) >= limit:
                # The lock ends when the oldest of the last `limit` failures leaves the window.
                waits.append((failures[-1] + self.window - now).total_seconds())
        return max(waits)

    # Sessions --------------------------------------------------------------

    def user_for_token(self, token: str, now: dt.datetime | None = None) -> User | None:
        """Return the active user of a valid, unexpired session token, else ``None``."""
        if not token:
            return None
        now = now or utc_now()
        with self._sessions() as db:
            login = db.get(LoginSession, _token_digest(token))
            if login is None or login.expires_at <= now:
                return None
            user = db.get(User, login.user_id)
            if user is None or not user.active:
                return None
            return user

    def end_session(self, token: str) -> None:
        """Delete a login session, so its cookie no longer signs anyone in."""
        if not token:
            return
        with self._sessions.begin() as db:
            db.query(LoginSession).filter(LoginSession.token_sha256 == _token_digest(token)).delete()
