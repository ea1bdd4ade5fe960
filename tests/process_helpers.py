"""Find the processes a test started by a tag in their environment, so a test can check none is left."""

from __future__ import annotations

import subprocess
import time

import psutil

#: Environment variable whose value tags every process a test starts (children inherit it).
TAG_ENV = "FEDIDS_TEST_RUN_TAG"


def tagged_pids(tag: str) -> set[int]:
    """Return the ids of live processes whose environment carries ``tag``."""
    pids = set()
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(TAG_ENV) == tag and process.status() != psutil.STATUS_ZOMBIE:
                pids.add(process.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def wait_until_gone(tag: str, seconds: float = 30.0) -> set[int]:
    """Wait up to ``seconds`` for the tagged processes to end and return those still running."""
    deadline = time.monotonic() + seconds
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(1)
    return tagged_pids(tag)


def signal_after_line(
    process: subprocess.Popen[str], marker: str, signum: int, *, wait_seconds: float, read_seconds: float = 900.0
) -> str:
    """Send ``signum`` once ``process`` prints a line containing ``marker``, then return the rest of its output.

    The output is read while the process shuts down, because a full pipe
    would block it. The signal is sent anyway after ``read_seconds``.
    Raises subprocess.TimeoutExpired, after killing the process, when it
    has not ended ``wait_seconds`` after the signal.
    """
    assert process.stdout is not None
    started = time.monotonic()
    for line in process.stdout:
        if marker in line or time.monotonic() - started > read_seconds:
            break
    process.send_signal(signum)
    try:
        output, _ = process.communicate(timeout=wait_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return output
