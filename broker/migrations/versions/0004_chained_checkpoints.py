"""Audit checkpoints form their own chain: a gap-free number and the previous one's digest.

Existing checkpoints get numbers in the order they were made and keep ``prev`` NULL: they
stay verifiable as signed before (their signature covers ``{seq, hash, at}``), and the
first chained checkpoint names the last of them, so none can vanish unnoticed.

Downgrade drops the two columns and the chained checkpoints (their signatures cover
``number`` and ``prev``, which the old verifier cannot check); the old broker signs the
tip again at its next maintenance pass.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 02:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.add_column(sa.Column("number", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("prev", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE audit_checkpoints SET number = (SELECT COUNT(*) FROM audit_checkpoints AS c"
        " WHERE c.id <= audit_checkpoints.id)"
    )
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.alter_column("number", existing_type=sa.Integer(), nullable=False)
        batch.create_index("ix_audit_checkpoints_number", ["number"], unique=True)


def downgrade() -> None:
    op.execute("DELETE FROM audit_checkpoints WHERE prev IS NOT NULL")
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.drop_index("ix_audit_checkpoints_number")
        batch.drop_column("prev")
        batch.drop_column("number")
