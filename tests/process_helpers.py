"""Find the processes a test started by a tag in their environment, so a test can check none is left."""

from __future__ import annotations

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
