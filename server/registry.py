"""The coordinator's registry of signed model bundles.

Layout under the registry root::

    latest.json                              {"version": "<run>/round-NNN"}, replaced atomically
    versions/<run>/round-NNN/                the unpacked, signed bundle
    versions/<run>/round-NNN.tar.gz          the same bundle as one archive, for pulling
    versions/<run>/round-NNN.json            registry entry: version, metrics, archive SHA-256 and size

A version becomes visible only when its entry file is written, after the
folder and the archive are complete, and pruning removes the entry first, so
a reader (the model service) never lists a half-written or half-removed
version.

Retention keeps the ``keep_last`` most recent versions, the best version by
validation F1 and the version ``latest.json`` points to. Every other version
is removed after each publish. "Validation F1" is the federation-wide F1 of
the attack class on the sites' local validation blocks (the 10% of each
site's rows between its training and test blocks), summed from the sites'
confusion matrices. The test-block metrics are listed too, but never used to
choose a version. A version without validation counts is never "best".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bundle import (
    DATASET_FILE,
    METRICS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    PREPROCESSING_FILE,
    RUN_ID_PATTERN,
    VERSION_FILE,
    BundleVersion,
    file_sha256,
    pack_bundle,
    parse_version,
    verify_bundle,
    write_json,
    write_manifest,
)
from common.exceptions import BundleVerificationError, ConfigError, FedIDSError, ModelMismatchError, RegistryError
from server.signing import sign_manifest, signer_fingerprint

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

LATEST_FILE = "latest.json"
VERSIONS_DIR = "versions"

#: Versions kept besides the best one and the latest, unless configured otherwise.
DEFAULT_KEEP_LAST = 5

#: Keys every registry entry must have to be listed.
ENTRY_KEYS = ("version", "run_id", "round", "created", "metrics")

#: Headline metrics copied from a round's metrics.json into its registry entry.
ENTRY_METRICS = ("f1", "macro_f1", "precision", "recall", "fpr", "roc_auc", "accuracy")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def entry_metrics(round_metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the headline metrics of a round's metrics.json for its registry entry.

    Test-block metrics keep their names (``f1``, ``fpr``, ...); validation
    metrics get a ``val_`` prefix. Unknown values are ``None``.
    """
    test = round_metrics.get("metrics")
    test = test if isinstance(test, Mapping) else {}
    validation = round_metrics.get("validation_metrics")
    validation = validation if isinstance(validation, Mapping) else {}
    result: dict[str, Any] = {key: _finite(test.get(key)) for key in ENTRY_METRICS}
    result["loss"] = _finite(round_metrics.get("loss"))
    result["num_examples"] = _finite(test.get("n_samples"))
    result["val_f1"] = _finite(validation.get("f1"))
    result["val_macro_f1"] = _finite(validation.get("macro_f1"))
    result["val_fpr"] = _finite(validation.get("fpr"))
    result["val_num_examples"] = _finite(validation.get("n_samples"))
    return result


def _finite(value: Any) -> float | int | None:
    """Return ``value`` if it is a finite number, else ``None`` (NaN, text and null are all unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def entry_problem(entry: Any, entry_path: Path) -> str | None:
    """Return what makes a registry entry unusable, or ``None`` when it is complete.

    An entry is usable when it is a JSON object with every key of
    :data:`ENTRY_KEYS` of the right type and names the version its file
    name gives (``versions/<run>/round-NNN.json``).
    """
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    missing = [key for key in ENTRY_KEYS if key not in entry]
    if missing:
        return f"has no {missing}"
    types = {"version": str, "run_id": str, "round": int, "created": str, "metrics": dict}
    wrong = [key for key, kind in types.items() if not isinstance(entry[key], kind) or isinstance(entry[key], bool)]
    if wrong:
        return f"has values of the wrong type for {wrong}"
    expected = f"{entry_path.parent.name}/{entry_path.stem}"
    if entry["version"] != expected:
        return f"names version {entry['version']!r}, but its file is for {expected!r}"
    return None


class Registry:
    """Published bundles on the coordinator's disk.

    Parameters
    ----------
    root : path-like
        Registry folder; created on first publish.
    keep_last : int
        Most recent versions kept by :meth:`prune`, >= 1.
    keep_best : bool
        Also keep the version with the highest validation F1.
    """

    def __init__(self, root: str | os.PathLike[str], *, keep_last: int = DEFAULT_KEEP_LAST, keep_best: bool = True):
        if keep_last < 1:
            raise RegistryError(f"registry: keep_last must be at least 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_best = keep_best

    # ---- paths -------------------------------------------------------------

    def _base(self, version: str) -> Path:
        run_id, server_round = parse_version(version)
        return self.root / VERSIONS_DIR / run_id / f"round-{server_round:03d}"

    def path_of(self, version: str) -> Path:
        """Return the unpacked bundle folder of ``version`` (``"<run>/round-NNN"``).

        Raises
        ------
        RegistryError
            If the version is not published or was pruned.
        """
        self.entry(version)
        return self._base(version)

    def archive_of(self, version: str) -> Path:
        """Return the ``.tar.gz`` archive of ``version``."""
        self.entry(version)
        base = self._base(version)
        return base.with_name(base.name + ".tar.gz")

    def entry(self, version: str) -> dict[str, Any]:
        """Return the registry entry of ``version`` (without ``is_latest``/``is_best``).

        Raises
        ------
        RegistryError
            If the version string is invalid or the version is not published.
        """
        try:
            base = self._base(version)
        except BundleVerificationError as error:
            raise RegistryError(str(error)) from error
        entry_path = base.with_name(base.name + ".json")
        try:
            entry = json.loads(entry_path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise RegistryError(
                f"registry: version {version} is not published in {self.root} (or was pruned); "
                "list the available ones with 'python -m server.registry list'"
            ) from error
        except (OSError, json.JSONDecodeError) as error:
            raise RegistryError(f"registry: cannot read {entry_path}: {error}") from error
        problem = entry_problem(entry, entry_path)
        if problem is not None:
            raise RegistryError(f"registry: entry {entry_path} {problem}; publish the round again")
        return dict(entry)

    # ---- reading -----------------------------------------------------------

    def _entries(self) -> list[dict[str, Any]]:
        entries = []
        for entry_path in sorted((self.root / VERSIONS_DIR).glob("*/round-*.json")):
            try:
                entry = json.loads(entry_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue  # pruned between listing and reading
            except (OSError, json.JSONDecodeError) as error:
                logger.warning("registry: skipped unreadable entry %s: %s", entry_path, error)
                continue
            problem = entry_problem(entry, entry_path)
            if problem is not None:
                logger.warning("registry: skipped entry %s, which %s", entry_path, problem)
                continue
            entries.append(entry)
        entries.sort(key=lambda entry: (entry["created"], entry["run_id"], entry["round"]), reverse=True)
        return entries

    def latest_version(self) -> str | None:
        """Return the version string ``latest.json`` points to, or ``None``."""
        try:
            pointer = json.loads((self.root / LATEST_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as error:
            raise RegistryError(f"registry: cannot read {self.root / LATEST_FILE}: {error}") from error
        version = pointer.get("version") if isinstance(pointer, dict) else None
        return version if isinstance(version, str) else None

    @staticmethod
    def _best_of(entries: list[dict[str, Any]]) -> str | None:
        scored = [entry for entry in entries if _finite(entry["metrics"].get("val_f1")) is not None]
        if not scored:
            return None
        # Entries are newest first and max() keeps the first maximum, so a tie goes to the newer version.
        return str(max(scored, key=lambda entry: entry["metrics"]["val_f1"])["version"])

    def list_versions(self) -> list[dict[str, Any]]:
        """Return every published version, newest first.

        Returns
        -------
        list of dict
            Each with ``version``, ``run_id``, ``round``, ``created``,
            ``published``, ``metrics`` (test-block ``f1``, ``fpr``, ``loss``
            ... and validation ``val_f1`` ...; ``None`` when unknown),
            ``path`` (unpacked bundle), ``archive``, ``sha256`` and ``bytes``
            of the archive, ``manifest_sha256``, ``signer``, ``has_onnx``,
            ``is_latest`` and ``is_best``.
        """
        entries = self._entries()
        latest = self.latest_version()
        best = self._best_of(entries)
        for entry in entries:
            entry["is_latest"] = entry["version"] == latest
            entry["is_best"] = entry["version"] == best
        return entries

    def latest(self) -> dict[str, Any] | None:
        """Return the entry ``latest.json`` points to, or ``None`` before the first publish."""
        version = self.latest_version()
        return self._flagged(version)

    def best(self) -> dict[str, Any] | None:
        """Return the entry with the highest validation F1, or ``None`` when no version has one."""
        return self._flagged(self._best_of(self._entries()))

    def resolve(self, name: str) -> dict[str, Any]:
        """Return the entry of ``"latest"``, ``"best"`` or a version string.

        Raises
        ------
        RegistryError
            If nothing matches.
        """
        if name in ("latest", "best"):
            entry = self.latest() if name == "latest" else self.best()
            if entry is None:
                raise RegistryError(f"registry: no {name} version in {self.root}; nothing has been published yet")
            return entry
        entry = self.entry(name)
        return self._flagged(name) or entry

    def _flagged(self, version: str | None) -> dict[str, Any] | None:
        if version is None:
            return None
        for entry in self.list_versions():
            if entry["version"] == version:
                return entry
        return None

    # ---- writing -----------------------------------------------------------

    def publish(
        self,
        model_folder: str | os.PathLike[str],
        *,
        run_id: str,
        server_round: int,
        signing_key: Ed25519PrivateKey,
        dataset_file: str | os.PathLike[str],
        model: keras.Model | None = None,
        export_onnx: bool = True,
    ) -> dict[str, Any]:
        """Build, sign and publish the bundle of one round, point ``latest`` at it and prune.

        Parameters
        ----------
        model_folder : path-like
            A checkpoint round folder (model.keras, preprocessing.json, metrics.json).
        run_id : str
            Name of the federated run.
        server_round : int
            The round, >= 1.
        signing_key : Ed25519PrivateKey
            The coordinator's key.
        dataset_file : path-like
            The dataset configuration TOML the run used; copied as dataset.toml.
        model : keras.Model, optional
            The round's model already in memory, to export without reloading it.
        export_onnx : bool, default=True
            Add model.onnx. If the export fails or disagrees with Keras, the
            bundle is published without it, and a WARNING gives the reason.

        Returns
        -------
        dict
            The new registry entry.

        Raises
        ------
        RegistryError
            If the version is already published or a source file is missing.
        """
        if not RUN_ID_PATTERN.match(run_id):
            raise RegistryError(f"registry: run id {run_id!r} is not a plain folder name")
        version = BundleVersion(run_id, server_round, _now())
        base = self._base(str(version))
        self._clear_broken(str(version))
        if base.exists() or base.with_name(base.name + ".json").exists():
            raise RegistryError(f"registry: version {version} is already published in {self.root}")
        source = Path(model_folder)
        missing = [name for name in (MODEL_FILE, PREPROCESSING_FILE, METRICS_FILE) if not (source / name).is_file()]
        if missing or not Path(dataset_file).is_file():
            raise RegistryError(f"registry: cannot publish {version}: {source} lacks {missing or [str(dataset_file)]}")
        try:
            json.loads((source / METRICS_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RegistryError(f"registry: {source / METRICS_FILE} is not valid JSON: {error}") from error

        base.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base.parent))
        try:
            entry = self._build(staging, source, version, signing_key, Path(dataset_file), model, export_onnx)
            bundle_dir = staging / "bundle"
            bundle_dir.rename(base)
            (staging / "bundle.tar.gz").rename(base.with_name(base.name + ".tar.gz"))
            entry["path"] = str(base.resolve())
            entry["archive"] = str(base.with_name(base.name + ".tar.gz").resolve())
            write_json(base.with_name(base.name + ".json"), entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._point_latest(str(version))
        logger.info(
            "registry: published %s (%d bytes, sha256 %s..., val F1 %s, test F1 %s)",
            version,
            entry["bytes"],
            entry["sha256"][:12],
            _format(entry["metrics"]["val_f1"]),
            _format(entry["metrics"]["f1"]),
        )
        self.prune()
        return entry

    def _clear_broken(self, version: str) -> None:
        """Remove what is left of ``version`` when its entry, folder or archive is missing or unusable."""
        base = self._base(version)
        entry_path = base.with_name(base.name + ".json")
        archive = base.with_name(base.name + ".tar.gz")
        if not any(path.exists() for path in (base, entry_path, archive)):
            return
        try:
            entry = json.loads(entry_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            entry = None
        if entry is not None and entry_problem(entry, entry_path) is None and base.is_dir() and archive.is_file():
            return
        logger.warning("registry: removing the incomplete files of %s before publishing it again", version)
        entry_path.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)

    def _build(
        self,
        staging: Path,
        source: Path,
        version: BundleVersion,
        signing_key: Ed25519PrivateKey,
        dataset_file: Path,
        model: keras.Model | None,
        export_onnx: bool,
    ) -> dict[str, Any]:
        bundle_dir = staging / "bundle"
        bundle_dir.mkdir()
        for name in (MODEL_FILE, PREPROCESSING_FILE, METRICS_FILE):
            shutil.copyfile(source / name, bundle_dir / name)
        shutil.copyfile(dataset_file, bundle_dir / DATASET_FILE)
        write_json(bundle_dir / VERSION_FILE, version.to_dict())
        if export_onnx:
            self._export(bundle_dir, model, version)

        signer = signer_fingerprint(signing_key)
        write_manifest(bundle_dir, version, signer=signer)
        sign_manifest(bundle_dir, signing_key)
        # Check what is about to be published exactly as a site will.
        manifest, _ = verify_bundle(bundle_dir, signing_key.public_key())
        archive = pack_bundle(bundle_dir, staging / "bundle.tar.gz")
        # publish() has checked that this copy of metrics.json parses.
        round_metrics = json.loads((bundle_dir / METRICS_FILE).read_text(encoding="utf-8"))
        return {
            "version": str(version),
            "run_id": version.run_id,
            "round": version.round,
            "created": version.created,
            "published": _now(),
            "metrics": entry_metrics(round_metrics if isinstance(round_metrics, dict) else {}),
            "sha256": file_sha256(archive),
            "bytes": archive.stat().st_size,
            "manifest_sha256": file_sha256(bundle_dir / "manifest.json"),
            "signer": signer,
            "has_onnx": ONNX_FILE in manifest["files"],
        }

    @staticmethod
    def _export(bundle_dir: Path, model: keras.Model | None, version: BundleVersion) -> None:
        from server.export import export_onnx

        try:
            if model is None:
                import keras

                model = keras.saving.load_model(bundle_dir / MODEL_FILE, compile=False)
            export_onnx(model, bundle_dir / ONNX_FILE)
        except ImportError as error:
            logger.warning("registry: %s is published without model.onnx: %s (pip install tf2onnx)", version, error)
        except ModelMismatchError as error:
            logger.warning("registry: %s is published without model.onnx: %s", version, error)
        except Exception as error:
            # model.onnx is optional because sites fall back to Keras. The converter
            # can fail in TensorFlow, tf2onnx or onnx, and no such failure may stop publishing.
            (bundle_dir / ONNX_FILE).unlink(missing_ok=True)
            logger.warning(
                "registry: %s is published without model.onnx: export failed: %s: %s",
                version,
                type(error).__name__,
                error,
            )

    def _point_latest(self, version: str) -> None:
        # Write a uniquely named file, flush it to disk, then rename it over
        # latest.json: readers see either the old pointer or the new one.
        temporary = self.root / f".{LATEST_FILE}.{secrets.token_hex(4)}"
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump({"version": version, "updated": _now()}, stream)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.root / LATEST_FILE)

    def promote(self, version: str) -> dict[str, Any]:
        """Point ``latest.json`` at an already published version, for example to roll back; return its entry.

        Raises
        ------
        RegistryError
            If the version is not published, or its bundle files are missing
            or differ from what was published.
        """
        entry = self.entry(version)
        canonical = str(entry["version"])
        base = self._base(canonical)
        archive = base.with_name(base.name + ".tar.gz")
        missing = [str(path) for path in (base, archive) if not path.exists()]
        if missing:
            raise RegistryError(f"registry: files of version {canonical} are missing: {missing}; publish it again")
        # Sites verify the signature; here the files are checked against the entry and the manifest.
        try:
            changed = not archive.is_file() or file_sha256(archive) != entry.get("sha256")
            verify_bundle(base, None, require_signature=False, warn_unverified=False)
        except (BundleVerificationError, OSError) as error:
            raise RegistryError(f"registry: version {canonical} is damaged: {error}; publish it again") from error
        if changed:
            raise RegistryError(
                f"registry: version {canonical} is damaged: {archive} differs from the archive that was "
                "published; publish it again"
            )
        self._point_latest(canonical)
        logger.info("registry: latest now points to %s", canonical)
        return self.resolve(canonical)

    def prune(self) -> list[str]:
        """Remove versions beyond the retention rule; return the removed version strings."""
        entries = self._entries()
        keep = {entry["version"] for entry in entries[: self.keep_last]}
        latest = self.latest_version()
        if latest is not None:
            keep.add(latest)
        best = self._best_of(entries) if self.keep_best else None
        if best is not None:
            keep.add(best)
        removed = []
        for entry in entries:
            if entry["version"] in keep:
                continue
            base = self._base(entry["version"])
            base.with_name(base.name + ".json").unlink(missing_ok=True)
            base.with_name(base.name + ".tar.gz").unlink(missing_ok=True)
            shutil.rmtree(base, ignore_errors=True)
            removed.append(entry["version"])
            with contextlib.suppress(OSError):
                base.parent.rmdir()  # only succeeds once the run has no version left
        if removed:
            logger.info(
                "registry: pruned %d version(s) %s (keeping the last %d%s)",
                len(removed),
                removed,
                self.keep_last,
                f", the best {best}" if best else "",
            )
        return removed


def _format(value: Any) -> str:
    number = _finite(value)
    return "n/a" if number is None else f"{number:.4f}"


@dataclass
class RoundPublisher:
    """Publishes every round of one federated run; used by the ServerApp after each checkpoint.

    A failure to publish is logged as an ERROR and never stops training,
    because the checkpoint of the round is already saved and can be
    published later.
    """

    registry: Registry
    signing_key: Ed25519PrivateKey
    run_id: str
    dataset_file: Path
    export_onnx: bool = True

    def publish_round(self, server_round: int, folder: Path, model: keras.Model | None = None) -> dict[str, Any] | None:
        """Publish the checkpoint of ``server_round``; return its entry, or ``None`` if publishing failed."""
        try:
            return self.registry.publish(
                folder,
                run_id=self.run_id,
                server_round=server_round,
                signing_key=self.signing_key,
                dataset_file=self.dataset_file,
                model=model,
                export_onnx=self.export_onnx,
            )
        except Exception as error:
            # Publishing must never stop training, whatever the registry's files contain.
            logger.error(
                "round %d: registry: publishing failed, the checkpoint stays in %s: %s: %s",
                server_round,
                folder,
                type(error).__name__,
                error,
            )
            return None


def check_registry_dir(registry_dir: str | os.PathLike[str]) -> None:
    """Raise ConfigError if ``registry_dir`` exists and is not a folder, before any round is trained."""
    if Path(registry_dir).exists() and not Path(registry_dir).is_dir():
        raise ConfigError(f"registry-dir {registry_dir} is a file, not a folder; give a folder for the model bundles")


def publisher_from_settings(
    registry_dir: str, signing_key: str, keep_last: int, run_id: str, dataset_file: Path
) -> RoundPublisher | None:
    """Build the run's publisher from the run-config values, or return ``None`` with a WARNING.

    Without a signing key the run still trains and saves checkpoints, but
    no bundle is published, because sites load only signed bundles.

    Raises
    ------
    ConfigError
        If ``signing_key`` names a file that is missing or not an Ed25519
        private key, or ``registry_dir`` is a file.
    """
    from server.signing import load_private_key

    if not signing_key:
        logger.warning(
            "registry: no signing-key configured, so model bundles are NOT published for sites; "
            "create a key with 'python -m server.signing init --out secrets/' and set signing-key"
        )
        return None
    key = load_private_key(signing_key)
    check_registry_dir(registry_dir)
    registry = Registry(registry_dir, keep_last=keep_last)
    logger.info(
        "registry: publishing every round of %s to %s (keeping the last %d and the best), signer %s",
        run_id,
        Path(registry_dir).resolve(),
        keep_last,
        signer_fingerprint(key)[:16],
    )
    return RoundPublisher(registry, key, run_id, dataset_file)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def publish_checkpoint(
    registry: Registry,
    run_dir: str | os.PathLike[str],
    server_round: int,
    signing_key: Ed25519PrivateKey,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Publish the saved checkpoint of one round of a finished or running federated run.

    This is for a round whose publishing failed, a run trained without a
    signing key, or an older round a site should use again.

    Parameters
    ----------
    registry : Registry
        Where the bundle goes; ``latest.json`` then points to it.
    run_dir : path-like
        ``<checkpoint-dir>/<run-name>``, holding run.json and the round folders.
    server_round : int
        The round, >= 1 (round 0 is the untrained model).
    signing_key : Ed25519PrivateKey
        The coordinator's key.
    dataset : str, optional
        Dataset configuration name or path; by default the one in run.json.

    Raises
    ------
    RegistryError
        If the round is 0 or missing, run.json cannot be read, the dataset
        configuration describes other input columns than the checkpoint, or
        the model has NaN or infinite weights.
    ConfigError
        If the dataset configuration cannot be loaded.
    ModelMismatchError
        If the round's model does not load or does not fit its preprocessing.
    """
    import numpy as np

    from common.bundle import load_model
    from common.config import load_dataset_config
    from common.preprocessing import Preprocessor

    run_path = Path(run_dir)
    if server_round < 1:
        raise RegistryError(f"registry: invalid round {server_round}: round 0 is the untrained model; give 1 or later")
    if not run_path.is_dir():
        raise RegistryError(f"registry: run folder {run_path} not found; give checkpoint-dir/run-name")
    # Imported after the checks above, because it loads Keras, which takes seconds.
    from server.checkpoints import RUN_FILE, round_folder_name

    folder = run_path / round_folder_name(server_round)
    if not folder.is_dir():
        raise RegistryError(f"registry: {folder} not found; list the run's round folders in {run_path}")
    from_run_file = dataset is None
    if dataset is None:
        run_file = run_path / RUN_FILE
        try:
            dataset = str(json.loads(run_file.read_text(encoding="utf-8"))["settings"]["dataset"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise RegistryError(
                f"registry: failed to read the dataset name from {run_file} ({error}); pass --dataset"
            ) from error
    try:
        config = load_dataset_config(dataset)
    except ConfigError as error:
        if not from_run_file:
            raise
        raise ConfigError(f"{error} (the dataset named in {run_path / RUN_FILE}); pass --dataset") from error
    preprocessor = Preprocessor.load(folder / PREPROCESSING_FILE)
    if (config.name, config.feature_columns) != (preprocessor.dataset, preprocessor.input_columns):
        raise RegistryError(
            f"registry: dataset configuration {config.source} ({config.name!r}, {len(config.feature_columns)} "
            f"input columns) does not match the checkpoint's preprocessing ({preprocessor.dataset!r}, "
            f"{len(preprocessor.input_columns)} input columns); pass the configuration the run trained with "
            "as --dataset"
        )
    # Sites could not run a model that does not load or does not fit the preprocessing, so it is never signed.
    model, _ = load_model(folder)
    if not all(np.all(np.isfinite(weights)) for weights in model.get_weights()):
        raise RegistryError(f"registry: {folder / MODEL_FILE} has NaN or infinite weights; publish another round")
    return registry.publish(
        folder,
        run_id=run_path.name,
        server_round=server_round,
        signing_key=signing_key,
        dataset_file=config.source,
        model=model,
    )


def _describe(entry: Mapping[str, Any]) -> str:
    metrics = entry.get("metrics", {})
    flags = [name for name, key in (("latest", "is_latest"), ("best", "is_best")) if entry.get(key)]
    return (
        f"{entry['version']}  val F1 {_format(metrics.get('val_f1'))}  test F1 {_format(metrics.get('f1'))}  "
        f"FPR {_format(metrics.get('fpr'))}  published {entry.get('published', '?')}"
        + (f"  [{', '.join(flags)}]" if flags else "")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.registry", description="List, publish and roll back the coordinator's model bundles."
    )
    parser.add_argument(
        "--registry-dir", type=Path, default=Path("runs/registry"), help="registry folder (default: runs/registry)"
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP_LAST,
        help=f"most recent versions kept when publishing, plus the latest and the best (default: {DEFAULT_KEEP_LAST})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the published versions, newest first")
    publish = commands.add_parser("publish", help="publish a saved round checkpoint as a signed bundle")
    publish.add_argument(
        "--run-dir", type=Path, required=True, help="the run's checkpoint folder (checkpoint-dir/run-name)"
    )
    publish.add_argument(
        "--round", type=int, required=True, dest="server_round", help="the round to publish (1 or later)"
    )
    publish.add_argument("--signing-key", type=Path, required=True, help="the coordinator's Ed25519 private key")
    publish.add_argument("--dataset", help="dataset configuration name or path (default: the one in run.json)")
    promote = commands.add_parser("promote", help="point latest at a published version, for example to roll back")
    promote.add_argument("version", help="a version from 'list', such as RUN/round-007")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 success, 1 error, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.keep < 1:
            raise RegistryError(f"--keep must be at least 1, got {args.keep}")

        if args.command == "list":
            if not args.registry_dir.is_dir():
                raise RegistryError(f"registry folder {args.registry_dir} not found; check --registry-dir")
            entries = Registry(args.registry_dir, keep_last=args.keep).list_versions()
            if not entries:
                print(f"registry: no version published in {args.registry_dir}")
            for entry in entries:
                print(_describe(entry))
            return 0
        registry = Registry(args.registry_dir, keep_last=args.keep)
        if args.command == "publish":
            from server.signing import load_private_key

            key = load_private_key(args.signing_key)
            entry = publish_checkpoint(registry, args.run_dir, args.server_round, key, args.dataset)
            entry = registry.resolve(entry["version"])
        else:
            entry = registry.promote(args.version)
        print(_describe(entry))
    except (FedIDSError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
