"""Secrets at rest are sealed: TOTP seeds, webhook secrets, pre-shared keys, one-time keys.

Existing values are encrypted in place with the broker's secrets key (``broker.secret_key``),
which the engine carries (``broker.db.sealing.attach``); the downgrade opens them again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 01:50:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from broker.db.sealing import box_of, is_sealed

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table, key column, secret column, its length before sealing
SECRETS = (
    ("users", "id", "totp_secret", 64),
    ("homes", "id", "webhook_secret", 128),
    ("sessions", "id", "preshared_key", 44),
    ("sessions", "id", "private_key_once", 44),
)


def _rewrite(table_name: str, key: str, column: str, sealing: bool) -> None:
    bind = op.get_bind()
    table = sa.table(table_name, sa.column(key, sa.String), sa.column(column, sa.Text))
    purpose = f"{table_name}.{column}"
    rows = bind.execute(
        sa.select(table.c[key], table.c[column]).where(table.c[column].is_not(None))
    ).all()
    for row_key, value in rows:
        if is_sealed(value) == sealing:
            continue
        box = box_of(bind.dialect)
        new = box.seal(value, purpose) if sealing else box.open(value, purpose)
        bind.execute(table.update().where(table.c[key] == row_key).values({column: new}))


def _widen(
    table_name: str, column: str, old: sa.types.TypeEngine[str], new: sa.types.TypeEngine[str]
) -> None:
    """Sealed values are longer than the plaintext. SQLite does not enforce VARCHAR
    lengths (and rebuilding a table other tables point at would trip the foreign keys),
    so only other databases change the column type."""
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(table_name, column, type_=new, existing_type=old)


def upgrade() -> None:
    op.create_table(
        "sealing_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for table_name, key, column, length in SECRETS:
        _widen(table_name, column, sa.String(length), sa.Text())
        _rewrite(table_name, key, column, sealing=True)


def downgrade() -> None:
    for table_name, key, column, length in SECRETS:
        _rewrite(table_name, key, column, sealing=False)
        _widen(table_name, column, sa.Text(), sa.String(length))
    op.drop_table("sealing_key")
