"""Model folders and signed model bundles.

A model is useless without the exact preprocessing it was trained with, so
the two are always written side by side: ``model.keras``,
``preprocessing.json`` and ``metrics.json`` in one folder
(:func:`save_model`, :func:`load_model`).

A *bundle* is such a folder as the coordinator publishes it to the sites. It
adds

- ``version.json``: run id, round and creation time;
- ``dataset.toml``: the dataset configuration the federation trained with,
  so a site cleans its traffic by the same rules and label map;
- ``model.onnx`` (optional): the same network exported for ONNX Runtime;
- ``manifest.json``: the version and the SHA-256 and size of every file above;
- ``manifest.sig``: the coordinator's Ed25519 signature of the exact bytes
  of ``manifest.json``, base64-encoded.

:func:`load_bundle` checks the signature first and then every checksum, and
raises :class:`~common.exceptions.BundleVerificationError` naming the file
that failed. A bundle travels as one ``.tar.gz`` archive
(:func:`pack_bundle`), which :func:`unpack_bundle` extracts with limits on
member names, types, sizes and count.

Signing lives on the coordinator (``server.signing``). This module only
verifies, because sites need verification and must never hold the private key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.config import DatasetConfig, load_dataset_config
from common.exceptions import (
    BundleVerificationError,
    ConfigError,
    DataFileNotFoundError,
    ModelMismatchError,
    PreprocessingError,
)
from common.preprocessing import Preprocessor

if TYPE_CHECKING:
    # Keras imports TensorFlow, which takes seconds. A site that detects with
    # ONNX Runtime never needs it, so Keras is imported only where a model is loaded.
    import keras

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"
VERSION_FILE = "version.json"
DATASET_FILE = "dataset.toml"
ONNX_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"

#: Files every bundle contains; ``model.onnx`` is optional.
REQUIRED_FILES = (MODEL_FILE, PREPROCESSING_FILE, METRICS_FILE, VERSION_FILE, DATASET_FILE)

#: Version of the manifest layout written by :func:`write_manifest`.
MANIFEST_FORMAT_VERSION = 1

#: Environment variable naming the PEM file of the coordinator's public key,
#: used by :func:`load_bundle` when no key is passed.
PUBLIC_KEY_ENV = "FEDIDS_BUNDLE_PUBLIC_KEY"

#: Default extraction limits of :func:`unpack_bundle`. A bundle of the
#: project's CNN-LSTM is about 1 MB, so these leave room for far larger models
#: while stopping a decompression bomb before it fills the disk.
MAX_MEMBER_BYTES = 256 * 1024 * 1024
MAX_ARCHIVE_MEMBERS = 32

#: Run ids and round folders become folder names and URL segments.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_PATTERN = re.compile(r"^(?P<run>[A-Za-z0-9][A-Za-z0-9._-]{0,127})/round-(?P<round>[0-9]{3,6})$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1024 * 1024


# ---------------------------------------------------------------------------
# Plain model folders
# ---------------------------------------------------------------------------


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON, replacing the file atomically."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def save_model(
    folder: str | os.PathLike[str],
    model: keras.Model,
    preprocessor: Preprocessor,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the model, its preprocessing and optional metrics into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    preprocessor.save(folder / PREPROCESSING_FILE)
    if metrics is not None:
        write_json(folder / METRICS_FILE, metrics)
    return folder


def load_model(folder: str | os.PathLike[str]) -> tuple[keras.Model, Preprocessor]:
    """Load a model folder written by :func:`save_model`.

    Raises
    ------
    DataFileNotFoundError
        If the model or preprocessing file is missing.
    ModelMismatchError
        If the model file cannot be loaded, or the model's input or output
        shape disagrees with the preprocessing.
    """
    folder = Path(folder)
    for name in (MODEL_FILE, PREPROCESSING_FILE):
        if not (folder / name).is_file():
            raise DataFileNotFoundError(f"model folder {folder} has no {name}")
    preprocessor = Preprocessor.load(folder / PREPROCESSING_FILE)
    return _load_keras_model(folder / MODEL_FILE, preprocessor), preprocessor


def _load_keras_model(path: Path, preprocessor: Preprocessor) -> keras.Model:
    import keras

    # Loaded models only predict or are exported. Without compile=False Keras
    # also restores the optimizer and warns when the saved one was never used.
    try:
        model = keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError) as error:
        # Keras reports a damaged or foreign .keras file with these types.
        raise ModelMismatchError(
            f"{path}: failed to load the Keras model ({type(error).__name__}: {error}); "
            "the file is damaged or was not saved by this project"
        ) from error
    expected_input = (preprocessor.window, preprocessor.n_features)
    expected_output = preprocessor.n_classes
    if tuple(model.input_shape[1:]) != expected_input or model.output_shape[-1] != expected_output:
        raise ModelMismatchError(
            f"{path.parent}: model input {tuple(model.input_shape[1:])} and output "
            f"{model.output_shape[-1]} do not match the preprocessing, which gives input "
            f"{expected_input} and {expected_output} classes"
        )
    return model


# ---------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleVersion:
    """Identity of a published global model.

    Attributes
    ----------
    run_id : str
        Name of the federated run (its checkpoint folder name).
    round : int
        Federated round after which the weights were saved, >= 1.
    created : str
        ISO-8601 time at which the coordinator built the bundle.
    """

    run_id: str
    round: int
    created: str

    def __post_init__(self) -> None:
        if not RUN_ID_PATTERN.match(self.run_id):
            raise BundleVerificationError(
                f"bundle version: run id {self.run_id!r} must be 1 to 128 letters, digits, '.', '_' or '-'"
            )
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise BundleVerificationError(f"bundle version: round must be an integer >= 0, got {self.round!r}")

    def __str__(self) -> str:
        return f"{self.run_id}/round-{self.round:03d}"

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "round": self.round, "created": self.created}

    @classmethod
    def from_dict(cls, data: Any) -> BundleVersion:
        """Rebuild a version from :meth:`to_dict` output.

        Raises
        ------
        BundleVerificationError
            If a key is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise BundleVerificationError(f"bundle version must be a JSON object, got {type(data).__name__}")
        missing = [key for key in ("run_id", "round", "created") if key not in data]
        if missing:
            raise BundleVerificationError(f"bundle version lacks key(s) {missing}")
        if not isinstance(data["run_id"], str) or not isinstance(data["created"], str):
            raise BundleVerificationError("bundle version: run_id and created must be strings")
        return cls(run_id=data["run_id"], round=data["round"], created=data["created"])


def parse_version(text: str) -> tuple[str, int]:
    """Split a version string such as ``"fed-20261204/round-007"`` into run id and round.

    Raises
    ------
    BundleVerificationError
        If ``text`` is not ``<run-id>/round-<NNN>``.
    """
    match = _VERSION_PATTERN.match(text)
    if not match:
        raise BundleVerificationError(
            f"invalid bundle version {text!r}; expected <run-id>/round-<NNN>, for example 'run-1/round-007'"
        )
    return match["run"], int(match["round"])


# ---------------------------------------------------------------------------
# Keys and manifests
# ---------------------------------------------------------------------------


def load_public_key(source: str | os.PathLike[str] | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """Load the coordinator's Ed25519 public key.

    Parameters
    ----------
    source : path, PEM bytes or Ed25519PublicKey
        A PEM file (``SubjectPublicKeyInfo``), its content, or a loaded key.

    Raises
    ------
    BundleVerificationError
        If the file is missing or does not hold an Ed25519 public key.
    """
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes):
        data, origin = source, "public key bytes"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BundleVerificationError(
                f"cannot read the coordinator's public key {path}: {error}; "
                "copy the public key that the coordinator's 'server.signing init' wrote"
            ) from error
        origin = str(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise BundleVerificationError(f"{origin} is not a PEM public key: {error}") from error
    if not isinstance(key, Ed25519PublicKey):
        raise BundleVerificationError(f"{origin} contains a {type(key).__name__}, not an Ed25519 public key")
    return key


def key_fingerprint(key: Ed25519PublicKey) -> str:
    """Return the SHA-256 of the raw 32-byte public key as hex, to name a key in messages and manifests."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bundle_files(folder: Path) -> list[str]:
    """Return the names of the files in ``folder`` that the manifest must cover, sorted."""
    names = []
    for entry in sorted(folder.iterdir()):
        if entry.name in (MANIFEST_FILE, SIGNATURE_FILE):
            continue
        if entry.is_symlink() or not entry.is_file():
            raise BundleVerificationError(
                f"{folder}: {entry.name} is not a regular file; a bundle may contain only regular files"
            )
        names.append(entry.name)
    return names


def write_manifest(folder: str | os.PathLike[str], version: BundleVersion, signer: str | None = None) -> bytes:
    """Write ``manifest.json`` covering every other file in ``folder`` and return its bytes.

    Parameters
    ----------
    folder : path-like
        The bundle folder, holding at least :data:`REQUIRED_FILES`.
    version : BundleVersion
        The bundle's version, repeated in the manifest so the signature covers it.
    signer : str, optional
        Fingerprint of the key that will sign the manifest (:func:`key_fingerprint`).

    Raises
    ------
    BundleVerificationError
        If a required file is missing or the folder contains something other than regular files.
    """
    folder = Path(folder)
    names = _bundle_files(folder)
    missing = [name for name in REQUIRED_FILES if name not in names]
    if missing:
        raise BundleVerificationError(f"{folder}: cannot build a bundle without {missing}")
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "version": version.to_dict(),
        "signer": signer,
        "files": {
            name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size} for name in names
        },
    }
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    (folder / MANIFEST_FILE).write_bytes(data)
    (folder / SIGNATURE_FILE).unlink(missing_ok=True)
    return data


def _read_signature(folder: Path) -> bytes:
    path = folder / SIGNATURE_FILE
    try:
        text = path.read_bytes().strip()
        signature = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BundleVerificationError(f"{path}: signature is not valid base64 ({error})") from error
    if len(signature) != 64:
        raise BundleVerificationError(f"{path}: an Ed25519 signature has 64 bytes, this one has {len(signature)}")
    return signature


def _parse_manifest(folder: Path, data: bytes) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleVerificationError(f"{path}: invalid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleVerificationError(
            f"{path}: format_version is {found!r}, this code reads version {MANIFEST_FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleVerificationError(f"{path}: key 'files' must map file names to checksums")
    for name, entry in files.items():
        valid_entry = (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and _SHA256_PATTERN.match(entry["sha256"])
            and isinstance(entry.get("bytes"), int)
        )
        if not _FILE_NAME_PATTERN.match(name) or name in (MANIFEST_FILE, SIGNATURE_FILE) or not valid_entry:
            raise BundleVerificationError(f"{path}: invalid entry for {name!r}: {entry!r}")
    BundleVersion.from_dict(manifest.get("version"))
    return manifest


def verify_bundle(
    folder: str | os.PathLike[str],
    public_key: Ed25519PublicKey | None,
    *,
    require_signature: bool = True,
    warn_unverified: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Check a bundle folder's signature, then its file list and every checksum.

    Parameters
    ----------
    folder : path-like
        An unpacked bundle.
    public_key : Ed25519PublicKey or None
        The coordinator's key. ``None`` is only allowed with
        ``require_signature=False``, and then only checksums are checked.
    require_signature : bool, default=True
        Reject a bundle without ``manifest.sig``. Turning this off is meant
        for development with models that never left the machine.
    warn_unverified : bool, default=True
        Log a WARNING when only checksums are checked. The coordinator turns
        it off to check its own registry, where it has no public key.

    Returns
    -------
    manifest : dict
        The decoded manifest.
    signature_verified : bool
        Whether the signature was checked and valid.

    Raises
    ------
    BundleVerificationError
        Naming the file that failed: a missing or invalid signature, a file
        missing from the folder or the manifest, a size or SHA-256 mismatch.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleVerificationError(f"bundle folder not found: {folder}")
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleVerificationError(f"{folder}: {MANIFEST_FILE} is missing, so this is not a bundle")
    manifest_bytes = manifest_path.read_bytes()

    verified = False
    has_signature = (folder / SIGNATURE_FILE).is_file()
    if require_signature and not has_signature:
        raise BundleVerificationError(
            f"{folder}: unsigned bundle ({SIGNATURE_FILE} is missing); "
            "only bundles signed by the coordinator are loaded"
        )
    if require_signature and public_key is None:
        raise BundleVerificationError(
            f"{folder}: no public key to verify {SIGNATURE_FILE}; pass the coordinator's public key "
            f"(--public-key) or set {PUBLIC_KEY_ENV}"
        )
    if has_signature and public_key is not None:
        signature = _read_signature(folder)
        try:
            public_key.verify(signature, manifest_bytes)
        except InvalidSignature as error:
            raise BundleVerificationError(
                f"{manifest_path}: signature check failed: the manifest was changed after signing or was signed "
                f"by another key than {key_fingerprint(public_key)[:16]}"
            ) from error
        verified = True
    elif warn_unverified and has_signature:
        logger.warning("bundle: %s is signed, but no public key was given; checking checksums only", folder)
    elif warn_unverified:
        logger.warning("bundle: %s is unsigned; checking checksums only", folder)

    manifest = _parse_manifest(folder, manifest_bytes)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    present = _bundle_files(folder)
    unexpected = [name for name in present if name not in listed]
    if unexpected:
        raise BundleVerificationError(
            f"{folder}: file(s) {unexpected} are not listed in {MANIFEST_FILE}; remove them or pull the bundle again"
        )
    for name in sorted(listed):
        path = folder / name
        if name not in present:
            raise BundleVerificationError(f"{path}: listed in {MANIFEST_FILE} but missing")
        size = path.stat().st_size
        if size != listed[name]["bytes"]:
            raise BundleVerificationError(
                f"{path}: {size} bytes, but the manifest lists {listed[name]['bytes']} (truncated or replaced)"
            )
        digest = file_sha256(path)
        if digest != listed[name]["sha256"]:
            raise BundleVerificationError(
                f"{path}: SHA-256 {digest[:16]}... does not match the manifest's {listed[name]['sha256'][:16]}... "
                "(the file was changed after signing)"
            )
    missing = [name for name in REQUIRED_FILES if name not in listed]
    if missing:
        raise BundleVerificationError(f"{folder}: the manifest does not list the required file(s) {missing}")
    return manifest, verified


# ---------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------


def pack_bundle(folder: str | os.PathLike[str], archive: str | os.PathLike[str]) -> Path:
    """Write a bundle folder as a gzip-compressed tar archive of its files.

    Members are the folder's regular files at the archive's top level, in
    sorted order, with fixed owner, mode and time, so packing the same
    folder twice gives the same bytes.
    """
    folder, archive = Path(folder), Path(archive)
    names = [*_bundle_files(folder), MANIFEST_FILE, SIGNATURE_FILE]
    temporary = archive.with_name(archive.name + ".tmp")
    with (
        open(temporary, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(names):
            path = folder / name
            if not path.is_file():
                continue
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as stream:
                tar.addfile(info, stream)
    temporary.replace(archive)
    return archive


def unpack_bundle(
    archive: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_members: int = MAX_ARCHIVE_MEMBERS,
) -> Path:
    """Extract a bundle archive into ``destination``, which must not exist yet.

    Every member must be a regular file with a plain name of letters,
    digits, ``.``, ``_`` and ``-`` (so no folder and no ``..``). It must
    appear once and be at most ``max_member_bytes`` long. At most
    ``max_members`` members are read. The extracted folder still has to
    pass :func:`verify_bundle`.

    Raises
    ------
    BundleVerificationError
        If the archive is truncated or corrupt, or a member breaks a rule.
        ``destination`` is removed again in that case.
    """
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise BundleVerificationError(f"bundle archive not found: {archive}")
    destination.mkdir(parents=True, exist_ok=False)
    try:
        _extract_members(archive, destination, max_member_bytes, max_members)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    return destination


def _extract_members(archive: Path, destination: Path, max_member_bytes: int, max_members: int) -> None:
    seen: set[str] = set()
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise BundleVerificationError(f"{archive}: more than {max_members} members; not a bundle")
                name = member.name
                if not member.isfile():
                    raise BundleVerificationError(
                        f"{archive}: member {name!r} is not a regular file (links and folders are rejected)"
                    )
                if not _FILE_NAME_PATTERN.match(name) or name in seen:
                    raise BundleVerificationError(
                        f"{archive}: member name {name!r} is not a plain, unique file name; extraction stopped"
                    )
                if member.size > max_member_bytes:
                    raise BundleVerificationError(
                        f"{archive}: member {name!r} has {member.size} bytes, more than the limit of "
                        f"{max_member_bytes}"
                    )
                seen.add(name)
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has content
                with source, open(destination / name, "xb") as target:
                    shutil.copyfileobj(source, target, _READ_CHUNK)
    except BundleVerificationError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise BundleVerificationError(f"{archive}: archive is truncated or corrupt ({error})") from error


# ---------------------------------------------------------------------------
# Loading a verified bundle
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Bundle:
    """A verified model bundle, ready for detection.

    Attributes
    ----------
    path : Path
        A private copy of the verified files (mode 0700), which every later
        read uses, so that a change to the source after verification has no
        effect.
    preprocessor : Preprocessor
        The federation's preprocessing: features, vocabularies, agreed
        minimum and maximum, window length and classes.
    metrics : dict
        The round's ``metrics.json``.
    version : BundleVersion
    signature_verified : bool
        Whether the coordinator's signature was checked and valid.
    manifest : dict
        The decoded ``manifest.json``.
    dataset_config : DatasetConfig
        The cleaning rules and label map from ``dataset.toml``.
    source : Path or None
        The folder or archive the bundle was loaded from.
    """

    path: Path
    preprocessor: Preprocessor
    metrics: dict[str, Any]
    version: BundleVersion
    signature_verified: bool
    manifest: dict[str, Any]
    dataset_config: DatasetConfig
    source: Path | None = None
    _model: Any = field(default=None, repr=False)
    # Keeps the private copy alive as long as the bundle.
    _workspace: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def model(self) -> keras.Model:
        """The Keras model, loaded on first use from the verified copy and checked against the preprocessing."""
        if self._model is None:
            try:
                self._model = _load_keras_model(self.path / MODEL_FILE, self.preprocessor)
            except ModelMismatchError as error:
                if self.source is None:
                    raise
                # Name the user's folder or archive, not the private copy.
                raise ModelMismatchError(str(error).replace(str(self.path), str(self.source))) from error
        return self._model

    @property
    def onnx_path(self) -> Path | None:
        """The exported ONNX model, or ``None`` if the bundle has none."""
        return self.path / ONNX_FILE if ONNX_FILE in self.manifest["files"] else None

    def summary(self) -> dict[str, Any]:
        """Return the version, verification state and headline metrics as JSON-safe values."""
        return {
            "version": str(self.version),
            **self.version.to_dict(),
            "signature_verified": self.signature_verified,
            "signer": self.manifest.get("signer"),
            "window": self.preprocessor.window,
            "classes": list(self.preprocessor.classes),
            "has_onnx": self.onnx_path is not None,
        }


def configured_public_key() -> Ed25519PublicKey | None:
    """Load the key named by :data:`PUBLIC_KEY_ENV`, or return ``None`` when it is unset."""
    path = os.environ.get(PUBLIC_KEY_ENV, "").strip()
    return load_public_key(path) if path else None


def load_bundle(
    path: str | os.PathLike[str],
    public_key: str | os.PathLike[str] | bytes | Ed25519PublicKey | None = None,
    *,
    require_signature: bool = True,
) -> Bundle:
    """Verify and load a bundle folder or ``.tar.gz`` archive.

    Parameters
    ----------
    path : path-like
        A bundle folder, or an archive written by :func:`pack_bundle` (it is
        extracted into a temporary folder that lives as long as the Bundle).
    public_key : path, PEM bytes, Ed25519PublicKey or None
        The coordinator's public key. ``None`` uses the PEM file named by
        the environment variable ``FEDIDS_BUNDLE_PUBLIC_KEY``.
    require_signature : bool, default=True
        Reject unsigned bundles and bundles without a key to check them with.

    Returns
    -------
    Bundle
        With the preprocessing, metrics, version and dataset configuration
        loaded; the Keras model loads on first access of ``Bundle.model``.

    Raises
    ------
    BundleVerificationError
        If the signature or a checksum fails, a file is missing or extra, or
        a file does not parse; the message names the file.
    """
    source = Path(path)
    key = load_public_key(public_key) if public_key is not None else configured_public_key()
    if not source.exists():
        raise BundleVerificationError(f"model bundle not found: {source}; pass a bundle folder or .tar.gz archive")
    # The files are verified and later read in a folder that only this
    # process writes (TemporaryDirectory creates it with mode 0700), so a
    # file swapped in the source after verification is never loaded.
    workspace = tempfile.TemporaryDirectory(prefix="fedids-bundle-")
    folder = Path(workspace.name) / "bundle"
    try:
        if source.is_file():
            unpack_bundle(source, folder)
        else:
            _copy_bundle_folder(source.resolve(), folder)
        bundle = _load_verified(folder, key, require_signature)
    except BundleVerificationError as error:
        workspace.cleanup()
        # Name the user's folder or archive, not the private copy.
        raise BundleVerificationError(str(error).replace(str(folder), str(source))) from error
    bundle.source = source
    bundle._workspace = workspace
    # Messages about the dataset rules name the user's bundle, not the private copy.
    bundle.dataset_config = dataclasses.replace(bundle.dataset_config, source=source / DATASET_FILE)
    logger.info(
        "bundle: loaded %s from %s (signature %s, W=%d, classes %s)",
        bundle.version,
        source,
        "verified" if bundle.signature_verified else "NOT verified",
        bundle.preprocessor.window,
        list(bundle.preprocessor.classes),
    )
    return bundle


def _load_verified(folder: Path, key: Ed25519PublicKey | None, require_signature: bool) -> Bundle:
    """Verify a private bundle copy, then read its version, preprocessing, dataset rules and metrics."""
    manifest, verified = verify_bundle(folder, key, require_signature=require_signature)
    version = BundleVersion.from_dict(manifest["version"])
    version_file = _read_json(folder / VERSION_FILE)
    if BundleVersion.from_dict(version_file) != version:
        raise BundleVerificationError(f"{folder / VERSION_FILE}: version differs from the manifest's {version}")
    try:
        preprocessor = Preprocessor.load(folder / PREPROCESSING_FILE)
        dataset_config = load_dataset_config(folder / DATASET_FILE)
    except (PreprocessingError, ConfigError) as error:
        raise BundleVerificationError(f"{folder}: {error}") from error
    if dataset_config.name != preprocessor.dataset:
        raise BundleVerificationError(
            f"{folder / DATASET_FILE}: describes dataset {dataset_config.name!r}, but the preprocessing is for "
            f"{preprocessor.dataset!r}"
        )
    metrics = _read_json(folder / METRICS_FILE)
    return Bundle(
        path=folder,
        preprocessor=preprocessor,
        metrics=metrics if isinstance(metrics, dict) else {},
        version=version,
        signature_verified=verified,
        manifest=manifest,
        dataset_config=dataset_config,
    )


def _copy_bundle_folder(source: Path, destination: Path) -> None:
    """Copy the regular files of a bundle folder, within the archive limits, into a new folder.

    Raises
    ------
    BundleVerificationError
        If an entry is a link or not a regular file, there are more than
        :data:`MAX_ARCHIVE_MEMBERS` entries, or a file exceeds :data:`MAX_MEMBER_BYTES`.
    """
    if not source.is_dir():
        raise BundleVerificationError(f"bundle folder not found: {source}")
    entries = sorted(source.iterdir())
    if len(entries) > MAX_ARCHIVE_MEMBERS:
        raise BundleVerificationError(
            f"{source}: {len(entries)} entries, more than the limit of {MAX_ARCHIVE_MEMBERS}; pull the bundle again"
        )
    destination.mkdir(mode=0o700)
    for entry in entries:
        if entry.is_symlink() or not entry.is_file():
            raise BundleVerificationError(
                f"{source}: {entry.name} is not a regular file; a bundle may contain only regular files"
            )
        try:
            with entry.open("rb") as reader, open(destination / entry.name, "xb") as writer:
                copied = 0
                while chunk := reader.read(_READ_CHUNK):
                    copied += len(chunk)
                    if copied > MAX_MEMBER_BYTES:
                        raise BundleVerificationError(
                            f"{entry}: larger than the limit of {MAX_MEMBER_BYTES} bytes; pull the bundle again"
                        )
                    writer.write(chunk)
        except OSError as error:
            raise BundleVerificationError(f"{entry}: read failed ({error}); check the folder's permissions") from error


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleVerificationError(f"{path}: cannot read JSON ({error})") from error
