"""A local payment provider that behaves like a real one, over HTTP (docs/payments.md).

It keeps its own tables (``sandbox_payment``, ``sandbox_refund``), authenticates every
merchant request by its HMAC signature, shows a phone-sized checkout page with a QR code,
and after a payment sends a signed callback to the merchant's notify URL, retried with
back-off as a durable job until the merchant answers 2xx. The merchant side only ever
reaches it through HTTP (``payments.provider.SandboxProvider``).
"""
