"""Migration 0004: checkpoints signed before they were chained stay verifiable, get
numbers, and the first chained checkpoint names the last of them; downgrade works."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, select, text

from broker.audit import canonical
from broker.db.engine import MIGRATIONS, migrate
from broker.db.models import AuditCheckpoint, AuditHead

from .broker_harness import Harness, anyio_backend, harness

__all__ = ["anyio_backend", "harness"]
pytestmark = pytest.mark.anyio


def _alembic(engine: Engine, target: str, down: bool) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, target)


async def test_old_checkpoints_are_numbered_and_chained_on(harness: Harness) -> None:
    h = harness
    w = await h.world()
    engine = h.broker.engine
    _alembic(engine, "0003", down=True)
    signer = h.broker.signer
    with engine.begin() as db:  # two checkpoints as the old broker signed them
        head = db.execute(select(AuditHead.seq, AuditHead.hash)).one()
        db.execute(text("DELETE FROM audit_checkpoints"))
        for at in ("2026-11-01T12:00:00Z", "2026-11-01T12:00:01Z"):
            message = canonical({"seq": head.seq, "hash": head.hash, "at": at}).encode()
            db.execute(
                insert(AuditCheckpoint.__table__),  # type: ignore[arg-type]
                {
                    "seq": head.seq,
                    "hash": head.hash,
                    "at": at,
                    "public_key": signer.public_key,
                    "signature": signer.sign(message),
                },
            )
    migrate(engine)
    signer.last_signed = None  # the old broker kept no memory of its last checkpoint
    h.clock.advance(1)
    await h.request(w.tech_a, "ann-house", ["tv:tcp/443"])
    assert h.maintenance()["checkpoint"] > 0
    with h.broker.sessionmaker() as db:
        points = db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.number)).all()
        assert [(p.number, p.prev is None) for p in points] == [(1, True), (2, True), (3, False)]
    result = await h.ok(
        "GET", "/v1/audit/verify", w.admin, params={"public_key": signer.public_key}
    )
    assert result["ok"] is True and result["checkpoints"] == 3
    with engine.begin() as db:  # an old checkpoint removed: the chain shows the gap
        db.execute(text("DELETE FROM audit_checkpoints WHERE number = 2"))
    result = await h.ok("GET", "/v1/audit/verify", w.admin)
    assert result["first_bad"]["problem"] == "checkpoint 2 is missing (removed)"
    _alembic(engine, "0003", down=True)
    with engine.begin() as db:
        assert db.execute(text("SELECT COUNT(*) FROM audit_checkpoints")).scalar() == 1
    _alembic(engine, "head", down=False)
