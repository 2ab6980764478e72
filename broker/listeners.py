"""The broker's two listeners in one process: agents' mTLS and people's HTTPS.

Agents pin the ztb CA (its fingerprint rides in the enrollment token), so the listener
they dial must always present the CA-issued server certificate and verify their client
certificates against the CA. People's browsers and CLIs want a certificate they already
trust (a public CA's), or a reverse proxy in front that terminates TLS. So with
``--agent-listen`` the people's listener is separate and free: any certificate
(``--cert/--key``, no client-certificate request, so browsers show no certificate
picker), or plain HTTP on loopback for a proxy whose ``X-Forwarded-For``/``-Proto``
headers are believed only from ``--trusted-proxy`` addresses. Without ``--agent-listen``
one listener serves both, as before, and must then use the CA's certificate.

Both listeners serve the same app; only the first runs its lifespan (maintenance job,
shutdown), and when either stops the other is told to stop too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from broker.tls_server import PeerCertificateProtocol, server_ssl_context, small_tls_read_buffers


class ListenerError(ValueError):
    """A listener combination that would cut agents off or expose plain HTTP."""


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    context: ssl.SSLContext | None  # None: plain HTTP (loopback, behind a proxy)
    trusted_proxies: tuple[str, ...] = ()


def people_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Server-authenticated TLS with the operator's certificate; no client certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def plan_listeners(
    data_dir: Path,
    people: tuple[str, int],
    agents: tuple[str, int] | None,
    cert: tuple[Path, Path] | None = None,
    plain_http: bool = False,
    trusted_proxies: Sequence[str] = (),
) -> list[Listener]:
    """The listeners ``serve`` opens, people's first; refuses what would break agents."""
    if agents is None:
        if cert is not None or plain_http:
            raise ListenerError(
                "agents pin the ztb CA: give them their own listener with --agent-listen "
                "HOST:PORT when the people's listener uses --cert or --plain-http"
            )
        return [Listener(*people, server_ssl_context(data_dir), tuple(trusted_proxies))]
    if plain_http and cert is not None:
        raise ListenerError("--plain-http and --cert exclude each other")
    if plain_http and not _is_loopback(people[0]):
        raise ListenerError(
            f"--plain-http listens on loopback only (a reverse proxy on this host), not {people[0]}"
        )
    if people == agents:
        raise ListenerError("--listen and --agent-listen must differ")
    if plain_http:
        people_context = None
    elif cert is not None:
        people_context = people_ssl_context(*cert)
    else:
        people_context = people_ssl_context(*_own_server_certificate(data_dir))
    return [
        Listener(*people, people_context, tuple(trusted_proxies)),
        Listener(*agents, server_ssl_context(data_dir)),
    ]


def _own_server_certificate(data_dir: Path) -> tuple[Path, Path]:
    from broker.pki import SERVER_CERT_FILE, SERVER_KEY_FILE

    return data_dir / SERVER_CERT_FILE, data_dir / SERVER_KEY_FILE


def listener_config(
    app: ASGIApp, listener: Listener, *, lifespan: bool, **options: Any
) -> uvicorn.Config:
    context = listener.context
    tls: dict[str, Any] = {}
    if context is not None:
        small_tls_read_buffers()
        tls["ssl_context_factory"] = lambda _config, _default: context
    return uvicorn.Config(
        app,
        host=listener.host,
        port=listener.port,
        http=PeerCertificateProtocol,
        lifespan="on" if lifespan else "off",
        # uvicorn believes X-Forwarded-* from 127.0.0.1 by default: only from named proxies.
        proxy_headers=bool(listener.trusted_proxies),
        forwarded_allow_ips=list(listener.trusted_proxies),
        **tls,
        **options,
    )


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)


def serve_listeners(app: ASGIApp, listeners: Sequence[Listener], **options: Any) -> None:
    """Blocking: what ``ztb broker serve`` runs (``options`` go to ``uvicorn.Config``)."""
    configs = [
        listener_config(app, listener, lifespan=index == 0, **options)
        for index, listener in enumerate(listeners)
    ]
    asyncio.run(_serve_all([uvicorn.Server(config) for config in configs]))
