"""payments: orders, provider callbacks

Revision ID: 0017_payments
Revises: 0016_access_policy
Create Date: 2026-11-22

Tables of ``smartmed.payments`` (``payments/tables.py``): orders, the money ledger,
refunds, the callback log, and the local sandbox provider's own payments and refunds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_payments"
down_revision = "0016_access_policy"
branch_labels = None
depends_on = None

_TS = sa.DateTime()
_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FEN = sa.BigInteger()


def upgrade() -> None:
    op.create_table(
        "payment_order",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("amount_fen", _FEN, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_ref", sa.String(64), nullable=True),
        sa.Column("pay_url", sa.Text(), nullable=True),
        sa.Column("qr", sa.Text(), nullable=True),
        sa.Column("received_fen", _FEN, nullable=False),
        sa.Column("refunded_fen", _FEN, nullable=False),
        sa.Column("reserved_fen", _FEN, nullable=False),
        sa.Column("anomaly", sa.String(32), nullable=True),
        sa.Column("charge_item_id", sa.String(64), nullable=False),
        sa.Column("invoice_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("paid_at", _TS, nullable=True),
        sa.Column("fulfilled_at", _TS, nullable=True),
        sa.Column("closed_at", _TS, nullable=True),
        sa.Column("fulfilled_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_order")),
    )
    op.create_index("uq_payment_order_key", "payment_order", ["key"], unique=True)
    op.create_index("ix_payment_order_state_expires_at", "payment_order", ["state", "expires_at"])
    op.create_index("ix_payment_order_subject", "payment_order", ["subject"])
    op.create_table(
        "payment_ledger",
        sa.Column("pk", _PK, autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("external_id", sa.String(64), nullable=False),
        sa.Column("amount_fen", _FEN, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_payment_ledger")),
    )
    op.create_index(
        "uq_payment_ledger_kind_external_id",
        "payment_ledger",
        ["kind", "external_id"],
        unique=True,
    )
    op.create_index("ix_payment_ledger_order_id", "payment_ledger", ["order_id"])
    op.create_table(
        "payment_refund",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("amount_fen", _FEN, nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("provider_ref", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_refund")),
    )
    op.create_index("ix_payment_refund_order_id", "payment_refund", ["order_id"])
    op.create_table(
        "payment_callback",
        sa.Column("pk", _PK, autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=True),
        sa.Column("nonce", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_payment_callback")),
    )
    op.create_index("ix_payment_callback_order_id", "payment_callback", ["order_id"])
    op.create_index(
        "uq_payment_callback_nonce", "payment_callback", ["provider", "nonce"], unique=True
    )
    op.create_table(
        "sandbox_payment",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("out_trade_no", sa.String(64), nullable=False),
        sa.Column("amount_fen", _FEN, nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("notify_url", sa.Text(), nullable=False),
        sa.Column("return_url", sa.Text(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("paid_fen", _FEN, nullable=False),
        sa.Column("refunded_fen", _FEN, nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("paid_at", _TS, nullable=True),
        sa.Column("notified_at", _TS, nullable=True),
        sa.Column("notify_attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_payment")),
    )
    op.create_index(
        "uq_sandbox_payment_out_trade_no",
        "sandbox_payment",
        ["merchant_id", "out_trade_no"],
        unique=True,
    )
    op.create_table(
        "sandbox_refund",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("merchant_id", sa.String(64), nullable=False),
        sa.Column("payment_id", sa.String(36), nullable=False),
        sa.Column("out_refund_no", sa.String(64), nullable=False),
        sa.Column("amount_fen", _FEN, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sandbox_refund")),
    )
    op.create_index(
        "uq_sandbox_refund_out_refund_no",
        "sandbox_refund",
        ["merchant_id", "out_refund_no"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_table("sandbox_refund")
    op.drop_table("sandbox_payment")
    op.drop_table("payment_callback")
    op.drop_table("payment_refund")
    op.drop_table("payment_ledger")
    op.drop_table("payment_order")
