"""Accounts, rate-limited sign-in, login sessions, settings and the account commands."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from common.exceptions import ConfigError
from common.web import cli
from common.web.accounts import AccountError, AccountStore
from common.web.audit import AuditLog
from common.web.database import User, open_database
from common.web.settings import SECRET_KEY_ENV, WebSettings
from server.dashboard.__main__ import main as dashboard_main

REPOSITORY = Path(__file__).resolve().parents[1]
START = dt.datetime(2026, 1, 1, 12, 0, 0)
WINDOW = dt.timedelta(minutes=15)
# Cheap parameters keep the many hashes of these tests fast; the apps use argon2-cffi's defaults.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def store(tmp_path: Path) -> AccountStore:
    return AccountStore(
        open_database(f"sqlite:///{tmp_path / 'web.db'}"),
        session_lifetime=dt.timedelta(hours=1),
        max_failures=3,
        max_failures_per_address=5,
        window=WINDOW,
        hasher=FAST_HASHER,
    )


def test_create_user_stores_argon2_hash(store: AccountStore, tmp_path: Path) -> None:
    store.create_user("Alice", "correct horse battery", "administrator")

    sessions = open_database(f"sqlite:///{tmp_path / 'web.db'}")
    with sessions() as db:
        user = db.scalar(select(User))
    assert user is not None
    assert user.username == "alice"
    assert user.password_hash.startswith("$argon2id$")
    assert "correct horse battery" not in user.password_hash
    assert store.count_administrators() == 1


@pytest.mark.parametrize(
    ("username", "password", "role", "message"),
    [
        ("carol", "short", "analyst", "password too short: use at least 12"),
        ("carol", "carol", "analyst", "password too short"),
        ("carol-long-name", "carol-long-name", "analyst", "must differ from the user name"),
        ("Bad Name!", "correct horse battery", "analyst", "invalid user name 'Bad Name!'"),
        ("", "correct horse battery", "analyst", "invalid user name"),
        ("carol", "correct horse battery", "root", "unknown role 'root'"),
    ],
    ids=["short", "very-short", "equals-name", "bad-name", "empty-name", "bad-role"],
)
def test_create_user_invalid_input(store: AccountStore, username: str, password: str, role: str, message: str) -> None:
    with pytest.raises(AccountError, match=message):
        store.create_user(username, password, role)


def test_create_user_duplicate(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")

    with pytest.raises(AccountError, match="user 'alice' already exists"):
        store.create_user("ALICE", "another long password", "analyst")


def test_sign_in_success_and_session(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")

    result = store.sign_in(" Alice ", "correct horse battery", "127.0.0.1", now=START)

    assert result.user is not None and result.user.username == "alice"
    assert len(result.token) >= 32
    assert store.user_for_token(result.token, now=START + dt.timedelta(minutes=59)) is not None
    assert store.user_for_token(result.token, now=START + dt.timedelta(hours=1)) is None
    assert store.user_for_token("not-a-token", now=START) is None


def test_sign_in_wrong_password_and_unknown_user(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")

    wrong = store.sign_in("alice", "wrong password!", "127.0.0.1", now=START)
    unknown = store.sign_in("mallory", "correct horse battery", "127.0.0.1", now=START)

    assert wrong.user is None
    assert not wrong.locked
    assert wrong.token == ""
    assert unknown.user is None
    assert not unknown.locked


def test_sign_in_locks_user_after_max_failures(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    for minute in range(3):
        store.sign_in("alice", "wrong", "10.0.0.1", now=START + dt.timedelta(minutes=minute))

    # The right password from another address is refused while the name is locked.
    locked = store.sign_in("alice", "correct horse battery", "10.0.0.2", now=START + dt.timedelta(minutes=3))

    assert locked.user is None
    assert locked.locked
    # The oldest counted failure (minute 0) leaves the window at minute 15.
    assert locked.locked_seconds == pytest.approx(12 * 60)


def test_sign_in_lock_ends_after_window(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    for minute in range(3):
        store.sign_in("alice", "wrong", "10.0.0.1", now=START + dt.timedelta(minutes=minute))

    later = store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START + dt.timedelta(minutes=15, seconds=1))

    assert later.user is not None


def test_sign_in_success_resets_user_count(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    store.sign_in("alice", "wrong", "10.0.0.1", now=START)
    store.sign_in("alice", "wrong", "10.0.0.1", now=START + dt.timedelta(seconds=1))
    store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START + dt.timedelta(seconds=2))
    store.sign_in("alice", "wrong", "10.0.0.1", now=START + dt.timedelta(seconds=3))
    store.sign_in("alice", "wrong", "10.0.0.1", now=START + dt.timedelta(seconds=4))

    result = store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START + dt.timedelta(seconds=5))

    assert result.user is not None


def test_sign_in_locks_address_across_names(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    store.create_user("mallory", "mallory's own password", "analyst")
    # Five names, one guess each: no name reaches its limit, but the address does,
    # and signing in to an own account in between does not reset it.
    for index, name in enumerate(["bob", "carol", "dave", "erin"]):
        store.sign_in(name, "guess", "10.0.0.9", now=START + dt.timedelta(seconds=index))
    store.sign_in("mallory", "mallory's own password", "10.0.0.9", now=START + dt.timedelta(seconds=5))
    store.sign_in("frank", "guess", "10.0.0.9", now=START + dt.timedelta(seconds=6))

    result = store.sign_in("alice", "correct horse battery", "10.0.0.9", now=START + dt.timedelta(seconds=7))
    other_address = store.sign_in("alice", "correct horse battery", "10.0.0.10", now=START + dt.timedelta(seconds=7))

    assert result.locked
    assert other_address.user is not None


def test_disabled_user_cannot_sign_in_and_loses_sessions(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    token = store.sign_in("alice", "correct horse battery", "127.0.0.1", now=START).token

    store.set_active("alice", False)

    assert store.user_for_token(token, now=START) is None
    assert store.sign_in("alice", "correct horse battery", "127.0.0.1", now=START).user is None
    with pytest.raises(AccountError, match="user 'nobody' does not exist"):
        store.set_active("nobody", False)


def test_end_session_revokes_token(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    token = store.sign_in("alice", "correct horse battery", "127.0.0.1", now=START).token

    store.end_session(token)

    assert store.user_for_token(token, now=START) is None


def test_change_password_ends_other_sessions(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    store.create_user("bob", "staple tree orbit 42", "analyst")
    kept_token = store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START).token
    other = store.sign_in("alice", "correct horse battery", "10.0.0.2", now=START).token
    bobs = store.sign_in("bob", "staple tree orbit 42", "10.0.0.3", now=START).token

    result = store.change_password("alice", "correct horse battery", "a brand new passphrase", keep_token=kept_token,
                                   remote_addr="10.0.0.1", now=START)

    assert result.user is not None
    assert store.user_for_token(kept_token, now=START) is not None
    assert store.user_for_token(other, now=START) is None
    assert store.user_for_token(bobs, now=START) is not None
    assert store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START).user is None
    assert store.sign_in("alice", "a brand new passphrase", "10.0.0.1", now=START).user is not None


def test_change_password_wrong_current_counts_as_failure(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    token = store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START).token

    results = [
        store.change_password("alice", "guess", "a brand new passphrase", keep_token=token, remote_addr="10.0.0.1",
                              now=START + dt.timedelta(seconds=second))
        for second in range(1, 5)
    ]

    assert [result.user for result in results] == [None, None, None, None]
    assert [result.locked for result in results] == [False, False, False, True]
    # Even the right current password is not checked during the lock-out.
    locked = store.change_password("alice", "correct horse battery", "a brand new passphrase", keep_token=token,
                                   remote_addr="10.0.0.1", now=START + dt.timedelta(seconds=5))
    assert locked.locked
    assert store.sign_in("alice", "correct horse battery", "10.0.0.2", now=START + dt.timedelta(seconds=6)).locked


@pytest.mark.parametrize(
    ("new_password", "message"),
    [("short", "password too short: use at least 12"), ("Alice-Long-Name", "must differ from the user name")],
    ids=["short", "equals-name-any-case"],
)
def test_change_password_applies_password_rules(store: AccountStore, new_password: str, message: str) -> None:
    store.create_user("alice-long-name", "correct horse battery", "analyst")
    token = store.sign_in("alice-long-name", "correct horse battery", "10.0.0.1", now=START).token

    with pytest.raises(AccountError, match=message):
        store.change_password("alice-long-name", "correct horse battery", new_password, keep_token=token,
                              remote_addr="10.0.0.1", now=START)

    assert store.sign_in("alice-long-name", "correct horse battery", "10.0.0.1", now=START).user is not None


def test_set_password_ends_sessions_and_lock_out(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    token = store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START).token
    for second in range(1, 4):
        store.sign_in("alice", "wrong", "10.0.0.1", now=START + dt.timedelta(seconds=second))
    assert store.sign_in("alice", "correct horse battery", "10.0.0.1", now=START + dt.timedelta(seconds=4)).locked

    ended = store.set_password("alice", "a brand new passphrase")

    assert ended == 1
    assert store.user_for_token(token, now=START) is None
    assert store.sign_in("alice", "a brand new passphrase", "10.0.0.1", now=START + dt.timedelta(seconds=5)).user
    with pytest.raises(AccountError, match="user 'nobody' does not exist"):
        store.set_password("nobody", "a brand new passphrase")
    with pytest.raises(AccountError, match="password too short"):
        store.set_password("alice", "short")


def _lock_out_alice_and_address(store: AccountStore) -> None:
    """Lock the name alice (3 failures) and the address 10.0.0.9 (5 failures, the last two on other names)."""
    for second in range(3):
        store.sign_in("alice", "wrong", "10.0.0.9", now=START + dt.timedelta(seconds=second))
    store.sign_in("carol", "wrong", "10.0.0.9", now=START + dt.timedelta(seconds=3))
    store.sign_in("dave", "wrong", "10.0.0.9", now=START + dt.timedelta(seconds=4))


def test_unlock_user_deletes_only_its_failures(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    _lock_out_alice_and_address(store)
    later = START + dt.timedelta(seconds=10)

    deleted = store.unlock(username="Alice")

    assert deleted == 3
    # The address is below its limit again, because alice's failures no longer count there either.
    assert store.sign_in("alice", "correct horse battery", "10.0.0.9", now=later).user is not None
    assert store.unlock(address="10.0.0.9") == 2


def test_unlock_address_and_all(store: AccountStore) -> None:
    store.create_user("alice", "correct horse battery", "analyst")
    store.create_user("bob", "staple tree orbit 42", "analyst")
    _lock_out_alice_and_address(store)
    later = START + dt.timedelta(seconds=10)

    assert store.sign_in("bob", "staple tree orbit 42", "10.0.0.9", now=later).locked
    assert store.unlock(address="10.0.0.9") == 5
    assert store.sign_in("bob", "staple tree orbit 42", "10.0.0.9", now=later).user is not None
    _lock_out_alice_and_address(store)
    assert store.sign_in("alice", "correct horse battery", "10.0.0.1", now=later).locked
    assert store.unlock() == 5
    assert store.sign_in("alice", "correct horse battery", "10.0.0.1", now=later).user is not None


def test_audit_log_pages_newest_first(tmp_path: Path) -> None:
    audit = AuditLog(open_database(f"sqlite:///{tmp_path / 'web.db'}"))
    for index in range(5):
        audit.record("upload", username="alice", file_sha256=f"{index:064x}")

    first = audit.page(1, per_page=2)
    last = audit.page(99, per_page=2)

    assert (first.total, first.pages, first.page) == (5, 3, 1)
    assert [event.file_sha256[-1] for event in first.events] == ["4", "3"]
    assert last.page == 3
    assert len(last.events) == 1
    with pytest.raises(ValueError, match="unknown audit action 'delete-everything'"):
        audit.record("delete-everything")


def test_secret_key_file_created_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
    settings = WebSettings(instance_dir=tmp_path / "instance")

    first = settings.secret_key()
    second = settings.secret_key()

    mode = stat.S_IMODE(os.stat(tmp_path / "instance" / "secret_key").st_mode)
    assert first == second
    assert len(first) == 64
    assert mode == 0o600


def test_secret_key_from_environment_too_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, "short")

    with pytest.raises(ConfigError, match=f"{SECRET_KEY_ENV} must have at least 32 characters, got 5"):
        WebSettings(instance_dir=tmp_path).secret_key()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 70000}, "port must be between 0 and 65535, got 70000"),
        ({"login_max_failures": 0}, "login_max_failures must be positive, got 0"),
        ({"max_upload_bytes": 10, "max_uncompressed_bytes": 5}, "max_uncompressed_bytes \\(5\\) must be at least"),
        ({"trusted_proxies": ("10.0.0.1", "proxy.local")}, "invalid trusted proxy 'proxy.local': give an IP"),
    ],
    ids=["port", "failures", "uncompressed", "trusted-proxy"],
)
def test_settings_invalid_values(tmp_path: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WebSettings(instance_dir=tmp_path, **options)  # type: ignore[arg-type]


def test_open_database_invalid_url() -> None:
    with pytest.raises(ConfigError, match="invalid database URL"):
        open_database("nosuchdriver://user:secret@host/db")


def _run_console(
    *arguments: str, stdin: str = "", env: dict[str, str] | None = None, module: str = "client.console"
) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "FEDIDS_WEB_PASSWORD"}
    environment["PYTHONPATH"] = str(REPOSITORY)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        input=stdin, capture_output=True, text=True, env=environment, cwd=REPOSITORY, timeout=120, check=False,
    )


def test_create_admin_command_reads_stdin(tmp_path: Path) -> None:
    instance = tmp_path / "console"

    created = _run_console("create-admin", "--username", "alice", "--instance-dir", str(instance), "--password-stdin",
                           stdin="correct horse battery\n")
    # --user is the spelling of the other account commands and names the same account.
    duplicate = _run_console("create-admin", "--user", "alice", "--instance-dir", str(instance),
                             env={"FEDIDS_WEB_PASSWORD": "another long password"})

    assert created.returncode == 0, created.stderr
    assert "created administrator 'alice'" in created.stdout
    assert duplicate.returncode == 2
    assert duplicate.stderr.strip() == "site-console: error: user 'alice' already exists"
    store = AccountStore(
        open_database(f"sqlite:///{instance / 'web.db'}"), session_lifetime=dt.timedelta(hours=1),
        max_failures=3, max_failures_per_address=5, window=WINDOW,
    )
    assert store.sign_in("alice", "correct horse battery", "127.0.0.1").user is not None
    assert stat.S_IMODE(os.stat(instance / "web.db").st_mode) & 0o077 == 0


def test_create_admin_command_rejects_short_password(tmp_path: Path) -> None:
    result = _run_console("create-admin", "--username", "alice", "--instance-dir", str(tmp_path), "--password-stdin",
                          stdin="short\n")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "site-console: error: password too short: use at least 12 characters, got 5"
    )
    assert "Traceback" not in result.stderr


def test_create_admin_command_without_password_source(tmp_path: Path) -> None:
    result = _run_console("create-admin", "--username", "alice", "--instance-dir", str(tmp_path))

    assert result.returncode == 2
    assert "no password given: pass --password-stdin or set FEDIDS_WEB_PASSWORD" in result.stderr


def _locked_out_alice(instance: Path) -> tuple[AccountStore, str]:
    """Create alice in the database of ``instance``, open one session, then lock the name out."""
    instance.mkdir(parents=True, exist_ok=True)
    store = AccountStore(
        open_database(f"sqlite:///{instance / 'web.db'}"), session_lifetime=dt.timedelta(hours=1),
        max_failures=5, max_failures_per_address=20, window=WINDOW, hasher=FAST_HASHER,
    )
    store.create_user("alice", "correct horse battery", "analyst")
    token = store.sign_in("alice", "correct horse battery", "127.0.0.1").token
    for _ in range(5):
        store.sign_in("alice", "wrong", "127.0.0.1")
    assert store.sign_in("alice", "correct horse battery", "127.0.0.1").locked
    return store, token


@pytest.mark.parametrize(
    ("module", "option"),
    [("client.console", "--user"), ("server.dashboard", "--user"), ("client.console", "--username")],
)
def test_set_password_command_reads_stdin(tmp_path: Path, module: str, option: str) -> None:
    instance = tmp_path / "web"
    store, token = _locked_out_alice(instance)

    result = _run_console("set-password", option, "alice", "--instance-dir", str(instance), "--password-stdin",
                          stdin="a brand new passphrase\n", module=module)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "set a new password for 'alice'; ended 1 session(s) and cleared the sign-in lock-out"
    )
    assert store.user_for_token(token) is None
    assert store.sign_in("alice", "a brand new passphrase", "127.0.0.1").user is not None
    events = AuditLog(open_database(f"sqlite:///{instance / 'web.db'}")).page(1).events
    # No signed-in user acted, so the User column stays empty and the detail names the command line and the target.
    assert [(event.action, event.username, event.remote_addr, event.detail) for event in events] == [
        ("password-set", "", "", "command line: set a new password for alice; ended 1 session(s)")
    ]


def test_set_password_command_rejects_bad_input(tmp_path: Path) -> None:
    instance = tmp_path / "web"
    store, _ = _locked_out_alice(instance)

    unknown = _run_console("set-password", "--user", "nobody", "--instance-dir", str(instance), "--password-stdin",
                           stdin="a brand new passphrase\n")
    short = _run_console("set-password", "--user", "alice", "--instance-dir", str(instance), "--password-stdin",
                         stdin="short\n")

    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "site-console: error: user 'nobody' does not exist"
    assert short.returncode == 2
    assert short.stderr.strip() == "site-console: error: password too short: use at least 12 characters, got 5"
    assert store.sign_in("alice", "correct horse battery", "127.0.0.1").locked


def test_unlock_command_for_user_and_all(tmp_path: Path) -> None:
    instance = tmp_path / "web"
    store, _ = _locked_out_alice(instance)

    by_user = _run_console("unlock", "--user", "alice", "--instance-dir", str(instance), module="server.dashboard")
    signed_in = store.sign_in("alice", "correct horse battery", "127.0.0.1").user
    for _ in range(5):
        store.sign_in("alice", "wrong", "127.0.0.1")
    everyone = _run_console("unlock", "--all", "--instance-dir", str(instance), module="server.dashboard")

    assert by_user.returncode == 0, by_user.stderr
    assert by_user.stdout.strip() == "unlocked sign-in for user 'alice': deleted 5 failed sign-in(s)"
    assert signed_in is not None
    assert everyone.returncode == 0, everyone.stderr
    assert everyone.stdout.strip() == "unlocked sign-in for all users and addresses: deleted 5 failed sign-in(s)"
    assert store.sign_in("alice", "correct horse battery", "127.0.0.1").user is not None
    events = AuditLog(open_database(f"sqlite:///{instance / 'web.db'}")).page(1).events
    assert [(event.action, event.username, event.remote_addr, event.detail) for event in events] == [
        ("sign-in-unlocked", "", "",
         "command line: unlocked sign-in for all users and addresses; deleted 5 failed sign-in(s)"),
        ("sign-in-unlocked", "", "", "command line: unlocked sign-in for user 'alice'; deleted 5 failed sign-in(s)"),
    ]


def test_unlock_command_rejects_bad_input(tmp_path: Path) -> None:
    no_target = _run_console("unlock", "--instance-dir", str(tmp_path))
    unknown = _run_console("unlock", "--user", "nobody", "--instance-dir", str(tmp_path))

    assert no_target.returncode == 2
    assert "one of the arguments --user/--username --address --all is required" in no_target.stderr
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "site-console: error: user 'nobody' does not exist"


def test_unlock_command_for_address(tmp_path: Path) -> None:
    instance = tmp_path / "web"
    store, _ = _locked_out_alice(instance)

    result = _run_console(
        "unlock", "--address", "127.0.0.1", "--instance-dir", str(instance), module="server.dashboard"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unlocked sign-in for address 127.0.0.1: deleted 5 failed sign-in(s)"
    assert store.sign_in("alice", "correct horse battery", "127.0.0.1").user is not None
    events = AuditLog(open_database(f"sqlite:///{instance / 'web.db'}")).page(1).events
    # The Address column is where a request came from; the unlocked address is the target, named in the detail.
    assert [(event.action, event.username, event.remote_addr, event.detail) for event in events] == [
        ("sign-in-unlocked", "", "",
         "command line: unlocked sign-in for address 127.0.0.1; deleted 5 failed sign-in(s)"),
    ]


@pytest.mark.parametrize("address", ["notanip", "10.0.0.256", "10.0.0.5/24", "", " 10.0.0.5"])
def test_unlock_command_rejects_invalid_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    status = dashboard_main(["unlock", "--address", address, "--instance-dir", str(tmp_path / "web")])

    error = capsys.readouterr().err
    assert status == 2
    assert error == (
        f"dashboard: error: invalid --address {address!r}: give the client's IPv4 or IPv6 address as the audit log "
        "shows it, such as 10.0.0.5 or 2001:db8::5\n"
    )
    assert not (tmp_path / "web").exists()


def test_unlock_command_accepts_ipv6_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = dashboard_main(["unlock", "--address", "2001:db8::5", "--instance-dir", str(tmp_path / "web")])

    assert status == 0
    assert capsys.readouterr().out == "unlocked sign-in for address 2001:db8::5: deleted 0 failed sign-in(s)\n"


def test_unlock_command_matches_other_ipv6_spelling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    instance = tmp_path / "web"
    instance.mkdir()
    store = AccountStore(
        open_database(f"sqlite:///{instance / 'web.db'}"), session_lifetime=dt.timedelta(hours=1),
        max_failures=50, max_failures_per_address=3, window=WINDOW, hasher=FAST_HASHER,
    )
    store.create_user("alice", "correct horse battery", "analyst")
    for _ in range(3):
        store.sign_in("alice", "wrong", "2001:db8::5")
    assert store.sign_in("alice", "correct horse battery", "2001:db8::5").locked

    status = dashboard_main(["unlock", "--address", "2001:DB8:0:0:0:0:0:5", "--instance-dir", str(instance)])

    assert status == 0
    assert capsys.readouterr().out == "unlocked sign-in for address 2001:db8::5: deleted 3 failed sign-in(s)\n"
    assert store.sign_in("alice", "correct horse battery", "2001:db8::5").user is not None


@pytest.mark.parametrize(
    ("command", "first", "second"),
    [
        (["create-admin"], "--username", "--user"),
        (["create-user", "--role", "analyst"], "--user", "--username"),
        (["set-password"], "--username", "--user"),
        (["unlock"], "--user", "--username"),
        (["unlock"], "--user", "--user"),
    ],
    ids=["create-admin", "create-user", "set-password", "unlock", "unlock-same-option"],
)
def test_account_commands_reject_two_user_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], first: str, second: str
) -> None:
    arguments = [*command, first, "alice", second, "bob", "--instance-dir", str(tmp_path / "web")]

    with pytest.raises(SystemExit) as exited:
        dashboard_main(arguments)

    error = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"{first} 'alice' and {second} 'bob' name different users; give one user name" in error
    assert not (tmp_path / "web").exists()


def test_account_commands_accept_same_user_name_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cli.PASSWORD_ENV, "correct horse battery")
    instance = tmp_path / "web"

    status = dashboard_main(["create-admin", "--username", "Alice", "--user", "alice", "--instance-dir", str(instance)])

    assert status == 0, capsys.readouterr().err
    assert "created administrator 'alice'" in capsys.readouterr().out


def _serve_arguments(tmp_path: Path, *options: str) -> argparse.Namespace:
    parser = cli.build_parser(
        "python -m server.dashboard", "test", env_prefix="FEDIDS_TEST_", default_instance_dir=str(tmp_path),
        default_port=8090, add_app_arguments=lambda _parser: None,
    )
    return parser.parse_args(["serve", *options])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-upload-mb", "-5"], "--max-upload-mb must be a positive number, got -5"),
        (["--max-upload-mb", "1e-9"], "--max-upload-mb 1e-09 is less than one byte; give at least 0.000001"),
        (["--max-uncompressed-mb", "inf"], "--max-uncompressed-mb must be a positive number, got inf"),
        (["--max-upload-mb", "10", "--max-uncompressed-mb", "5"],
         "--max-uncompressed-mb (5) must be at least --max-upload-mb (10)"),
        (["--session-hours", "0"], "--session-hours must be a positive number, got 0"),
        (["--session-hours", "nan"], "--session-hours must be a positive number, got nan"),
        (["--session-hours", "1e8"], "--session-hours 100000000 is too large"),
        (["--login-window-minutes", "-1.5"], "--login-window-minutes must be a positive number, got -1.5"),
        (["--login-window-minutes", "1e300"], "--login-window-minutes 1e+300 is too large"),
        (["--login-max-failures", "0"], "--login-max-failures must be a positive number, got 0"),
        (["--login-max-failures-per-address", "-2"],
         "--login-max-failures-per-address must be a positive number, got -2"),
        (["--port", "70000"], "--port must be between 0 and 65535, got 70000"),
        (["--trusted-proxy", "proxy.local"], "invalid --trusted-proxy 'proxy.local': give an IP address or a network"),
        (["--host", ""], "--host '' is empty; pass 127.0.0.1 to listen on this machine only"),
        (["--host", "  "], "--host '  ' is empty"),
    ],
    ids=["upload-negative", "upload-below-byte", "uncompressed-inf", "uncompressed-below-upload",
         "session-zero", "session-nan", "session-too-long", "window-negative", "window-too-long", "failures-zero",
         "address-failures-negative", "port", "trusted-proxy", "host-empty", "host-whitespace"],
)
def test_serve_options_named_in_errors(tmp_path: Path, options: list[str], message: str) -> None:
    arguments = _serve_arguments(tmp_path, *options)

    with pytest.raises(ConfigError) as raised:
        cli.settings_from_arguments(arguments)

    assert str(raised.value).startswith(message)


def test_serve_options_fractional_mebibytes(tmp_path: Path) -> None:
    arguments = _serve_arguments(tmp_path, "--max-upload-mb", "0.5", "--max-uncompressed-mb", "0.75")

    settings = cli.settings_from_arguments(arguments)

    assert settings.max_upload_bytes == 524288
    assert settings.max_uncompressed_bytes == 786432


@pytest.mark.parametrize(
    ("host", "expected"),
    [("::1", "::1"), ("[::1]", "::1"), ("127.0.0.1", "127.0.0.1")],
    ids=["ipv6", "brackets", "ipv4"],
)
def test_serve_host_without_brackets(tmp_path: Path, host: str, expected: str) -> None:
    settings = cli.settings_from_arguments(_serve_arguments(tmp_path, "--host", host))

    assert settings.host == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-upload-mb", "-5"], "dashboard: error: --max-upload-mb must be a positive number, got -5"),
        (["--session-hours", "0"], "dashboard: error: --session-hours must be a positive number, got 0"),
    ],
    ids=["max-upload-mb", "session-hours"],
)
def test_serve_command_prints_option_error(tmp_path: Path, options: list[str], message: str) -> None:
    result = _run_console("serve", "--instance-dir", str(tmp_path / "web"), *options, module="server.dashboard")

    assert result.returncode == 2
    assert result.stderr == message + "\n"


def test_account_command_rejects_file_as_instance_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_folder = tmp_path / "web.db"
    not_a_folder.write_text("")

    directly = dashboard_main(["create-user", "--username", "bob", "--instance-dir", str(not_a_folder)])
    directly_error = capsys.readouterr().err
    below = dashboard_main(["unlock", "--all", "--instance-dir", str(not_a_folder / "web")])
    below_error = capsys.readouterr().err

    assert directly == 2
    assert directly_error == (
        f"dashboard: error: --instance-dir {not_a_folder} is a file; pass a folder (it is created if missing) "
        "or move the file away\n"
    )
    assert below == 2
    assert below_error.startswith(
        f"dashboard: error: --instance-dir {not_a_folder / 'web'} lies under {not_a_folder}, which is a file; "
    )
