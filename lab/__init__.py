"""Network-namespace lab: real veths, WireGuard, nftables and the real agent, in namespaces."""
