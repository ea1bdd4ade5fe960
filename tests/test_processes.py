"""Stopping process trees: every descendant goes, including those in a new session."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from common.exceptions import ConfigError
from common.processes import (
    free_port,
    kill_process_tree,
    listen_errors,
    process_tree,
    read_pid_file,
    stop_process_tree,
)

# A parent with one child in its own session, as flower-superlink starts flower-superexec.
_TREE = "sleep 300 & setsid sleep 301 & wait"


def _start_tree() -> tuple[subprocess.Popen[bytes], list[int]]:
    process = subprocess.Popen(["sh", "-c", _TREE], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(process_tree(process.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, [member.pid for member in process_tree(process.pid)]


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_stop_process_tree_ends_other_sessions() -> None:
    process, pids = _start_tree()
    assert len(pids) == 3

    killed = stop_process_tree(process.pid, timeout=10)
    process.wait(timeout=10)

    assert killed == []
    assert _alive(pids) == []


def test_stop_process_tree_kills_after_timeout() -> None:
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(300)"
    process = subprocess.Popen([sys.executable, "-c", ignoring], stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()

    killed = stop_process_tree(process.pid, timeout=1)
    process.wait(timeout=10)

    assert killed == [process.pid]


def test_kill_process_tree_kills_every_member() -> None:
    process, pids = _start_tree()

    killed = kill_process_tree(process.pid)
    process.wait(timeout=10)

    assert sorted(killed) == sorted(pids)
    assert _alive(pids) == []


def test_read_pid_file_ignores_missing_and_stale(tmp_path: Path) -> None:
    live = tmp_path / "live.pid"
    live.write_text(f"{os.getpid()}\n")
    stale = tmp_path / "stale.pid"
    stale.write_text("999999999\n")
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("not a pid\n")

    assert read_pid_file(live) == os.getpid()
    assert read_pid_file(tmp_path / "missing.pid") is None
    assert read_pid_file(stale) is None
    assert read_pid_file(garbage) is None


def test_free_port_can_be_bound() -> None:
    port = free_port()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", port))
        assert listener.getsockname()[1] == port


def test_listen_errors_names_a_taken_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        second = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with second, pytest.raises(ConfigError) as raised, listen_errors("127.0.0.1", port):
            second.bind(("127.0.0.1", port))

    message = str(raised.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert message.endswith("another program already listens there; stop it or choose another --port")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.EACCES, "Permission denied"), "Permission denied; ports below 1024 need administrator rights"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "choose another --host"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "check --host and --port"),
        (ValueError("Invalid host/port specified."), "Invalid host/port specified.; check --host and --port"),
    ],
)
def test_listen_errors_explains_bind_failures(error: Exception, expected: str) -> None:
    with pytest.raises(ConfigError, match="cannot listen on example-host:80: ") as raised, listen_errors(
        "example-host", 80
    ):
        raise error

    assert expected in str(raised.value)
    assert raised.value.__cause__ is error


def test_listen_errors_passes_other_errors_through() -> None:
    with pytest.raises(OSError) as raised, listen_errors("127.0.0.1", 1):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    assert not isinstance(raised.value, ConfigError)
