"""In-process wake-ups for open inbox streams.

When this process writes an inbox row it wakes the streams of that person at once. A
row written by another process (a job worker) is found by the stream's periodic inbox
check (``SMARTMED_NOTIFY_STREAM_POLL_SECONDS``), so the database stays the only truth
and a wake-up lost here only costs latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class Broker:
    """Person reference -> the events of the streams that person has open."""

    def __init__(self) -> None:
        self._streams: dict[str, set[asyncio.Event]] = {}

    @contextmanager
    def subscribe(self, owner: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``owner`` gets a new inbox message, while open."""
        event = asyncio.Event()
        self._streams.setdefault(owner, set()).add(event)
        try:
            yield event
        finally:
            streams = self._streams.get(owner)
            if streams is not None:
                streams.discard(event)
                if not streams:
                    del self._streams[owner]

    def publish(self, owner: str) -> int:
        """Wake ``owner``'s streams; how many there were."""
        streams = self._streams.get(owner, set())
        for event in streams:
            event.set()
        return len(streams)

    def open_streams(self, owner: str) -> int:
        return len(self._streams.get(owner, ()))


broker = Broker()
