"""The coordinator's registry: publishing, the latest pointer, retention and the ServerApp hook."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bundle import file_sha256, load_bundle
from common.exceptions import ConfigError, RegistryError
from server.registry import Registry, RoundPublisher, publisher_from_settings
from server.registry import main as registry_main
from server.signing import generate_keypair, load_private_key
from tests.bundle_helpers import read_json, write_toy_dataset, write_toy_round


@pytest.fixture(scope="module")
def toy_round(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_round(tmp_path_factory.mktemp("round") / "round-001")


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _publish_rounds(
    registry: Registry, source: Path, key: Ed25519PrivateKey, dataset: Path, val_f1: list[float | None]
) -> list[dict[str, object]]:
    entries = []
    for number, score in enumerate(val_f1, start=1):
        folder = source.parent / f"scored-{number}"
        write_toy_round(folder, number, val_f1=score)
        entries.append(
            registry.publish(
                folder, run_id="run-b", server_round=number, signing_key=key, dataset_file=dataset, export_onnx=False
            )
        )
    return entries


def test_publish_keeps_last_and_best(tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey) -> None:
    registry = Registry(tmp_path / "registry", keep_last=2)
    dataset = write_toy_dataset(tmp_path)

    _publish_rounds(registry, toy_round, signing_key, dataset, [0.9, 0.5, 0.6, 0.4])

    versions = registry.list_versions()
    assert [entry["version"] for entry in versions] == ["run-b/round-004", "run-b/round-003", "run-b/round-001"]
    assert [entry["is_latest"] for entry in versions] == [True, False, False]
    assert [entry["is_best"] for entry in versions] == [False, False, True]
    pruned = tmp_path / "registry" / "versions" / "run-b"
    assert not (pruned / "round-002").exists()
    assert not (pruned / "round-002.tar.gz").exists()
    assert not (pruned / "round-002.json").exists()


def test_publish_moves_latest_pointer(tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey) -> None:
    registry = Registry(tmp_path / "registry")
    dataset = write_toy_dataset(tmp_path)
    assert registry.latest() is None

    _publish_rounds(registry, toy_round, signing_key, dataset, [0.7, 0.6])

    latest = registry.latest()
    assert latest is not None
    assert latest["version"] == "run-b/round-002"
    assert read_json(tmp_path / "registry" / "latest.json")["version"] == "run-b/round-002"
    # The pointer is renamed into place, so no temporary file is left behind.
    assert sorted(path.name for path in (tmp_path / "registry").iterdir()) == ["latest.json", "versions"]
    best = registry.resolve("best")
    assert best["version"] == "run-b/round-001"


def test_publish_entry_describes_archive(tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey) -> None:
    registry = Registry(tmp_path / "registry")

    entry = registry.publish(
        toy_round, run_id="run-c", server_round=3, signing_key=signing_key,
        dataset_file=write_toy_dataset(tmp_path), export_onnx=False,
    )

    archive = registry.archive_of("run-c/round-003")
    assert entry["sha256"] == file_sha256(archive)
    assert entry["bytes"] == archive.stat().st_size
    assert entry["metrics"]["val_f1"] == 0.8
    assert entry["metrics"]["f1"] == 0.5
    assert entry["has_onnx"] is False
    assert registry.path_of("run-c/round-003") == Path(str(entry["path"]))
    bundle = load_bundle(archive, public_key=signing_key.public_key(), require_signature=True)
    assert str(bundle.version) == "run-c/round-003"


def test_publish_rejects_duplicate_version(tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey) -> None:
    registry = Registry(tmp_path / "registry")
    dataset = write_toy_dataset(tmp_path)
    registry.publish(
        toy_round, run_id="run-d", server_round=1, signing_key=signing_key, dataset_file=dataset, export_onnx=False
    )

    with pytest.raises(RegistryError, match="run-d/round-001 is already published"):
        registry.publish(
            toy_round, run_id="run-d", server_round=1, signing_key=signing_key, dataset_file=dataset, export_onnx=False
        )


def test_registry_resolve_unknown_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")

    with pytest.raises(RegistryError, match="run-x/round-001 is not published"):
        registry.resolve("run-x/round-001")
    with pytest.raises(RegistryError, match="no latest version"):
        registry.resolve("latest")
    with pytest.raises(RegistryError, match=r"invalid bundle version '\.\./etc'"):
        registry.resolve("../etc")


def test_registry_rejects_zero_keep(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="keep_last must be at least 1, got 0"):
        Registry(tmp_path, keep_last=0)


def test_best_ignores_rounds_without_validation(
    tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey
) -> None:
    registry = Registry(tmp_path / "registry", keep_last=1)

    _publish_rounds(registry, toy_round, signing_key, write_toy_dataset(tmp_path), [None, None])

    assert registry.best() is None
    assert [entry["version"] for entry in registry.list_versions()] == ["run-b/round-002"]


def test_publisher_without_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="server.registry"):
        publisher = publisher_from_settings(str(tmp_path), "", 5, "run-e", tmp_path / "toy.toml")

    assert publisher is None
    assert "model bundles are NOT published" in caplog.text


def test_publisher_missing_key_file_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the signing key .*server\.signing init"):
        publisher_from_settings(str(tmp_path), str(tmp_path / "none.key"), 5, "run-e", tmp_path / "toy.toml")


def test_publisher_rejects_file_as_registry(tmp_path: Path) -> None:
    private_path, _ = generate_keypair(tmp_path / "keys")
    (tmp_path / "registry").write_text("", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"registry-dir .*registry is a file, not a folder"):
        publisher_from_settings(str(tmp_path / "registry"), str(private_path), 5, "run-l", write_toy_dataset(tmp_path))


def test_round_publisher_logs_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    private_path, _ = generate_keypair(tmp_path / "keys")
    publisher = RoundPublisher(
        Registry(tmp_path / "registry"), load_private_key(private_path), "run-f", write_toy_dataset(tmp_path)
    )

    with caplog.at_level(logging.ERROR, logger="server.registry"):
        entry = publisher.publish_round(1, tmp_path / "empty-round")

    assert entry is None
    assert "round 1: registry: publishing failed" in caplog.text
    assert "model.keras" in caplog.text


def test_settings_reject_zero_registry_keep() -> None:
    from server.settings import FederationSettings

    with pytest.raises(ConfigError, match=r"key 'registry-keep' must be at least 1, got 0"):
        FederationSettings.from_run_config({}, {"registry-keep": 0})


def test_settings_default_publishes_nothing() -> None:
    from server.settings import FederationSettings

    settings = FederationSettings.from_run_config({})

    assert settings.signing_key == ""
    assert settings.registry_dir == "runs/registry"
    assert settings.registry_keep == 5


def test_publish_without_onnx_when_export_fails(
    tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import server.export

    def failing_export(*args: object, **kwargs: object) -> float:
        raise KeyError("unsupported op")

    monkeypatch.setattr(server.export, "export_onnx", failing_export)
    registry = Registry(tmp_path / "registry")

    with caplog.at_level(logging.WARNING, logger="server.registry"):
        entry = registry.publish(
            toy_round, run_id="run-g", server_round=1, signing_key=signing_key,
            dataset_file=write_toy_dataset(tmp_path),
        )

    assert entry["has_onnx"] is False
    assert "published without model.onnx: export failed: KeyError" in caplog.text
    assert load_bundle(Path(str(entry["path"])), public_key=signing_key.public_key()).onnx_path is None


def _toy_run(folder: Path, rounds: int, dataset: Path | None) -> Path:
    run_dir = folder / "toy-run"
    for number in range(rounds + 1):
        write_toy_round(run_dir / f"round-{number:03d}", number, val_f1=0.5 + number / 10)
    if dataset is not None:
        (run_dir / "run.json").write_text(json.dumps({"settings": {"dataset": str(dataset)}}), encoding="utf-8")
    return run_dir


def _registry_command(tmp_path: Path, *arguments: str) -> int:
    return registry_main(["--registry-dir", str(tmp_path / "registry"), *arguments])


def _publish_toy(
    registry: Registry, source: Path, key: Ed25519PrivateKey, dataset: Path, run_id: str, rounds: int
) -> None:
    for number in range(1, rounds + 1):
        registry.publish(
            source, run_id=run_id, server_round=number, signing_key=key, dataset_file=dataset, export_onnx=False
        )


def _publish_command(tmp_path: Path, run_dir: Path, *arguments: str) -> int:
    """Run ``publish`` for ``run_dir`` with a key pair in ``tmp_path/keys``, made on first use."""
    private_key = tmp_path / "keys" / "bundle-signing.key"
    if not private_key.exists():
        generate_keypair(private_key.parent)
    return _registry_command(
        tmp_path, "publish", "--run-dir", str(run_dir), "--signing-key", str(private_key), *arguments
    )


def test_registry_publish_and_promote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _toy_run(tmp_path, 2, write_toy_dataset(tmp_path))

    assert _publish_command(tmp_path, run_dir, "--round", "1") == 0
    assert _publish_command(tmp_path, run_dir, "--round", "2") == 0
    assert _registry_command(tmp_path, "promote", "toy-run/round-001") == 0
    capsys.readouterr()
    assert _registry_command(tmp_path, "list") == 0

    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("toy-run/round-002  val F1 0.700")
    assert listing[0].endswith("[best]")
    assert listing[1].startswith("toy-run/round-001  val F1 0.600")
    assert listing[1].endswith("[latest]")
    registry = Registry(tmp_path / "registry")
    assert registry.latest_version() == "toy-run/round-001"
    bundle = load_bundle(registry.archive_of("toy-run/round-001"), public_key=tmp_path / "keys" / "bundle-signing.pub")
    assert bundle.signature_verified
    assert bundle.dataset_config.name == "toy"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--round", "0"], "invalid round 0: round 0 is the untrained model; give 1 or later"),
        (["--round", "7"], "round-007 not found"),
        (["--round", "1", "--dataset", "wustl-ehms-2020"], "does not match the checkpoint's preprocessing"),
    ],
)
def test_registry_publish_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    run_dir = _toy_run(tmp_path, 1, write_toy_dataset(tmp_path))

    status = _publish_command(tmp_path, run_dir, *arguments)

    assert status == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "registry" / "latest.json").exists()


def test_registry_publish_without_run_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _toy_run(tmp_path, 1, None)

    status = _publish_command(tmp_path, run_dir, "--round", "1")

    assert status == 1
    assert "failed to read the dataset name from" in capsys.readouterr().err


def test_registry_promote_unknown_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "registry").mkdir()

    assert _registry_command(tmp_path, "promote", "toy-run/round-009") == 1

    assert "version toy-run/round-009 is not published" in capsys.readouterr().err


def test_registry_list_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _registry_command(tmp_path, "list") == 1

    assert "registry folder" in capsys.readouterr().err


def test_registry_promote_writes_canonical_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = _toy_run(tmp_path, 1, write_toy_dataset(tmp_path))
    assert _publish_command(tmp_path, run_dir, "--round", "1") == 0

    with caplog.at_level(logging.WARNING):
        assert _registry_command(tmp_path, "promote", "toy-run/round-0001") == 0

    assert "checking checksums only" not in caplog.text
    assert read_json(tmp_path / "registry" / "latest.json")["version"] == "toy-run/round-001"
    latest = Registry(tmp_path / "registry").latest()
    assert latest is not None
    assert latest["is_latest"]


def test_registry_promote_rejects_lost_files(
    tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(tmp_path / "registry")
    _publish_toy(registry, toy_round, signing_key, write_toy_dataset(tmp_path), "run-c", 2)
    archive = registry.archive_of("run-c/round-001")
    archive.unlink()

    assert _registry_command(tmp_path, "promote", "run-c/round-001") == 1

    assert "files of version run-c/round-001 are missing" in capsys.readouterr().err
    assert registry.latest_version() == "run-c/round-002"


def test_registry_list_skips_incomplete_entry(
    tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path / "registry")
    _publish_toy(registry, toy_round, signing_key, write_toy_dataset(tmp_path), "run-d", 2)
    (tmp_path / "registry" / "versions" / "run-d" / "round-002.json").write_text("{}", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="server.registry"):
        versions = registry.list_versions()

    assert [entry["version"] for entry in versions] == ["run-d/round-001"]
    assert "skipped entry" in caplog.text
    assert "round-002.json, which has no ['version', 'run_id', 'round', 'created', 'metrics']" in caplog.text


def test_registry_publish_rejects_damaged_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _toy_run(tmp_path, 1, write_toy_dataset(tmp_path))
    (run_dir / "round-001" / "model.keras").write_text("garbage", encoding="utf-8")

    assert _publish_command(tmp_path, run_dir, "--round", "1") == 1

    assert "failed to load the Keras model" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "latest.json").exists()


def test_registry_publish_rejects_wrong_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _toy_run(tmp_path, 1, write_toy_dataset(tmp_path))
    # A model for windows of 4 flows beside preprocessing for single flows.
    write_toy_round(tmp_path / "other", 1, window=4)
    (tmp_path / "other" / "model.keras").replace(run_dir / "round-001" / "model.keras")

    assert _publish_command(tmp_path, run_dir, "--round", "1") == 1

    assert "do not match the preprocessing, which gives input (1, 5)" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "latest.json").exists()


def test_registry_prune_removes_empty_run_folder(
    tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey
) -> None:
    registry = Registry(tmp_path / "registry", keep_last=1, keep_best=False)
    dataset = write_toy_dataset(tmp_path)
    registry.publish(
        toy_round, run_id="run-old", server_round=1, signing_key=signing_key, dataset_file=dataset, export_onnx=False
    )

    registry.publish(
        toy_round, run_id="run-new", server_round=1, signing_key=signing_key, dataset_file=dataset, export_onnx=False
    )

    assert not (tmp_path / "registry" / "versions" / "run-old").exists()
    assert (tmp_path / "registry" / "versions" / "run-new").is_dir()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"metrics": None}, "has values of the wrong type for ['metrics']"),
        ({"round": "1"}, "has values of the wrong type for ['round']"),
        ({"version": "run-e/round-002"}, "names version 'run-e/round-002', but its file is for 'run-e/round-001'"),
    ],
)
def test_registry_damaged_entry_skipped(
    tmp_path: Path,
    toy_round: Path,
    signing_key: Ed25519PrivateKey,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, object],
    problem: str,
) -> None:
    registry = Registry(tmp_path / "registry")
    _publish_toy(registry, toy_round, signing_key, write_toy_dataset(tmp_path), "run-e", 2)
    entry_path = tmp_path / "registry" / "versions" / "run-e" / "round-001.json"
    entry_path.write_text(json.dumps({**read_json(entry_path), **change}), encoding="utf-8")

    assert [entry["version"] for entry in registry.list_versions()] == ["run-e/round-002"]
    assert _registry_command(tmp_path, "list") == 0
    assert _registry_command(tmp_path, "promote", "run-e/round-001") == 1

    err = capsys.readouterr().err
    assert problem in err
    assert "Traceback" not in err
    assert registry.latest_version() == "run-e/round-002"


def test_registry_text_metric_values_ignored(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    folder = write_toy_round(tmp_path / "round", 1)
    metrics = read_json(folder / "metrics.json")
    metrics["validation_metrics"] = {"f1": "high"}
    metrics["metrics"] = {"f1": float("nan")}
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    registry = Registry(tmp_path / "registry")

    entry = registry.publish(
        folder, run_id="run-g", server_round=1, signing_key=signing_key, dataset_file=write_toy_dataset(tmp_path),
        export_onnx=False,
    )

    assert entry["metrics"]["val_f1"] is None
    assert entry["metrics"]["f1"] is None
    assert registry.best() is None
    assert [item["version"] for item in registry.list_versions()] == ["run-g/round-001"]


def test_registry_rejects_invalid_metrics_file(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    folder = write_toy_round(tmp_path / "round", 1)
    (folder / "metrics.json").write_text("not json", encoding="utf-8")
    registry = Registry(tmp_path / "registry")

    with pytest.raises(RegistryError, match=r"metrics\.json is not valid JSON"):
        registry.publish(
            folder, run_id="run-h", server_round=1, signing_key=signing_key, dataset_file=write_toy_dataset(tmp_path),
            export_onnx=False,
        )

    assert not (tmp_path / "registry" / "versions" / "run-h" / "round-001").exists()


def test_registry_republishes_version_with_lost_files(
    tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey
) -> None:
    registry = Registry(tmp_path / "registry")
    dataset = write_toy_dataset(tmp_path)
    _publish_toy(registry, toy_round, signing_key, dataset, "run-i", 1)
    shutil.rmtree(registry.path_of("run-i/round-001"))

    entry = registry.publish(
        toy_round, run_id="run-i", server_round=1, signing_key=signing_key, dataset_file=dataset, export_onnx=False
    )

    assert entry["version"] == "run-i/round-001"
    assert registry.path_of("run-i/round-001").is_dir()


def test_registry_promote_rejects_damaged_archive(
    tmp_path: Path, toy_round: Path, signing_key: Ed25519PrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(tmp_path / "registry")
    _publish_toy(registry, toy_round, signing_key, write_toy_dataset(tmp_path), "run-j", 2)
    registry.archive_of("run-j/round-001").write_bytes(b"")

    assert _registry_command(tmp_path, "promote", "run-j/round-001") == 1

    assert "version run-j/round-001 is damaged" in capsys.readouterr().err
    assert registry.latest_version() == "run-j/round-002"


def test_registry_publish_rejects_nan_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import keras

    run_dir = _toy_run(tmp_path, 1, write_toy_dataset(tmp_path))
    model_path = run_dir / "round-001" / "model.keras"
    model = keras.saving.load_model(model_path, compile=False)
    model.set_weights([np.full_like(weights, np.nan) for weights in model.get_weights()])
    model.save(model_path)

    assert _publish_command(tmp_path, run_dir, "--round", "1") == 1

    assert "has NaN or infinite weights" in capsys.readouterr().err
    assert not (tmp_path / "registry" / "latest.json").exists()


def test_round_publisher_survives_any_error(
    tmp_path: Path, toy_round: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_path, _ = generate_keypair(tmp_path / "keys")
    registry = Registry(tmp_path / "registry")
    publisher = RoundPublisher(registry, load_private_key(private_path), "run-k", write_toy_dataset(tmp_path))

    def broken_publish(*_args: object, **_kwargs: object) -> dict[str, object]:
        raise AttributeError("'NoneType' object has no attribute 'get'")

    monkeypatch.setattr(registry, "publish", broken_publish)
    with caplog.at_level(logging.ERROR, logger="server.registry"):
        entry = publisher.publish_round(1, toy_round)

    assert entry is None
    assert "round 1: registry: publishing failed" in caplog.text
    assert "AttributeError" in caplog.text
