"""What a benchmark run reports: figures with units, ratios against goals, and the rows
that could not be measured (with the reason, never a made-up number)."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .stats import Summary

Comparison = Literal["<=", ">="]
_COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True, slots=True)
class Reported:
    """Trials, median, p99 and max of a series another module summarised (no minimum)."""

    trials: int
    median: float
    p99: float
    maximum: float


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured series (or one summarised elsewhere), or one derived number
    (``trials`` 0 means computed, not run)."""

    name: str
    unit: str
    summary: Summary | None = None
    value: float | None = None
    note: str = ""
    reported: Reported | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "unit": self.unit}
        if self.summary is not None:
            s = self.summary
            data |= {
                "trials": s.trials,
                "median": s.median,
                "p99": s.p99,
                "min": s.minimum,
                "max": s.maximum,
            }
        elif self.reported is not None:
            r = self.reported
            data |= {"trials": r.trials, "median": r.median, "p99": r.p99, "max": r.maximum}
        else:
            data |= {"trials": 0, "value": self.value}
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True, slots=True)
class Ratio:
    """A ratio (or bound) with its goal; ``passed`` is None when it carries no goal."""

    name: str
    value: float
    unit: str = "x"
    comparison: Comparison | None = None
    goal: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.comparison is None or self.goal is None:
            return None
        return _COMPARE[self.comparison](self.value, self.goal)

    def goal_text(self) -> str:
        if self.comparison is None or self.goal is None:
            return "-"
        return f"{self.comparison} {self.goal:g}{'' if self.unit == 'x' else ' ' + self.unit}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "goal": self.goal_text(),
            "passed": self.passed,
            **({"note": self.note} if self.note else {}),
        }


@dataclass(slots=True)
class Measurement:
    """One row group of the report: measured, or not measured and why."""

    key: str
    title: str
    status: Literal["measured", "not measured", "failed"] = "measured"
    why: str = ""
    setup: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": self.key, "title": self.title, "status": self.status}
        if self.why:
            data["why"] = self.why
        data |= {
            "setup": self.setup,
            "figures": [f.to_dict() for f in self.figures],
            "ratios": [r.to_dict() for r in self.ratios],
            "wall_seconds": round(self.seconds, 2),
        }
        return data


def write_json(path: Path, header: dict[str, Any], measurements: list[Measurement]) -> None:
    document = {**header, "measurements": [m.to_dict() for m in measurements]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2g}"


def markdown(measurements: list[Measurement]) -> str:
    """Two tables: every figure, then every ratio with its goal and verdict."""
    lines = [
        "| measurement | figure | trials | median | p99 | unit |",
        "|---|---|---:|---:|---:|---|",
    ]
    for m in measurements:
        if m.status != "measured":
            lines.append(f"| {m.title} | **{m.status}**: {m.why} | - | - | - | - |")
            continue
        for f in m.figures:
            if f.summary is not None:
                s = f.summary
                cells = [str(s.trials), _num(s.median), _num(s.p99)]
            elif f.reported is not None:
                rep = f.reported
                cells = [str(rep.trials), _num(rep.median), _num(rep.p99)]
            else:
                cells = ["computed", _num(f.value), "-"]
            lines.append(f"| {m.title} | {f.name} | {' | '.join(cells)} | {f.unit} |")
    lines += ["", "| ratio | value | goal | result |", "|---|---:|---|---|"]
    verdict = {True: "PASS", False: "**FAIL**", None: "info"}
    for m in measurements:
        for r in m.ratios:
            # four significant digits: a ratio next to its goal must not round onto it
            shown = f"{r.value:,.0f}" if abs(r.value) >= 1000 else f"{r.value:.4g}"
            value = f"{shown}{'x' if r.unit == 'x' else ' ' + r.unit}"
            lines.append(f"| {r.name} | {value} | {r.goal_text()} | {verdict[r.passed]} |")
    return "\n".join(lines)
