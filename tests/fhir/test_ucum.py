"""UCUM canonical forms, and quantities that match whatever compatible unit they are searched in."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smartmed.fhir.definitions.locate import DefinitionsNotFound, locate_definitions
from smartmed.fhir.search.convert import decimal_range, with_canonical
from smartmed.fhir.search.extract import get_extractor
from smartmed.fhir.search.index import QuantityValue
from smartmed.fhir.search.params import SearchRegistry, get_registry
from smartmed.fhir.search.query import QuantityQuery, parse_search
from smartmed.fhir.search.ucum import UCUM, Canonical, UcumError, canonical, try_canonical


@pytest.mark.parametrize(
    ("code", "factor", "unit"),
    [
        ("g", 1, "g"),
        ("kg", 1000, "g"),
        ("mg", 1e-3, "g"),
        ("[lb_av]", 453.59237, "g"),
        ("mmol/L", 1, "m-3.mol"),
        ("umol/L", 1e-3, "m-3.mol"),
        ("meq/L", 1, "m-3.mol"),  # UCUM: eq is mol
        ("mg/dL", 10, "g.m-3"),
        ("g/L", 1000, "g.m-3"),
        ("mm[Hg]", 133322, "g.m-1.s-2"),  # UCUM defines m[Hg] as 133.3220 kPa
        ("kPa", 1e6, "g.m-1.s-2"),
        ("/min", 1 / 60, "s-1"),
        ("{beats}/min", 1 / 60, "s-1"),  # annotations are ignored (UCUM §12)
        ("%", 0.01, "1"),
        ("10*9/L", 1e12, "m-3"),
        ("10*3/uL", 1e12, "m-3"),
        ("kg/m2", 1000, "g.m-2"),
        ("mL/min/{1.73_m2}", 1e-6 / 60, "m3.s-1"),
        ("ug/(kg.min)", 1e-9 / 60, "s-1"),
        ("a", 365.25 * 86400, "s"),
        ("[IU]/L", 1000, "[iU].m-3"),  # arbitrary units convert only among themselves
        ("m[IU]/mL", 1000, "[iU].m-3"),
        ("1", 1, "1"),
    ],
)
def test_canonical_forms(code: str, factor: float, unit: str) -> None:
    found = canonical(code)
    assert found is not None
    assert found.unit == unit
    assert math.isclose(found.factor, factor, rel_tol=1e-12)


def test_special_and_invalid_units() -> None:
    for special in ("Cel", "[degF]", "[pH]", "dB", "B[SPL]"):
        assert canonical(special) is None  # not linear: compared by code only
    for bad in ("notaunit", "mg//dL", "kg m", "", " kg", "mmol/LL"):
        with pytest.raises(UcumError):
            canonical(bad)
        assert try_canonical(bad) is None
    assert canonical("mmol/L") != canonical("mg/dL")
    assert canonical("mmol/L") == Canonical(1.0, "m-3.mol")


@pytest.fixture(scope="module")
def registry() -> SearchRegistry:
    try:
        folder: Path = locate_definitions(None)
    except DefinitionsNotFound:
        pytest.skip("FHIR definitions not installed: run `npm ci`")
    get_extractor(folder)
    return get_registry(folder)


# Groups of mutually convertible units, as clinical data writes them.
COMPATIBLE = [
    ["g", "kg", "mg", "ug", "[lb_av]", "[oz_av]"],
    ["mmol/L", "umol/L", "mol/m3", "mmol/dL", "nmol/mL"],
    ["mg/dL", "g/L", "ug/mL", "kg/m3"],
    ["mm[Hg]", "kPa", "Pa", "cm[H2O]", "bar"],
    ["s", "min", "h", "d", "wk", "a", "mo"],
    ["/min", "/s", "/h", "{beats}/min"],
    ["m", "cm", "mm", "[in_i]", "[ft_i]", "km"],
    ["10*9/L", "10*3/uL", "/nL", "/mm3"],
    ["[IU]/L", "m[IU]/mL", "[iU]/dL"],
]


@settings(max_examples=300, deadline=None)
@given(
    group=st.sampled_from(COMPATIBLE),
    data=st.data(),
    digits=st.integers(1, 6),
    scale=st.integers(-4, 4),
)
def test_a_stored_quantity_matches_in_any_compatible_unit(
    registry: SearchRegistry, group: list[str], data: st.DataObject, digits: int, scale: int
) -> None:
    stored_unit = data.draw(st.sampled_from(group))
    search_unit = data.draw(st.sampled_from(group))
    mantissa = data.draw(st.integers(1, 10**digits - 1))
    stored = with_canonical(
        QuantityValue(*decimal_range(f"{mantissa}e{scale}") or (0, 0, 0), UCUM, stored_unit, None)
    )
    assert stored.canon_value is not None and stored.canon_unit is not None
    stored_factor = canonical(stored_unit)
    search_factor = canonical(search_unit)
    assert stored_factor is not None and search_factor is not None
    # The stored value written in the search unit, to 10 significant digits. A value that
    # lies exactly half a unit from that rounding sits on the range's exclusive upper
    # edge, which search.html#prefix puts outside: those draws are not this property.
    exact = (
        Decimal(f"{mantissa}e{scale}")
        * Decimal(repr(stored_factor.factor))
        / Decimal(repr(search_factor.factor))
    )
    converted = f"{float(exact):.10g}"
    half = Decimal(5).scaleb(int(Decimal(converted).as_tuple().exponent) - 1)
    assume(abs(exact - Decimal(converted)) != half)
    request = parse_search(
        "Observation",
        [("value-quantity", f"{converted}|{UCUM}|{search_unit}")],
        registry,
        strict=True,
        default_count=20,
        max_count=100,
    )
    query = request.params[0].values[0].value
    assert isinstance(query, QuantityQuery) and query.canon is not None
    _, low, high, unit = query.canon
    # The `eq` test of sql.py: the stored canonical value inside the search range.
    assert unit == stored.canon_unit
    assert low <= stored.canon_value < high
