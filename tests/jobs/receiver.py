"""A local HTTP endpoint (aiohttp) that records what it receives, for delivery tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers ``status`` (per path, default 200) after ``delay`` seconds (per path)."""

    base: str = ""
    received: list[Received] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.delay.get(request.path, 0))
        self.received.append(Received(request.path, dict(request.headers), body, loop.time()))
        return web.Response(status=self.status.get(request.path, 200))


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 on a free port."""
    rec = Receiver()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.base = f"http://127.0.0.1:{port}"
    try:
        yield rec
    finally:
        await runner.cleanup()
