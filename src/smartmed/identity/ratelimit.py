"""In-process token buckets for the login and token endpoints.

One bucket per key (client IP, account name). State lives in this process only: a
deployment with several worker processes gets several buckets per key and must move the
buckets to Redis (a shared INCR/EXPIRE or a Lua token bucket) — not built yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucket:
    """``rate_per_minute`` requests per minute per key, bursts up to ``burst``."""

    def __init__(self, rate_per_minute: int, burst: int | None = None, max_keys: int = 100_000):
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst if burst is not None else rate_per_minute)
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """0 when the request may go ahead, else the seconds to wait before retrying."""
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()  # crude bound on memory under a flood of keys
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate
