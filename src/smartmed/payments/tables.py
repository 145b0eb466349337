"""Payment tables, on the resource store's ``metadata`` (migration 0017).

Merchant side (ours):

- ``payment_order``: one order: who pays for what, the amount, the state
  (created | paid | fulfilled | refunded | expired), the provider's payment, and the money
  actually received and refunded (fen, from the ledger). The ChargeItem and Invoice are
  the FHIR record; this row is the working state they have no place for.
- ``payment_ledger``: one row per provider transaction that moved money (a payment
  received, a refund made), unique per (kind, provider transaction id): money is counted
  once however many callbacks and queries report it.
- ``payment_refund``: refunds asked for: pending until the provider confirmed them.
- ``payment_callback``: every callback received and what was done with it (audit trail;
  never personal data).

Sandbox provider side (a separate system in real life, here in the same database):

- ``sandbox_payment``: the provider's view of a payment (by merchant and out_trade_no).
- ``sandbox_refund``: the provider's refunds (by merchant and out_refund_no).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text

from smartmed.fhir.storage.tables import ID_LEN, PK, metadata

REF_LEN = 200

payment_order = Table(
    "payment_order",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("key", String(255), nullable=True),  # the caller's idempotency key
    Column("subject", String(REF_LEN), nullable=False),  # who pays: Patient/12, RelatedPerson/4
    Column("target", String(REF_LEN), nullable=False),  # Contract/9: what it pays for
    Column("purpose", String(64), nullable=False),
    Column("description", String(500), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    # created | paid | fulfilled | refunded | expired
    Column("state", String(16), nullable=False),
    Column("provider", String(32), nullable=False),
    Column("provider_ref", String(64), nullable=True),  # the provider's payment id
    Column("pay_url", Text, nullable=True),
    Column("qr", Text, nullable=True),
    Column("received_fen", BigInteger, nullable=False),  # from the ledger
    Column("refunded_fen", BigInteger, nullable=False),  # from the ledger
    Column("reserved_fen", BigInteger, nullable=False),  # refunds asked, not yet confirmed
    Column("anomaly", String(32), nullable=True),  # amount-mismatch | late-payment
    Column("charge_item_id", String(ID_LEN), nullable=False),
    Column("invoice_id", String(ID_LEN), nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("paid_at", DateTime(timezone=False), nullable=True),
    Column("fulfilled_at", DateTime(timezone=False), nullable=True),
    Column("closed_at", DateTime(timezone=False), nullable=True),  # expired or refunded
    Column("fulfilled_by", String(REF_LEN), nullable=True),
    Index("uq_payment_order_key", "key", unique=True),
    Index("ix_payment_order_state_expires_at", "state", "expires_at"),
    Index("ix_payment_order_subject", "subject"),
)

payment_ledger = Table(
    "payment_ledger",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("order_id", String(36), nullable=False),
    Column("kind", String(8), nullable=False),  # payment | refund
    Column("external_id", String(64), nullable=False),  # provider transaction id
    Column("amount_fen", BigInteger, nullable=False),
    Column("source", String(16), nullable=False),  # callback | query | refund
    Column("at", DateTime(timezone=False), nullable=False),
    Index("uq_payment_ledger_kind_external_id", "kind", "external_id", unique=True),
    Index("ix_payment_ledger_order_id", "order_id"),
)

payment_refund = Table(
    "payment_refund",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", String(36), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("requested_by", String(REF_LEN), nullable=False),
    Column("state", String(16), nullable=False),  # pending | succeeded | failed
    Column("provider_ref", String(64), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("finished_at", DateTime(timezone=False), nullable=True),
    Index("ix_payment_refund_order_id", "order_id"),
)

payment_callback = Table(
    "payment_callback",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("received_at", DateTime(timezone=False), nullable=False),
    # accepted | duplicate | replayed | bad-signature | malformed | unknown-order |
    # amount-mismatch | late-payment | refund-noted
    Column("outcome", String(20), nullable=False),
    Column("order_id", String(36), nullable=True),
    Column("nonce", String(64), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_payment_callback_order_id", "order_id"),
    Index("uq_payment_callback_nonce", "provider", "nonce", unique=True),
)

sandbox_payment = Table(
    "sandbox_payment",
    metadata,
    Column("id", String(36), primary_key=True),  # the provider's payment id
    Column("merchant_id", String(64), nullable=False),
    Column("out_trade_no", String(64), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("description", String(500), nullable=False),
    Column("notify_url", Text, nullable=False),
    Column("return_url", Text, nullable=True),
    # pending | paid | cancelled | closed
    Column("state", String(16), nullable=False),
    Column("paid_fen", BigInteger, nullable=False),
    Column("refunded_fen", BigInteger, nullable=False),
    Column("transaction_id", String(64), nullable=True),  # set when paid
    Column("created_at", DateTime(timezone=False), nullable=False),
    Column("expires_at", DateTime(timezone=False), nullable=False),
    Column("paid_at", DateTime(timezone=False), nullable=True),
    Column("notified_at", DateTime(timezone=False), nullable=True),  # merchant acknowledged
    Column("notify_attempts", Integer, nullable=False),
    Index("uq_sandbox_payment_out_trade_no", "merchant_id", "out_trade_no", unique=True),
)

sandbox_refund = Table(
    "sandbox_refund",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("merchant_id", String(64), nullable=False),
    Column("payment_id", String(36), nullable=False),
    Column("out_refund_no", String(64), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=False), nullable=False),
    Index("uq_sandbox_refund_out_refund_no", "merchant_id", "out_refund_no", unique=True),
)
