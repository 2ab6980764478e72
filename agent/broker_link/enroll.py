"""Enroll the agent with the broker and keep its client certificate renewed.

The only agent module that imports ``cryptography`` (about 12 MB of RSS): ``ztb agent
enroll`` runs it once, and the run loop should call ``renew_if_due`` in a short-lived
child process, asking ``renewal_due`` (standard library only) when to do so.

Trust on first contact follows ``kubeadm join``: the enrollment token carries the SHA-256
of the broker CA; the agent fetches the CA without verification, accepts it only if it
matches, and from then on talks to the broker with that CA as its only trust anchor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.broker_link.cert_client import (
    BrokerLinkError,
    CertificateClient,
    fetch_pinned_ca,
    pinned_ssl_context,
)
from agent.state_dir import AgentConfig, CertificateValidity, StateDir, StateError
from netpolicy import PolicyError
from netpolicy.enroll_format import parse_enroll_token
from ztb.wgkeys import key_pair

log = logging.getLogger(__name__)

_SPIFFE_PREFIX = "spiffe://ztb/home/"
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(minutes=15)


class EnrollmentError(ValueError):
    """Enrollment or renewal cannot go on; the message is user-facing."""


@dataclass(frozen=True, slots=True)
class RenewalResult:
    renewed: bool
    next_attempt: datetime
    failures: int
    error: str | None = None


def enroll(
    broker_url: str,
    token: str,
    state_dir: Path | str,
    interface: str,
    listen_port: int,
    endpoint: str,
    transport: httpx.BaseTransport | None = None,
) -> AgentConfig:
    """Pin the broker CA, get a client certificate, and write the state directory.

    Nothing is written unless the broker issued a certificate that checks out. The token
    is one-time: if the answer is lost in transit, ask the admin for a new token.
    """
    try:
        fingerprint = parse_enroll_token(token).ca_fingerprint
    except PolicyError as exc:
        raise EnrollmentError(str(exc)) from None
    # Validate the local settings before spending the one-time token.
    AgentConfig(broker_url, "pending", "pending", interface, listen_port, endpoint)
    state = StateDir(state_dir)
    if state.is_enrolled():
        raise StateError(f"{state.path} already holds an enrolled agent; pick another dir")

    ca_pem = fetch_pinned_ca(broker_url, fingerprint, transport)
    wg_private_key, wg_public_key = key_pair()
    key, csr_pem = new_tls_key_and_csr("ztb-agent")
    with CertificateClient(broker_url, pinned_ssl_context(ca_pem), transport) as client:
        answer = client.enroll(
            {
                "token": token.strip(),
                "csr_pem": csr_pem,
                "wg_public_key": wg_public_key,
                "interface": interface,
                "listen_port": listen_port,
                "endpoint": endpoint,
            }
        )
    certificate_pem, home_id = answer.get("certificate_pem"), answer.get("home_id")
    if not isinstance(certificate_pem, str) or not isinstance(home_id, str):
        raise BrokerLinkError("broker's enroll answer lacks certificate_pem or home_id")
    if not _same_certificate(answer.get("ca_pem"), ca_pem):
        raise EnrollmentError("broker returned a CA other than the pinned one; not enrolling")
    agent_id, validity = _check_certificate(certificate_pem, key, ca_pem, home_id)
    config = AgentConfig(broker_url, home_id, agent_id, interface, listen_port, endpoint)

    state.create()
    state.write_ca_pem(ca_pem)
    state.write_wg_private_key(wg_private_key)
    state.write_client_identity(certificate_pem, _private_pem(key), validity)
    state.write_config(config)  # last: its presence means "enrolled"
    log.info(
        "enrolled agent %s of home %s; certificate valid until %s",
        agent_id,
        home_id,
        validity.not_after.isoformat(),
    )
    return config


def renewal_due(state_dir: Path | str, now: datetime) -> bool:
    """Light check for the run loop: has two thirds of the certificate's lifetime passed?"""
    return now >= StateDir(state_dir).read_validity().renew_at


def renew_if_due(
    state_dir: Path | str,
    now: datetime,
    failures: int = 0,
    transport: httpx.BaseTransport | None = None,
) -> RenewalResult:
    """Renew the client certificate (new key + CSR, over mTLS) once renewal is due.

    Pass back the returned ``failures`` on the next call and call again at
    ``next_attempt``. Failures are logged louder the closer expiry is.
    """
    state = StateDir(state_dir)
    validity = state.read_validity()
    if now < validity.renew_at:
        return RenewalResult(renewed=False, next_attempt=validity.renew_at, failures=0)
    try:
        renewed = renew(state, transport)
    except (BrokerLinkError, EnrollmentError, StateError, OSError) as exc:
        failures += 1
        next_attempt = next_renewal_attempt(validity, now, failures)
        hint = " — enroll again with a new token" if now >= validity.not_after else ""
        log.log(
            max(logging.WARNING, renewal_log_level(validity, now)),
            "certificate renewal failed (%d in a row): %s; certificate expires %s, next try %s%s",
            failures,
            exc,
            validity.not_after.isoformat(),
            next_attempt.isoformat(),
            hint,
        )
        return RenewalResult(False, next_attempt, failures, str(exc))
    log.info("renewed certificate, valid until %s", renewed.not_after.isoformat())
    return RenewalResult(renewed=True, next_attempt=renewed.renew_at, failures=0)


def renew(state: StateDir, transport: httpx.BaseTransport | None = None) -> CertificateValidity:
    """Unconditionally renew: new key, CSR over mTLS, checked, then one atomic swap."""
    config = state.read_config()
    key, csr_pem = new_tls_key_and_csr(config.agent_id)
    with CertificateClient.from_state_dir(state, transport) as client:
        certificate_pem = client.renew(csr_pem)
    agent_id, validity = _check_certificate(
        certificate_pem, key, state.read_ca_pem(), config.home_id
    )
    if agent_id != config.agent_id:
        raise EnrollmentError(f"renewed certificate names agent {agent_id}, not {config.agent_id}")
    state.write_client_identity(certificate_pem, _private_pem(key), validity)
    return validity


def next_renewal_attempt(validity: CertificateValidity, now: datetime, failures: int) -> datetime:
    """When to try renewing: at two thirds of the lifetime, then back off 30 s doubling to 15 min.

    Pure. The cap keeps retries frequent enough that a broker back within the last third of
    the lifetime (8 h for 24 h certificates) always gets a renewal in before expiry.
    """
    if failures <= 0:
        return max(validity.renew_at, now)
    return now + min(RETRY_CAP, RETRY_BASE * 2.0 ** min(failures - 1, 16))


def renewal_log_level(validity: CertificateValidity, now: datetime) -> int:
    """How loud to be about a certificate that is not renewed yet: louder towards expiry."""
    if now >= validity.not_after:
        return logging.CRITICAL
    if validity.not_after - now <= (validity.not_after - validity.not_before) / 6:
        return logging.ERROR
    if now >= validity.renew_at:
        return logging.WARNING
    return logging.DEBUG


def new_tls_key_and_csr(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key and a CSR for it; the broker ignores the name and sets its own."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _check_certificate(
    certificate_pem: str, key: ec.EllipticCurvePrivateKey, ca_pem: str, home_id: str
) -> tuple[str, CertificateValidity]:
    """The issued certificate is for our key, signed by the pinned CA, for this home."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise EnrollmentError(f"broker sent an unusable certificate: {exc}") from None
    except InvalidSignature:
        raise EnrollmentError("broker sent a certificate not signed by the pinned CA") from None
    if cert.public_key() != key.public_key():
        raise EnrollmentError("broker sent a certificate for another key")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (x509.ExtensionNotFound, ValueError):
        raise EnrollmentError("broker sent a certificate without one agent identity") from None
    cert_home, _, agent_id = uri.removeprefix(_SPIFFE_PREFIX).partition("/agent/")
    if not uri.startswith(_SPIFFE_PREFIX) or cert_home != home_id or not agent_id:
        raise EnrollmentError(f"broker sent a certificate for {uri!r}, not home {home_id}")
    validity = CertificateValidity(
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )
    return agent_id, validity


def _private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _same_certificate(pem: object, expected_pem: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(str(pem).encode("ascii", "replace"))
    except ValueError:
        return False
    return cert == x509.load_pem_x509_certificate(expected_pem.encode("ascii"))
