"""WireGuard backends behind one Protocol (``backend.py``), chosen at run time (``select.py``).

Kernel WireGuard over netlink (``kernel.py``, pyroute2's narrow module) or ``wireguard-go``
over its UAPI socket (``userspace.py``, ``uapi.py``); ``link.py`` drives ``ip link``. Nothing
is imported here, so importing one backend never loads the other's dependencies.
"""
