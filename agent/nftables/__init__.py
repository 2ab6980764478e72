"""nftables backends for ``table inet ztb``: the libnftables binding or ``nft -j`` (``backend.py``),
and per-element counters read over netlink (``netlink.py``). Nothing is imported here, so the
binding loads only when the backend that needs it is made.
"""
