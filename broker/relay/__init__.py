"""The relay: forwards one session's WireGuard packets between a technician and a home.

Deliberately light: standard library only on the data path (no FastAPI, no SQLAlchemy),
so a relay host installs little. ``wire`` reads WireGuard message headers, ``path`` decides
per packet, ``forwarder`` moves datagrams, ``kernel`` hands a learned path to nftables.
"""
