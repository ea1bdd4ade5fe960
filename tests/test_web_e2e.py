"""End-to-end tests of both web consoles in a real headless Chromium.

Playwright drives the system's Chromium (Debian's ``chromium`` package at
/usr/bin/chromium); no browser is downloaded. The servers listen on
127.0.0.1 on free ports and are stopped by the fixtures. Screenshots of the
main pages go to tests/artifacts/, which git ignores.
"""

from __future__ import annotations

import csv
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web_support import ADMIN, ANALYST

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} not found; install Debian's chromium package (apt-get install chromium) to run the browser tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="install playwright (pip install playwright)")

REPOSITORY = Path(__file__).resolve().parents[1]
ARTIFACTS = REPOSITORY / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The model trains on the first cleaned rows of the real capture; the uploads are
# later rows, which it never saw. Rows 6,000 to 8,999 hold 428 attack flows.
TRAIN_ROWS = 6000
SLICE_ROWS = 3000
SERVER_START_SECONDS = 180.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot once the page and its images have loaded."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_load_state("load")
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def write_slice(source: Path, target: Path, first: int, rows: int) -> Path:
    """Copy the header and data rows ``first`` to ``first + rows - 1`` of a CSV."""
    with source.open(encoding="utf-8") as reader, target.open("w", encoding="utf-8") as writer:
        for number, line in enumerate(reader):
            if number == 0 or first < number <= first + rows:
                writer.write(line)
            elif number > first + rows:
                break
    return target


def sign_in(page: Any, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("form button.primary")
    page.wait_for_load_state("load")


def image_loaded(page: Any, selector: str) -> bool:
    """Tell whether the image decoded, after the page's load event (which waits for images)."""
    page.wait_for_load_state("load")
    return bool(page.eval_on_selector(selector, "image => image.complete && image.naturalWidth > 0"))


# Servers -------------------------------------------------------------------------


def _command_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(REPOSITORY)
    environment.pop("FEDIDS_WEB_PASSWORD", None)
    return environment


def _create_admin(module: str, instance: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "create-admin", "--username", ADMIN[0], "--instance-dir", str(instance),
         "--password-stdin"],
        input=ADMIN[1] + "\n", capture_output=True, text=True, env=_command_environment(), cwd=REPOSITORY,
        timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr


def start_command(module: str, arguments: list[str], log_path: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m module serve`` on a free port and return the process and its base URL."""
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", module, "serve", "--host", "127.0.0.1", "--port", "0", *arguments],
        stdout=subprocess.PIPE, stderr=log, text=True, env=_command_environment(), cwd=REPOSITORY,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if "serving on http://" in line:
                return process, line.split("serving on ", 1)[1].strip()
        if process.poll() is not None:
            break
    stop_command(process)
    raise AssertionError(f"{module} did not start; its log is in {log_path}:\n{log_path.read_text()[-3000:]}")


def stop_command(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def dashboard_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.test_dashboard import write_run

    root = tmp_path_factory.mktemp("dashboard")
    write_run(root / "checkpoints", "federated-20261201-100000")
    instance = root / "instance"
    _create_admin("server.dashboard", instance)
    process, url = start_command(
        "server.dashboard",
        ["--instance-dir", str(instance), "--checkpoint-dir", str(root / "checkpoints")],
        root / "dashboard.log",
    )
    yield url
    stop_command(process)


@pytest.fixture(scope="module")
def wustl_bundle(tmp_path_factory: pytest.TempPathFactory, wustl_path: Path) -> tuple[Path, Path]:
    """Train a small model on the first rows of the real capture, sign it and publish it; return archive and key."""
    from common.config import load_dataset_config
    from server.registry import Registry
    from server.signing import generate_keypair, load_private_key
    from tests.bundle_helpers import train_wustl_round

    folder = tmp_path_factory.mktemp("wustl-bundle")
    private_key, public_key = generate_keypair(folder / "keys")
    round_folder = train_wustl_round(folder / "round-001", wustl_path, window=8, train_rows=TRAIN_ROWS, epochs=3)
    entry = Registry(folder / "registry").publish(
        round_folder, run_id="wustl-console", server_round=1, signing_key=load_private_key(private_key),
        dataset_file=load_dataset_config("wustl-ehms-2020").source,
    )
    return Path(entry["archive"]), public_key


@pytest.fixture(scope="module")
def console_url(tmp_path_factory: pytest.TempPathFactory, wustl_bundle: tuple[Path, Path]) -> Iterator[str]:
    archive, public_key = wustl_bundle
    root = tmp_path_factory.mktemp("console")
    instance = root / "instance"
    _create_admin("client.console", instance)
    created = subprocess.run(
        [sys.executable, "-m", "client.console", "create-user", "--username", ANALYST[0], "--role", "analyst",
         "--instance-dir", str(instance)],
        capture_output=True, text=True, env={**_command_environment(), "FEDIDS_WEB_PASSWORD": ANALYST[1]},
        cwd=REPOSITORY, timeout=120, check=False,
    )
    assert created.returncode == 0, created.stderr
    process, url = start_command(
        "client.console",
        ["--instance-dir", str(instance), "--model", str(archive), "--public-key", str(public_key)],
        root / "console.log",
    )
    yield url
    stop_command(process)


# Site console -----------------------------------------------------------------------


def test_console_upload_results_and_download(browser: Any, console_url: str, wustl_path: Path, tmp_path: Path) -> None:
    traffic = write_slice(wustl_path, tmp_path / "wustl-slice.csv", TRAIN_ROWS, SLICE_ROWS)
    page = browser.new_page(viewport=LAPTOP)

    page.goto(f"{console_url}/upload")
    assert page.url.startswith(f"{console_url}/login")
    screenshot(page, "console-login")
    sign_in(page, console_url, *ADMIN)
    assert page.url == f"{console_url}/upload"
    screenshot(page, "console-upload")

    page.set_input_files("#traffic", str(traffic))
    page.click("#upload-form button")
    page.wait_for_selector("#episodes")
    assert "/analyses/" in page.url
    episodes = page.locator("#episodes tbody tr")
    assert episodes.count() == int(page.inner_text("#episode-count"))
    assert episodes.count() > 0
    first_episode = episodes.first.locator("td").all_inner_texts()
    assert int(first_episode[1]) <= int(first_episode[2])
    assert image_loaded(page, "figure.chart img")
    assert "signature verified" in page.inner_text("#model-banner")
    screenshot(page, "console-results")

    with page.expect_download() as download_info:
        page.click("#download-predictions")
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with saved.open(encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert download.suggested_filename == "predictions-wustl-slice.csv"
    # The first W - 1 = 7 flows have no full window, and cleaning drops exact duplicates.
    assert SLICE_ROWS // 2 < len(rows) <= SLICE_ROWS - 7
    attack_rows = {int(row["row"]) for row in rows if row["predicted"] != "normal"}
    assert int(first_episode[1]) in attack_rows

    page.check("form.filters input[name=attacks]")
    page.click("form.filters button")
    page.wait_for_load_state("load")
    predicted = page.locator("#flows-table tbody tr td:nth-child(2)").all_inner_texts()
    assert predicted and all(name != "normal" for name in predicted)

    page.goto(f"{console_url}/analyses")
    assert "wustl-slice.csv" in page.inner_text("table.history")
    screenshot(page, "console-history")
    page.close()


def test_console_on_phone_fits_screen(browser: Any, console_url: str, wustl_path: Path, tmp_path: Path) -> None:
    traffic = write_slice(wustl_path, tmp_path / "phone.csv", TRAIN_ROWS, 400)
    page = browser.new_page(viewport=PHONE)
    sign_in(page, console_url, *ANALYST)

    page.set_input_files("#traffic", str(traffic))
    page.click("#upload-form button")
    page.wait_for_selector("#flows-table")

    # Wide tables and the chart scroll inside their own boxes; the page itself does not.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    screenshot(page, "console-results-phone")
    page.close()


def test_console_hostile_file_shows_error(browser: Any, console_url: str, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.csv"
    hostile.write_bytes(b"\x00\xff\xfe\x00" * 64)
    page = browser.new_page(viewport=LAPTOP)
    sign_in(page, console_url, *ANALYST)

    page.set_input_files("#traffic", str(hostile))
    page.click("#upload-form button")
    page.wait_for_selector("#upload-error")

    assert "hostile.csv was not analysed" in page.inner_text("#upload-error")
    assert "Traceback" not in page.content()
    page.close()


def test_console_lockout_message(browser: Any, console_url: str) -> None:
    page = browser.new_page(viewport=LAPTOP)

    for _ in range(5):
        sign_in(page, console_url, "mallory", "wrong password")
    sign_in(page, console_url, "mallory", "wrong password")

    assert "Too many failed sign-in attempts" in page.inner_text("#login-error")
    page.close()


# Coordinator dashboard ----------------------------------------------------------------


def test_dashboard_runs_and_chart(browser: Any, dashboard_url: str) -> None:
    page = browser.new_page(viewport=LAPTOP)
    sign_in(page, dashboard_url, *ADMIN)
    screenshot(page, "dashboard-runs")

    page.click("#runs-table a")
    page.wait_for_selector("#rounds-table")

    assert image_loaded(page, "figure.chart img")
    assert page.locator("#rounds-table tbody tr").count() == 3
    assert "no rows left after cleaning" in page.content()
    screenshot(page, "dashboard-run")
    page.goto(f"{dashboard_url}/admin/audit")
    assert "sign-in" in page.inner_text("#audit-table")
    page.close()
