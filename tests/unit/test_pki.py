"""The broker CA: what it signs, for how long, what it refuses, and what OpenSSL makes of it."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker import pki

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.create_ca(NOW)


def csr_for(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    common_name: str = "ztb-agent",
) -> str:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def write_pair(directory: Path, name: str, cert: x509.Certificate, key: object) -> Path:
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    path = directory / f"{name}.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    return path


def memory_handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """A full TLS handshake through memory BIOs: OpenSSL's verdict without any socket."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_end = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    server_end = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end in (("client", client_end), ("server", server_end)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server judges the client certificate in its last flight; make
            # the client read once so a server-side rejection alert surfaces here too.
            server_end.write(b"x")
            c_in.write(s_out.read())
            assert client_end.read(1) == b"x"
            return
    raise AssertionError("handshake did not finish")


def test_ca_is_a_ten_year_self_signed_ca(ca: pki.CertificateAuthority) -> None:
    cert = ca.certificate
    assert cert.not_valid_after_utc - NOW == pki.CA_LIFETIME
    assert cert.not_valid_after_utc - NOW >= timedelta(days=3650)
    assert cert.not_valid_before_utc <= NOW
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)


def test_fingerprint_is_sha256_of_der(ca: pki.CertificateAuthority) -> None:
    der = ssl.PEM_cert_to_DER_cert(ca.certificate_pem)
    assert ca.fingerprint == hashlib.sha256(der).hexdigest()
    assert len(ca.fingerprint) == 64 and ca.fingerprint == ca.fingerprint.lower()
    assert pki.create_ca(NOW).fingerprint != ca.fingerprint


def test_agent_certificate_lifetime_usage_and_identity(ca: pki.CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.sign_agent_csr(ca, csr_for(key, "admin"), "home_1", "agt_1", NOW)
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    assert cert.not_valid_before_utc == NOW - pki.BACKDATE
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The CSR asked for CN=admin; the broker names the agent itself.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "agt_1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "home_1"
    identity = pki.agent_identity(cert)
    assert identity == ("home_1", "agt_1", format(cert.serial_number, "x"))
    short = pki.sign_agent_csr(ca, csr_for(key), "home_1", "agt_1", NOW, timedelta(hours=1))
    assert short.not_valid_after_utc == NOW + timedelta(hours=1)


def test_serials_are_random_and_distinct(ca: pki.CertificateAuthority) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    serials = {pki.sign_agent_csr(ca, csr, "h", "a", NOW).serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(serial.bit_length() > 64 for serial in serials)


def test_ed25519_csr_is_accepted(ca: pki.CertificateAuthority) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = pki.sign_agent_csr(ca, csr_for(key), "home_1", "agt_2", NOW)
    assert cert.public_key() == key.public_key()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "P-256 or Ed25519"),
        (ec.generate_private_key(ec.SECP384R1()), "P-256 or Ed25519"),
    ],
)
def test_wrong_key_types_are_refused(
    ca: pki.CertificateAuthority, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, message: str
) -> None:
    with pytest.raises(pki.PKIError, match=message):
        pki.sign_agent_csr(ca, csr_for(key), "home_1", "agt_1", NOW)


def test_csr_with_bad_signature_is_refused(ca: pki.CertificateAuthority) -> None:
    pem = csr_for(ec.generate_private_key(ec.SECP256R1()), "ztb-agent")
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"ztb-agent", b"ztb-agenX")
    assert tampered != der
    tampered_pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.PKIError, match="signature does not match"):
        pki.sign_agent_csr(ca, tampered_pem, "home_1", "agt_1", NOW)


@pytest.mark.parametrize("csr", ["", "hello", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"])
def test_garbage_csr_is_refused(ca: pki.CertificateAuthority, csr: str) -> None:
    with pytest.raises(pki.PKIError, match="not a PEM certificate signing request"):
        pki.sign_agent_csr(ca, csr, "home_1", "agt_1", NOW)


@pytest.mark.parametrize(
    ("home", "agent"), [("", "a"), ("h/x", "a"), ("h", "a b"), ("h", "x" * 65)]
)
def test_bad_ids_are_refused(ca: pki.CertificateAuthority, home: str, agent: str) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(pki.PKIError, match="must be 1-64"):
        pki.sign_agent_csr(ca, csr, home, agent, NOW)


def test_lifetime_bounds(ca: pki.CertificateAuthority) -> None:
    csr = csr_for(ec.generate_private_key(ec.SECP256R1()))
    for lifetime in (timedelta(0), timedelta(days=31)):
        with pytest.raises(pki.PKIError, match="lifetime"):
            pki.sign_agent_csr(ca, csr, "h", "a", NOW, lifetime)
    with pytest.raises(pki.PKIError, match="timezone"):
        pki.sign_agent_csr(ca, csr, "h", "a", NOW.replace(tzinfo=None))


def test_server_certificate_names(ca: pki.CertificateAuthority) -> None:
    key = pki.new_private_key()
    cert = pki.issue_server_certificate(
        ca, key.public_key(), ["broker.example", "198.51.100.2", "2001:db8::2"], NOW
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("198.51.100.2"),
        ipaddress.ip_address("2001:db8::2"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    with pytest.raises(pki.PKIError, match="agent certificate"):
        pki.agent_identity(cert)  # a server certificate is no agent identity
    for bad in ([], ["bad name!"], ["-x.example"]):
        with pytest.raises(pki.PKIError):
            pki.issue_server_certificate(ca, key.public_key(), bad, NOW)


def test_data_dir_bootstrap(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ca = pki.load_or_create_ca(data_dir, NOW)
    assert (data_dir / "ca.pem").read_text() == ca.certificate_pem
    assert (data_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    again = pki.load_or_create_ca(data_dir, NOW + timedelta(days=1))
    assert again.fingerprint == ca.fingerprint  # loaded, not replaced
    assert sorted(p.name for p in data_dir.iterdir()) == ["ca.key", "ca.pem"]  # no temp files

    cert_path, key_path = pki.ensure_server_certificate(data_dir, ca, ["198.51.100.2"], NOW)
    assert key_path.stat().st_mode & 0o777 == 0o600
    first = cert_path.read_bytes()
    pki.ensure_server_certificate(data_dir, ca, ["198.51.100.2"], NOW + timedelta(days=30))
    assert cert_path.read_bytes() == first  # still fresh, same names: kept
    pki.ensure_server_certificate(data_dir, ca, ["198.51.100.2", "localhost"], NOW)
    assert cert_path.read_bytes() != first  # names changed: reissued
    second = cert_path.read_bytes()
    pki.ensure_server_certificate(
        data_dir, ca, ["198.51.100.2", "localhost"], NOW + timedelta(days=300)
    )
    assert cert_path.read_bytes() != second  # under a third of its lifetime left: reissued
    third = cert_path.read_bytes()
    pki.ensure_server_certificate(data_dir, pki.create_ca(NOW), ["198.51.100.2", "localhost"], NOW)
    assert cert_path.read_bytes() != third  # another CA (same name): reissued


def test_unsafe_or_partial_ca_files_are_refused(tmp_path: Path) -> None:
    pki.load_or_create_ca(tmp_path, NOW)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(pki.PKIError, match="chmod 600"):
        pki.load_ca(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(pki.PKIError, match="no complete CA"):
        pki.load_or_create_ca(tmp_path, NOW)


def test_openssl_accepts_current_and_refuses_expired_certificates(tmp_path: Path) -> None:
    real_now = datetime.now(UTC)
    ca = pki.create_ca(real_now - timedelta(days=500))
    server_key = pki.new_private_key()
    server_cert = pki.issue_server_certificate(ca, server_key.public_key(), ["localhost"], real_now)
    expired_server = pki.issue_server_certificate(
        ca, server_key.public_key(), ["localhost"], real_now - timedelta(days=400)
    )
    agent_key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_for(agent_key)
    agent_cert = pki.sign_agent_csr(ca, csr, "home_1", "agt_1", real_now)
    expired_agent = pki.sign_agent_csr(ca, csr, "home_1", "agt_1", real_now - timedelta(days=2))

    def server_context(cert: x509.Certificate) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(write_pair(tmp_path, "server", cert, server_key))
        context.load_verify_locations(cadata=ca.certificate_pem)
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(cert: x509.Certificate | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=ca.certificate_pem)
        if cert is not None:
            context.load_cert_chain(write_pair(tmp_path, "agent", cert, agent_key))
        return context

    memory_handshake(server_context(server_cert), client_context(agent_cert), "localhost")
    memory_handshake(server_context(server_cert), client_context(None), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        memory_handshake(server_context(expired_server), client_context(None), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        memory_handshake(server_context(server_cert), client_context(expired_agent), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        memory_handshake(server_context(server_cert), client_context(None), "other.example")
