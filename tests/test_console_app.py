"""Routes of the site console, through Flask's test client."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from client.console.app import create_console_app
from client.console.detection import Detector
from common.bundle import Bundle, load_bundle
from common.web.app import web_state
from common.web.serving import create_wsgi_server
from common.web.settings import MEBIBYTE, WebSettings
from tests.web_support import (
    ADMIN,
    ANALYST,
    TOY_VERSION,
    LastFlowPredictor,
    add_users,
    csrf_token,
    page_token,
    publish_toy_bundle,
    sign_in,
    table_rows,
    toy_signed_bundle,
    write_toy_traffic,
)

REPOSITORY = Path(__file__).resolve().parents[1]

# Attacks at rows 10-14 and 25-27 of a 60-row file: two alert episodes.
LABELS = [0] * 10 + [1] * 5 + [0] * 10 + [1] * 3 + [0] * 32
EXPECTED_EPISODES = [(10, 14, 5), (25, 27, 3)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return toy_signed_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def app(tmp_path: Path, bundle: Bundle) -> Iterator[Flask]:
    settings = WebSettings(
        instance_dir=tmp_path / "console",
        max_upload_bytes=1 * MEBIBYTE,
        max_uncompressed_bytes=2 * MEBIBYTE,
        login_max_failures=3,
        # Cheap hashes keep the tests fast; the default cost is tested in test_web_accounts.
        password_time_cost=1,
        password_memory_kib=1024,
        password_parallelism=1,
    )
    # The real bundle, loader and detect_file, with a runtime whose predictions the tests choose.
    console = create_console_app(settings, Detector(bundle, LastFlowPredictor()))
    add_users(console)
    yield console


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    client = app.test_client()
    sign_in(client, *ADMIN)
    return client


@pytest.fixture
def analyst(app: Flask) -> FlaskClient:
    client = app.test_client()
    sign_in(client, *ANALYST)
    return client


def _upload(client: FlaskClient, content: bytes, name: str = "traffic.csv", token: str | None = None):
    token = page_token(client, "/upload") if token is None else token
    return client.post(
        "/upload",
        data={"csrf_token": token, "traffic": (io.BytesIO(content), name)},
        content_type="multipart/form-data",
    )


def _traffic(tmp_path: Path, labels: list[int] = LABELS) -> bytes:
    return write_toy_traffic(tmp_path / "traffic.csv", labels).read_bytes()


def _audit_actions(app: Flask) -> list[str]:
    return [event.action for event in web_state(app).audit.page(1, per_page=500).events]


# Sign-in -------------------------------------------------------------------


def test_pages_redirect_to_login_when_signed_out(app: Flask) -> None:
    client = app.test_client()

    for path in ("/", "/upload", "/analyses", "/admin/audit", "/admin/users", "/analyses/0123456789abcdef"):
        response = client.get(path)
        assert response.status_code in (302, 303), path
        assert response.headers["Location"].startswith("/login"), path


def test_login_page_renders_form_with_csrf(app: Flask) -> None:
    response = app.test_client().get("/login")

    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'name="csrf_token"' in html
    assert 'type="password"' in html


def test_login_sets_hardened_cookie(app: Flask) -> None:
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))

    response = client.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token})

    cookie = response.headers["Set-Cookie"]
    assert response.status_code == 303
    assert response.headers["Location"] == "/upload"
    assert cookie.startswith("fedids_console_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert client.get("/upload").status_code == 200
    assert "sign-in" in _audit_actions(app)


def test_login_wrong_password(app: Flask) -> None:
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))

    response = client.post("/login", data={"username": ADMIN[0], "password": "wrong password", "csrf_token": token})

    assert response.status_code == 401
    assert "Invalid user name or password." in response.get_data(as_text=True)
    assert client.get("/upload").status_code == 303
    assert _audit_actions(app) == ["sign-in-failed"]


def test_login_lockout_after_failures(app: Flask) -> None:
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))
    for _ in range(3):
        client.post("/login", data={"username": ADMIN[0], "password": "wrong password", "csrf_token": token})

    response = client.post("/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token})

    html = response.get_data(as_text=True)
    assert response.status_code == 429
    assert "Too many failed sign-in attempts. Sign-in is locked for 15 more minutes" in html
    assert _audit_actions(app)[0] == "sign-in-locked"
    # The other account is not affected.
    sign_in(app.test_client(), *ANALYST)


def test_login_rejects_missing_csrf(app: Flask) -> None:
    response = app.test_client().post("/login", data={"username": ADMIN[0], "password": ADMIN[1]})

    assert response.status_code == 400
    assert "security token is missing, invalid or expired" in response.get_data(as_text=True)


def test_login_ignores_offsite_next(app: Flask) -> None:
    client = app.test_client()
    token = csrf_token(client.get("/login").get_data(as_text=True))

    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = client.post(
            "/login", data={"username": ADMIN[0], "password": ADMIN[1], "csrf_token": token, "next": target}
        )
        assert response.headers["Location"] == "/upload", target
        client.post("/logout", data={"csrf_token": page_token(client, "/upload")})
        token = csrf_token(client.get("/login").get_data(as_text=True))


def test_login_follows_local_next(app: Flask) -> None:
    client = app.test_client()
    response = client.get("/analyses?page=2")
    login_page = client.get(response.headers["Location"]).get_data(as_text=True)

    response = client.post(
        "/login",
        data={
            "username": ADMIN[0], "password": ADMIN[1], "csrf_token": csrf_token(login_page), "next": "/analyses?page=2"
        },
    )

    assert 'name="next" value="/analyses?page=2"' in login_page
    assert response.headers["Location"] == "/analyses?page=2"


def test_logout_ends_session_for_copied_cookie(app: Flask, admin: FlaskClient) -> None:
    cookie = admin.get_cookie("fedids_console_session")
    assert cookie is not None
    stolen = app.test_client()
    stolen.set_cookie("fedids_console_session", cookie.value)
    assert stolen.get("/upload").status_code == 200

    response = admin.post("/logout", data={"csrf_token": page_token(admin, "/upload")})

    assert response.status_code == 303
    assert stolen.get("/upload").status_code == 303
    assert "sign-out" in _audit_actions(app)


def test_logout_rejects_missing_csrf(admin: FlaskClient) -> None:
    response = admin.post("/logout")

    assert response.status_code == 400
    assert admin.get("/upload").status_code == 200


# Password change ----------------------------------------------------------------

NEW_PASSWORD = "a brand new passphrase"


def _change_password(client: FlaskClient, current: str, new: str, confirm: str | None = None):
    return client.post(
        "/account/password",
        data={
            "csrf_token": page_token(client, "/account/password"),
            "current_password": current,
            "new_password": new,
            "confirm_password": new if confirm is None else confirm,
        },
    )


def test_password_page_linked_from_header(analyst: FlaskClient) -> None:
    html = analyst.get("/upload").get_data(as_text=True)
    form = analyst.get("/account/password").get_data(as_text=True)

    assert 'href="/account/password"' in html
    assert 'name="current_password"' in form
    assert 'name="csrf_token"' in form


def test_password_change_signs_out_other_sessions(app: Flask, analyst: FlaskClient) -> None:
    other_browser = app.test_client()
    sign_in(other_browser, *ANALYST)

    response = _change_password(analyst, ANALYST[1], NEW_PASSWORD)

    assert response.status_code == 303
    assert analyst.get("/upload").status_code == 200
    assert other_browser.get("/upload").status_code == 303
    assert web_state(app).accounts.sign_in(ANALYST[0], ANALYST[1], "127.0.0.1").user is None
    sign_in(app.test_client(), ANALYST[0], NEW_PASSWORD)
    events = web_state(app).audit.page(1).events
    assert [event.username for event in events if event.action == "password-changed"] == [ANALYST[0]]


@pytest.mark.parametrize(
    ("current", "new", "confirm", "status", "message"),
    [
        ("wrong password", NEW_PASSWORD, None, 403, "The current password is wrong."),
        (ANALYST[1], NEW_PASSWORD, "a different passphrase", 422, "The two new passwords differ"),
        (ANALYST[1], "short", None, 422, "The password was not changed: password too short: use at least 12"),
    ],
    ids=["wrong-current", "confirmation-differs", "too-short"],
)
def test_password_change_rejected(
    app: Flask, analyst: FlaskClient, current: str, new: str, confirm: str | None, status: int, message: str
) -> None:
    response = _change_password(analyst, current, new, confirm)

    assert response.status_code == status
    assert message in response.get_data(as_text=True)
    assert analyst.get("/upload").status_code == 200
    sign_in(app.test_client(), *ANALYST)
    assert "password-changed" not in _audit_actions(app)


def test_password_change_wrong_current_locks_out(app: Flask, analyst: FlaskClient) -> None:
    statuses = [_change_password(analyst, "wrong password", NEW_PASSWORD).status_code for _ in range(4)]

    assert statuses == [403, 403, 403, 429]
    assert _audit_actions(app)[:2] == ["sign-in-locked", "password-change-failed"]
    assert web_state(app).accounts.sign_in(ANALYST[0], ANALYST[1], "127.0.0.1").locked


def test_password_change_rejects_missing_csrf(app: Flask, analyst: FlaskClient) -> None:
    response = analyst.post(
        "/account/password",
        data={"current_password": ANALYST[1], "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
    )

    assert response.status_code == 400
    sign_in(app.test_client(), *ANALYST)


# Client address behind a proxy ----------------------------------------------------


def _console_behind_proxy(tmp_path: Path, bundle: Bundle, trusted_proxies: tuple[str, ...]) -> Flask:
    settings = WebSettings(
        instance_dir=tmp_path / "proxied", login_max_failures_per_address=2, trusted_proxies=trusted_proxies,
        password_time_cost=1, password_memory_kib=1024, password_parallelism=1,
    )
    console = create_console_app(settings, Detector(bundle, LastFlowPredictor()))
    add_users(console)
    return console


def _sign_in_from(client: FlaskClient, username: str, password: str, forwarded_for: str) -> int:
    token = csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token},
        headers={"X-Forwarded-For": forwarded_for},
    )
    return response.status_code


def test_forwarded_for_ignored_by_default(tmp_path: Path, bundle: Bundle) -> None:
    console = _console_behind_proxy(tmp_path, bundle, ())

    status = _sign_in_from(console.test_client(), "mallory", "wrong password", "203.0.113.5")

    assert status == 401
    assert web_state(console).audit.page(1).events[0].remote_addr == "127.0.0.1"


def test_forwarded_for_from_trusted_proxy(tmp_path: Path, bundle: Bundle) -> None:
    # The test client's peer address is 127.0.0.1, the proxy here.
    console = _console_behind_proxy(tmp_path, bundle, ("127.0.0.1", "10.0.0.0/8"))
    client = console.test_client()

    # The client wrote the left entry itself; the right one is what a trusted hop saw.
    statuses = [_sign_in_from(client, name, "wrong password", "198.51.100.1, 203.0.113.5, 10.0.0.2")
                for name in ("carol", "dave")]
    locked = _sign_in_from(client, *ANALYST, "203.0.113.5")
    other_client = _sign_in_from(client, *ANALYST, "203.0.113.6")

    assert statuses == [401, 401]
    assert locked == 429
    assert other_client == 303
    addresses = [event.remote_addr for event in web_state(console).audit.page(1).events]
    assert addresses == ["203.0.113.6", "203.0.113.5", "203.0.113.5", "203.0.113.5"]


def test_pages_send_security_headers(admin: FlaskClient) -> None:
    response = admin.get("/upload")

    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"


def test_pages_load_nothing_from_other_hosts(admin: FlaskClient, tmp_path: Path) -> None:
    location = _upload(admin, _traffic(tmp_path)).headers["Location"]

    for path in ("/login", "/upload", "/analyses", location, "/admin/audit", "/admin/users"):
        html = admin.get(path).get_data(as_text=True)
        assert "http://" not in html, path
        assert "https://" not in html, path
        assert 'src="//' not in html, path


def test_static_stylesheet_served(app: Flask) -> None:
    response = app.test_client().get("/static/web/style.css")

    assert response.status_code == 200
    assert "@media" in response.get_data(as_text=True)


# Upload and results -----------------------------------------------------------


def test_upload_shows_form_and_model(admin: FlaskClient) -> None:
    html = admin.get("/upload").get_data(as_text=True)

    assert 'enctype="multipart/form-data"' in html
    assert TOY_VERSION in html
    assert "signature verified" in html


def test_upload_analyses_file(app: Flask, admin: FlaskClient, tmp_path: Path) -> None:
    response = _upload(admin, _traffic(tmp_path))

    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.startswith("/analyses/")
    html = admin.get(location).get_data(as_text=True)
    assert "Results for traffic.csv" in html
    episodes = [(int(row[1]), int(row[2]), int(row[3])) for row in table_rows(html, "episodes")]
    assert episodes == EXPECTED_EPISODES
    assert [row[4:6] for row in table_rows(html, "episodes")] == [["attack", "0.900"]] * 2
    assert '<div class="stat" id="episode-count">2</div>' in html
    assert table_rows(html, "class-counts") == [["normal", "52", "86.7%"], ["attack", "8", "13.3%"]]
    assert _audit_actions(app)[:2] == ["analysis", "upload"]


def test_upload_audit_records_hash_and_model(app: Flask, admin: FlaskClient, tmp_path: Path) -> None:
    content = _traffic(tmp_path)
    _upload(admin, content)

    events = web_state(app).audit.page(1).events
    analysis = next(event for event in events if event.action == "analysis")
    assert analysis.username == ADMIN[0]
    assert analysis.file_sha256 == hashlib.sha256(content).hexdigest()
    assert analysis.model_version == TOY_VERSION
    assert analysis.file_name == "traffic.csv"


def test_upload_deletes_uploaded_traffic(app: Flask, admin: FlaskClient, tmp_path: Path) -> None:
    location = _upload(admin, _traffic(tmp_path)).headers["Location"]

    folder = web_state(app).settings.instance_dir / "analyses" / location.rsplit("/", 1)[1]
    assert sorted(path.name for path in folder.iterdir()) == ["predictions.csv", "result.json", "timeline.svg"]


def test_upload_gzip_file(admin: FlaskClient, tmp_path: Path) -> None:
    response = _upload(admin, gzip.compress(_traffic(tmp_path)), name="traffic.csv.gz")

    assert response.status_code == 303
    assert '<div class="stat" id="episode-count">2</div>' in admin.get(response.headers["Location"]).get_data(
        as_text=True
    )


def test_results_attack_filter_and_paging(admin: FlaskClient, tmp_path: Path) -> None:
    location = _upload(admin, _traffic(tmp_path)).headers["Location"]

    attacks = admin.get(f"{location}?attacks=1").get_data(as_text=True)
    page_two = admin.get(f"{location}?page=2").get_data(as_text=True)

    assert "8 flows" in attacks
    assert [row[:2] for row in table_rows(attacks, "flows-table")] == [
        [str(row), "attack"] for row in (10, 11, 12, 13, 14, 25, 26, 27)
    ]
    assert "Page 2 of 2" in page_two
    assert [row[0] for row in table_rows(page_two, "flows-table")] == [str(row) for row in range(50, 60)]


def test_results_download_predictions(app: Flask, admin: FlaskClient, tmp_path: Path) -> None:
    location = _upload(admin, _traffic(tmp_path)).headers["Location"]

    response = admin.get(f"{location}/predictions.csv")

    predictions = pd.read_csv(io.BytesIO(response.data))
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == "attachment; filename=predictions-traffic.csv"
    assert list(predictions.columns[:4]) == ["row", "predicted", "probability", "attack_probability"]
    assert len(predictions) == len(LABELS)
    assert predictions.loc[predictions["predicted"] == "attack", "row"].tolist() == [10, 11, 12, 13, 14, 25, 26, 27]
    assert _audit_actions(app)[0] == "download"


def test_results_timeline_svg(admin: FlaskClient, tmp_path: Path) -> None:
    location = _upload(admin, _traffic(tmp_path)).headers["Location"]

    response = admin.get(f"{location}/timeline.svg")

    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"
    assert response.get_data(as_text=True).lstrip().startswith("<?xml")
    assert "alert: attack" in response.get_data(as_text=True)


def test_downloads_with_relative_instance_folder(
    tmp_path: Path, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command's default instance folder is relative, and Flask's send_file
    # would look for a relative path under the package folder.
    monkeypatch.chdir(tmp_path)
    settings = WebSettings(
        instance_dir=Path("runs/site-console"), password_time_cost=1, password_memory_kib=1024, password_parallelism=1
    )
    console = create_console_app(settings, Detector(bundle, LastFlowPredictor()))
    add_users(console)
    client = console.test_client()
    sign_in(client, *ANALYST)

    location = _upload(client, _traffic(tmp_path)).headers["Location"]
    predictions = client.get(f"{location}/predictions.csv")
    timeline = client.get(f"{location}/timeline.svg")

    assert web_state(console).settings.instance_dir == tmp_path.resolve() / "runs" / "site-console"
    assert predictions.status_code == 200
    assert len(pd.read_csv(io.BytesIO(predictions.data))) == len(LABELS)
    assert timeline.status_code == 200
    assert "alert: attack" in timeline.get_data(as_text=True)
    assert _audit_actions(console).count("download") == 1


def test_failed_download_is_not_audited(
    app: Flask, admin: FlaskClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = _upload(admin, _traffic(tmp_path)).headers["Location"]

    def fail_to_open(*_args: object, **_kwargs: object) -> None:
        raise FileNotFoundError("predictions.csv vanished")

    monkeypatch.setattr("client.console.app.send_file", fail_to_open)
    response = admin.get(f"{location}/predictions.csv")

    assert response.status_code == 500
    assert "download" not in _audit_actions(app)


def test_results_without_attacks(admin: FlaskClient, tmp_path: Path) -> None:
    location = _upload(admin, _traffic(tmp_path, [0] * 20)).headers["Location"]

    html = admin.get(location).get_data(as_text=True)

    assert "No flow was predicted as an attack." in html


def test_results_warn_about_unusable_rows(admin: FlaskClient, tmp_path: Path) -> None:
    lines = _traffic(tmp_path, [0] * 20).decode().splitlines()
    for index in (3, 4):  # both numeric features of these flows become text
        fields = lines[index].split(",")
        fields[1:3] = ["x", "y"]
        lines[index] = ",".join(fields)
    location = _upload(admin, ("\n".join(lines) + "\n").encode()).headers["Location"]

    html = admin.get(location).get_data(as_text=True)

    assert 'id="imputed-warning"' in html
    assert "2 flow(s) have more than half of their numeric features empty, infinite or not numbers" in html


def test_results_warn_about_column_without_numbers(admin: FlaskClient, tmp_path: Path) -> None:
    lines = _traffic(tmp_path, [0] * 30).decode().splitlines()
    for index in range(1, len(lines)):  # the second numeric feature is text in every flow
        fields = lines[index].split(",")
        fields[2] = "n/a"
        lines[index] = ",".join(fields)
    location = _upload(admin, ("\n".join(lines) + "\n").encode()).headers["Location"]

    html = admin.get(location).get_data(as_text=True)
    column = lines[0].split(",")[2]

    assert 'id="empty-columns-warning"' in html
    assert f"1 numeric column(s) hold no numbers in this file: {column}." in html
    assert 'id="imputed-warning"' not in html


def test_results_without_warning_for_clean_rows(admin: FlaskClient, tmp_path: Path) -> None:
    location = _upload(admin, _traffic(tmp_path, [0] * 20)).headers["Location"]

    html = admin.get(location).get_data(as_text=True)

    assert 'id="imputed-warning"' not in html
    assert 'id="empty-columns-warning"' not in html


def test_results_unknown_or_malformed_id(admin: FlaskClient) -> None:
    for path in ("/analyses/0123456789abcdef", "/analyses/..%2F..%2Fsecret_key", "/analyses/nothex/predictions.csv"):
        response = admin.get(path)
        assert response.status_code == 404, path


def test_history_lists_analyses(admin: FlaskClient, tmp_path: Path) -> None:
    _upload(admin, _traffic(tmp_path), name="first.csv")
    _upload(admin, b"\x00\x01garbage", name="second.csv")

    html = admin.get("/analyses").get_data(as_text=True)

    assert "2 analyses" in html
    assert html.index("second.csv") < html.index("first.csv")
    assert '<span class="tag failed">failed</span>' in html
    assert '<span class="tag ok">ok</span>' in html


# Hostile and oversized uploads -----------------------------------------------------


def test_upload_rejects_missing_csrf(admin: FlaskClient, tmp_path: Path) -> None:
    response = admin.post(
        "/upload", data={"traffic": (io.BytesIO(_traffic(tmp_path)), "t.csv")}, content_type="multipart/form-data"
    )

    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)


def test_upload_rejects_token_of_other_session(app: Flask, admin: FlaskClient, tmp_path: Path) -> None:
    other = app.test_client()
    sign_in(other, *ANALYST)
    foreign_token = page_token(other, "/upload")

    response = _upload(admin, _traffic(tmp_path), token=foreign_token)

    assert response.status_code == 400


def test_upload_without_file(admin: FlaskClient) -> None:
    response = admin.post("/upload", data={"csrf_token": page_token(admin, "/upload")})

    assert response.status_code == 400
    assert "Choose a traffic file" in response.get_data(as_text=True)


def test_upload_oversize_file(app: Flask, admin: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="common.web.app"):
        response = _upload(admin, b"a," * MEBIBYTE)

    html = response.get_data(as_text=True)
    assert response.status_code == 413
    assert "is larger than this console&#39;s limit of 1 MB (1,048,576 bytes)" in html
    assert "Compress the CSV file with gzip" in html
    assert "Request Entity Too Large" not in html
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "over the limit of 1048576 bytes" in warnings[0]
    event = web_state(app).audit.page(1).events[0]
    assert (event.action, event.username) == ("upload-too-large", ADMIN[0])


@pytest.mark.parametrize(
    ("declared_bytes", "send_body"),
    [(3 * MEBIBYTE, False), (MEBIBYTE + MEBIBYTE // 2, True)],
    ids=["over-waitress-limit", "between-limits"],
)
def test_served_oversize_upload_gets_app_page(
    app: Flask, admin: FlaskClient, declared_bytes: int, send_body: bool
) -> None:
    # Waitress rejects a body over its own limit (the app's limit + 1 MiB) before the app receives it.
    settings = dataclasses.replace(web_state(app).settings, port=0)
    server = create_wsgi_server(app, settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    cookie = admin.get_cookie("fedids_console_session")
    assert cookie is not None
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        connection.putrequest("POST", "/upload")
        connection.putheader("Content-Type", "multipart/form-data; boundary=fedids")
        connection.putheader("Content-Length", str(declared_bytes))
        connection.putheader("Cookie", f"fedids_console_session={cookie.value}")
        connection.endheaders()
        if send_body:
            connection.send(b"a" * declared_bytes)
        response = connection.getresponse()
        html = response.read().decode("utf-8")
        connection.close()
    finally:
        server.close()
        thread.join(timeout=30)

    assert response.status == 413
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert "limit of 1 MB (1,048,576 bytes)" in html
    assert "exceeds max_body" not in html
    event = web_state(app).audit.page(1).events[0]
    assert (event.action, event.username) == ("upload-too-large", ADMIN[0])
    assert event.detail == f"{declared_bytes} bytes to /upload, limit 1048576 bytes"


HOSTILE_FILES = {
    "binary": (b"\x00\xff\xfe\x00" * 100, "is not UTF-8 text"),
    "empty": (b"", "is empty: it has no header row"),
    "header-only": (b"Dir,Flgs,Label\n", "has a header but no data rows"),
    "wrong-columns": (b"x,y,z\n1,2,3\n", "missing 3 column(s) that model toy-console/round-001 needs"),
    "corrupt-gzip": (b"\x1f\x8b\x08\x00garbage-that-is-not-deflate", "cannot be decompressed"),
    "gzip-bomb": (gzip.compress(b"0" * (3 * MEBIBYTE)), "decompresses to more than 2 MiB"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_FILES), ids=list(HOSTILE_FILES))
def test_upload_hostile_file_gets_error_page(app: Flask, admin: FlaskClient, kind: str) -> None:
    content, message = HOSTILE_FILES[kind]

    response = _upload(admin, content, name=f"{kind}.csv")

    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert f"{kind}.csv was not analysed:" in html
    assert message in html
    assert "Traceback" not in html
    # The page names the file as uploaded, never its path on the server.
    assert str(web_state(app).settings.instance_dir) not in html
    assert _audit_actions(app)[0] in ("analysis-failed", "upload-rejected")


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_upload_scores_malformed_lines(app: Flask, admin: FlaskClient, tmp_path: Path, compressed: bool) -> None:
    lines = _traffic(tmp_path).split(b"\n")
    lines[1 + 3] += b",extra"  # more fields than the header
    lines[1 + 40] = lines[1 + 40].replace(b",", b',"', 1)  # a quote that the line never closes
    lines.insert(1 + 50, lines[0])  # the header again, as where two exporter files were joined
    content = b"\n".join(lines)

    response = _upload(admin, gzip.compress(content) if compressed else content)

    assert response.status_code == 303
    assert _audit_actions(app)[:2] == ["analysis", "upload"]
    location = response.headers["Location"]
    html = admin.get(location).get_data(as_text=True)
    predictions = pd.read_csv(io.BytesIO(admin.get(f"{location}/predictions.csv").data), keep_default_na=False)
    # One more row than the labels: the repeated header is scored too, so later rows keep the file's numbering.
    assert predictions["row"].tolist() == list(range(len(LABELS) + 1))
    assert predictions.loc[predictions["label"] == "", "row"].tolist() == [3, 40, 50]
    assert predictions.loc[predictions["predicted"] == "attack", "row"].tolist() == [10, 11, 12, 13, 14, 25, 26, 27]
    assert [(int(row[1]), int(row[2]), int(row[3])) for row in table_rows(html, "episodes")] == EXPECTED_EPISODES
    assert table_rows(html, "class-counts") == [["normal", "53", "86.9%"], ["attack", "8", "13.1%"]]
    assert "3 flow(s) have more than half of their numeric features empty, infinite or not numbers" in html


def test_upload_unknown_label_blanks_its_row(admin: FlaskClient, tmp_path: Path) -> None:
    content = _traffic(tmp_path).replace(b",x,1\n", b",x,7\n", 1)

    response = _upload(admin, content)
    predictions = pd.read_csv(io.BytesIO(admin.get(f"{response.headers['Location']}/predictions.csv").data))

    # Labels only annotate the predictions, so an unknown one blanks its row instead of failing.
    assert response.status_code == 303
    assert int(predictions["label"].isna().sum()) == 1
    assert set(predictions["label"].dropna()) <= {"normal", "attack"}
    assert predictions["predicted"].value_counts().to_dict() == {"normal": 52, "attack": 8}


def test_upload_hostile_file_name_is_escaped(admin: FlaskClient, tmp_path: Path) -> None:
    response = _upload(admin, _traffic(tmp_path), name="<img src=x onerror=alert(1)>.csv")

    html = admin.get(response.headers["Location"]).get_data(as_text=True)
    assert "<img src=x" not in html
    assert "Results for &lt;img src=x onerror=alert(1)&gt;.csv" in html


def test_upload_file_name_loses_folders(app: Flask, admin: FlaskClient, tmp_path: Path) -> None:
    _upload(admin, _traffic(tmp_path), name="..\\..\\../../etc/traffic.csv")

    events = web_state(app).audit.page(1).events
    assert {event.file_name for event in events if event.action == "analysis"} == {"traffic.csv"}


@pytest.mark.parametrize(
    "name",
    ["evil\u202ecsv.exe", "evil\u2066csv\u2069.exe", "evil\x00\x07\x9bcsv.exe", "evil\u200bcsv.exe"],
    ids=["right-to-left-override", "isolates", "c0-controls", "zero-width-space"],
)
def test_upload_file_name_loses_control_characters(
    app: Flask, admin: FlaskClient, tmp_path: Path, name: str
) -> None:
    location = _upload(admin, _traffic(tmp_path), name=name).headers["Location"]

    download = admin.get(f"{location}/predictions.csv")

    names = {event.file_name for event in web_state(app).audit.page(1).events if event.file_name}
    assert names == {"evilcsv.exe"}
    assert "Results for evilcsv.exe" in admin.get(location).get_data(as_text=True)
    assert download.headers["Content-Disposition"] == "attachment; filename=predictions-evilcsv.csv"


# Roles -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/audit", "/admin/users"])
def test_analyst_cannot_open_admin_pages(analyst: FlaskClient, path: str) -> None:
    response = analyst.get(path)

    assert response.status_code == 403
    assert "role does not allow this page" in response.get_data(as_text=True)


def test_analyst_cannot_create_or_disable_users(analyst: FlaskClient) -> None:
    token = page_token(analyst, "/upload")

    created = analyst.post(
        "/admin/users", data={"csrf_token": token, "username": "eve", "password": "x" * 20, "role": "administrator"}
    )
    disabled = analyst.post("/admin/users/alice/active", data={"csrf_token": token, "active": "0"})

    assert created.status_code == 403
    assert disabled.status_code == 403


def test_admin_sees_audit_log(admin: FlaskClient, tmp_path: Path) -> None:
    _upload(admin, _traffic(tmp_path))

    html = admin.get("/admin/audit").get_data(as_text=True)

    for action in ("sign-in", "upload", "analysis"):
        assert f'<span class="tag {action}">{action}</span>' in html
    assert TOY_VERSION in html


def test_admin_creates_and_disables_user(app: Flask, admin: FlaskClient) -> None:
    token = page_token(admin, "/admin/users")
    created = admin.post(
        "/admin/users",
        data={"csrf_token": token, "username": "carol", "password": "carol's long password", "role": "analyst"},
    )
    carol = app.test_client()
    sign_in(carol, "carol", "carol's long password")

    disabled = admin.post("/admin/users/carol/active", data={"csrf_token": token, "active": "0"})

    assert created.status_code == 303
    assert disabled.status_code == 303
    assert carol.get("/upload").status_code == 303
    assert _audit_actions(app)[0] == "user-disabled"


def test_admin_create_user_invalid_password(admin: FlaskClient) -> None:
    token = page_token(admin, "/admin/users")

    response = admin.post(
        "/admin/users", data={"csrf_token": token, "username": "carol", "password": "short", "role": "analyst"}
    )

    assert response.status_code == 422
    assert "password too short" in response.get_data(as_text=True)


def test_admin_cannot_disable_self(admin: FlaskClient) -> None:
    token = page_token(admin, "/admin/users")

    response = admin.post("/admin/users/alice/active", data={"csrf_token": token, "active": "0"}, follow_redirects=True)

    assert "You cannot disable your own account." in response.get_data(as_text=True)
    assert admin.get("/upload").status_code == 200


def test_admin_disable_unknown_user(admin: FlaskClient) -> None:
    token = page_token(admin, "/admin/users")

    response = admin.post("/admin/users/nobody/active", data={"csrf_token": token, "active": "0"})

    assert response.status_code == 404
    assert "user &#39;nobody&#39; does not exist" in response.get_data(as_text=True)


def test_unknown_url_is_404_page(admin: FlaskClient) -> None:
    response = admin.get("/no/such/page")

    assert response.status_code == 404
    assert "There is no such page or record." in response.get_data(as_text=True)


def _write_public_key(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


def test_serve_rejects_bundle_signed_by_other_key(tmp_path: Path) -> None:
    archive, _ = publish_toy_bundle(tmp_path / "bundle")
    other_key = _write_public_key(Ed25519PrivateKey.generate(), tmp_path / "other.pem")
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}

    result = subprocess.run(
        [sys.executable, "-m", "client.console", "serve", "--port", "0", "--instance-dir", str(tmp_path / "console"),
         "--model", str(archive), "--public-key", str(other_key)],
        capture_output=True, text=True, env=environment, cwd=REPOSITORY, timeout=300, check=False,
    )

    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("site-console: error:")]
    assert len(error_lines) == 1
    assert "manifest.json" in error_lines[0]
    assert "Traceback" not in result.stderr


def test_unverified_bundle_is_flagged_on_every_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDIDS_BUNDLE_PUBLIC_KEY", raising=False)
    archive, _ = publish_toy_bundle(tmp_path / "bundle")
    unverified = load_bundle(archive, None, require_signature=False)
    settings = WebSettings(
        instance_dir=tmp_path / "console", password_time_cost=1, password_memory_kib=1024, password_parallelism=1
    )
    console = create_console_app(settings, Detector(unverified, LastFlowPredictor()))
    add_users(console)
    client = console.test_client()
    sign_in(client, *ANALYST)

    location = _upload(client, _traffic(tmp_path)).headers["Location"]

    for path in ("/upload", "/analyses", location):
        assert "signature NOT verified" in client.get(path).get_data(as_text=True), path
