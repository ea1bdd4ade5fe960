"""Command line shared by the site console and the coordinator dashboard.

Subcommands: ``serve`` runs the web app with waitress, ``create-admin`` adds
the first administrator (or another one), ``create-user`` adds any user,
``set-password`` replaces a user's password and ``unlock`` ends sign-in
lock-outs. A password comes from ``--password-stdin``, the environment
variable :data:`PASSWORD_ENV` or an interactive prompt without echo, never
from the command line, where other users of the machine could read it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from flask import Flask

from common.exceptions import ConfigError, FedIDSError
from common.network import is_loopback, listen_host_option, url_host
from common.processes import listen_errors
from common.web.accounts import AccountError, AccountStore, normalize_username
from common.web.audit import AuditLog
from common.web.database import ROLE_ADMINISTRATOR, ROLE_ANALYST, ROLES, open_database
from common.web.options import UserNameAction, check_instance_dir, check_serve_options
from common.web.serving import create_wsgi_server, listening_addresses
from common.web.settings import MEBIBYTE, WebSettings

logger = logging.getLogger(__name__)

#: Environment variable read by create-admin, create-user and set-password when --password-stdin is not given.
PASSWORD_ENV = "FEDIDS_WEB_PASSWORD"

#: Start of the audit detail of every account command, so the audit page shows the action was taken at the machine.
COMMAND_LINE_DETAIL = "command line"


def build_parser(
    prog: str,
    description: str,
    *,
    env_prefix: str,
    default_instance_dir: str,
    default_port: int,
    add_app_arguments: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """Return the parser with the subcommands serve, create-admin, create-user, set-password and unlock.

    Parameters
    ----------
    prog, description : str
        Program name and help text.
    env_prefix : str
        Prefix of the environment variables that give defaults, for example
        ``FEDIDS_CONSOLE_`` for ``FEDIDS_CONSOLE_DATABASE_URL``.
    default_instance_dir : str
        Instance folder when neither ``--instance-dir`` nor the environment sets one.
    default_port : int
        Port of ``serve`` when ``--port`` is not given.
    add_app_arguments : callable
        Adds the app's own options to the ``serve`` subcommand.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--instance-dir",
        type=Path,
        default=Path(os.environ.get(f"{env_prefix}INSTANCE_DIR", default_instance_dir)),
        help=f"folder for the database, the secret key and stored results (default: {default_instance_dir}, "
        f"or ${env_prefix}INSTANCE_DIR)",
    )
    common.add_argument(
        "--database-url",
        default=os.environ.get(f"{env_prefix}DATABASE_URL", ""),
        help=f"SQLAlchemy database URL (default: SQLite file web.db in the instance folder, or "
        f"${env_prefix}DATABASE_URL)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="serve the web pages")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=default_port, help=f"port; 0 picks a free one (default: {default_port})"
    )
    serve.add_argument("--max-upload-mb", type=float, default=64.0, help="largest upload in MiB (default: 64)")
    serve.add_argument(
        "--max-uncompressed-mb", type=float, default=512.0,
        help="largest size of a gzip upload once decompressed, in MiB (default: 512)",
    )
    serve.add_argument("--session-hours", type=float, default=8.0, help="login session lifetime in hours (default: 8)")
    serve.add_argument(
        "--login-max-failures", type=int, default=5,
        help="failed sign-ins per user name before a lock-out (default: 5)",
    )
    serve.add_argument(
        "--login-max-failures-per-address", type=int, default=20,
        help="failed sign-ins per client address before a lock-out (default: 20)",
    )
    serve.add_argument(
        "--login-window-minutes", type=float, default=15.0,
        help="period over which failed sign-ins are counted, in minutes (default: 15)",
    )
    serve.add_argument(
        "--secure-cookies", action="store_true",
        help="send the session cookie over HTTPS only; set it behind a TLS proxy",
    )
    serve.add_argument(
        "--trusted-proxy", action="append", default=[], metavar="ADDRESS",
        help="address or CIDR network of a reverse proxy whose X-Forwarded-For header gives the client's "
        "address for sign-in limits and the audit log; repeat for several (default: none, the header is ignored)",
    )
    add_app_arguments(serve)

    for name, role_help in (
        ("create-admin", "add an administrator; use it to create the first account"),
        ("create-user", "add a user with a role"),
    ):
        command = commands.add_parser(name, parents=[common], help=role_help)
        command.add_argument(
            "--username", "--user", dest="username", required=True, action=UserNameAction,
            help="user name: lower-case letters, digits, '.', '_', '-'",
        )
        if name == "create-user":
            command.add_argument("--role", choices=ROLES, default=ROLE_ANALYST, help="role (default: analyst)")
        _add_password_source(command)

    set_password = commands.add_parser(
        "set-password", parents=[common],
        help="replace a user's password, sign the user out everywhere and clear the user's sign-in lock-out",
    )
    set_password.add_argument(
        "--user", "--username", dest="user", required=True, action=UserNameAction, help="user name of the account"
    )
    _add_password_source(set_password)

    unlock = commands.add_parser(
        "unlock", parents=[common],
        help="end sign-in lock-outs by deleting recorded failed sign-ins",
    )
    target = unlock.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--user", "--username", dest="user", action=UserNameAction, help="delete the failed sign-ins of this user name"
    )
    target.add_argument(
        "--address",
        help="delete the failed sign-ins from this client address (IPv4 or IPv6, as the audit log shows it)",
    )
    target.add_argument("--all", action="store_true", help="delete every failed sign-in: ends all lock-outs")
    return parser


def _add_password_source(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--password-stdin", action="store_true",
        help=f"read the password from the first line of standard input instead of ${PASSWORD_ENV} or a prompt",
    )


def settings_from_arguments(arguments: argparse.Namespace) -> WebSettings:
    """Build validated settings from the parsed options; account commands use the defaults for the rest.

    Raises
    ------
    ConfigError
        If an option is invalid; the message names the option and the value given.
    """
    check_instance_dir(arguments.instance_dir)
    if arguments.command != "serve":
        return WebSettings(instance_dir=arguments.instance_dir, database_url=arguments.database_url)
    check_serve_options(arguments)
    return WebSettings(
        instance_dir=arguments.instance_dir,
        database_url=arguments.database_url,
        host=listen_host_option(arguments.host),
        port=arguments.port,
        max_upload_bytes=int(arguments.max_upload_mb * MEBIBYTE),
        max_uncompressed_bytes=int(arguments.max_uncompressed_mb * MEBIBYTE),
        session_hours=arguments.session_hours,
        login_max_failures=arguments.login_max_failures,
        login_max_failures_per_address=arguments.login_max_failures_per_address,
        login_window_minutes=arguments.login_window_minutes,
        secure_cookies=arguments.secure_cookies,
        trusted_proxies=tuple(arguments.trusted_proxy),
    )


def read_password(from_stdin: bool) -> str:
    """Read a new password from standard input, the environment or a prompt (asked twice).

    Raises
    ------
    FedIDSError
        If no password source is available or the two prompts differ.
    """
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    if not sys.stdin.isatty():
        raise FedIDSError(f"no password given: pass --password-stdin or set {PASSWORD_ENV}, or run in a terminal")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Repeat the password: ")
    if first != second:
        raise FedIDSError("the two passwords differ; run the command again")
    return first


def _open_accounts(settings: WebSettings) -> tuple[AccountStore, AuditLog]:
    settings.instance_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings.resolved_database_url)
    store = AccountStore(
        database,
        session_lifetime=dt.timedelta(hours=settings.session_hours),
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
        window=dt.timedelta(minutes=settings.login_window_minutes),
        hasher=settings.password_hasher(),
    )
    return store, AuditLog(database)


def create_account(settings: WebSettings, username: str, role: str, password: str) -> str:
    """Add a user to the database of ``settings`` and return a one-line confirmation."""
    store, _ = _open_accounts(settings)
    user = store.create_user(username, password, role)
    return f"created {user.role} {user.username!r} in {settings.resolved_database_url}"


def set_account_password(settings: WebSettings, username: str, password: str) -> str:
    """Replace a user's password, end their sessions and lock-out, audit it and return a one-line confirmation.

    Raises
    ------
    AccountError
        If the user does not exist or the password breaks the rules.
    """
    store, audit = _open_accounts(settings)
    ended = store.set_password(username, password)
    name = normalize_username(username)
    # The User column names who acted, as for an administrator's actions on the
    # web pages. The command line has no signed-in user, so the column stays
    # empty and the detail names where the action came from and its target.
    audit.record(
        "password-set", detail=f"{COMMAND_LINE_DETAIL}: set a new password for {name}; ended {ended} session(s)"
    )
    return f"set a new password for {name!r}; ended {ended} session(s) and cleared the sign-in lock-out"


def unlock_sign_in(settings: WebSettings, username: str | None, address: str | None) -> str:
    """Delete recorded failed sign-ins (all of them when both filters are ``None``) and return a confirmation.

    Raises
    ------
    ConfigError
        If ``address`` is not an IPv4 or IPv6 address.
    AccountError
        If ``username`` is given but no such user exists, which is most
        likely a typing error.
    """
    if address is not None:
        try:
            # Recorded addresses come from the socket in canonical form (2001:db8::5),
            # so 2001:DB8:0::5 must be written the same way to match them.
            address = str(ipaddress.ip_address(address))
        except ValueError as error:
            raise ConfigError(
                f"invalid --address {address!r}: give the client's IPv4 or IPv6 address as the audit log shows it, "
                "such as 10.0.0.5 or 2001:db8::5"
            ) from error
    store, audit = _open_accounts(settings)
    if username is not None and not store.user_exists(username):
        raise AccountError(f"user {normalize_username(username)!r} does not exist")
    deleted = store.unlock(username=username, address=address)
    if username is not None:
        scope = f"user {normalize_username(username)!r}"
    elif address is not None:
        scope = f"address {address}"
    else:
        scope = "all users and addresses"
    # Recorded like set-password, with no acting user. The unlocked user or address goes
    # in the detail, because the Address column is where a request came from.
    audit.record(
        "sign-in-unlocked",
        detail=f"{COMMAND_LINE_DETAIL}: unlocked sign-in for {scope}; deleted {deleted} failed sign-in(s)",
    )
    return f"unlocked sign-in for {scope}: deleted {deleted} failed sign-in(s)"


def serve(app: Flask, settings: WebSettings, name: str) -> None:
    """Serve ``app`` with waitress until SIGINT or SIGTERM.

    Prints ``<name>: serving on http://HOST:PORT`` once the socket listens,
    with the port the system chose when ``settings.port`` is 0 and an IPv6
    host in brackets.
    """
    with listen_errors(settings.host, settings.port):
        server = create_wsgi_server(app, settings)
    port = getattr(server, "effective_port", settings.port)
    # Warn only after the bind succeeded, so an unusable address gets its error
    # alone. The warning names the bound addresses, which a host name does not show.
    reachable = [host for host, _ in listening_addresses(server) if not is_loopback(host)]
    if reachable:
        logger.warning(
            "serve: listening on %s, which other machines can reach; put a TLS proxy in front and pass "
            "--secure-cookies",
            ", ".join(reachable),
        )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        logger.info("serve: stopping %s", name)
        raise SystemExit(0)

    # Waitress's run() catches KeyboardInterrupt and SystemExit and returns
    # without a word, so both signals get this handler, which logs first.
    # The server is closed only after run() has waited for the worker threads,
    # because a thread that finishes a response writes to the trigger pipe that close() closes.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{name}: serving on http://{url_host(settings.host)}:{port}", flush=True)
    try:
        server.run()
    finally:
        server.close()


def _user_exists(settings: WebSettings, username: str) -> bool:
    store, _ = _open_accounts(settings)
    return store.user_exists(username)


def main(
    argv: Sequence[str] | None,
    *,
    parser: argparse.ArgumentParser,
    name: str,
    build_app: Callable[[WebSettings, argparse.Namespace], Flask],
) -> int:
    """Run one subcommand; a bad option or input prints one line to stderr and returns 2.

    Parameters
    ----------
    argv : sequence of str or None
        Arguments without the program name; ``None`` reads ``sys.argv``.
    parser : argparse.ArgumentParser
        From :func:`build_parser`.
    name : str
        Name printed in messages, for example ``site-console``.
    build_app : callable
        Builds the app for ``serve`` from the settings and the parsed options.
    """
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The database contains password hashes and the audit log, and analyses contain
    # the site's predictions: files this command creates are for its owner only.
    previous_umask = os.umask(0o077)
    try:
        settings = settings_from_arguments(arguments)
        if arguments.command == "serve":
            app = build_app(settings, arguments)
            serve(app, settings, name)
            return 0
        if arguments.command == "unlock":
            print(unlock_sign_in(settings, arguments.user, arguments.address))
            return 0
        if arguments.command == "set-password":
            if not _user_exists(settings, arguments.user):
                # Checked before the prompt, so a mistyped name does not cost two password entries.
                raise AccountError(f"user {normalize_username(arguments.user)!r} does not exist")
            print(set_account_password(settings, arguments.user, read_password(arguments.password_stdin)))
            return 0
        role = ROLE_ADMINISTRATOR if arguments.command == "create-admin" else arguments.role
        password = read_password(arguments.password_stdin)
        print(create_account(settings, arguments.username, role, password))
        return 0
    except (FedIDSError, OSError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    finally:
        os.umask(previous_umask)
