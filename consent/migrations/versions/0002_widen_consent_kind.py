"""widen consents.kind: it holds entry type names, and 'consent.withdrawn' is 17 characters

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL refused every withdrawal and expiry with StringDataRightTruncation. (SQLite never enforced the
    # length; batch mode rebuilds its table once so the declared schema matches there too.)
    with op.batch_alter_table('consents') as batch:
        batch.alter_column('kind', existing_type=sa.String(length=16), type_=sa.String(length=32),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('consents') as batch:
        batch.alter_column('kind', existing_type=sa.String(length=32), type_=sa.String(length=16),
                           existing_nullable=False)
