"""``ztb home ...``: homes, their approval policy and agent enrollment tokens."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from netpolicy import DEFAULT_MAX_DURATION_S, PolicyError, format_duration, validate_lan
from netpolicy.policy import GrantRule
from netpolicy.validation import parse_address, parse_network
from ztb.client.commands.common import (
    Connection,
    clock,
    duration_seconds,
    fields,
    named,
    table,
    with_connection,
)

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Manage homes and agent enrollment."
)

HomeArgument = Annotated[str, typer.Argument(help="Home id or name.")]


def _checked(kind: str, text: str | None, option: str) -> str | None:
    """Catch a malformed address or network before the broker sees it."""
    if text is None:
        return None
    try:
        if kind == "lan":
            validate_lan(parse_network(text))
        elif kind == "network":
            parse_network(text)
        else:
            parse_address(text)
    except PolicyError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None
    return text


@app.command("create")
@with_connection()
def create_home(
    conn: Connection,
    name: str,
    owner: Annotated[str, typer.Option("--owner", help="Homeowner's email or id.")],
    lan: Annotated[str, typer.Option("--lan", help="Home LAN, e.g. 192.168.1.0/24.")],
    router_ip: Annotated[str | None, typer.Option("--router-ip", help="Router's LAN IP.")] = None,
    tunnel_pool: Annotated[
        str | None, typer.Option("--tunnel-pool", help="CIDR for technicians' tunnel IPs.")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Router's public WireGuard HOST:PORT.")
    ] = None,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="URL notified about new requests.")
    ] = None,
) -> None:
    """Create a home and print its id."""
    body: dict[str, Any] = {
        "name": name,
        "owner": owner,
        "lan": _checked("lan", lan, "--lan"),
        "router_ip": _checked("address", router_ip, "--router-ip"),
        "tunnel_pool": _checked("network", tunnel_pool, "--tunnel-pool"),
        "endpoint": endpoint,
        "webhook_url": webhook,
    }
    home = conn.call(
        lambda client: client.create_home({k: v for k, v in body.items() if v is not None})
    )
    conn.emit_created(
        home,
        str(home.get("id")),
        f"created home {home.get('name')}  lan {home.get('lan')}  "
        f"tunnel pool {home.get('tunnel_pool')}",
    )


@app.command("list")
@with_connection()
def list_homes(conn: Connection) -> None:
    """List the homes you can see."""
    homes = conn.call(lambda client: client.list_homes())
    conn.emit_rows(
        "homes",
        homes,
        ("id", "name", "lan", "endpoint"),
        lambda h: (
            str(h.get("id")),
            str(h.get("name")),
            str(h.get("lan")),
            str(h.get("endpoint") or "-"),
        ),
    )


def _agents_text(agents: list[Any]) -> str:
    rows = [
        (
            str(agent.get("id", "-")),
            str(agent.get("interface") or "-"),
            clock(agent.get("last_seen_at")),
            clock(agent.get("cert_not_after")),
            "revoked" if agent.get("revoked") else "active",
        )
        for agent in agents
        if isinstance(agent, dict)
    ]
    return table(("agent", "interface", "last seen", "certificate expires", "status"), rows)


@app.command("show")
@with_connection()
def show_home(
    conn: Connection,
    home: HomeArgument,
) -> None:
    """Show a home, its policy and its agents' certificate expiry."""
    found = conn.call(lambda client: client.get_home(home))
    text = fields(
        [
            ("home", f"{found.get('id')}  {found.get('name')}"),
            ("owner", named(found, "owner_email", "owner_id")),
            ("lan", found.get("lan")),
            ("router", found.get("router_ip")),
            ("tunnel pool", found.get("tunnel_pool")),
            ("endpoint", found.get("endpoint") or "not set (agent not enrolled)"),
            ("agent key", found.get("agent_public_key")),
            ("revision", found.get("revision")),
            ("policy", json.dumps(found["policy"]) if found.get("policy") else "default"),
        ]
    )
    agents = found.get("agents") or []
    if agents:
        text += "\n\n" + _agents_text(agents)
    conn.emit(found, text)


@app.command("enroll-token")
@with_connection()
def enroll_token(
    conn: Connection,
    home: HomeArgument,
    ttl: Annotated[str, typer.Option("--ttl", help="How long the token stays valid.")] = "15m",
) -> None:
    """Print a one-time enrollment token for the home's agent."""
    ttl_s = duration_seconds(ttl, "--ttl")
    issued = conn.call(lambda client: client.create_enroll_token(home, ttl_s))
    conn.emit_created(
        issued,
        str(issued.get("token")),
        f"one-time enrollment token for {home}, valid until {clock(issued.get('expires_at'))}:",
    )


@app.command("revoke-agent")
@with_connection()
def revoke_agent(
    conn: Connection,
    home: HomeArgument,
    agent: Annotated[str, typer.Argument(help="Agent id (see 'ztb home show').")],
) -> None:
    """Refuse the agent's certificate from now on; grants it applied still expire."""
    revoked = conn.call(lambda client: client.revoke_agent(home, agent))
    conn.emit(revoked, f"revoked agent {revoked.get('id')} of {home}")


@app.command("policy")
@with_connection()
def set_policy(
    conn: Connection,
    home: HomeArgument,
    max_duration: Annotated[
        str | None, typer.Option("--max-duration", help="Longest session, e.g. 1h.")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Only grants like DEVICE:PROTO/PORTS or *:tcp/443 (repeat)."),
    ] = None,
    technician: Annotated[
        list[str] | None,
        typer.Option("--technician", help="Only these technicians (email or id; repeat)."),
    ] = None,
    require_totp: Annotated[
        bool | None,
        typer.Option("--require-totp/--no-require-totp", help="Approvals need a TOTP code."),
    ] = None,
) -> None:
    """Show the home's policy, or change the parts given as options (lists are replaced)."""
    changes: dict[str, Any] = {}
    if max_duration:
        changes["max_duration_s"] = duration_seconds(max_duration, "--max-duration")
    if allow:
        try:
            changes["allowed"] = [str(GrantRule.parse(rule)) for rule in allow]
        except PolicyError as exc:
            raise typer.BadParameter(str(exc), param_hint="--allow") from None
    if technician:
        changes["technicians"] = list(technician)
    with conn.client() as client:
        found = client.get_home(home)
        policy: dict[str, Any] = dict(found.get("policy") or {})
        if changes:
            policy = client.set_policy(home, {**policy, **changes})
        if require_totp is not None:
            found = client.update_home(home, {"require_totp_for_approval": require_totp})
    totp = found.get("require_totp_for_approval")
    cap = policy.get("max_duration_s")
    text = fields(
        [
            ("home", f"{found.get('id')}  {found.get('name')}"),
            (
                "max duration",
                format_duration(cap if isinstance(cap, int) else DEFAULT_MAX_DURATION_S),
            ),
            ("allowed", ", ".join(policy.get("allowed") or []) or "any grant on a known device"),
            ("technicians", ", ".join(policy.get("technicians") or []) or "any"),
            (
                "auto-approve",
                json.dumps(policy.get("auto_approve")) if policy.get("auto_approve") else None,
            ),
            ("require totp", None if totp is None else ("yes" if totp else "no")),
        ]
    )
    conn.emit({"id": found.get("id"), "policy": policy, "require_totp": totp}, text)
