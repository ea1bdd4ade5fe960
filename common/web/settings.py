"""Settings of a web console, validated once at the command line."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher

from common.exceptions import ConfigError

logger = logging.getLogger(__name__)

#: Environment variable that provides the cookie-signing key instead of a key file.
SECRET_KEY_ENV = "FEDIDS_WEB_SECRET_KEY"

SECRET_KEY_FILE = "secret_key"
MEBIBYTE = 1024 * 1024

# A key shorter than 32 bytes of text would make the HMAC on the session
# cookie easier to guess than the random key that the console generates.
_MIN_SECRET_KEY_CHARS = 32


@dataclass(frozen=True)
class WebSettings:
    """Settings shared by the site console and the coordinator dashboard.

    Attributes
    ----------
    instance_dir : Path
        Folder for the database (by default), the generated secret key and
        the app's own files (for example stored analyses).
    database_url : str
        SQLAlchemy database URL; empty means SQLite in ``instance_dir``.
    host, port : str, int
        Address to listen on; port 0 lets the system choose a free port.
    max_upload_bytes : int
        Largest request body accepted, uploads included.
    max_uncompressed_bytes : int
        Largest size a gzip upload may have once decompressed.
    session_hours : float
        Lifetime of a login session.
    login_max_failures : int
        Failed sign-ins allowed per user name within ``login_window_minutes``
        before that name is locked out.
    login_max_failures_per_address : int
        Failed sign-ins allowed per client address within the same window,
        whatever user names they try.
    login_window_minutes : float
        Length of the window over which failures are counted; a lock-out
        ends when the oldest counted failure leaves it.
    secure_cookies : bool
        Send the session cookie only over HTTPS; set it when the console is
        served behind a TLS proxy.
    trusted_proxies : tuple of str
        Addresses or networks (CIDR) of reverse proxies whose
        ``X-Forwarded-For`` header gives the client's address. Empty, the
        default, ignores the header, because any client can set it.
    password_time_cost, password_memory_kib, password_parallelism : int
        Argon2id cost of new password hashes; the defaults are argon2-cffi's
        (RFC 9106 low-memory profile). Hashes keep the cost they were made
        with and are upgraded at the next sign-in.
    """

    instance_dir: Path
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    max_upload_bytes: int = 64 * MEBIBYTE
    max_uncompressed_bytes: int = 512 * MEBIBYTE
    session_hours: float = 8.0
    login_max_failures: int = 5
    login_max_failures_per_address: int = 20
    login_window_minutes: float = 15.0
    secure_cookies: bool = False
    trusted_proxies: tuple[str, ...] = ()
    password_time_cost: int = 3
    password_memory_kib: int = 65536
    password_parallelism: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance_dir", Path(self.instance_dir))
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        positive = {
            "max_upload_bytes": self.max_upload_bytes,
            "max_uncompressed_bytes": self.max_uncompressed_bytes,
            "session_hours": self.session_hours,
            "login_max_failures": self.login_max_failures,
            "login_max_failures_per_address": self.login_max_failures_per_address,
            "login_window_minutes": self.login_window_minutes,
            "password_time_cost": self.password_time_cost,
            "password_memory_kib": self.password_memory_kib,
            "password_parallelism": self.password_parallelism,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as error:
                raise ConfigError(
                    f"invalid trusted proxy {proxy!r}: give an IP address or a network such as 10.0.0.0/24"
                ) from error
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        if self.max_uncompressed_bytes < self.max_upload_bytes:
            raise ConfigError(
                f"max_uncompressed_bytes ({self.max_uncompressed_bytes}) must be at least "
                f"max_upload_bytes ({self.max_upload_bytes})"
            )

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Return :attr:`trusted_proxies` as networks; a single address is a network of one."""
        return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in self.trusted_proxies)

    def password_hasher(self) -> PasswordHasher:
        """Return an Argon2id hasher with the configured cost."""
        return PasswordHasher(
            time_cost=self.password_time_cost,
            memory_cost=self.password_memory_kib,
            parallelism=self.password_parallelism,
        )

    @property
    def resolved_database_url(self) -> str:
        """The database URL, with the SQLite default under ``instance_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.instance_dir / 'web.db').resolve()}"

    def secret_key(self) -> str:
        """Return the cookie-signing key from the environment or ``<instance_dir>/secret_key``.

        A missing key file is created with 32 random bytes and mode 0600,
        so every deployment has its own key and none is shipped.

        Raises
        ------
        ConfigError
            If the key from the environment or the file is too short.
        """
        from_env = os.environ.get(SECRET_KEY_ENV, "")
        if from_env:
            if len(from_env) < _MIN_SECRET_KEY_CHARS:
                raise ConfigError(
                    f"{SECRET_KEY_ENV} must have at least {_MIN_SECRET_KEY_CHARS} characters, "
                    f"got {len(from_env)}; generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
                )
            return from_env
        path = self.instance_dir / SECRET_KEY_FILE
        if not path.exists():
            self.instance_dir.mkdir(parents=True, exist_ok=True)
            # O_EXCL: two processes starting at once must not overwrite each other's key.
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
            except FileExistsError:
                pass
            else:
                with os.fdopen(descriptor, "w", encoding="ascii") as stream:
                    stream.write(secrets.token_hex(32) + "\n")
                logger.info("settings: generated a new secret key in %s", path)
        key = path.read_text(encoding="ascii").strip()
        if len(key) < _MIN_SECRET_KEY_CHARS:
            raise ConfigError(
                f"secret key file {path} contains {len(key)} characters, fewer than {_MIN_SECRET_KEY_CHARS}; "
                "delete it to generate a new key (this signs out every user)"
            )
        return key
