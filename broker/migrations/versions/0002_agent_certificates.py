"""Agents authenticate with client certificates: certificate inventory, no bearer tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 02:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "agent_certificates",
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=32), nullable=False),
        sa.Column("home_id", sa.String(length=32), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("not_after", sa.DateTime(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["home_id"], ["homes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_index("ix_agent_certificates_agent_id", "agent_certificates", ["agent_id"])
    op.create_index("ix_agent_certificates_home_id", "agent_certificates", ["home_id"])
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("previous_cert_serial", sa.String(length=64), nullable=True))
        # Bearer agent credentials are gone: whoever held one must enroll with a token.
        batch.drop_column("token_hash")


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("token_hash", sa.String(length=64), nullable=True))
        batch.drop_column("previous_cert_serial")
    op.drop_index("ix_agent_certificates_home_id", "agent_certificates")
    op.drop_index("ix_agent_certificates_agent_id", "agent_certificates")
    op.drop_table("agent_certificates")
