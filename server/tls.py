"""Create the coordinator's certificate authority and the SuperLink's TLS certificate.

Example::

    python -m server.tls --out secrets --host coordinator.hospital-net.example

writes ``ca.pem``, ``ca.key``, ``superlink.pem`` and ``superlink.key`` into
``secrets/`` (which git ignores), plus ``superexec.secret``, the shared
secret with which a separate ServerApp container authenticates to the
SuperLink (docker/compose.yml). Hospitals get ``ca.pem`` only; ``ca.key``
stays on the coordinator, offline if possible. An existing CA is reused, so
renewing the SuperLink certificate does not change what hospitals trust.

The certificate always names ``localhost`` and ``127.0.0.1``, because
Flower's own SuperExec reaches the SuperLink over loopback with the same
certificate.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from common.credentials import (
    SERVER_VALID_DAYS,
    TLSFiles,
    certificate_names,
    create_tls_files,
    dns_name_problem,
    load_certificate,
    write_private_file,
)
from common.exceptions import CredentialError, FedIDSError

logger = logging.getLogger(__name__)

#: Names every SuperLink certificate carries, for the loopback connections of Flower's own processes.
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1",)

#: File stem of the SuperLink's certificate and key.
SUPERLINK_FILE_STEM = "superlink"

#: File of the SuperExec shared secret, beside the certificates.
SUPEREXEC_SECRET_FILE = "superexec.secret"


def create_superexec_secret(out_dir: Path) -> Path:
    """Write a random 256-bit SuperExec secret as hex (mode 0600), unless the file exists."""
    path = Path(out_dir) / SUPEREXEC_SECRET_FILE
    if not path.exists():
        write_private_file(path, secrets.token_hex(32).encode("ascii"))
    return path


def create_superlink_tls(
    out_dir: Path,
    hostnames: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    *,
    valid_days: int = SERVER_VALID_DAYS,
    overwrite: bool = False,
) -> TLSFiles:
    """Create (or reuse) the CA and a SuperLink certificate for the given names plus loopback.

    Parameters
    ----------
    out_dir : Path
        Folder for ``ca.pem``, ``ca.key``, ``superlink.pem`` and ``superlink.key``.
    hostnames, ip_addresses : sequence of str
        DNS names and IP addresses that hospitals use to reach the SuperLink.
    valid_days : int
        Validity of the SuperLink certificate.
    overwrite : bool
        Replace an existing SuperLink certificate and key.

    Raises
    ------
    CredentialError
        If the SuperLink files exist and ``overwrite`` is false, or an IP
        address is invalid.
    """
    names = list(dict.fromkeys([*hostnames, *LOOPBACK_NAMES]))
    addresses = list(dict.fromkeys([*ip_addresses, *LOOPBACK_ADDRESSES]))
    files = create_tls_files(
        Path(out_dir),
        SUPERLINK_FILE_STEM,
        ca_name="iomt-fedids coordinator CA",
        hostnames=names,
        ip_addresses=addresses,
        valid_days=valid_days,
        overwrite=overwrite,
    )
    logger.info("tls: wrote %s signed by %s for %s", files.certificate, files.ca_certificate, names + addresses)
    return files


def _check_host_option(host: str) -> None:
    if _is_ip_address(host):
        raise CredentialError(f"--host {host!r} is an IP address; pass it with --ip")
    problem = dns_name_problem(host)
    if problem is not None:
        raise CredentialError(f"invalid --host {host!r}: {problem}")


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.tls", description="Create the coordinator CA and the SuperLink TLS certificate."
    )
    parser.add_argument("--out", type=Path, default=Path("secrets"), help="output folder (default: secrets)")
    parser.add_argument(
        "--host", action="append", default=[], help="DNS name hospitals use for the SuperLink (repeatable)"
    )
    parser.add_argument(
        "--ip", action="append", default=[], help="IP address hospitals use for the SuperLink (repeatable)"
    )
    parser.add_argument(
        "--days",
        type=int,
        default=SERVER_VALID_DAYS,
        help=f"certificate validity in days (default: {SERVER_VALID_DAYS})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing SuperLink certificate and key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        for host in args.host:
            _check_host_option(host)
        files = create_superlink_tls(args.out, args.host, args.ip, valid_days=args.days, overwrite=args.overwrite)
        names = certificate_names(load_certificate(files.certificate))
        secret = create_superexec_secret(args.out)
    except FedIDSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"CA certificate (give to every hospital): {files.ca_certificate}")
    print(f"CA key (keep on the coordinator):        {files.ca_key}")
    print(f"SuperLink certificate: {files.certificate} for {', '.join(names)}")
    print(f"SuperLink key:         {files.key}")
    print(f"SuperExec secret (coordinator containers only): {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
