"""Serve the broker over HTTPS with optional client certificates, and show the app who called.

People use bearer tokens over plain server-authenticated TLS; agents present a client
certificate from the broker CA on the same port, so client certificates are *optional*
(``CERT_OPTIONAL``): OpenSSL still aborts the handshake when a certificate is presented
that does not chain to the CA or is outside its validity window, so a certificate that
reaches the app has been verified.

uvicorn (0.54) does not pass the peer certificate to the app, so ``PeerCertificateProtocol``
reads it from the connection's SSL object once per connection and adds the ASGI TLS
extension (``scope["extensions"]["tls"]``, spec v0.2: ``client_cert_chain`` is a list of
PEM strings, leaf first) to every request on that connection. Revocation is not a TLS
matter here: the caller checks the certificate serial against its database on every
request, so revoking an agent cuts it off at once, even on a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.http_limits import LimitedHttpProtocol
from broker.pki import (
    CA_CERT_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    AgentIdentity,
    PKIError,
    agent_identity,
)

__all__ = [
    "PeerCertificateProtocol",
    "agent_identity",
    "https_config",
    "peer_agent",
    "peer_certificate",
    "server_ssl_context",
    "small_tls_read_buffers",
]

# IANA TLS version numbers, as the ASGI TLS extension wants them.
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def server_ssl_context(
    data_dir: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """TLS ≥ 1.2 with the broker's server cert; client certs optional, from the broker CA.

    ``cert_file``/``key_file`` replace ``DATA_DIR/server.pem`` (e.g. a public CA's
    certificate); agents then need that chain's root, client certs still chain to the CA.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(
        cert_file or data_dir / SERVER_CERT_FILE, key_file or data_dir / SERVER_KEY_FILE
    )
    context.load_verify_locations(cafile=data_dir / CA_CERT_FILE)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


# asyncio gives every TLS connection a 256 KiB read buffer, filled at once: 1,000 idle
# agent long-polls then cost 250 MB. Our bodies are under 64 KiB (a TLS record is 16 KiB),
# so 32 KiB loses nothing; measured with 1,000 mTLS long-polls: 453 -> 232 MB broker RSS.
TLS_READ_BUFFER = 32 * 1024


def small_tls_read_buffers() -> None:
    import asyncio.sslproto

    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def https_config(
    app: ASGIApp,
    data_dir: Path,
    host: str,
    port: int,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    **options: Any,
) -> uvicorn.Config:
    """A uvicorn config serving ``app`` over HTTPS from ``DATA_DIR``'s server cert and CA."""
    context = server_ssl_context(data_dir, cert_file, key_file)
    small_tls_read_buffers()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=PeerCertificateProtocol,
        ssl_context_factory=lambda _config, _default: context,
        **options,
    )


class PeerCertificateProtocol(LimitedHttpProtocol):
    """uvicorn's httptools protocol (head limits, read deadline: ``broker.http_limits``)
    plus the ASGI TLS extension carrying the client certificate."""

    app: ASGIApp

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.app = _with_tls_extension(self.app, _tls_extension(ssl_object))


def _tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    der = ssl_object.getpeercert(binary_form=True)
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,
    }


def _with_tls_extension(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    async def app_with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("extensions", {}).setdefault("tls", tls)
        await app(scope, receive, send)

    return app_with_tls


def peer_certificate(request: HTTPConnection) -> x509.Certificate | None:
    """The verified client certificate of this request, or None (no cert, or not TLS).

    Works as a FastAPI dependency: ``cert = Depends(peer_certificate)``.
    """
    tls = request.scope.get("extensions", {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode("ascii"))


def peer_agent(request: HTTPConnection, now: datetime) -> AgentIdentity | None:
    """The agent calling, if it shows a current agent certificate; None means answer 401.

    The handshake checked the validity window when the TLS session was made; this checks
    it again because a kept-alive connection or a resumed session (OpenSSL does not verify
    the peer again on resumption) may outlive the certificate. The caller must
    still look up ``serial`` in its agents table (not revoked, belongs to ``home_id``).
    """
    cert = peer_certificate(request)
    if cert is None or not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return None
    try:
        return agent_identity(cert)
    except PKIError:
        return None
