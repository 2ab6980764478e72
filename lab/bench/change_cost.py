"""Change cost vs load: adding and removing one session with N live grants.

ztb writes only the difference (set elements, netpolicy's ``diff_commands``). The
rule-per-grant baseline is measured twice in the same run: rebuilding its chain on every
change (full reload), and as a careful manager would run it, inserting or deleting one
rule by handle (``lab.bench.incremental``). Every variant makes one libnftables
transaction per change (``nftables.Nftables().json_cmd``: the agent's backend, or for the
incremental manager its own instance with echo on) in a fresh namespace per (variant, N).
The timed span includes building the commands in Python (and, incrementally, reading the
echoed handle).

netpolicy puts single-port grants in hash sets (``grants4``) and only port ranges in
interval sets (``ranges4``). The ``ztb`` variant times the common case (every grant a
single port); ``ztb-ranges`` loads the same N sessions with a ten-port range each, so the
interval set's cost, which grows with the set, stays visible.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from agent.nftables.backend import LibNftables
from lab import netns
from netpolicy import nft
from netpolicy.nft import Command, ElementDiff, ElementKey

from . import baseline, rig, workload
from .incremental import IncrementalChain
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


class Changer(Protocol):
    """One variant's firewall, loaded with N grants, taking one change at a time."""

    def add(self, key: ElementKey) -> None: ...

    def remove(self, key: ElementKey) -> None: ...

    def check(self) -> None:
        """Raise if the kernel does not hold what the changer believes (never timed)."""


@dataclass(frozen=True, slots=True)
class _Commands:
    """A variant that builds each change as commands for the agent's backend."""

    backend: LibNftables
    build_add: Callable[[ElementKey], list[Command]]
    build_remove: Callable[[ElementKey], list[Command]]

    def add(self, key: ElementKey) -> None:
        self.backend.run(self.build_add(key))

    def remove(self, key: ElementKey) -> None:
        self.backend.run(self.build_remove(key))

    def check(self) -> None:
        """Nothing to compare: these changes name no handles."""


def _ztb(keys: Keys, widen: Callable[[ElementKey], ElementKey]) -> Changer:
    backend = LibNftables()
    backend.run(_ztb_setup([widen(key) for key in keys]))
    return _Commands(backend, lambda key: _ztb_add(widen(key)), lambda key: _ztb_remove(widen(key)))


def _full_reload(keys: Keys) -> Changer:
    backend = LibNftables()
    backend.run(baseline.table_commands(INTERFACE, keys))
    return _Commands(
        backend,
        lambda key: baseline.reload_commands([*keys, key]),
        lambda _key: baseline.reload_commands(keys),
    )


def _incremental(keys: Keys) -> Changer:
    chain = IncrementalChain()
    chain.load(INTERFACE, keys)
    return chain


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    start: Callable[[Keys], Changer]  # runs inside the variant's namespace
    trials: Callable[[Mode], int]


def _ztb_setup(keys: Keys) -> list[Command]:
    live = {key: int(workload.LIFETIME_S) for key in keys}
    return nft.table_commands(INTERFACE) + nft.diff_commands(
        ElementDiff(add=live, delete=frozenset())
    )


FULL_RELOAD = "reload"
INCREMENTAL = "incremental"
VARIANTS = (
    Variant(
        "ztb",
        "ztb, single ports (hash set)",
        lambda keys: _ztb(keys, lambda key: key),
        lambda mode: mode.change_trials,
    ),
    Variant(
        "ztb-ranges",
        f"ztb, {RANGE_WIDTH}-port ranges (interval set)",
        lambda keys: _ztb(keys, _ranged),
        lambda mode: mode.change_trials,
    ),
    Variant(
        FULL_RELOAD,
        "baseline, full chain reload",
        _full_reload,
        lambda mode: mode.baseline_trials,
    ),
    Variant(
        INCREMENTAL,
        "baseline, incremental (append one rule, delete one by handle)",
        _incremental,
        lambda mode: mode.change_trials,
    ),
)


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _is_grant_rule(item: dict[str, Any]) -> bool:
    """A baseline grant rule: accepts on a literal source address, not a set lookup."""
    rule = item.get("rule", {})
    if rule.get("chain") != baseline.GRANT_RULES or {"accept": None} not in rule["expr"]:
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
        firewall = variant.start(keys)
        backend = LibNftables()
        if (live := _live_count(backend)) != n:
            raise RuntimeError(f"{variant.key}: kernel holds {live} grants, expected {n}")
        removes: list[float] = []

        def trial() -> float:
            added = _timed(lambda: firewall.add(extra))
            removes.append(_timed(lambda: firewall.remove(extra)))
            return added

        adds = bounded_trials(trial, variant.trials(mode), mode.series_seconds)
        firewall.check()
        if (live := _live_count(backend)) != n:
            raise RuntimeError(f"{variant.key}: kernel holds {live} grants after, not {n}")
    return Summary.of(adds).scaled(1e3), Summary.of(removes).scaled(1e3)


def _agent_side(n: int, prefix: str) -> tuple[Summary, Summary]:
    """What an agent that re-reads the kernel pays per change at N: list + diff."""
    state = workload.home(n)
    desired = workload.elements(state)
    with rig.namespace(f"{prefix}-ccread{n}") as ns, netns.inside(ns):
        backend = LibNftables()
        backend.run(_ztb_setup(list(desired)))
        reads = bounded_trials(lambda: _timed(backend.list_table), 20, 10.0)
        current = nft.parse_set_listing(backend.list_table())
    bigger = workload.elements(workload.home(n + 1))
    diffs = bounded_trials(lambda: _timed(lambda: nft.diff_elements(current, bigger)), 20, 5.0)
    return Summary.of(reads).scaled(1e3), Summary.of(diffs).scaled(1e3)


def measure(mode: Mode, prefix: str) -> Measurement:
    m = Measurement("change_cost", "Change cost vs load")
    top = max(mode.change_sizes)
    m.setup = {
        "sizes": list(mode.change_sizes),
        "session": "one session with one tcp grant",
        "timed": "command building in Python + one libnftables json_cmd transaction",
        "baselines": {
            FULL_RELOAD: "flush the rule-per-grant chain and re-send every rule",
            INCREMENTAL: "insert one rule before the final drop (handle echoed by the "
            "kernel); delete one rule by its kept handle",
        },
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
    m.ratios += _ratios(results, top)
    return m


def _ratios(results: dict[tuple[str, int], tuple[Summary, Summary]], top: int) -> list[Ratio]:
    """Growth of each variant with N, and ztb against both baselines at the top N.

    The goals (flat within 2x, >= 20x cheaper) were set for ztb against the full reload;
    the incremental manager's ratios are reported without a goal.
    """
    ratios: list[Ratio] = []
    for op, index in (("add", 0), ("remove", 1)):

        def growth(key: str) -> float:
            return results[key, top][index].median / results[key, 1][index].median  # noqa: B023

        for ztb_key in ("ztb", "ztb-ranges"):
            ours = results[ztb_key, top][index].median
            reload = results[FULL_RELOAD, top][index].median
            incremental = results[INCREMENTAL, top][index].median
            ratios += [
                Ratio(f"{ztb_key} {op}: cost at N={top:,} / at N=1", growth(ztb_key), "x", "<=", 2),
                Ratio(f"full reload / {ztb_key} {op} at N={top:,}", reload / ours, "x", ">=", 20),
                Ratio(f"incremental / {ztb_key} {op} at N={top:,}", incremental / ours),
            ]
        ratios.append(Ratio(f"incremental {op}: cost at N={top:,} / at N=1", growth(INCREMENTAL)))
    return ratios
