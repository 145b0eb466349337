"""Location ``near`` (https://hl7.org/fhir/R4/location.html#positional): positions and distances.

A position is stored as latitude/longitude in degrees and as its unit vector (x, y, z) on a
sphere. A search first narrows by a latitude/longitude bounding box (indexable), then keeps
the positions whose chord to the searched point is at most ``2 sin(d / 2R)``: that is the
exact great-circle test, written with arithmetic only, so SQLite and PostgreSQL agree.

Precision: the Earth is taken as a sphere of the IUGG mean radius 6371.0088 km; against
the WGS84 ellipsoid, distances are off by at most about 0.5 %. Floating point adds
nothing measurable (sub-millimetre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from smartmed.fhir.search.index import GeoValue

EARTH_RADIUS_M = 6_371_008.8


def _degrees(value: Any, limit: float) -> float | None:
    if type(value) not in (int, float, Decimal):
        return None
    number = float(value)
    return number if -limit <= number <= limit else None


def unit_vector(lat: float, lon: float) -> tuple[float, float, float]:
    """The point on the unit sphere at a latitude and longitude in degrees."""
    phi, lam = math.radians(lat), math.radians(lon)
    return math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)


def position(data: Any) -> GeoValue | None:
    """A Location.position (latitude and longitude in decimal degrees, WGS84) as a GeoValue."""
    if type(data) is not dict:
        return None
    lat, lon = _degrees(data.get("latitude"), 90), _degrees(data.get("longitude"), 180)
    if lat is None or lon is None:
        return None
    return GeoValue(lat, lon, *unit_vector(lat, lon))


@dataclass(frozen=True, slots=True)
class Area:
    """What a ``near`` search covers: a bounding box and the exact chord limit."""

    lat_low: float
    lat_high: float
    # Longitude intervals (two when the box crosses the antimeridian); () for all.
    lon_ranges: tuple[tuple[float, float], ...]
    center: tuple[float, float, float]
    max_chord_squared: float


def area(lat: float, lon: float, distance_m: float) -> Area:
    """The area within ``distance_m`` metres of a point (great-circle distance)."""
    angle = min(distance_m / EARTH_RADIUS_M, math.pi)
    chord = 2 * math.sin(angle / 2)
    spread = math.degrees(angle)
    lat_low, lat_high = max(-90.0, lat - spread), min(90.0, lat + spread)
    lon_ranges: tuple[tuple[float, float], ...] = ()
    if lat_low > -90 and lat_high < 90:
        # The widest longitude span of a spherical cap that stays off the poles.
        ratio = math.sin(angle) / math.cos(math.radians(lat))
        if ratio < 1:
            half = math.degrees(math.asin(ratio))
            low, high = lon - half, lon + half
            if low < -180:
                lon_ranges = ((low + 360, 180.0), (-180.0, high))
            elif high > 180:
                lon_ranges = ((low, 180.0), (-180.0, high - 360))
            else:
                lon_ranges = ((low, high),)
    # A hair of slack so that a point exactly at the distance is kept despite rounding.
    return Area(lat_low, lat_high, lon_ranges, unit_vector(lat, lon), chord * chord * (1 + 1e-12))


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in metres between two (lat, lon) points (haversine)."""
    phi1, phi2 = math.radians(a[0]), math.radians(b[0])
    dphi, dlam = phi2 - phi1, math.radians(b[1] - a[1])
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


DEFAULT_DISTANCE_M = 10_000.0


def parse_near(text: str) -> tuple[float, float, float]:
    """``latitude|longitude[|distance[|units]]`` as (lat, lon, metres); ValueError if bad.

    location.html#positional: units are a UCUM length code, ``km`` when omitted; with no
    distance the server decides what is near (here 10 km).
    """
    from smartmed.fhir.search.ucum import UcumError, canonical

    pieces = text.split("|")
    if len(pieces) < 2 or len(pieces) > 4 or not pieces[0] or not pieces[1]:
        raise ValueError("near needs latitude|longitude[|distance[|units]]")
    try:
        lat, lon = float(pieces[0]), float(pieces[1])
        distance = float(pieces[2]) if len(pieces) > 2 and pieces[2] else None
    except ValueError:
        raise ValueError(f"near: '{text}' has a part that is not a number") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("near: latitude must be within ±90 and longitude within ±180")
    if distance is None:
        return lat, lon, DEFAULT_DISTANCE_M
    if not (math.isfinite(distance) and distance >= 0):
        raise ValueError("near: the distance must be a non-negative number")
    unit = pieces[3] if len(pieces) > 3 and pieces[3] else "km"
    unit = {"mi": "[mi_i]"}.get(unit, unit)  # the plain mile, as clients often write it
    try:
        found = canonical(unit)
    except UcumError:
        found = None
    if found is None or found.unit != "m":
        raise ValueError(f"near: '{unit}' is not a UCUM unit of length")
    return lat, lon, distance * found.factor
