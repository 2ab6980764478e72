"""The module map's rules (docs/architecture.md), read from the source with ``ast``.

Every ``import`` counts, also one inside a function (a lazy import is still a dependency).
A rule names the module that breaks it and the line, so a failure says where to look.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("agent", "broker", "lab", "netpolicy", "tests", "ztb")

# The only broker modules that write audit events (``UnitOfWork.audit``): every change and
# its event are made together by a service; ``context`` records refusals (``denied``) and
# ``audit`` is the chain itself.
AUDIT_WRITERS = {
    "broker.agent_service",
    "broker.audit",
    "broker.context",
    "broker.homes_service",
    "broker.lifecycle_service",
    "broker.sessions_service",
    "broker.users_service",
}


@dataclass(frozen=True, slots=True)
class Source:
    module: str  # dotted name, e.g. ``broker.routes.sessions``
    path: Path
    tree: ast.Module

    @property
    def package(self) -> str:
        return self.module if self.path.name == "__init__.py" else self.module.rpartition(".")[0]

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"


@functools.cache
def sources() -> tuple[Source, ...]:
    """Every module of ours, parsed once per test run."""
    found = []
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append(Source(module, path, ast.parse(path.read_text(), str(path))))
    return tuple(found)


def imports(source: Source) -> Iterator[tuple[str, ast.AST]]:
    """Every module ``source`` imports, absolute; ``from . import x`` counts as ``pkg.x``."""
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = source.package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base, node
            for alias in node.names:
                yield f"{base}.{alias.name}", node


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden_imports(importer: str, imported: tuple[str, ...]) -> list[str]:
    found = []
    for source in sources():
        if not within(source.module, importer):
            continue
        for name, node in imports(source):
            if any(within(name, package) for package in imported):
                found.append(f"{source.where(node)} imports {name}")
    return sorted(set(found))


RULES = [
    # (who, may not import, why)
    ("netpolicy", ("agent", "broker", "lab", "tests", "ztb"), "netpolicy is pure: stdlib only"),
    ("agent", ("broker", "lab", "tests"), "a router installs the agent without the broker"),
    ("broker", ("agent", "lab", "tests"), "the server never imports the router's daemon"),
    ("ztb", ("agent", "broker", "lab", "tests"), "the people's client runs on a bare install"),
    ("broker.web", ("broker.routes",), "web pages use services and reads, not HTTP routes"),
    ("broker.routes", ("broker.web",), "HTTP routes know nothing of the web pages"),
]


@pytest.mark.parametrize(("importer", "imported", "why"), RULES, ids=[r[0] for r in RULES])
def test_allowed_imports(importer: str, imported: tuple[str, ...], why: str) -> None:
    assert forbidden_imports(importer, imported) == [], why


def audit_writes(source: Source) -> Iterator[str]:
    """Calls of ``<anything>.audit(...)`` (a unit of work's audit append) and of
    ``audit.append(...)`` (the chain's own append)."""
    for node in ast.walk(source.tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = node.func
        chain_append = (
            target.attr == "append"
            and isinstance(target.value, ast.Name)
            and target.value.id == "audit"
        )
        if target.attr == "audit" or chain_append:
            yield source.where(node)


def test_only_services_write_audit_events() -> None:
    writers = [
        where
        for source in sources()
        if within(source.module, "broker") and source.module not in AUDIT_WRITERS
        for where in audit_writes(source)
    ]
    assert writers == [], f"only {sorted(AUDIT_WRITERS)} may write audit events"


def test_the_rules_see_the_tree() -> None:
    """A rule that reads nothing passes for the wrong reason: check the walk finds the
    modules and the imports the rules are about."""
    found = {source.module: source for source in sources()}
    assert {"netpolicy.model", "agent.runner", "broker.app", "broker.web.deps"} <= set(found)
    app_imports = {name for name, _ in imports(found["broker.app"])}
    assert {"broker.routes.sessions", "broker.web.install_web"} <= app_imports
    assert list(audit_writes(found["broker.sessions_service"]))
