"""The home agent: reconciles desired state into WireGuard peers and ``table inet ztb``.

Never imports ``broker``; heavy modules (pyroute2, the nftables binding) load only when
the backend that needs them is chosen.
"""

from .desired_file import DesiredStateFile, DesiredStateSource
from .nftables.backend import NftBackend, NftError
from .reconcile import ApplyResult, InterfaceSpec, Reconciler
from .wireguard.backend import PeerState, WireGuardBackend, WireGuardError

__all__ = [
    "ApplyResult",
    "DesiredStateFile",
    "DesiredStateSource",
    "InterfaceSpec",
    "NftBackend",
    "NftError",
    "PeerState",
    "Reconciler",
    "WireGuardBackend",
    "WireGuardError",
]
