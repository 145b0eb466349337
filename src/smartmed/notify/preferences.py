"""Per-person channel preferences and quiet hours.

A person may switch channels off (never the in-app inbox: it is the record every other
channel falls back to) and set quiet hours, a daily local-time window (it may span
midnight, 22:00-07:00) in their own time zone, default ``SMARTMED_NOTIFY_TIMEZONE``.

Routine notifications due inside the window wait until its end. Urgent ones are never
delayed (issue 7: quiet hours are never applied to urgent clinical alerts), and for them
a switched-off channel is not dropped but moved to the end of the plan, as a last resort.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.fhir.errors import Invalid
from smartmed.fhir.model import utcnow
from smartmed.notify.errors import UnknownChannel
from smartmed.notify.tables import notify_preference

CHANNEL_NAMES = ("inapp", "email", "sms", "wechat")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True, slots=True)
class Preferences:
    """What one person chose; the defaults when they chose nothing."""

    disabled: frozenset[str] = frozenset()
    quiet_start: str | None = None  # "22:00"
    quiet_end: str | None = None  # "07:00"
    timezone: str | None = None  # IANA zone; None: the platform's

    def as_json(self, default_timezone: str) -> dict[str, object]:
        return {
            "channels": {name: name not in self.disabled for name in CHANNEL_NAMES},
            "quietHours": (
                {"start": self.quiet_start, "end": self.quiet_end}
                if self.quiet_start and self.quiet_end
                else None
            ),
            "timezone": self.timezone or default_timezone,
        }


def check_preferences(
    *, disabled: set[str], quiet_start: str | None, quiet_end: str | None, timezone: str | None
) -> Preferences:
    """Validated preferences; Invalid naming the bad field otherwise."""
    for name in sorted(disabled):
        if name not in CHANNEL_NAMES:
            raise UnknownChannel(
                f"unknown channel {name!r} (channels: {', '.join(CHANNEL_NAMES)})",
                expression=f"channels.{name}",
            )
    if "inapp" in disabled:
        raise Invalid(
            "the in-app inbox cannot be switched off: it keeps every notification",
            expression="channels.inapp",
        )
    if (quiet_start is None) != (quiet_end is None):
        raise Invalid("quiet hours need both start and end", expression="quietHours")
    for field, value in (("start", quiet_start), ("end", quiet_end)):
        if value is not None and not _HHMM.match(value):
            raise Invalid(
                f"quiet hours {field} {value!r} is not a time like 22:00",
                expression=f"quietHours.{field}",
            )
    if quiet_start is not None and quiet_start == quiet_end:
        raise Invalid("quiet hours start and end must differ", expression="quietHours")
    if timezone is not None:
        zone_of(timezone)
    return Preferences(frozenset(disabled), quiet_start, quiet_end, timezone)


def zone_of(name: str) -> ZoneInfo:
    """The IANA zone ``name``; Invalid if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"unknown time zone {name!r}", expression="timezone") from None


async def get_preferences(conn: AsyncConnection, owner: str) -> Preferences:
    """``owner``'s preferences (the defaults if they never set any)."""
    row = (
        await conn.execute(select(notify_preference).where(notify_preference.c.owner == owner))
    ).first()
    if row is None:
        return Preferences()
    return Preferences(
        frozenset(orjson.loads(row.disabled)), row.quiet_start, row.quiet_end, row.timezone
    )


async def do_set_preferences(conn: AsyncConnection, owner: str, prefs: Preferences) -> None:
    """Store ``owner``'s preferences (already checked)."""
    values = {
        "disabled": orjson.dumps(sorted(prefs.disabled)).decode(),
        "quiet_start": prefs.quiet_start,
        "quiet_end": prefs.quiet_end,
        "timezone": prefs.timezone,
        "updated_at": utcnow(),
    }
    result = await conn.execute(
        notify_preference.update().where(notify_preference.c.owner == owner).values(**values)
    )
    if result.rowcount == 0:
        await conn.execute(notify_preference.insert().values(owner=owner, **values))


def quiet_until(prefs: Preferences, now: datetime, default_timezone: str) -> datetime | None:
    """The end of the quiet window ``now`` (naive UTC) falls in, as naive UTC; else None."""
    if not prefs.quiet_start or not prefs.quiet_end:
        return None
    zone = zone_of(prefs.timezone or default_timezone)
    local = now.replace(tzinfo=UTC).astimezone(zone)
    start = time.fromisoformat(prefs.quiet_start)
    end = time.fromisoformat(prefs.quiet_end)
    clock = local.time().replace(tzinfo=None)
    if start < end:
        inside = start <= clock < end
    else:  # spans midnight
        inside = clock >= start or clock < end
    if not inside:
        return None
    day = local.date() if clock < end else local.date() + timedelta(days=1)
    wake = datetime.combine(day, end, tzinfo=zone)
    return wake.astimezone(UTC).replace(tzinfo=None)
