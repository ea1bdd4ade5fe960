"""HTTPS service from which hospital sites pull signed model bundles.

Why a small HTTPS service and not Flower: Flower 1.42 moves weights only
inside a run (ArrayRecords in train and evaluate messages). A site,
however, must be able to fetch the current model when no run is active,
long after training, and keep detecting when the coordinator is down. A
plain HTTPS GET of one archive does that with the standard library alone
(``http.server`` and ``ssl``) and works through any proxy a hospital
allows. The channel adds nothing to trust, because the bundle is verified
by its Ed25519 signature whatever channel brought it. TLS keeps the traffic confidential and
proves the coordinator's identity with a certificate issued by the
deployment's own CA; per-site bearer tokens decide who may download.

Endpoints (every one requires ``Authorization: Bearer <token>``):

- ``GET /v1/versions``: published versions, newest first, as JSON;
- ``GET /v1/versions/latest``, ``/v1/versions/best`` or
  ``/v1/versions/<run>/round-NNN``: one version's entry (metrics, archive
  SHA-256 and size);
- ``GET /v1/bundles/<run>/round-NNN.tar.gz``: the signed archive, with
  ``X-Bundle-SHA256`` and ``X-Bundle-Version`` headers.

Tokens are 256-bit random strings (``secrets.token_urlsafe(32)``). The
tokens file stores only their SHA-256, so a copy of it does not let anyone
download; because the tokens are random rather than chosen passwords, a
fast hash is enough (there is nothing to guess). The file is re-read when
it changes, so adding or revoking a site needs no restart.

Commands::

    python -m server.model_service add-site --tokens secrets/site-tokens.json --site hospital-a \\
        --token-out secrets/hospital-a.token
    python -m server.model_service revoke-site --tokens secrets/site-tokens.json --site hospital-a
    python -m server.model_service serve --registry runs/registry --tokens secrets/site-tokens.json \\
        --cert secrets/coordinator.pem --key secrets/coordinator.key [--host 127.0.0.1] [--port 8443]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from common.credentials import write_private_file
from common.exceptions import ConfigError, FedIDSError, RegistryError
from common.network import bare_host, is_loopback, listen_family, listen_host_option, url_host
from common.processes import listen_errors
from server.registry import Registry

logger = logging.getLogger(__name__)

TOKENS_FORMAT_VERSION = 1

#: Default port; 8443 is the usual unprivileged HTTPS port.
DEFAULT_PORT = 8443

#: Seconds a connection may stay idle (TLS handshake included) before it is closed.
CONNECTION_TIMEOUT_SECONDS = 30.0

#: Seconds between two WARNING lines about rejected tokens from one address.
AUTH_WARNING_INTERVAL_SECONDS = 60.0

_SITE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_VERSION_PATH = re.compile(r"^/v1/versions/(?P<version>latest|best|[A-Za-z0-9][A-Za-z0-9._-]*/round-[0-9]{3,6})$")
_BUNDLE_PATH = re.compile(r"^/v1/bundles/(?P<version>[A-Za-z0-9][A-Za-z0-9._-]*/round-[0-9]{3,6})\.tar\.gz$")
_COPY_CHUNK = 256 * 1024

#: Entry keys never sent to sites: local paths of the coordinator.
_PRIVATE_ENTRY_KEYS = ("path", "archive")


# ---------------------------------------------------------------------------
# Site tokens
# ---------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """Return the hex SHA-256 of a token, as stored in the tokens file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _read_tokens_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"format_version": TOKENS_FORMAT_VERSION, "sites": {}}
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read the tokens file {path}: {error}") from error
    if not isinstance(data, dict) or data.get("format_version") != TOKENS_FORMAT_VERSION:
        raise ConfigError(f"{path}: not a tokens file of format_version {TOKENS_FORMAT_VERSION}")
    sites = data.get("sites")
    if not isinstance(sites, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in sites.values()
    ):
        raise ConfigError(f"{path}: key 'sites' must map site names to {{'sha256': ...}} entries")
    return data


def add_site(tokens_path: str | os.PathLike[str], site: str) -> str:
    """Create a new token for ``site``, store its hash and return the token (shown once).

    Raises
    ------
    ConfigError
        If the site name is invalid or the site already has a token.
    """
    path = Path(tokens_path)
    if not _SITE_PATTERN.match(site):
        raise ConfigError(f"site name {site!r} must be 1 to 64 letters, digits, '.', '_' or '-'")
    data = _read_tokens_file(path)
    if site in data["sites"]:
        raise ConfigError(f"site {site!r} already has a token in {path}; revoke it first to issue a new one")
    token = secrets.token_urlsafe(32)
    data["sites"][site] = {"sha256": token_hash(token), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    write_private_file(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    logger.info("tokens: issued a token for site %s in %s", site, path)
    return token


def revoke_site(tokens_path: str | os.PathLike[str], site: str) -> None:
    """Remove ``site``'s token; its next request is rejected.

    Raises
    ------
    ConfigError
        If the site has no token.
    """
    path = Path(tokens_path)
    data = _read_tokens_file(path)
    if site not in data["sites"]:
        raise ConfigError(f"site {site!r} has no token in {path}; known sites: {sorted(data['sites'])}")
    del data["sites"][site]
    write_private_file(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    logger.info("tokens: revoked the token of site %s", site)


class TokenStore:
    """Site tokens, re-read whenever the tokens file changes.

    Parameters
    ----------
    path : path-like
        The JSON file written by :func:`add_site`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._hashes: dict[str, str] = {}
        self._reload()
        if not self._hashes:
            logger.warning("tokens: %s lists no site, so every request will be rejected", self.path)

    def _reload(self) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError as error:
            raise ConfigError(
                f"tokens file not found: {self.path}; create it with "
                "'python -m server.model_service add-site --tokens FILE --site NAME'"
            ) from error
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp == self._stamp:
            return
        data = _read_tokens_file(self.path)
        self._hashes = {site: entry["sha256"] for site, entry in data["sites"].items()}
        self._stamp = stamp

    def authenticate(self, token: str) -> str | None:
        """Return the site whose token this is, or ``None``."""
        with self._lock:
            try:
                self._reload()
            except ConfigError as error:
                # Fail closed: deleting or breaking the file must never leave
                # a revoked token working. Sites keep their last verified bundle.
                logger.error("tokens: %s; rejecting every request until the file is fixed", error)
                self._hashes = {}
                self._stamp = None
            hashes = dict(self._hashes)
        digest = token_hash(token)
        match = None
        # Compare with every entry in constant time, so timing does not reveal which site nearly matched.
        for site, stored in hashes.items():
            if hmac.compare_digest(digest, stored):
                match = site
        return match


# ---------------------------------------------------------------------------
# HTTP handling
# ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: ModelService
    server_version = "fedids-model-service"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_SECONDS
    site = "-"

    def setup(self) -> None:
        super().setup()
        # The listening socket defers the TLS handshake to this worker thread,
        # so a slow or silent client cannot block the accept loop.
        assert isinstance(self.request, ssl.SSLSocket)
        self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("serve: %s " + format, self.client_address[0], *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if not self.command:
            # http.server sends the error response for an over-long or malformed
            # request line before it sets the command and path, so there is no request to name.
            problem = "is longer than 65536 bytes" if code == HTTPStatus.REQUEST_URI_TOO_LONG else "is malformed"
            logger.info("serve: request line from %s %s -> %s", self.client_address[0], problem, code)
            return
        logger.info("serve: site %s %s %s -> %s", self.site, self.command, self.path, code)

    def _send_json(self, status: HTTPStatus, payload: Any) -> None:
        body = (json.dumps(payload, indent=2) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send_json(status, {"error": message})

    def _authenticate(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        site = self.server.tokens.authenticate(token.strip()) if scheme.lower() == "bearer" and token else None
        if site is None:
            self.server.note_rejected(self.client_address[0], "no token" if not header else "invalid token")
            body = b'{"error": "missing or invalid bearer token"}\n'
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Bearer realm="fedids-models"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return False
        self.site = site
        return True

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._authenticate():
            return
        registry = self.server.registry
        path = self.path.split("?", 1)[0]
        try:
            if path == "/v1/versions":
                versions = [_public_entry(entry) for entry in registry.list_versions()]
                self._send_json(HTTPStatus.OK, {"versions": versions})
                return
            version_match = _VERSION_PATH.match(path)
            if version_match:
                self._send_json(HTTPStatus.OK, _public_entry(registry.resolve(version_match["version"])))
                return
            bundle_match = _BUNDLE_PATH.match(path)
            if bundle_match:
                self._send_archive(bundle_match["version"])
                return
        except RegistryError as error:
            # Sites see the version they asked for, never the coordinator's folders.
            logger.info("request: %s: %s", path, error)
            self._error(HTTPStatus.NOT_FOUND, f"{path}: no such published version; see GET /v1/versions")
            return
        self._error(HTTPStatus.NOT_FOUND, f"unknown path {path}; see GET /v1/versions")

    def _send_archive(self, version: str) -> None:
        entry = self.server.registry.entry(version)
        archive = self.server.registry.archive_of(version)
        try:
            stream = archive.open("rb")
        except FileNotFoundError:
            self._error(HTTPStatus.NOT_FOUND, f"version {version} was pruned while it was requested")
            return
        with stream:
            size = os.fstat(stream.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(size))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Bundle-Version", version)
            self.send_header("X-Bundle-SHA256", str(entry["sha256"]))
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(stream, self.wfile, _COPY_CHUNK)


def _public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in _PRIVATE_ENTRY_KEYS}


class ModelService(ThreadingHTTPServer):
    """Threaded HTTPS server over a :class:`~server.registry.Registry`.

    Parameters
    ----------
    address : (host, port)
        Where to listen; port 0 picks a free port (see ``server_address``).
        An IPv6 host (``::1``, ``[::1]``) listens over IPv6.
    registry : Registry
    tokens : TokenStore
    context : ssl.SSLContext
        Server context with the coordinator's certificate and key loaded.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], registry: Registry, tokens: TokenStore, context: ssl.SSLContext
    ) -> None:
        host, port = address
        # socketserver binds with the class's address family, which is IPv4 only.
        self.address_family = listen_family(host, port)
        super().__init__((bare_host(host), port), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.registry = registry
        self.tokens = tokens
        self._rejections: dict[str, tuple[int, float]] = {}
        self._rejections_lock = threading.Lock()

    def note_rejected(self, address: str, reason: str) -> None:
        """Count a rejected request and log at most one WARNING per address and minute."""
        now = time.monotonic()
        with self._rejections_lock:
            count, last_logged = self._rejections.get(address, (0, -AUTH_WARNING_INTERVAL_SECONDS))
            count += 1
            should_log = now - last_logged >= AUTH_WARNING_INTERVAL_SECONDS
            self._rejections[address] = (count, now if should_log else last_logged)
        if should_log:
            logger.warning(
                "serve: rejected a request from %s (%s); %d rejection(s) from it so far", address, reason, count
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ssl.SSLError, ConnectionError, socket.timeout, TimeoutError)):
            logger.warning("serve: connection from %s failed: %s", client_address[0], error)
        else:
            logger.exception("serve: request from %s failed", client_address[0])


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """Build a TLS 1.2+ server context from the coordinator's certificate chain and private key.

    Raises
    ------
    ConfigError
        If the files are missing or do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load the TLS certificate {cert} with key {key}: {error}") from error
    return context


def start_service(
    registry_dir: str | os.PathLike[str],
    tokens_path: str | os.PathLike[str],
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
) -> ModelService:
    """Create the service, bound and ready for ``serve_forever``."""
    registry = Registry(registry_dir)
    if not Path(registry_dir).is_dir():
        logger.warning("serve: registry %s does not exist yet; sites get 404 until the first publish", registry_dir)
    context = server_context(cert, key)
    # Read before binding: listen_errors would report a tokens-file error as an address problem.
    tokens = TokenStore(tokens_path)
    with listen_errors(host, port):
        return ModelService((host, port), registry, tokens, context)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server.model_service", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the registry to sites over HTTPS")
    serve.add_argument("--registry", required=True, type=Path, help="registry folder (run-config key registry-dir)")
    serve.add_argument("--tokens", required=True, type=Path, help="tokens file written by add-site")
    serve.add_argument("--cert", required=True, type=Path, help="coordinator's TLS certificate chain (PEM)")
    serve.add_argument("--key", required=True, type=Path, help="private key of the TLS certificate (PEM)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on, IPv4 or IPv6 (default: 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 picks one)")

    add = commands.add_parser("add-site", help="issue a token for a site")
    add.add_argument("--tokens", required=True, type=Path, help="tokens file (created if missing)")
    add.add_argument("--site", required=True, help="site name, for example hospital-a")
    add.add_argument("--token-out", type=Path, help="write the token to this file (mode 0600) instead of stdout")

    revoke = commands.add_parser("revoke-site", help="remove a site's token")
    revoke.add_argument("--tokens", required=True, type=Path, help="tokens file")
    revoke.add_argument("--site", required=True, help="site name")
    return parser


def _serve(args: argparse.Namespace) -> None:
    if not Path(args.registry).is_dir():
        raise RegistryError(
            f"registry folder {args.registry} not found; pass the registry-dir of the runs that publish bundles"
        )
    if Path(args.key).is_file() and Path(args.key).stat().st_mode & 0o077:
        logger.warning(
            "serve: TLS private key %s is readable by other users; restrict it with chmod 600", args.key
        )
    service = start_service(args.registry, args.tokens, args.cert, args.key, args.host, args.port)
    host, port = service.server_address[:2]
    # Warned only once the bind succeeded, so an address that cannot be used gets its error alone.
    if not is_loopback(str(host)):
        logger.warning(
            "serve: listening on %s, which other machines can reach; let only the hospitals' networks "
            "connect to port %d (firewall)",
            host, port,
        )

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must run on another thread.
        threading.Thread(target=service.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"serve: listening on https://{url_host(str(host))}:{port} (registry {args.registry})", flush=True)
    try:
        service.serve_forever()
    finally:
        service.server_close()
        logger.info("serve: stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.command == "serve":
            args.host = listen_host_option(args.host)
            if not 0 <= args.port <= 65535:
                raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
            _serve(args)
        elif args.command == "add-site":
            # Checked before the token is issued, so another site's token file is never replaced.
            if args.token_out is not None and args.token_out.exists():
                raise ConfigError(
                    f"--token-out {args.token_out} already exists; give each site its own token file"
                )
            token = add_site(args.tokens, args.site)
            if args.token_out is not None:
                write_private_file(args.token_out, (token + "\n").encode("utf-8"))
                print(f"add-site: wrote the token of {args.site} to {args.token_out}; give it to the site only")
            else:
                print(token)
        else:
            revoke_site(args.tokens, args.site)
            print(f"revoke-site: {args.site} can no longer pull")
    except (FedIDSError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
