"""The broker's certificate authority: agent client certificates and the broker's TLS cert.

Everything here is pure (time comes in as ``now``) except the ``*_file`` helpers at the
bottom, which own the layout of ``DATA_DIR``. One small CA, ECDSA P-256 everywhere: it is
the key type every TLS stack on a router speaks.

An agent certificate names its home and agent twice: subject ``O=<home_id>, CN=<agent_id>``
for people reading it, and a URI SAN ``spiffe://ztb/home/<home_id>/agent/<agent_id>`` that
``agent_identity`` trusts. The broker ignores whatever name a CSR asks for; it only takes
the public key, after checking the CSR's signature proves possession of the private key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztb.files import write_atomic

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

CA_LIFETIME = timedelta(days=3652)
SERVER_CERT_LIFETIME = timedelta(days=397)
AGENT_CERT_LIFETIME = timedelta(hours=24)
MAX_AGENT_CERT_LIFETIME = timedelta(days=30)
# Issued certificates start a little in the past so an agent whose clock lags still accepts them.
BACKDATE = timedelta(minutes=5)

SPIFFE_PREFIX = "spiffe://ztb/home/"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DNS_RE = re.compile(
    r"^(?=.{1,253}$)(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class PKIError(ValueError):
    """A CSR, certificate or CA file that cannot be used; the message is user-facing."""


class AgentIdentity(NamedTuple):
    home_id: str
    agent_id: str
    serial: str  # lower-case hex, as stored in the agents table


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> str:
        return certificate_pem(self.certificate)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex: what enrollment tokens pin."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def create_ca(now: datetime, common_name: str = "ztb broker CA") -> CertificateAuthority:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = new_private_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztb"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now) - BACKDATE)
        .not_valid_after(_utc(now) + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=cert, key=key)


def issue_server_certificate(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey,
    names: Sequence[str],
    now: datetime,
    lifetime: timedelta = SERVER_CERT_LIFETIME,
) -> x509.Certificate:
    """The broker's HTTPS certificate; ``names`` are DNS names or IP addresses agents dial."""
    sans = subject_alt_names(names)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ztb"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
        ]
    )
    san = x509.SubjectAlternativeName(sans)
    return _end_entity(ca, public_key, subject, san, now, lifetime, ExtendedKeyUsageOID.SERVER_AUTH)


def sign_agent_csr(
    ca: CertificateAuthority,
    csr_pem: str | bytes,
    home_id: str,
    agent_id: str,
    now: datetime,
    lifetime: timedelta = AGENT_CERT_LIFETIME,
) -> x509.Certificate:
    """Turn an agent's CSR into a client certificate for (home_id, agent_id)."""
    for what, value in (("home id", home_id), ("agent id", agent_id)):
        if not _ID_RE.match(value):
            raise PKIError(f"{what} {value!r} must be 1-64 letters, digits, '_' or '-'")
    if not timedelta(0) < lifetime <= MAX_AGENT_CERT_LIFETIME:
        raise PKIError(
            f"agent certificate lifetime must be between 0 and {MAX_AGENT_CERT_LIFETIME}"
        )
    public_key = _csr_public_key(csr_pem)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, home_id),
            x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
        ]
    )
    uri = x509.UniformResourceIdentifier(f"{SPIFFE_PREFIX}{home_id}/agent/{agent_id}")
    san = x509.SubjectAlternativeName([uri])
    return _end_entity(ca, public_key, subject, san, now, lifetime, ExtendedKeyUsageOID.CLIENT_AUTH)


def agent_identity(cert: x509.Certificate) -> AgentIdentity:
    """Who an agent certificate speaks for; raises PKIError for anything else.

    The TLS layer has already checked the CA signature and validity window; the caller
    still checks the serial against its agents table (revocation) on every request.
    """
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise PKIError("certificate is not a ztb agent certificate") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku or len(uris) != 1:
        raise PKIError("certificate is not a ztb agent certificate")
    parts = uris[0].removeprefix(SPIFFE_PREFIX).split("/")
    if (
        not uris[0].startswith(SPIFFE_PREFIX)
        or len(parts) != 3
        or parts[1] != "agent"
        or not _ID_RE.match(parts[0])
        or not _ID_RE.match(parts[2])
    ):
        raise PKIError(f"certificate carries no valid ztb agent identity ({uris[0]!r})")
    return AgentIdentity(home_id=parts[0], agent_id=parts[2], serial=serial_hex(cert))


def subject_alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """Parse ``["broker.example", "198.51.100.2"]`` into DNS / IP SAN entries."""
    if not names:
        raise PKIError("the broker certificate needs at least one DNS name or IP address")
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not _DNS_RE.match(name):
                raise PKIError(f"{name!r} is neither an IP address nor a DNS name") from None
            result.append(x509.DNSName(name.lower()))
    return result


def _csr_public_key(csr_pem: str | bytes) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    data = csr_pem.encode("ascii", "replace") if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise PKIError("csr_pem is not a PEM certificate signing request") from None
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise PKIError("the CSR's public key cannot be read") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        pass
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise PKIError("the CSR's key must be ECDSA P-256 or Ed25519")
    if not csr.is_signature_valid:
        raise PKIError("the CSR's signature does not match its public key")
    return key


def _end_entity(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    subject: x509.Name,
    san: x509.SubjectAlternativeName,
    now: datetime,
    lifetime: timedelta,
    usage: x509.ObjectIdentifier,
) -> x509.Certificate:
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now) - BACKDATE)
        .not_valid_after(_utc(now) + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(san, critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """Signatures always; certificate and CRL signing only for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise PKIError("now must be timezone-aware")
    return now.astimezone(UTC)


# --- DATA_DIR files -------------------------------------------------------------------------


def load_or_create_ca(data_dir: Path, now: datetime) -> CertificateAuthority:
    """Bootstrap: create ``ca.pem`` + ``ca.key`` (0600) once; later calls load them."""
    cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
    if cert_path.exists() or key_path.exists():
        return load_ca(data_dir)
    ca = create_ca(now)
    write_atomic(key_path, _key_pem(ca.key), 0o600)
    write_atomic(cert_path, ca.certificate_pem.encode("ascii"), 0o644)
    return ca


def load_ca(data_dir: Path) -> CertificateAuthority:
    cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        raise PKIError(f"{data_dir} has no complete CA ({CA_CERT_FILE} and {CA_KEY_FILE})")
    if key_path.stat().st_mode & 0o077:
        raise PKIError(f"{key_path} must not be readable by group or others (chmod 600)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise PKIError(f"cannot read the CA in {data_dir}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PKIError(f"{key_path} does not belong to {cert_path}")
    return CertificateAuthority(certificate=cert, key=key)


def ensure_server_certificate(
    data_dir: Path, ca: CertificateAuthority, names: Sequence[str], now: datetime
) -> tuple[Path, Path]:
    """Write ``server.pem``/``server.key`` unless a current one for the same names exists.

    A certificate is reissued when the names change or less than a third of its lifetime
    remains, so ``broker serve`` can call this on every start.
    """
    cert_path, key_path = data_dir / SERVER_CERT_FILE, data_dir / SERVER_KEY_FILE
    wanted = subject_alt_names(names)
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            cert.verify_directly_issued_by(ca.certificate)
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            san = None  # unreadable or from another CA: reissue
        if san is not None:
            lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
            fresh = cert.not_valid_after_utc - _utc(now) > lifetime / 3
            if fresh and set(san) == set(wanted):
                return cert_path, key_path
    key = new_private_key()
    cert = issue_server_certificate(ca, key.public_key(), names, now)
    write_atomic(key_path, _key_pem(key), 0o600)
    write_atomic(cert_path, certificate_pem(cert).encode("ascii"), 0o644)
    return cert_path, key_path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
