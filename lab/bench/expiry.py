"""Expiry precision with nobody alive to enforce it: the kernel timer vs a periodic job.

ztb: each trial adds one set element with a kernel timeout, as the agent would, and then
no process touches the firewall again. The intended end is ``expires_at = t_add +
remaining``; netpolicy rounds the kernel timeout *down* to whole seconds (libnftables JSON
takes integers only), so access may end up to 1 s early, by design. ``t_add`` is taken
just before the transaction, so a late cut is never hidden. Trials run concurrently, each
from its own probe address, with fractional lifetimes spread over [0, 1).

Baseline: rules carry no timeout; a job wakes every ``interval`` seconds, drops expired
grants and reloads the chain. Its lateness is uniform over one interval (expected
interval/2, worst case the interval); a short interval is measured, the production one is
computed from it.

Signed error = send time of the first dropped probe (10 ms apart) - expires_at.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agent.nftables.backend import LibNftables
from netpolicy import nft
from netpolicy.nft import ElementDiff, ElementKey

from . import baseline, rig, udp_probe, workload
from .modes import Mode
from .results import Figure, Measurement, Ratio
from .stats import Summary

BASE_LIFETIME_S = 2.0
STAGGER_S = 0.037
LEAD_S = 0.2  # probes start this long after a grant is in place
ZTB_TAIL_S = 3.0


def _probe_key(k: int) -> ElementKey:
    return next(iter(workload.elements(workload.home(0, {0: workload.probe(k, 9000, "udp")}))))


def _errors(flows: dict[int, udp_probe.Flow], ends: dict[int, float]) -> tuple[list[float], int]:
    """Signed errors of the trials that saw a drop, and how many never did (censored)."""
    errors = []
    for k, flow in flows.items():
        drop = udp_probe.first_drop(flow.sent, flow.received)
        if drop is not None:
            errors.append(drop - ends[k])
    return errors, len(flows) - len(errors)


def _ztb(mode: Mode, prefix: str) -> tuple[list[float], list[float], int]:
    trials = mode.expiry_trials
    with rig.path(prefix, "xz", probes=trials) as p:
        backend = rig.nft_in(p.router)
        backend.run(nft.table_commands(p.tunnel_if))
        rig.settle()
        t0 = time.perf_counter() + 0.3
        lifetimes = {k: BASE_LIFETIME_S + (k + 0.5) / trials for k in range(trials)}
        starts = {k: t0 + k * STAGGER_S for k in range(trials)}
        flows = {
            k: udp_probe.Flow(starts[k] + LEAD_S, starts[k] + lifetimes[k] + ZTB_TAIL_S)
            for k in range(trials)
        }
        end = max(f.stop for f in flows.values()) + 0.1
        intended: dict[int, float] = {}
        kernel: dict[int, float] = {}
        with udp_probe.ProbeFlows(p.client, p.server, flows, end):
            for k in range(trials):
                time.sleep(max(0.0, starts[k] - time.perf_counter()))
                timeout = nft.timeout_seconds(lifetimes[k])
                diff = ElementDiff(add={_probe_key(k): timeout}, delete=frozenset())
                t_add = time.perf_counter()
                backend.run(nft.diff_commands(diff))
                intended[k] = t_add + lifetimes[k]
                kernel[k] = t_add + timeout
    signed, censored = _errors(flows, intended)
    timer, _ = _errors(flows, kernel)
    return signed, timer, censored


def _baseline_job(
    backend: LibNftables,
    expires: dict[int, float],
    first_run: float,
    interval: float,
    end: float,
    reloads: list[float],
) -> Callable[[], None]:
    def job() -> None:
        live = dict(expires)
        run_at = first_run
        while run_at < end:
            time.sleep(max(0.0, run_at - time.perf_counter()))
            now = time.perf_counter()
            expired = [k for k, at in live.items() if at <= now]
            if expired:
                for k in expired:
                    del live[k]
                start = time.perf_counter()
                backend.run(baseline.reload_commands([_probe_key(k) for k in sorted(live)]))
                reloads.append(time.perf_counter() - start)
            run_at += interval

    return job


def _baseline(mode: Mode, prefix: str) -> tuple[list[float], int, list[float]]:
    trials, interval = mode.baseline_expiry_trials, mode.baseline_interval_s
    span = interval * max(1, trials // 6)
    with rig.path(prefix, "xb", probes=trials) as p:
        backend = rig.nft_in(p.router)
        backend.run(baseline.table_commands(p.tunnel_if, [_probe_key(k) for k in range(trials)]))
        rig.settle()
        t0 = time.perf_counter()
        # expiries spread evenly over whole intervals: every phase against the job occurs
        expires = {k: t0 + 1.0 + span * (k + 0.5) / trials for k in range(trials)}
        flows = {k: udp_probe.Flow(t0 + LEAD_S, expires[k] + interval + 1.0) for k in range(trials)}
        end = max(f.stop for f in flows.values()) + 0.1
        reloads: list[float] = []
        job = _baseline_job(backend, expires, t0 + interval, interval, end, reloads)
        with udp_probe.ProbeFlows(p.client, p.server, flows, end):
            worker = threading.Thread(target=job, daemon=True)
            worker.start()
            worker.join(timeout=end - time.perf_counter() + 30)
    lateness, censored = _errors(flows, expires)
    return lateness, censored, reloads


def measure(mode: Mode, prefix: str) -> Measurement:
    m = Measurement("expiry", "Expiry precision, agent dead")
    signed, timer, censored = _ztb(mode, prefix)
    late, base_censored, reloads = _baseline(mode, prefix)
    interval, production = mode.baseline_interval_s, mode.production_interval_s
    m.setup = {
        "probe": f"UDP every {udp_probe.PERIOD_S * 1e3:.0f} ms per trial, own source address",
        "ztb_lifetimes_s": f"{BASE_LIFETIME_S} + fraction in [0, 1), rounded down to whole s",
        "ztb_trials_without_drop": censored,
        "baseline_interval_s": interval,
        "baseline_trials_without_drop": base_censored,
    }
    if not signed or not late:
        m.status, m.why = "failed", "no trial saw its probes dropped"
        return m
    ztb_signed = Summary.of(signed)
    ztb_timer = Summary.of(timer)
    base = Summary.of(late)
    reload_s = Summary.of(reloads).median if reloads else 0.0
    m.figures += [
        Figure("ztb: first drop - expires_at (signed; < 0 is early by rounding)", "s", ztb_signed),
        Figure("ztb: first drop - (t_add + kernel timeout): kernel timer alone", "s", ztb_timer),
        Figure(f"baseline, job every {interval:g} s: first drop - expires_at", "s", base),
        Figure(
            f"baseline, job every {production:g} s: expected lateness (interval/2)",
            "s",
            value=production / 2,
            note="computed: expiry phase is uniform against the job",
        ),
        Figure(
            f"baseline, job every {production:g} s: worst lateness (interval + reload)",
            "s",
            value=production + reload_s,
            note="computed with the measured reload time",
        ),
    ]
    m.ratios += [
        Ratio("ztb expiry: p99 of signed error", ztb_signed.p99, "s", "<=", 1.0),
        Ratio(
            "ztb expiry: earliest cut (rounding, by design)", ztb_signed.minimum, "s", ">=", -1.0
        ),
        Ratio(f"baseline ({interval:g} s job): p99 lateness", base.p99, "s", "<=", 1.0),
    ]
    return m
