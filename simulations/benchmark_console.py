"""Benchmark the site console: upload of a whole capture to the rendered results page.

Example::

    python simulations/benchmark_console.py --model runs/registry/<version> --repeat 3

Starts ``python -m client.console serve`` on a free loopback port with a new
instance folder and creates an administrator with a random password. Then it
drives the system's Chromium (/usr/bin/chromium) through Playwright: sign in,
choose the file, click upload, and wait for the results page's load event,
which includes its stylesheet and timeline image. The JSON report, on standard
output and optionally in ``--out``, gives the seconds from the click to that
event and the Navigation Timing of the upload and the results page. It also
gives the uncompressed size of each resource of the results page (HTML,
stylesheet and timeline) and the load average of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.config import DATA_DIR_ENV, load_dataset_config, resolve_data_dir
from common.exceptions import FedIDSError

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVER_START_SECONDS = 180.0

# Sizes are decodedBodySize, the bytes of each response after any
# content encoding is removed, so a cached stylesheet still counts.
_TIMING_SCRIPT = """() => {
    const navigation = performance.getEntriesByType("navigation")[0];
    const resources = performance.getEntriesByType("resource");
    const bytes = {[location.pathname]: navigation.decodedBodySize};
    for (const entry of resources) { bytes[new URL(entry.name).pathname] = entry.decodedBodySize; }
    return {redirectEnd: navigation.redirectEnd, responseEnd: navigation.responseEnd,
            loadEventStart: navigation.loadEventStart, bytes: bytes};
}"""


def _start_console(model: Path, public_key: Path | None, instance: Path, log_path: Path) -> tuple[Any, str]:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    arguments = [sys.executable, "-m", "client.console", "serve", "--port", "0", "--instance-dir", str(instance),
                 "--model", str(model)]
    if public_key is not None:
        arguments += ["--public-key", str(public_key)]
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=log, text=True, env=environment,
                               cwd=REPOSITORY)
    assert process.stdout is not None
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if "serving on http://" in line:
                return process, line.split("serving on ", 1)[1].strip()
    process.terminate()
    raise FedIDSError(f"the console did not start within {SERVER_START_SECONDS:.0f} s; its log is {log_path}")


def _create_admin(instance: Path, username: str, password: str) -> None:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    result = subprocess.run(
        [sys.executable, "-m", "client.console", "create-admin", "--username", username, "--instance-dir",
         str(instance), "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, env=environment, cwd=REPOSITORY, check=False,
    )
    if result.returncode != 0:
        raise FedIDSError(f"create-admin failed: {result.stderr.strip()}")


def _measure_uploads(base_url: str, username: str, password: str, traffic: Path, repeat: int) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    runs: list[dict[str, Any]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base_url}/login")
        page.fill("#username", username)
        page.fill("#password", password)
        page.click("form button.primary")
        page.wait_for_load_state("load")
        for _ in range(repeat):
            page.goto(f"{base_url}/upload")
            page.set_input_files("#traffic", str(traffic))
            started = time.perf_counter()
            page.click("#upload-form button")
            page.wait_for_url("**/analyses/*")
            page.wait_for_load_state("load")
            seconds = time.perf_counter() - started
            # Navigation Timing of the form POST, its redirect and the results page (milliseconds from the click).
            timing = page.evaluate(_TIMING_SCRIPT)
            runs.append(
                {
                    "seconds_to_results_page": round(seconds, 3),
                    "upload_and_analysis_ms": round(timing["redirectEnd"]),
                    "results_html_received_ms": round(timing["responseEnd"]),
                    "load_event_ms": round(timing["loadEventStart"]),
                    "page_bytes": timing["bytes"],
                    "episodes": int(page.inner_text("#episode-count")),
                    "load_average": os.getloadavg(),
                }
            )
        browser.close()
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="signed model bundle the console loads")
    parser.add_argument("--public-key", type=Path, default=None, help="PEM file of the coordinator's signing key")
    parser.add_argument("--dataset", default="wustl-ehms-2020", help="dataset whose first file is uploaded")
    parser.add_argument("--data-dir", type=Path, default=None, help=f"data folder (default: ${DATA_DIR_ENV})")
    parser.add_argument("--repeat", type=int, default=3, help="uploads to time (default: 3)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report to this file")
    arguments = parser.parse_args(argv)

    try:
        if not CHROMIUM.exists():
            raise FedIDSError(f"{CHROMIUM} not found; install Debian's chromium package")
        traffic = load_dataset_config(arguments.dataset).data_paths(resolve_data_dir(arguments.data_dir))[0]
        if not traffic.exists():
            raise FedIDSError(f"{traffic} not found; set --data-dir or ${DATA_DIR_ENV}")
        with tempfile.TemporaryDirectory(prefix="console-benchmark-") as folder:
            instance = Path(folder) / "instance"
            username, password = "benchmark", secrets.token_urlsafe(18)
            _create_admin(instance, username, password)
            process, base_url = _start_console(arguments.model, arguments.public_key, instance,
                                               Path(folder) / "console.log")
            try:
                runs = _measure_uploads(base_url, username, password, traffic, arguments.repeat)
            finally:
                process.terminate()
                process.wait(timeout=30)
    except FedIDSError as error:
        print(f"benchmark_console: error: {error}", file=sys.stderr)
        return 2

    report = {
        "file": traffic.name,
        "file_bytes": traffic.stat().st_size,
        "model": str(arguments.model),
        "median_seconds_to_results_page": statistics.median(run["seconds_to_results_page"] for run in runs),
        "median_page_bytes": statistics.median(sum(run["page_bytes"].values()) for run in runs),
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.out is not None:
        arguments.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
