"""The engine's protector (``fhir/storage/protect.py``) for sensitive identifiers.

- ``seal``: protected values become ``enc:v1:<kid>:<base64url(nonce|ciphertext|tag)>``,
  sealed with the active data key (associated data ``enc:v1:<kid>``); the index form
  carries ``bidx:<kid>:<base64url(MAC(blind key, value)[:16])>`` instead.
- ``reveal``: one regular-expression pass over the stored JSON text, and only when it
  holds the ``enc:v1:`` marker; every other text is returned as it is.
- keys: loaded (and the first ones created) on the first use of the database, then
  looked at again every ``encryption_refresh_seconds`` so that a key made by
  ``smartmed keys rotate`` in another process is used here too. A value naming a key
  this process does not hold yet makes it reload the key table at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.exc import IntegrityError

from smartmed.crypto import keys as keystore
from smartmed.crypto.ciphers import Suite
from smartmed.crypto.errors import CryptoError, DecryptError, KeyUnavailable
from smartmed.crypto.keys import ACTIVE, BLIND, DATA, Key, b64decode, b64encode
from smartmed.crypto.policy import MARK, Policy, Sealer
from smartmed.fhir import jsonio
from smartmed.fhir.model import utcnow
from smartmed.fhir.storage.protect import Sealed

if TYPE_CHECKING:
    from smartmed.fhir.storage.database import Database

_TOKEN = re.compile(r'"enc:v1:([a-z][0-9]{1,9}):([A-Za-z0-9_-]+)"')
_KIDS = re.compile(r"enc:v1:([a-z][0-9]{1,9}):")
BLIND_BYTES = 16
# Set while this task loads keys, so its own database use does not ask for them again.
_loading: contextvars.ContextVar[bool] = contextvars.ContextVar("smartmed_keys", default=False)


class CryptoProtector:
    """Seals, reveals and blinds with the keys of one database."""

    def __init__(
        self,
        *,
        kek: bytes,
        algorithm: Suite,
        policy: Policy,
        url: str,
        enabled: bool = True,
        refresh_seconds: float = 60.0,
    ) -> None:
        self.kek = kek
        self.algorithm = algorithm
        self.policy = policy
        self.enabled = enabled
        self.url = url
        self.refresh_seconds = refresh_seconds
        self.keys: dict[str, Key] = {}
        self.active: Key | None = None
        self.blind_key: Key | None = None
        self._ready = False
        self._next_refresh = 0.0
        self._lock: asyncio.Lock | None = None

    # -- the engine's interface --------------------------------------------------------

    def seal(self, resource: dict[str, Any], text: str) -> Sealed | None:
        """The stored and index forms of a resource; None when nothing is protected."""
        if not self.enabled:
            return None
        resource_type = resource.get("resourceType")
        if not self.policy.may_hold(resource_type if type(resource_type) is str else "", text):
            return None
        forms = Sealer(self.policy, self.seal_value, self.blind).run(resource)
        if forms is None:
            return None
        stored, indexed = forms
        return Sealed(jsonio.dumps(stored), indexed)

    def reveal(self, stored: str) -> str:
        """Stored JSON text with every sealed value decrypted (as a JSON string)."""
        if MARK not in stored:
            return stored
        return _TOKEN.sub(self._reveal_match, stored)

    def seal_text(self, text: str) -> str:
        """A whole text sealed (saved response bodies)."""
        if not self.enabled:
            return text
        return self.seal_value(text)

    def reveal_text(self, stored: str) -> str:
        """The inverse of ``seal_text``; a text that was not sealed is returned as it is."""
        if not stored.startswith(MARK):
            return stored
        kid, _, data = stored[len(MARK) :].partition(":")
        return self.open_value(kid, data)

    def blind(self, value: str) -> str:
        """The blind-index token of a value."""
        key = self.blind_key
        if key is None:  # no blind key: nothing was ever blinded (protection never enabled)
            return value
        mac = key.suite.mac(key.secret, value.encode())[:BLIND_BYTES]
        return f"bidx:{key.kid}:{b64encode(mac)}"

    def refresh_due(self) -> bool:
        """Keys not loaded yet, or not looked at for ``refresh_seconds``."""
        if _loading.get():
            return False
        return not self._ready or time.monotonic() >= self._next_refresh

    async def refresh(self, db: Database) -> None:
        """Load the keys (creating the first ones); one task at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._ready and self._lock.locked():
            return  # another task is already looking; the current keys still serve
        async with self._lock:
            if self.refresh_due():
                await self.load(db, create=self.enabled)

    # -- values ------------------------------------------------------------------------

    def seal_value(self, value: str) -> str:
        """``enc:v1:<kid>:<data>`` for ``value`` under the active data key."""
        key = self.active
        if key is None:
            raise CryptoError("no active data key is loaded (database not prepared)")
        sealed = key.suite.encrypt(key.secret, value.encode(), _aad(key.kid))
        return f"{MARK}{key.kid}:{b64encode(sealed)}"

    def open_value(self, kid: str, data: str) -> str:
        """The plaintext of a sealed value."""
        key = self.keys.get(kid)
        if key is None:
            self.reload_blocking()
            key = self.keys.get(kid)
            if key is None:
                raise KeyUnavailable(f"a stored value names data key {kid!r}, which is unknown")
        try:
            return key.suite.decrypt(key.secret, b64decode(data), _aad(kid)).decode()
        except (DecryptError, ValueError, UnicodeDecodeError):
            raise DecryptError(f"a value sealed with key {kid!r} does not decrypt") from None

    def _reveal_match(self, match: re.Match[str]) -> str:
        return orjson.dumps(self.open_value(match.group(1), match.group(2))).decode()

    def stale_kids(self, stored: str) -> bool:
        """Whether ``stored`` holds values sealed with another key than the active one."""
        active = self.active.kid if self.active is not None else None
        return any(kid != active for kid in _KIDS.findall(stored))

    # -- keys ------------------------------------------------------------------------

    async def load(self, db: Database, *, create: bool) -> None:
        """Read the key table; with ``create``, add the first blind and data keys it lacks."""
        token = _loading.set(True)
        try:
            async with db.engine.connect() as conn:
                if not await keystore.table_exists(conn):
                    return  # not migrated yet: asked again on the next use
                found = await keystore.load_keys(conn, self.kek)
            self._install(found)
            if create and (self.active is None or self.blind_key is None):
                await self._create_missing(db)
            self._ready = True
            self._next_refresh = time.monotonic() + self.refresh_seconds
        finally:
            _loading.reset(token)

    async def _create_missing(self, db: Database) -> None:
        try:
            async with db.write() as conn:
                found = await keystore.load_keys(conn, self.kek)
                now = utcnow()
                if not any(k.purpose == BLIND for k in found.values()):
                    key = await keystore.add_key(
                        conn,
                        self.kek,
                        purpose=BLIND,
                        algorithm=self.algorithm,
                        existing=found,
                        now=now,
                    )
                    found[key.kid] = key
                if _active_data(found, self.algorithm) is None:
                    key = await keystore.add_key(
                        conn,
                        self.kek,
                        purpose=DATA,
                        algorithm=self.algorithm,
                        existing=found,
                        now=now,
                    )
                    found[key.kid] = key
        except IntegrityError:  # another process made them first: use theirs
            async with db.engine.connect() as conn:
                found = await keystore.load_keys(conn, self.kek)
        self._install(found)

    def _install(self, found: dict[str, Key]) -> None:
        self.keys = found
        self.active = _active_data(found, self.algorithm)
        blinds = [k for k in found.values() if k.purpose == BLIND]
        # One blind key serves the index; the first one made, as the index rows use it.
        self.blind_key = min(blinds, key=lambda k: k.number) if blinds else None

    async def add_data_key(self, db: Database) -> Key:
        """A new active data key (``smartmed keys rotate``); the others are retired."""
        async with db.write() as conn:
            found = await keystore.load_keys(conn, self.kek)
            key = await keystore.add_key(
                conn,
                self.kek,
                purpose=DATA,
                algorithm=self.algorithm,
                existing=found,
                now=utcnow(),
            )
            await keystore.retire_others(conn, key.kid)
            found = await keystore.load_keys(conn, self.kek)
        self._install(found)
        return key

    def reload_blocking(self, *, create: bool = False) -> None:
        """Load the key table now, from synchronous code (own thread, loop and engine)."""
        if self.url.endswith(":memory:") or self.url.endswith("://"):
            return  # an in-memory database is not visible to another engine
        failure: list[BaseException] = []

        async def run() -> None:
            from smartmed.fhir.storage.database import Database

            temporary = Database(self.url, pool_size=1)
            try:
                await self.load(temporary, create=create)
            finally:
                await temporary.dispose()

        def target() -> None:
            try:
                asyncio.run(run())
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                failure.append(exc)

        thread = threading.Thread(target=target, name="smartmed-keys")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]


def _aad(kid: str) -> bytes:
    return f"{MARK}{kid}".encode()


def _active_data(found: dict[str, Key], algorithm: Suite) -> Key | None:
    candidates = [
        k
        for k in found.values()
        if k.purpose == DATA and k.state == ACTIVE and k.suite.name == algorithm.name
    ]
    return max(candidates, key=lambda k: k.number) if candidates else None
