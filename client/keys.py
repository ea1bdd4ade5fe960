"""Create a hospital's SuperNode credentials.

Example::

    python -m client.keys --out secrets/hospital-a --name hospital-a

writes into ``secrets/hospital-a/`` (which git ignores):

- ``site.key`` and ``site.pub``: the authentication key pair. Send only
  ``site.pub`` to the coordinator, who registers it; compare the printed
  fingerprint with the one the coordinator reads back;
- ``runtime-tls/``: a private CA (``ca.pem``, ``ca.key``) and a certificate
  (``runtime.pem``, ``runtime.key``) for ``127.0.0.1``, which encrypt the
  loopback link between the SuperNode and its ClientApp processes.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.credentials import TLSFiles, create_auth_key_pair, create_tls_files
from common.exceptions import ConfigError, FedIDSError

logger = logging.getLogger(__name__)

#: File names inside a site's credential folder.
PRIVATE_KEY_FILE = "site.key"
PUBLIC_KEY_FILE = "site.pub"
RUNTIME_TLS_DIR = "runtime-tls"

# Site names end up in file names, node configs and log lines.
SITE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class SiteCredentials:
    """Paths of one hospital's credentials."""

    private_key: Path
    public_key: Path
    fingerprint: str
    runtime_tls: TLSFiles


def check_site_name(name: str) -> str:
    """Return ``name`` if it is a valid site name.

    Raises
    ------
    ConfigError
        If it is empty, longer than 63 characters or contains characters
        other than letters, digits, ``.``, ``_`` and ``-``.
    """
    if not SITE_NAME_PATTERN.match(name):
        raise ConfigError(
            f"site name {name!r} is invalid; use up to 63 letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    return name


def runtime_tls_files(site_dir: Path) -> TLSFiles:
    """Return the paths of a site's loopback Runtime API TLS files."""
    folder = Path(site_dir) / RUNTIME_TLS_DIR
    return TLSFiles(folder / "ca.pem", folder / "ca.key", folder / "runtime.pem", folder / "runtime.key")


def create_site_credentials(out_dir: Path, name: str, *, overwrite: bool = False) -> SiteCredentials:
    """Create a site's authentication key pair and its loopback Runtime API certificate.

    Raises
    ------
    ConfigError
        If the site name is invalid.
    CredentialError
        If a file exists and ``overwrite`` is false.
    """
    check_site_name(name)
    out_dir = Path(out_dir)
    private_key = out_dir / PRIVATE_KEY_FILE
    public_key = out_dir / PUBLIC_KEY_FILE
    fingerprint = create_auth_key_pair(private_key, public_key, comment=name, overwrite=overwrite)
    runtime = create_tls_files(
        out_dir / RUNTIME_TLS_DIR,
        "runtime",
        ca_name=f"{name} SuperNode runtime CA",
        hostnames=["localhost"],
        ip_addresses=["127.0.0.1"],
        overwrite=overwrite,
    )
    logger.info("keys: created the key pair of %s in %s, fingerprint %s", name, out_dir, fingerprint)
    return SiteCredentials(private_key, public_key, fingerprint, runtime)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.keys", description="Create a hospital's SuperNode keys.")
    parser.add_argument("--out", type=Path, required=True, help="output folder, for example secrets/hospital-a")
    parser.add_argument("--name", required=True, help="site name, for example hospital-a")
    parser.add_argument("--overwrite", action="store_true", help="replace existing keys (re-register the new key)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        credentials = create_site_credentials(args.out, args.name, overwrite=args.overwrite)
    except FedIDSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"private key (stays here): {credentials.private_key}")
    print(f"public key (send to the coordinator): {credentials.public_key}")
    print(f"fingerprint: {credentials.fingerprint}")
    print(f"runtime TLS: {credentials.runtime_tls.certificate.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
