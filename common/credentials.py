"""TLS certificates and SuperNode authentication keys for a deployed federation.

Both roles create credentials with the ``cryptography`` package:

- the coordinator creates a certificate authority (CA) and the SuperLink's
  server certificate, which every hospital verifies with the CA certificate;
- each hospital creates its own authentication key pair, whose public half
  the coordinator registers with the SuperLink, and a small private CA with a
  certificate for the loopback Runtime API between its SuperNode and the
  ClientApp processes.

All keys are elliptic-curve keys on NIST P-384, the curve family that
Flower 1.42 accepts for SuperNode authentication. Private keys are written
unencrypted with file mode 0600, because Flower's command-line tools read
them without a passphrase.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.exceptions import CredentialError

#: Default validity of a CA certificate, in days.
CA_VALID_DAYS = 3650

#: Default validity of a server certificate, in days.
SERVER_VALID_DAYS = 825

_CURVE = ec.SECP384R1()
# Clock differences between machines would otherwise make a fresh
# certificate "not yet valid" on a hospital whose clock runs behind.
_BACKDATE = datetime.timedelta(minutes=5)

#: Longest DNS host name and label, in characters. RFC 1035 allows 255 octets on the wire, 253 characters as text.
MAX_DNS_NAME_CHARS = 253
MAX_DNS_LABEL_CHARS = 63

_DNS_LABEL_CHARACTER = re.compile(r"[A-Za-z0-9-]")


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a CA certificate and of one server certificate it signed, with their keys."""

    ca_certificate: Path
    ca_key: Path
    certificate: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_certificate_authority(
    common_name: str, valid_days: int = CA_VALID_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a self-signed CA key and certificate that may sign server certificates only.

    Parameters
    ----------
    common_name : str
        Subject common name, for example ``"iomt-fedids coordinator CA"``.
    valid_days : int
        Days until the certificate expires.
    """
    key = ec.generate_private_key(_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now() - _BACKDATE
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
        # path_length=0: the CA signs leaf certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, certificate


def dns_name_problem(name: str) -> str | None:
    """Return why ``name`` is not a valid DNS host name, or ``None`` when it is one.

    A host name is made of dot-separated labels of 1 to 63 ASCII letters,
    digits and hyphens, none starting or ending with a hyphen, and has at
    most 253 characters (RFC 1035 and RFC 1123). Internationalized names
    must be given in their ``xn--`` form; wildcards are not accepted.
    """
    if not name:
        return "it is empty"
    if len(name) > MAX_DNS_NAME_CHARS:
        return f"it has {len(name)} characters; a host name has at most {MAX_DNS_NAME_CHARS}"
    for character in name:
        if character != "." and not _DNS_LABEL_CHARACTER.fullmatch(character):
            return f"it contains {character!r}; a host name contains only letters, digits, hyphens and dots"
    for label in name.split("."):
        if not label:
            return "it has an empty label: it starts or ends with a dot, or has two dots in a row"
        if len(label) > MAX_DNS_LABEL_CHARS:
            return f"it has a label of {len(label)} characters; a label has at most {MAX_DNS_LABEL_CHARS}"
        if label.startswith("-") or label.endswith("-"):
            return f"its label {label!r} starts or ends with a hyphen"
    return None


def _subject_alternative_names(hostnames: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        problem = dns_name_problem(host)
        if problem is not None:
            raise CredentialError(f"certificate: {host!r} is not a valid DNS host name: {problem}")
        names.append(x509.DNSName(host))
    for text in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError as error:
            raise CredentialError(f"certificate: {text!r} is not an IP address: {error}") from error
    if not names:
        raise CredentialError(
            "certificate: give at least one host name or IP address that clients use to reach the server"
        )
    return names


def create_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    common_name: str,
    hostnames: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    valid_days: int = SERVER_VALID_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Create a server key and a certificate for it signed by the CA.

    Clients check the address they dial against the subject alternative
    names, so ``hostnames`` and ``ip_addresses`` must list every name and
    address used to reach the server (``127.0.0.1`` included when local
    processes connect over loopback).

    Raises
    ------
    CredentialError
        If neither a host name nor an IP address is given, or an IP address is invalid.
    """
    alternative_names = _subject_alternative_names(hostnames, ip_addresses)
    key = ec.generate_private_key(_CURVE)
    start = _now() - _BACKDATE
    ca_key_identifier = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_identifier), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, certificate


def _check_writable(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise CredentialError(
            f"{path} already exists; remove it first, or replace it with --overwrite (overwrite=True from Python)"
        )


def write_private_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` readable only by its owner (mode 0600), replacing the file atomically.

    The temporary file gets its mode at creation, so the data is never
    readable by others, not even briefly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_private_key(
    path: Path, key: ec.EllipticCurvePrivateKey, *, openssh: bool = False, overwrite: bool = False
) -> Path:
    """Write an unencrypted private key readable only by its owner (mode 0600).

    ``openssh=True`` writes the OpenSSH format that ``flower-supernode
    --auth-supernode-private-key`` reads; otherwise PKCS#8 PEM for TLS servers.
    """
    _check_writable(path, overwrite)
    key_format = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    data = key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption())
    return write_private_file(path, data)


def write_certificate(path: Path, certificate: x509.Certificate, *, overwrite: bool = False) -> Path:
    """Write a certificate in PEM format."""
    _check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate.

    Raises
    ------
    CredentialError
        If the file is missing or contains no PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError as error:
        raise CredentialError(f"certificate file not found: {path}") from error
    except ValueError as error:
        raise CredentialError(f"{path} is not a PEM certificate: {error}") from error


def load_pem_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted elliptic-curve private key in PEM format.

    Raises
    ------
    CredentialError
        If the file is missing, encrypted, or not an elliptic-curve key.
    """
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as error:
        raise CredentialError(f"private key file not found: {path}") from error
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise CredentialError(f"{path} is not an unencrypted PEM private key: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialError(f"{path} contains a {type(key).__name__}; expected an elliptic-curve key")
    return key


def create_tls_files(
    out_dir: Path,
    name: str,
    *,
    ca_name: str,
    hostnames: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    valid_days: int = SERVER_VALID_DAYS,
    overwrite: bool = False,
) -> TLSFiles:
    """Create ``ca.pem``/``ca.key`` (unless both exist) and ``<name>.pem``/``<name>.key`` signed by that CA.

    An existing CA is reused, so a server certificate can be renewed
    without sending a new CA certificate to every client.

    Raises
    ------
    CredentialError
        If the server files exist and ``overwrite`` is false, only one of
        the two CA files exists, or the SAN list is empty or invalid.
    """
    out_dir = Path(out_dir)
    files = TLSFiles(out_dir / "ca.pem", out_dir / "ca.key", out_dir / f"{name}.pem", out_dir / f"{name}.key")
    # Checked before anything is written, so invalid names leave no new CA behind.
    _subject_alternative_names(hostnames, ip_addresses)
    _check_writable(files.certificate, overwrite)
    _check_writable(files.key, overwrite)
    if files.ca_certificate.exists() and files.ca_key.exists():
        ca_certificate = load_certificate(files.ca_certificate)
        ca_key = load_pem_private_key(files.ca_key)
    elif files.ca_certificate.exists() or files.ca_key.exists():
        raise CredentialError(
            f"{out_dir} has only one of ca.pem and ca.key; restore the other or remove both to create a new CA"
        )
    else:
        ca_key, ca_certificate = create_certificate_authority(ca_name)
        write_private_key(files.ca_key, ca_key)
        write_certificate(files.ca_certificate, ca_certificate)
    key, certificate = create_server_certificate(
        ca_key, ca_certificate, name, hostnames, ip_addresses, valid_days=valid_days
    )
    write_private_key(files.key, key, overwrite=overwrite)
    write_certificate(files.certificate, certificate, overwrite=overwrite)
    return files


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """Return the DNS names and IP addresses in a certificate's subject alternative names."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(extension.get_values_for_type(x509.DNSName))
    names += [str(address) for address in extension.get_values_for_type(x509.IPAddress)]
    return names


# ---------------------------------------------------------------------------
# SuperNode authentication keys (OpenSSH format)
# ---------------------------------------------------------------------------


def create_auth_key_pair(private_path: Path, public_path: Path, comment: str, *, overwrite: bool = False) -> str:
    """Create a SuperNode authentication key pair and return the public key's fingerprint.

    The private key is written in OpenSSH format with mode 0600, the public
    key as one OpenSSH line ``ecdsa-sha2-nistp384 <base64> <comment>``.
    """
    _check_writable(public_path, overwrite)
    key = ec.generate_private_key(_CURVE)
    write_private_key(private_path, key, openssh=True, overwrite=overwrite)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_text(f"{line.decode('ascii')} {comment}\n", encoding="ascii")
    return public_key_fingerprint(public_path)


def load_auth_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Read an OpenSSH public key that Flower accepts for SuperNode authentication.

    Raises
    ------
    CredentialError
        If the file is missing, is not an OpenSSH public key, or is not an
        elliptic-curve key on a NIST curve.
    """
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except FileNotFoundError as error:
        raise CredentialError(f"public key file not found: {path}") from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise CredentialError(f"{path} is not an OpenSSH public key: {error}") from error
    if not isinstance(key, ec.EllipticCurvePublicKey) or not key.curve.name.startswith("secp"):
        raise CredentialError(
            f"{path} contains a {type(key).__name__}; SuperNode authentication needs an elliptic-curve key "
            "on a NIST curve, as created by python -m client.keys"
        )
    return key


def load_auth_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted OpenSSH elliptic-curve private key, as ``flower-supernode`` does.

    Raises
    ------
    CredentialError
        If the file is missing, encrypted or not an elliptic-curve key.
    """
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError as error:
        raise CredentialError(f"private key file not found: {path}") from error
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise CredentialError(f"{path} is not an unencrypted OpenSSH private key: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialError(f"{path} contains a {type(key).__name__}; expected an elliptic-curve key")
    return key


def public_key_fingerprint(path: Path) -> str:
    """Return ``SHA256:<base64>`` of an OpenSSH public key, the form ``ssh-keygen -l`` prints.

    Both sides can read the fingerprint aloud to confirm that the key the
    coordinator registers is the one the hospital created.
    """
    key = load_auth_public_key(path)
    blob_text = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    digest = hashlib.sha256(base64.b64decode(blob_text)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")
