"""Fetch a signed model bundle from the coordinator's model service.

Command::

    python -m client.pull --url https://coordinator:8443 --token-file secrets/site.token \\
        --ca secrets/ca.pem --public-key secrets/bundle-signing.pub --to models/ [--version latest]

Layout of the destination folder::

    current -> bundles/<run>__round-NNN      symlink to the bundle in use
    bundles/<run>__round-NNN/                verified bundles (the current one and the one before)

Detection runs on ``models/current``. A new bundle is downloaded into a
temporary file, its archive SHA-256 compared with the service's entry,
extracted with size and name limits, and verified (Ed25519 signature, then
every checksum) before ``current`` is switched to it in one atomic rename.
Until then, and whenever anything fails, ``current`` keeps pointing at the
last verified bundle.

Exit status:

- 0 when ``current`` points to the requested version, new or already there;
- 75 (``EX_TEMPFAIL``) when the coordinator could not be reached and
  ``current`` still points to the last verified bundle, so a scheduler can
  retry later while detection keeps running;
- 1 on any other failure (wrong token, TLS verification failure, invalid
  bundle, no bundle at all);
- 2 on invalid arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import ssl
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.bundle import (
    MAX_MEMBER_BYTES,
    PUBLIC_KEY_ENV,
    Bundle,
    configured_public_key,
    load_bundle,
    load_public_key,
    parse_version,
    unpack_bundle,
)
from common.exceptions import BundleVerificationError, FedIDSError, PullError

logger = logging.getLogger(__name__)

CURRENT_LINK = "current"
BUNDLES_DIR = "bundles"

#: Verified bundles kept locally: the current one and the one before, to roll back by hand.
KEEP_LOCAL = 2

#: Largest archive accepted; the project's bundles are under 1 MB.
MAX_ARCHIVE_BYTES = MAX_MEMBER_BYTES

#: Seconds to wait for the coordinator to connect or send data.
DEFAULT_TIMEOUT_SECONDS = 30.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 75

_CHUNK = 256 * 1024


@dataclass
class PullResult:
    """Outcome of one pull.

    Attributes
    ----------
    version : str or None
        Version ``current`` points to afterwards (``None`` if there is none).
    path : Path or None
        The bundle folder ``current`` points to.
    updated : bool
        Whether ``current`` was switched to a newly downloaded bundle.
    fallback : bool
        Whether the coordinator was unreachable and the last verified bundle was kept.
    reason : str
        Why nothing was updated, when it was not.
    bytes : int
        Archive bytes downloaded.
    seconds : float
        Wall time of the whole pull, verification included.
    """

    version: str | None
    path: Path | None
    updated: bool
    fallback: bool = False
    reason: str = ""
    bytes: int = 0
    seconds: float = 0.0


class _UnreachableError(Exception):
    """The coordinator did not respond: connection refused, timed out, or host name not resolved."""


def _folder_name(version: str) -> str:
    run_id, server_round = parse_version(version)
    return f"{run_id}__round-{server_round:03d}"


def read_token(path: str | os.PathLike[str]) -> str:
    """Read a site token file, warning when other users can read it.

    Raises
    ------
    PullError
        If the file is missing or empty.
    """
    source = Path(path)
    try:
        # utf-8-sig drops a byte-order mark that some editors write.
        token = source.read_text(encoding="utf-8-sig").strip()
        mode = source.stat().st_mode
    except (OSError, UnicodeDecodeError) as error:
        raise PullError(f"cannot read the token file {source}: {error}") from error
    if not token:
        raise PullError(f"token file {source} is empty; ask the coordinator for the site's token")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise PullError(
            f"token file {source} contains spaces or characters that are not printable ASCII; "
            "it must hold the token alone, as add-site wrote it"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "pull: %s is readable by other users (mode %o); restrict it with chmod 600", source, mode & 0o777
        )
    return token


class ModelServiceClient:
    """Authenticated HTTPS requests to the coordinator's model service.

    Parameters
    ----------
    url : str
        Base URL, ``https://host:port``.
    token : str
        The site's bearer token.
    ca_file : path-like
        PEM bundle of the CA that issued the coordinator's certificate.
    timeout : float
        Seconds to wait for a connection or data.
    """

    def __init__(self, url: str, token: str, ca_file: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT_SECONDS):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise PullError(f"--url must be an https:// URL with a host name, got {url!r}")
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        try:
            self.context = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as error:
            raise PullError(f"cannot load the CA certificate {ca_file}: {error}") from error
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2

    def _open(self, path: str) -> Any:
        request = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {self.token}", "Connection": "close"}
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout, context=self.context)
        except urllib.error.HTTPError as error:
            detail = error.read(2000).decode("utf-8", "replace")
            with contextlib.suppress(json.JSONDecodeError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            if error.code == 401:
                raise PullError(
                    f"the coordinator rejected this site's token (HTTP 401) at {self.base}; check --token-file"
                ) from error
            raise PullError(f"{self.base}{path}: HTTP {error.code}: {detail}") from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, ssl.SSLError):
                raise PullError(
                    f"TLS verification of {self.base} failed ({error.reason}); check --ca and the URL's host name"
                ) from error
            raise _UnreachableError(f"{self.base} is unreachable: {error.reason}") from error
        except (TimeoutError, ConnectionError) as error:
            raise _UnreachableError(f"{self.base} is unreachable: {error}") from error

    def entry(self, version: str) -> dict[str, Any]:
        """Return the service's entry for ``"latest"``, ``"best"`` or a version string."""
        if version not in ("latest", "best"):
            parse_version(version)
        with self._open(f"/v1/versions/{version}") as response:
            entry = json.loads(response.read(1_000_000).decode("utf-8"))
        if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
            raise PullError(f"{self.base}: the version entry is malformed: {entry!r}")
        if not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
            raise PullError(f"{self.base}: the entry of {entry['version']} lacks the archive's sha256 or bytes")
        return entry

    def download(self, version: str, target: Path, expected_sha256: str, max_bytes: int) -> int:
        """Stream the archive of ``version`` into ``target``; return its size.

        Raises
        ------
        PullError
            If it is larger than ``max_bytes`` or its SHA-256 differs from the entry's.
        """
        digest = hashlib.sha256()
        size = 0
        try:
            with self._open(f"/v1/bundles/{version}.tar.gz") as response, target.open("xb") as stream:
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PullError(f"the archive of {version} exceeds {max_bytes} bytes; download stopped")
                    digest.update(chunk)
                    stream.write(chunk)
        except (TimeoutError, ConnectionError) as error:
            raise _UnreachableError(f"{self.base}: download of {version} broke off: {error}") from error
        if digest.hexdigest() != expected_sha256:
            raise PullError(
                f"the downloaded archive of {version} has SHA-256 {digest.hexdigest()[:16]}..., "
                f"but the service announced {expected_sha256[:16]}... (corrupted in transit?)"
            )
        return size


def current_bundle(destination: Path, public_key: Ed25519PublicKey) -> Bundle | None:
    """Load and verify the bundle ``current`` points to, or return ``None`` (with a WARNING if it is invalid)."""
    link = destination / CURRENT_LINK
    if not link.exists():
        return None
    try:
        return load_bundle(link, public_key)
    except BundleVerificationError as error:
        logger.warning("pull: the current bundle in %s does not verify: %s", destination, error)
        return None


def _switch_current(destination: Path, folder_name: str) -> None:
    # A symlink created under a temporary name and renamed over the old one
    # changes atomically, so detection never reads a missing or half-written link.
    temporary = destination / f".{CURRENT_LINK}.{secrets.token_hex(4)}"
    os.symlink(Path(BUNDLES_DIR) / folder_name, temporary)
    os.replace(temporary, destination / CURRENT_LINK)


def _prune_local(destination: Path, keep: int) -> None:
    """Remove local bundles beyond the current one and the ``keep - 1`` newest others."""
    link = destination / CURRENT_LINK
    current = link.resolve().name if link.exists() else None
    others = sorted(
        (path for path in (destination / BUNDLES_DIR).iterdir() if path.is_dir() and path.name != current),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for folder in others[max(keep - 1, 0) :]:
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("pull: removed the old bundle %s", folder.name)


def pull_bundle(
    client: ModelServiceClient,
    destination: str | os.PathLike[str],
    public_key: Ed25519PublicKey,
    *,
    version: str = "latest",
    max_bytes: int = MAX_ARCHIVE_BYTES,
) -> PullResult:
    """Make ``destination/current`` point to a verified bundle of ``version``.

    Parameters
    ----------
    client : ModelServiceClient
    destination : path-like
        The site's model folder (created if missing).
    public_key : Ed25519PublicKey
        The coordinator's bundle-signing key.
    version : str
        ``"latest"``, ``"best"`` or ``"<run>/round-NNN"``.
    max_bytes : int
        Largest archive accepted.

    Returns
    -------
    PullResult
        ``fallback`` is true when the coordinator was unreachable and the
        last verified bundle stays in use.

    Raises
    ------
    PullError
        On a rejected token, a TLS failure, a bundle that does not verify,
        or an unreachable coordinator with no verified bundle to fall back to.
        ``current`` is never changed in these cases.
    """
    started = time.perf_counter()
    folder = Path(destination)
    (folder / BUNDLES_DIR).mkdir(parents=True, exist_ok=True)
    current = current_bundle(folder, public_key)
    try:
        entry = client.entry(version)
        target_version = str(entry["version"])
        if current is not None and str(current.version) == target_version:
            return PullResult(
                target_version, current.path, updated=False, reason="already current",
                seconds=time.perf_counter() - started,
            )
        size = _fetch_and_verify(client, folder, entry, public_key, max_bytes)
    except _UnreachableError as error:
        if current is None:
            raise PullError(f"{error}, and {folder} contains no verified bundle to fall back to") from error
        logger.warning("pull: %s; keeping the last verified bundle %s", error, current.version)
        return PullResult(
            str(current.version), current.path, updated=False, fallback=True, reason=str(error),
            seconds=time.perf_counter() - started,
        )
    except BundleVerificationError as error:
        kept = f"; keeping {current.version}" if current is not None else ""
        raise PullError(f"the downloaded bundle was rejected: {error}{kept}") from error

    _switch_current(folder, _folder_name(target_version))
    _prune_local(folder, KEEP_LOCAL)
    seconds = time.perf_counter() - started
    logger.info("pull: %s is now current (%d bytes, %.2f s)", target_version, size, seconds)
    return PullResult(
        target_version, folder / BUNDLES_DIR / _folder_name(target_version), updated=True, bytes=size, seconds=seconds
    )


def _fetch_and_verify(
    client: ModelServiceClient, folder: Path, entry: dict[str, Any], public_key: Ed25519PublicKey, max_bytes: int
) -> int:
    """Download, extract and verify one bundle into ``bundles/``; return the archive size."""
    version = str(entry["version"])
    final = folder / BUNDLES_DIR / _folder_name(version)
    suffix = secrets.token_hex(4)
    archive = folder / f".incoming-{suffix}.tar.gz"
    unpacked = folder / f".incoming-{suffix}"
    try:
        size = client.download(version, archive, str(entry["sha256"]), max_bytes)
        unpack_bundle(archive, unpacked)
        bundle = load_bundle(unpacked, public_key)
        if str(bundle.version) != version:
            raise BundleVerificationError(f"the service sent {bundle.version} when {version} was requested")
        if final.exists():
            shutil.rmtree(final)
        unpacked.rename(final)
        return size
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client.pull", description="Fetch and verify a model bundle from the coordinator."
    )
    parser.add_argument("--url", required=True, help="model service URL, for example https://coordinator:8443")
    parser.add_argument("--token-file", required=True, type=Path, help="file holding this site's bearer token")
    parser.add_argument(
        "--ca", required=True, type=Path, help="CA certificate (PEM) that signed the service's certificate"
    )
    parser.add_argument("--to", required=True, type=Path, help="site model folder; detection uses TO/current")
    parser.add_argument(
        "--public-key", type=Path, help=f"coordinator's bundle-signing public key (default: ${PUBLIC_KEY_ENV})"
    )
    parser.add_argument("--version", default="latest", help="latest (default), best, or <run>/round-NNN")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds to wait for the coordinator"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.timeout <= 0:
            raise PullError(f"--timeout must be above 0 seconds, got {args.timeout}")
        if args.version not in ("latest", "best"):
            try:
                parse_version(args.version)
            except BundleVerificationError as error:
                raise PullError(f"invalid --version {args.version!r}: use latest, best or <run>/round-NNN") from error
        public_key = load_public_key(args.public_key) if args.public_key is not None else configured_public_key()
        if public_key is None:
            raise PullError(f"no public key to verify bundles: pass --public-key or set {PUBLIC_KEY_ENV}")
        client = ModelServiceClient(args.url, read_token(args.token_file), args.ca, args.timeout)
        result = pull_bundle(client, args.to, public_key, version=args.version)
    except (FedIDSError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    if result.fallback:
        print(f"pull: coordinator unreachable; still using the verified bundle {result.version}")
        return EXIT_UNREACHABLE
    if result.updated:
        print(f"pull: {result.version} verified and now current ({result.bytes} bytes, {result.seconds:.2f} s)")
    else:
        print(f"pull: {result.version} is already current")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
