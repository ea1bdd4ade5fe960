"""Signed model bundles: building, signing, packing and every way verification must fail."""

from __future__ import annotations

import io
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from common.bundle import (
    PUBLIC_KEY_ENV,
    SIGNATURE_FILE,
    Bundle,
    load_bundle,
    unpack_bundle,
)
from common.exceptions import BundleVerificationError, ConfigError
from server.registry import Registry
from server.signing import generate_keypair, load_private_key, signer_fingerprint
from server.signing import main as signing_main
from tests.bundle_helpers import read_json, toy_preprocessor, write_toy_dataset, write_toy_round

ROOT = Path(__file__).resolve().parent.parent

KeyPair = tuple[Path, Path]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, keys: KeyPair) -> dict[str, object]:
    """Registry entry of a toy bundle with model.onnx."""
    work = tmp_path_factory.mktemp("published")
    round_folder = write_toy_round(work / "round-001")
    registry = Registry(work / "registry")
    return registry.publish(
        round_folder,
        run_id="run-a",
        server_round=1,
        signing_key=load_private_key(keys[0]),
        dataset_file=write_toy_dataset(work),
    )


@pytest.fixture
def bundle_copy(published: dict[str, object], tmp_path: Path) -> Path:
    """A private copy of the published bundle folder, free to tamper with."""
    return Path(shutil.copytree(str(published["path"]), tmp_path / "bundle"))


def test_load_bundle_signed_folder(published: dict[str, object], keys: KeyPair) -> None:
    bundle = load_bundle(Path(str(published["path"])), public_key=keys[1])

    assert isinstance(bundle, Bundle)
    assert bundle.signature_verified
    assert str(bundle.version) == "run-a/round-001"
    assert bundle.preprocessor == toy_preprocessor()
    assert bundle.dataset_config.name == "toy"
    assert bundle.onnx_path is not None
    assert bundle.metrics["validation_metrics"]["f1"] == 0.8
    assert bundle.manifest["signer"] == signer_fingerprint(load_private_key(keys[0]))
    assert tuple(bundle.model.input_shape[1:]) == (1, 5)


def test_load_bundle_archive(published: dict[str, object], keys: KeyPair) -> None:
    bundle = load_bundle(Path(str(published["archive"])), public_key=keys[1].read_bytes())

    assert bundle.signature_verified
    assert set(bundle.manifest["files"]) == {
        "model.keras", "model.onnx", "preprocessing.json", "metrics.json", "version.json", "dataset.toml"
    }


def test_pack_bundle_is_reproducible(published: dict[str, object], tmp_path: Path) -> None:
    from common.bundle import pack_bundle

    first = pack_bundle(Path(str(published["path"])), tmp_path / "a.tar.gz")
    second = pack_bundle(Path(str(published["path"])), tmp_path / "b.tar.gz")

    assert first.read_bytes() == second.read_bytes()


def test_load_bundle_rejects_changed_file(bundle_copy: Path, keys: KeyPair) -> None:
    path = bundle_copy / "preprocessing.json"
    data = bytearray(path.read_bytes())
    data[data.index(b"10.0")] = ord("9")  # same size, different content
    path.write_bytes(bytes(data))

    with pytest.raises(BundleVerificationError, match=r"preprocessing\.json: SHA-256 .* does not match"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_error_names_source_folder(bundle_copy: Path, keys: KeyPair) -> None:
    (bundle_copy / "metrics.json").write_text("{}")

    with pytest.raises(BundleVerificationError) as error:
        load_bundle(bundle_copy, public_key=keys[1])

    assert str(bundle_copy / "metrics.json") in str(error.value)
    assert "fedids-bundle-" not in str(error.value)


def test_load_bundle_ignores_swap_after_verify(bundle_copy: Path, keys: KeyPair) -> None:
    bundle = load_bundle(bundle_copy, public_key=keys[1])
    verified_onnx = (bundle_copy / "model.onnx").read_bytes()
    # Another process replaces the models after verification, before first use.
    (bundle_copy / "model.onnx").write_bytes(b"not a model")
    (bundle_copy / "model.keras").write_bytes(b"not a model")

    assert bundle.onnx_path is not None
    assert bundle.onnx_path.read_bytes() == verified_onnx
    assert tuple(bundle.model.input_shape[1:]) == (1, 5)
    assert bundle.source == bundle_copy
    assert bundle.dataset_config.source == bundle_copy / "dataset.toml"
    assert bundle.path.parent.stat().st_mode & 0o077 == 0


def test_load_bundle_rejects_symlinked_file(bundle_copy: Path, keys: KeyPair, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_bytes((bundle_copy / "metrics.json").read_bytes())
    (bundle_copy / "metrics.json").unlink()
    (bundle_copy / "metrics.json").symlink_to(outside)

    with pytest.raises(BundleVerificationError, match=r"metrics\.json is not a regular file"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_rejects_truncated_file(bundle_copy: Path, keys: KeyPair) -> None:
    path = bundle_copy / "model.keras"
    path.write_bytes(path.read_bytes()[:100])

    with pytest.raises(BundleVerificationError, match=r"model\.keras: 100 bytes, but the manifest lists"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_rejects_changed_manifest(bundle_copy: Path, keys: KeyPair) -> None:
    path = bundle_copy / "manifest.json"
    path.write_text(path.read_text().replace('"round": 1', '"round": 9'))

    with pytest.raises(BundleVerificationError, match=r"manifest\.json: signature check failed"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_rejects_other_key(bundle_copy: Path, tmp_path: Path) -> None:
    _, other_public = generate_keypair(tmp_path / "other")

    with pytest.raises(BundleVerificationError, match="signed by another key"):
        load_bundle(bundle_copy, public_key=other_public)


def test_load_bundle_rejects_unsigned(bundle_copy: Path, keys: KeyPair) -> None:
    (bundle_copy / SIGNATURE_FILE).unlink()

    with pytest.raises(BundleVerificationError, match=r"unsigned bundle \(manifest\.sig is missing\)"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_unsigned_allowed_when_not_required(bundle_copy: Path) -> None:
    (bundle_copy / SIGNATURE_FILE).unlink()

    bundle = load_bundle(bundle_copy, require_signature=False)

    assert not bundle.signature_verified


def test_load_bundle_rejects_garbled_signature(bundle_copy: Path, keys: KeyPair) -> None:
    (bundle_copy / SIGNATURE_FILE).write_text("not base64 at all!")

    with pytest.raises(BundleVerificationError, match=r"manifest\.sig: signature is not valid base64"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_rejects_extra_file(bundle_copy: Path, keys: KeyPair) -> None:
    (bundle_copy / "backdoor.py").write_text("print('hello')\n")

    with pytest.raises(BundleVerificationError, match=r"\['backdoor\.py'\] are not listed in manifest\.json"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_rejects_missing_file(bundle_copy: Path, keys: KeyPair) -> None:
    (bundle_copy / "model.onnx").unlink()

    with pytest.raises(BundleVerificationError, match=r"model\.onnx: listed in manifest\.json but missing"):
        load_bundle(bundle_copy, public_key=keys[1])


def test_load_bundle_without_key_names_variable(bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_KEY_ENV, raising=False)

    with pytest.raises(BundleVerificationError, match=f"no public key .*{PUBLIC_KEY_ENV}"):
        load_bundle(bundle_copy)


def test_load_bundle_reads_key_from_environment(
    bundle_copy: Path, keys: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PUBLIC_KEY_ENV, str(keys[1]))

    assert load_bundle(bundle_copy).signature_verified


def test_load_bundle_missing_path(tmp_path: Path, keys: KeyPair) -> None:
    with pytest.raises(BundleVerificationError, match="model bundle not found"):
        load_bundle(tmp_path / "nothing", public_key=keys[1])


def test_load_bundle_rejects_truncated_archive(published: dict[str, object], keys: KeyPair, tmp_path: Path) -> None:
    data = Path(str(published["archive"])).read_bytes()
    truncated = tmp_path / "bundle.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(BundleVerificationError, match="archive is truncated or corrupt"):
        load_bundle(truncated, public_key=keys[1])


def _archive_with(tmp_path: Path, member: tarfile.TarInfo, content: bytes = b"") -> Path:
    path = tmp_path / "crafted.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(content) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(content) if member.isfile() else None)
    return path


def test_unpack_bundle_rejects_path_traversal(tmp_path: Path) -> None:
    archive = _archive_with(tmp_path, tarfile.TarInfo("../escaped.txt"), b"x")

    with pytest.raises(BundleVerificationError, match=r"member name '\.\./escaped\.txt' is not a plain"):
        unpack_bundle(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out").exists()


def test_unpack_bundle_rejects_symlink(tmp_path: Path) -> None:
    link = tarfile.TarInfo("model.keras")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = _archive_with(tmp_path, link)

    with pytest.raises(BundleVerificationError, match=r"'model\.keras' is not a regular file"):
        unpack_bundle(archive, tmp_path / "out")


def test_unpack_bundle_rejects_oversize_member(tmp_path: Path) -> None:
    archive = _archive_with(tmp_path, tarfile.TarInfo("model.keras"), b"0" * 2048)

    with pytest.raises(BundleVerificationError, match="has 2048 bytes, more than the limit of 1024"):
        unpack_bundle(archive, tmp_path / "out", max_member_bytes=1024)


def test_generate_keypair_private_key_mode(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)

    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public_path.read_bytes()


def test_generate_keypair_refuses_overwrite(tmp_path: Path) -> None:
    generate_keypair(tmp_path)

    with pytest.raises(ConfigError, match="already exist"):
        generate_keypair(tmp_path)


def test_load_private_key_rejects_public_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, public_path = generate_keypair(tmp_path)
    public_path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="server.signing"), pytest.raises(
        ConfigError, match="not an unencrypted PEM private key"
    ):
        load_private_key(public_path)

    # A public key is meant to be readable, so no advice to restrict it.
    assert "chmod 600" not in caplog.text


def test_signing_cli_init_and_fingerprint(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    init = subprocess.run(
        [sys.executable, "-m", "server.signing", "init", "--out", str(tmp_path / "secrets")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )
    fingerprint = subprocess.run(
        [sys.executable, "-m", "server.signing", "fingerprint", "--key", str(tmp_path / "secrets/bundle-signing.pub")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )
    again = subprocess.run(
        [sys.executable, "-m", "server.signing", "init", "--out", str(tmp_path / "secrets")],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )

    assert init.returncode == 0, init.stderr
    assert f"fingerprint {fingerprint.stdout.strip()}" in init.stdout
    assert again.returncode == 1
    assert again.stderr.startswith("error: signing key file(s)")
    assert "Traceback" not in again.stderr


def test_version_json_matches_manifest(published: dict[str, object]) -> None:
    folder = Path(str(published["path"]))

    assert read_json(folder / "version.json") == read_json(folder / "manifest.json")["version"]


def test_generate_keypair_rejects_file_as_folder(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    target.write_text("", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"secrets is a file; give a folder for bundle-signing\.key"):
        generate_keypair(target)


def test_signing_fingerprint_names_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_key = tmp_path / "flows.csv"
    not_a_key.write_text("a,b\n1,2\n", encoding="utf-8")

    assert signing_main(["fingerprint", "--key", str(not_a_key)]) == 1

    assert f"error: {not_a_key}: " in capsys.readouterr().err
