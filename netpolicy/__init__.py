"""ztb's pure core: the vocabulary shared by broker and agent. No I/O, no clock reads."""

from .errors import PolicyError
from .grants import PROTOCOLS, Grant, GrantSpec, PortRange, Proto, merge_grants
from .model import PROTOCOL_VERSION, DesiredState, HomeNetwork, LiveSession
from .report import REPORT_VERSION, AgentReport, ElementCounters, PeerReport
from .validation import (
    DEFAULT_MAX_DURATION_S,
    HARD_MAX_DURATION_S,
    format_duration,
    parse_duration,
    validate_device_ip,
    validate_duration,
    validate_lan,
    validate_public_key,
)

__all__ = [
    "DEFAULT_MAX_DURATION_S",
    "HARD_MAX_DURATION_S",
    "PROTOCOLS",
    "PROTOCOL_VERSION",
    "REPORT_VERSION",
    "AgentReport",
    "DesiredState",
    "ElementCounters",
    "Grant",
    "GrantSpec",
    "HomeNetwork",
    "LiveSession",
    "PeerReport",
    "PolicyError",
    "PortRange",
    "Proto",
    "format_duration",
    "merge_grants",
    "parse_duration",
    "validate_device_ip",
    "validate_duration",
    "validate_lan",
    "validate_public_key",
]
