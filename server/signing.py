"""The coordinator's Ed25519 key that signs every published model bundle.

``python -m server.signing init --out secrets/`` creates the key pair:

- ``bundle-signing.key``: the private key (PKCS #8 PEM, file mode 0600).
  It stays on the coordinator;
- ``bundle-signing.pub``: the public key (SubjectPublicKeyInfo PEM), which
  every site receives once, out of band, and passes to ``client.pull`` and
  ``client.detect``.

``python -m server.signing fingerprint --key FILE`` prints the SHA-256
fingerprint of a public or private key, so an operator can compare the key a
site has with the coordinator's over the phone.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bundle import MANIFEST_FILE, SIGNATURE_FILE, key_fingerprint, load_public_key
from common.credentials import write_private_file
from common.exceptions import BundleVerificationError, ConfigError, FedIDSError

logger = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "bundle-signing.key"
PUBLIC_KEY_FILE = "bundle-signing.pub"


def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Create a new Ed25519 key pair in ``out_dir``.

    The private key file is created with mode 0600 from the start (never
    written first and restricted later), and neither file may exist yet.

    Returns
    -------
    private_path, public_path : Path

    Raises
    ------
    ConfigError
        If either file exists already; an existing key is never overwritten,
        because sites trust its public half.
    """
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give a folder for {PRIVATE_KEY_FILE} and {PUBLIC_KEY_FILE}")
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    existing = [str(path) for path in (private_path, public_path) if path.exists()]
    if existing:
        raise ConfigError(
            f"signing key file(s) {existing} already exist; sites trust that key, so move them away "
            "first if you really mean to replace it"
        )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private_file(private_path, private_pem)
    public_path.write_bytes(public_pem)
    logger.info("signing: wrote %s (mode 0600) and %s", private_path, public_path)
    return private_path, public_path


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read the coordinator's private signing key.

    A key file that the group or other users can read is still loaded, with
    a WARNING, because refusing would stop a running federation from publishing.

    Raises
    ------
    ConfigError
        If the file is missing or does not hold an unencrypted Ed25519 private key.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
        mode = source.stat().st_mode
    except OSError as error:
        raise ConfigError(
            f"cannot read the signing key {source}: {error}; create one with "
            "'python -m server.signing init --out secrets/'"
        ) from error
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{source} is not an unencrypted PEM private key: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{source} contains a {type(key).__name__}, not an Ed25519 private key")
    # Checked after parsing, so a public key given by mistake gets no advice to restrict it.
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "signing: %s is readable by other users (mode %o); restrict it with chmod 600",
            source,
            stat.S_IMODE(mode),
        )
    return key


def signer_fingerprint(key: Ed25519PrivateKey) -> str:
    """Return the fingerprint of the key's public half, as sites see it."""
    return key_fingerprint(key.public_key())


def sign_manifest(folder: str | os.PathLike[str], key: Ed25519PrivateKey) -> Path:
    """Sign the exact bytes of ``folder/manifest.json`` and write ``manifest.sig`` (base64).

    Raises
    ------
    BundleVerificationError
        If the folder has no manifest.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleVerificationError(f"{folder}: no {MANIFEST_FILE} to sign; write the manifest first")
    signature = key.sign(manifest_path.read_bytes())
    path = folder / SIGNATURE_FILE
    path.write_bytes(base64.b64encode(signature) + b"\n")
    return path


def _fingerprint_of(path: Path) -> str:
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return signer_fingerprint(load_private_key(path))
    try:
        return key_fingerprint(load_public_key(data))
    except FedIDSError as error:
        raise ConfigError(f"{path}: {error}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.signing", description="Manage the coordinator's bundle-signing key."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create a new Ed25519 key pair")
    init.add_argument("--out", type=Path, required=True, help="folder for bundle-signing.key and bundle-signing.pub")
    fingerprint = commands.add_parser("fingerprint", help="print the SHA-256 fingerprint of a key file")
    fingerprint.add_argument("--key", type=Path, required=True, help="public or private key PEM file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "init":
            private_path, public_path = generate_keypair(args.out)
            fingerprint = signer_fingerprint(load_private_key(private_path))
            print(f"signing: private key {private_path} (keep it on the coordinator, mode 0600)")
            print(f"signing: public key {public_path} (give it to every site)")
            print(f"signing: fingerprint {fingerprint}")
        else:
            print(_fingerprint_of(args.key))
    except (FedIDSError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
