"""The R4 websocket channel (subscription.html#2.46.7.2) and its cross-process fan-out.

A client opens ``/ws/subscriptions``, sends ``bind <id>`` for a websocket Subscription
and receives ``bound <id>``; each notification then arrives as ``ping <id>`` and the
client reads the changes through the FHIR API with its own credentials (a ping carries
no data, and the delivery job has already checked that the owner may read the change).

Deliveries run as jobs in any process, but a socket lives in one app process: on
PostgreSQL a delivery is a ``NOTIFY smartmed_ws`` that every app process LISTENs to; on
SQLite the one process pings its sockets directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy import select, text

from smartmed.fhir.storage.tables import ID_LEN
from smartmed.jobs.tables import subscription

if TYPE_CHECKING:
    from smartmed.fhir.context import FhirEngine

log = structlog.get_logger("smartmed.jobs.websocket")
PATH = "/ws/subscriptions"


class Hub:
    """Open sockets of this process by subscription id."""

    def __init__(self) -> None:
        self.sockets: dict[str, set[WebSocket]] = {}
        self._listener: Any = None
        self._pending: set[asyncio.Task[int]] = set()

    def bind(self, sub_id: str, socket: WebSocket) -> None:
        self.sockets.setdefault(sub_id, set()).add(socket)

    def unbind(self, socket: WebSocket) -> None:
        for sub_id in list(self.sockets):
            self.sockets[sub_id].discard(socket)
            if not self.sockets[sub_id]:
                del self.sockets[sub_id]

    async def publish(self, engine: FhirEngine, sub_id: str) -> None:
        """Ping ``sub_id``'s sockets in whichever process holds them."""
        if engine.db.is_postgres:
            async with engine.db.write() as conn:
                await conn.execute(text("SELECT pg_notify('smartmed_ws', :id)"), {"id": sub_id})
        else:
            await self.ping(sub_id)

    async def ping(self, sub_id: str) -> int:
        """Send ``ping <id>`` to this process's sockets bound to ``sub_id``; how many."""
        sent = 0
        for socket in list(self.sockets.get(sub_id, ())):
            try:
                await socket.send_text(f"ping {sub_id}")
                sent += 1
            except Exception:  # noqa: BLE001 - a closed socket just leaves
                self.unbind(socket)
        return sent

    async def listen(self, engine: FhirEngine) -> None:
        """On PostgreSQL, relay ``smartmed_ws`` notifications to this process's sockets."""
        if not engine.db.is_postgres or self._listener is not None:
            return
        import asyncpg

        url = engine.db.url.set(drivername="postgresql").render_as_string(hide_password=False)

        def relay(_conn: Any, _pid: int, _channel: str, sub_id: str) -> None:
            task = asyncio.create_task(self.ping(sub_id))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        try:
            self._listener = await asyncpg.connect(url)
            await self._listener.add_listener("smartmed_ws", relay)
        except (OSError, asyncpg.PostgresError):
            log.warning("websocket fan-out unavailable: LISTEN failed")
            self._listener = None

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None


hub = Hub()


def build_websocket_router() -> APIRouter:
    """The websocket endpoint of the R4 websocket channel."""
    router = APIRouter()

    @router.websocket(PATH)
    async def subscriptions_socket(socket: WebSocket) -> None:
        engine: FhirEngine = socket.app.state.fhir
        await socket.accept()
        try:
            while True:
                message = (await socket.receive_text()).strip()
                verb, _, sub_id = message.partition(" ")
                sub_id = sub_id.strip()
                if verb != "bind" or not sub_id or len(sub_id) > ID_LEN:
                    await socket.send_text("error expected 'bind <subscription id>'")
                    continue
                async with engine.db.read() as conn:
                    row = (
                        await conn.execute(
                            select(subscription.c.channel, subscription.c.status).where(
                                subscription.c.id == sub_id
                            )
                        )
                    ).first()
                if row is None or row.channel != "websocket":
                    await socket.send_text(f"error {sub_id} is not a websocket subscription")
                    continue
                hub.bind(sub_id, socket)
                await socket.send_text(f"bound {sub_id}")
        except WebSocketDisconnect:
            pass
        finally:
            hub.unbind(socket)

    return router
