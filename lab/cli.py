"""``ztb lab up | down | demo``: the namespace lab from the command line (root only)."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Annotated

import typer

from . import netns
from .runstate import RUN_ROOT, RunState, known_runs, remove_leftovers
from .topology import PREFIX_PATTERN, Topology

RANDOM_PREFIX = re.compile(r"^(ztl[0-9a-f]{6})-")

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="network-namespace lab: up, down, demo"
)

JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object")]
PrefixOption = Annotated[str | None, typer.Option("--prefix", help="lab name prefix")]


def _need_root() -> None:
    if os.geteuid() != 0:
        raise typer.BadParameter("the lab creates network namespaces: run it as root")


@app.command()
def up(prefix: PrefixOption = None, as_json: JsonOption = False) -> None:
    """Build the lab, start the agent with a sample grant, and leave it running."""
    _need_root()
    from .harness import Lab

    lab = Lab(prefix)
    try:
        lab.build()
        tech = lab.tech(1)
        lab.apply([lab.session(tech, ["thermostat:tcp/443"], expires_in=1800)])
    except BaseException:
        lab.close()
        raise
    thermostat = lab.topo.device("thermostat")
    info = {
        "prefix": lab.topo.prefix,
        "namespaces": list(lab.topo.namespaces),
        "router_interface": lab.topo.router_wg,
        "run_dir": str(lab.run_dir),
        "grant": f"{tech.name} -> thermostat {thermostat.ip} tcp/443 for 30m",
    }
    if as_json:
        print(json.dumps(info))
        return
    ns = tech.namespace
    print(f"lab {lab.topo.prefix} is up (state in {lab.run_dir})")
    print(f"  namespaces: {', '.join(lab.topo.namespaces)}")
    print(f"  granted:    {info['grant']}")
    print("try:")
    print(f"  ip netns exec {ns} curl -sS --max-time 2 telnet://{thermostat.ip}:443  # answers")
    print(f"  ip netns exec {ns} curl -sS --max-time 2 telnet://{thermostat.ip}:80   # blocked")
    print(f"  ip netns exec {lab.topo.router} wg show {lab.topo.router_wg}")
    print(f"  ip netns exec {lab.topo.router} nft list table inet ztb")
    print(f"  ztb lab down --prefix {lab.topo.prefix}")


@app.command()
def down(prefix: PrefixOption = None, as_json: JsonOption = False) -> None:
    """Remove leftovers of lab runs: processes, namespaces, WireGuard sockets."""
    _need_root()
    if prefix is not None and not PREFIX_PATTERN.match(prefix):
        raise typer.BadParameter(f"prefix must match {PREFIX_PATTERN.pattern}")
    runs = [r for r in known_runs() if prefix is None or r.prefix == prefix]
    # Runs without a state file (crashed before writing it): names derive from the prefix.
    orphans = {prefix} if prefix is not None else _random_prefixes_in_use()
    for orphan in sorted(orphans - {r.prefix for r in runs}):
        runs.append(RunState(orphan, RUN_ROOT / orphan, wg_interfaces=_all_wg_names(orphan)))
    removed, problems = [], []
    for run in runs:
        namespaces = sorted({*run.namespaces, *netns.list_namespaces(run.prefix)})
        problems += remove_leftovers(run)
        removed.append({"prefix": run.prefix, "namespaces": namespaces})
    if as_json:
        print(json.dumps({"removed": removed, "problems": problems}))
    else:
        for item in removed:
            print(f"removed lab {item['prefix']}: {len(item['namespaces'])} namespaces")
        if not removed:
            print("no lab runs found")
    if problems:
        raise RuntimeError("; ".join(problems))


def _random_prefixes_in_use() -> set[str]:
    """Prefixes made by ``random_prefix`` that still own a namespace."""
    found = (RANDOM_PREFIX.match(name) for name in netns.list_namespaces(""))
    return {match[1] for match in found if match}


def _all_wg_names(prefix: str) -> list[str]:
    return list(Topology(prefix, technician_count=9, homes=2).wg_interfaces)


@app.command()
def demo(
    prefix: PrefixOption = None,
    dataplane: Annotated[
        bool,
        typer.Option("--dataplane", help="only the data plane (agent in file mode, no broker)"),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Tell the whole story (broker, enrollment, approve, revoke, expiry) with real packets;
    non-zero exit if any check fails."""
    _need_root()
    if dataplane:
        from .demo_dataplane import run
    else:
        from .demo_story import run

    summary = run(out=(lambda _: None) if as_json else print, prefix=prefix)
    if as_json:
        print(json.dumps(summary))
    if not summary["ok"]:
        if not as_json:
            print(f"failed: {'; '.join(summary['failures'])}", file=sys.stderr)
        raise typer.Exit(1)
