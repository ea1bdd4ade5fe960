"""Checks of the web apps' command-line options, with messages that name the option and the value typed."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.exceptions import ConfigError
from common.web.accounts import normalize_username
from common.web.settings import MEBIBYTE


class UserNameAction(argparse.Action):
    """Store a user name given as ``--username`` or ``--user``; reject a second one that names another user."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        name = str(values)
        # Remembered per namespace, because the aliases share one destination and
        # argparse would otherwise keep the last value without a word.
        earlier_key = f"_{self.dest}_given_as"
        earlier: tuple[str, str] | None = getattr(namespace, earlier_key, None)
        if earlier is not None and normalize_username(earlier[1]) != normalize_username(name):
            earlier_option, earlier_name = earlier
            raise argparse.ArgumentError(
                self,
                f"{earlier_option} {earlier_name!r} and {option_string} {name!r} name different users; "
                "give one user name",
            )
        setattr(namespace, earlier_key, (option_string or self.dest, name))
        setattr(namespace, self.dest, name)


def check_instance_dir(instance_dir: Path) -> None:
    """Check that ``--instance-dir`` is a folder or can be created as one.

    Raises
    ------
    ConfigError
        If the path, or a folder above it, is a file. Creating the folder
        would otherwise fail with a bare "File exists" or "Not a directory".
    """
    for path in (instance_dir, *instance_dir.parents):
        if not path.exists():
            continue
        if path.is_dir():
            return
        if path == instance_dir:
            problem = f"--instance-dir {instance_dir} is a file"
        else:
            problem = f"--instance-dir {instance_dir} lies under {path}, which is a file"
        raise ConfigError(f"{problem}; pass a folder (it is created if missing) or move the file away")


def check_serve_options(arguments: argparse.Namespace) -> None:
    """Check the options of ``serve`` that :class:`~common.web.settings.WebSettings` also checks.

    WebSettings names its fields and the converted values (bytes for
    ``--max-upload-mb``), so the checks are repeated here to name the option
    and the value typed.

    Raises
    ------
    ConfigError
        If an option is out of range, not finite or not an address.
    """
    if not 0 <= arguments.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {arguments.port}")
    positive = {
        "--max-upload-mb": arguments.max_upload_mb,
        "--max-uncompressed-mb": arguments.max_uncompressed_mb,
        "--session-hours": arguments.session_hours,
        "--login-max-failures": arguments.login_max_failures,
        "--login-max-failures-per-address": arguments.login_max_failures_per_address,
        "--login-window-minutes": arguments.login_window_minutes,
    }
    for option, value in positive.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{option} must be a positive number, got {_as_typed(value)}")
    for option in ("--max-upload-mb", "--max-uncompressed-mb"):
        value = positive[option]
        if int(value * MEBIBYTE) < 1:
            raise ConfigError(f"{option} {_as_typed(value)} is less than one byte; give at least 0.000001")
    if arguments.max_uncompressed_mb < arguments.max_upload_mb:
        raise ConfigError(
            f"--max-uncompressed-mb ({_as_typed(arguments.max_uncompressed_mb)}) must be at least "
            f"--max-upload-mb ({_as_typed(arguments.max_upload_mb)})"
        )
    # Sessions end and failed sign-ins expire at times computed from now, which
    # must stay within the years 1 to 9999 that datetime can hold.
    now = dt.datetime.now()
    for option, unit in (("--session-hours", "hours"), ("--login-window-minutes", "minutes")):
        try:
            period = dt.timedelta(**{unit: positive[option]})
            _ = (now + period, now - period)
        except OverflowError as error:
            raise ConfigError(f"{option} {_as_typed(positive[option])} is too large") from error
    for proxy in arguments.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as error:
            raise ConfigError(
                f"invalid --trusted-proxy {proxy!r}: give an IP address or a network such as 10.0.0.0/24"
            ) from error


def _as_typed(value: float) -> str:
    """Write a parsed number as the user most likely typed it: ``-5`` rather than ``-5.0``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
