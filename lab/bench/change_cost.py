"""Change cost vs load: adding and removing one session with N live grants.

ztb writes only the difference (set elements, netpolicy's ``diff_commands``); the baseline
rebuilds its rule-per-grant chain. Both go through the agent's libnftables backend
(``nftables.Nftables().json_cmd``, one transaction per change) in a fresh namespace per
(variant, N). The timed span includes building the commands in Python.

netpolicy puts single-port grants in hash sets (``grants4``) and only port ranges in
interval sets (``ranges4``). The ``ztb`` variant times the common case (every grant a
single port); ``ztb-ranges`` loads the same N sessions with a ten-port range each, so the
interval set's cost, which grows with the set, stays visible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agent.nftables.backend import LibNftables
from lab import netns
from netpolicy import nft
from netpolicy.nft import Command, ElementDiff, ElementKey

from . import baseline, rig, workload
from .modes import Mode
from .results import Figure, Measurement, Ratio
from .stats import Summary, bounded_trials

INTERFACE = "wgbench"
Keys = list[ElementKey]


RANGE_WIDTH = 10


def _ranged(key: ElementKey) -> ElementKey:
    """The same grant widened to a port range: it lands in the interval set."""
    return replace(key, last=key.first + RANGE_WIDTH - 1)


def _ztb_add(key: ElementKey) -> list[Command]:
    return nft.diff_commands(ElementDiff(add={key: int(workload.LIFETIME_S)}, delete=frozenset()))


def _ztb_remove(key: ElementKey) -> list[Command]:
    return nft.diff_commands(ElementDiff(add={}, delete=frozenset({key})))


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    setup: Callable[[Keys], list[Command]]
    add: Callable[[Keys, ElementKey], list[Command]]
    remove: Callable[[Keys, ElementKey], list[Command]]
    trials: Callable[[Mode], int]


def _ztb_setup(keys: Keys) -> list[Command]:
    live = {key: int(workload.LIFETIME_S) for key in keys}
    return nft.table_commands(INTERFACE) + nft.diff_commands(
        ElementDiff(add=live, delete=frozenset())
    )


VARIANTS = (
    Variant(
        "ztb",
        "ztb, single ports (hash set)",
        _ztb_setup,
        lambda _keys, key: _ztb_add(key),
        lambda _keys, key: _ztb_remove(key),
        lambda mode: mode.change_trials,
    ),
    Variant(
        "ztb-ranges",
        f"ztb, {RANGE_WIDTH}-port ranges (interval set)",
        lambda keys: _ztb_setup([_ranged(key) for key in keys]),
        lambda _keys, key: _ztb_add(_ranged(key)),
        lambda _keys, key: _ztb_remove(_ranged(key)),
        lambda mode: mode.change_trials,
    ),
    Variant(
        "baseline",
        "baseline (full chain reload)",
        lambda keys: baseline.table_commands(INTERFACE, keys),
        lambda keys, key: baseline.reload_commands([*keys, key]),
        lambda keys, _key: baseline.reload_commands(keys),
        lambda mode: mode.baseline_trials,
    ),
)


def _timed(backend: LibNftables, build: Callable[[], list[Command]]) -> float:
    start = time.perf_counter()
    backend.run(build())
    return time.perf_counter() - start


def _is_grant_rule(item: dict[str, Any]) -> bool:
    """A baseline grant rule: accepts on a literal source address, not a set lookup."""
    rule = item.get("rule", {})
    if rule.get("chain") != nft.CHAIN_FROM_TUNNEL or {"accept": None} not in rule["expr"]:
        return False
    right = rule["expr"][0].get("match", {}).get("right")
    return isinstance(right, str) and not right.startswith("@")


def _live_count(backend: LibNftables) -> int:
    """Grants the kernel holds: set elements plus baseline grant rules."""
    listing = backend.list_table()
    rules = sum(1 for item in listing.get("nftables", []) if _is_grant_rule(item))
    return len(nft.parse_set_listing(listing)) + rules


def _series(variant: Variant, n: int, prefix: str, mode: Mode) -> tuple[Summary, Summary]:
    keys = list(workload.elements(workload.home(n)))
    extra = next(iter(workload.elements(workload.home(0, {0: workload.filler(n)}))))
    with rig.namespace(f"{prefix}-cc{variant.key}{n}") as ns, netns.inside(ns):
        backend = LibNftables()
        backend.run(variant.setup(keys))
        if (live := _live_count(backend)) != n:
            raise RuntimeError(f"{variant.key}: kernel holds {live} grants, expected {n}")
        removes: list[float] = []

        def trial() -> float:
            added = _timed(backend, lambda: variant.add(keys, extra))
            removes.append(_timed(backend, lambda: variant.remove(keys, extra)))
            return added

        adds = bounded_trials(trial, variant.trials(mode), mode.series_seconds)
    return Summary.of(adds).scaled(1e3), Summary.of(removes).scaled(1e3)


def _agent_side(n: int, prefix: str) -> tuple[Summary, Summary]:
    """What an agent that re-reads the kernel pays per change at N: list + diff."""
    state = workload.home(n)
    desired = workload.elements(state)
    with rig.namespace(f"{prefix}-ccread{n}") as ns, netns.inside(ns):
        backend = LibNftables()
        backend.run(_ztb_setup(list(desired)))
        reads = bounded_trials(lambda: _timed_call(backend.list_table), 20, 10.0)
        current = nft.parse_set_listing(backend.list_table())
    bigger = workload.elements(workload.home(n + 1))
    diffs = bounded_trials(lambda: _timed_call(lambda: nft.diff_elements(current, bigger)), 20, 5.0)
    return Summary.of(reads).scaled(1e3), Summary.of(diffs).scaled(1e3)


def _timed_call(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(mode: Mode, prefix: str) -> Measurement:
    m = Measurement("change_cost", "Change cost vs load")
    top = max(mode.change_sizes)
    m.setup = {
        "sizes": list(mode.change_sizes),
        "session": "one session with one tcp grant",
        "timed": "command building in Python + one libnftables json_cmd transaction",
        "namespace": "fresh namespace per (variant, N)",
    }
    results: dict[tuple[str, int], tuple[Summary, Summary]] = {}
    for variant in VARIANTS:
        for n in mode.change_sizes:
            add, remove = _series(variant, n, prefix, mode)
            results[variant.key, n] = (add, remove)
            m.figures.append(Figure(f"{variant.label}: add one session at N={n:,}", "ms", add))
            m.figures.append(
                Figure(f"{variant.label}: remove one session at N={n:,}", "ms", remove)
            )
    reads, diffs = _agent_side(top, prefix)
    m.figures.append(Figure(f"ztb: read the set back (list table) at N={top:,}", "ms", reads))
    m.figures.append(Figure(f"ztb: diff_elements in Python at N={top:,}", "ms", diffs))
    for ztb_key in ("ztb", "ztb-ranges"):
        for op, index in (("add", 0), ("remove", 1)):
            at_top = results[ztb_key, top][index].median
            at_one = results[ztb_key, 1][index].median
            base = results["baseline", top][index].median
            m.ratios.append(
                Ratio(f"{ztb_key} {op}: cost at N={top:,} / at N=1", at_top / at_one, "x", "<=", 2)
            )
            m.ratios.append(
                Ratio(f"baseline / {ztb_key} {op} at N={top:,}", base / at_top, "x", ">=", 20)
            )
    return m
