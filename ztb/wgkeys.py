"""WireGuard key pairs for whoever needs one: the technician's CLI, the agent, the broker.

Tries ``cryptography``, then the pure-Python X25519 of ``wireguard_tools``, then the ``wg``
tool, importing lazily: the technician's bare install has none of the libraries but has
``wg`` wherever it has ``wg-quick``.
"""

from __future__ import annotations

import base64
import shutil
import subprocess


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


KeyPair = tuple[str, str]


def _pair_with_cryptography(private_key: str | None) -> KeyPair | None:
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    except ImportError:
        return None
    key = (
        X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
        if private_key
        else X25519PrivateKey.generate()
    )
    return _b64(key.private_bytes_raw()), _b64(key.public_key().public_bytes_raw())


def _pair_with_wireguard_tools(private_key: str | None) -> KeyPair | None:
    try:
        from wireguard_tools.wireguard_key import WireguardKey
    except ImportError:
        return None
    key = WireguardKey(private_key) if private_key else WireguardKey.generate()
    return str(key), str(key.public_key())


def _pair_with_wg_tool(private_key: str | None) -> KeyPair | None:
    """``wg genkey``/``wg pubkey``: present wherever wg-quick is, so a bare install works."""
    wg = shutil.which("wg")
    if wg is None:
        return None
    if private_key is None:
        made = subprocess.run([wg, "genkey"], capture_output=True, text=True, check=True)
        private_key = made.stdout.strip()
    public = subprocess.run([wg, "pubkey"], input=private_key, capture_output=True, text=True)
    if public.returncode != 0:
        raise RuntimeError(f"wg pubkey refused the key: {public.stderr.strip()}")
    return private_key, public.stdout.strip()


def key_pair(private_key: str | None = None) -> KeyPair:
    """``(private, public)`` in wg's base64; a fresh private key unless one is given."""
    for make in (_pair_with_cryptography, _pair_with_wireguard_tools, _pair_with_wg_tool):
        pair = make(private_key)
        if pair is not None:
            return pair
    raise RuntimeError(
        "making a WireGuard key needs the 'cryptography' package (pip install cryptography) "
        "or the wg tool (wireguard-tools); the CLI can also leave it to the broker: "
        "--no-local-key"
    )
