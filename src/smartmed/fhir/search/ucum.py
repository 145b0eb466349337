"""UCUM canonical units, so that quantity searches compare across units (search.html#quantity).

"Canonical" here is the UCUM sense (https://ucum.org/ucum, §28 and the ucum-essence
definitions): every unit term reduces to a factor times a product of base units
(``m``, ``s``, ``g``, ``rad``, ``K``, ``C``, ``cd``), so ``1 kg`` is ``1000 g`` and
``5.4 mmol/L`` is ``5.4 mol.m-3``. Two quantities compare only when their canonical units
are equal: ``mmol/L`` (amount per volume) never meets ``mg/dL`` (mass per volume), since
no molar mass is known.

Units are parsed by ucumvert's UCUM grammar (the full UCUM syntax: prefixes, ``.``, ``/``,
exponents, parentheses, annotations ``{...}``, ``10*n``) and reduced with the official
``ucum-essence.xml`` that ucumvert ships (UCUM 2.2). Deliberate differences from UCUM:

- ``mol`` is kept as a base unit, as in SI. UCUM defines it as the number 6.02214076e23,
  which would make ``mmol/L`` comparable with ``10*9/L`` (cells per litre).
- Special (non-linear) units such as ``Cel``, ``[degF]``, ``[pH]`` and the bels are not
  convertible: such quantities match by their unit code only.
- An arbitrary unit (``[IU]``, ``[arb'U]``...) is a base unit of its own, so ``m[IU]/mL``
  converts to ``[IU]/L`` but to nothing else.
- Annotations are ignored (UCUM §12: ``{cells}/uL`` is ``/uL``).

Factors are computed in ``Decimal`` and rounded to 15 significant digits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Context, Decimal
from functools import lru_cache
from importlib import resources
from typing import Any
from xml.etree import ElementTree

UCUM = "http://unitsofmeasure.org"
_BASE_KEEP = frozenset({"mol"})  # defined by UCUM, but kept as base units (see above)
_CONTEXT = Context(prec=34)
_ROUND = Context(prec=15)


class UcumError(ValueError):
    """Not a valid UCUM unit code."""


@dataclass(frozen=True, slots=True)
class Canonical:
    """``1 <unit>`` equals ``factor <unit>`` in canonical units (``g.m-3`` style code)."""

    factor: float
    unit: str


class _NotConvertible(Exception):
    """A special unit: no linear conversion exists."""


_Dims = dict[str, int]
_Term = tuple[Decimal, _Dims]


def _multiply(a: _Term, b: _Term, sign: int = 1) -> _Term:
    dims = dict(a[1])
    for base, exp in b[1].items():
        dims[base] = dims.get(base, 0) + sign * exp
        if dims[base] == 0:
            del dims[base]
    factor = _CONTEXT.multiply(a[0], b[0]) if sign > 0 else _CONTEXT.divide(a[0], b[0])
    return factor, dims


def _power(term: _Term, exponent: int) -> _Term:
    return _CONTEXT.power(term[0], exponent), {b: e * exponent for b, e in term[1].items()}


class _Ucum:
    """The essence tables and a memo of reduced atoms."""

    def __init__(self) -> None:
        from ucumvert.parser import get_ucum_parser

        self._parser = get_ucum_parser()
        data = resources.files("ucumvert").joinpath("vendor/ucum-essence.xml").read_bytes()
        root = ElementTree.fromstring(data)  # noqa: S314 - a packaged, trusted file
        ns = "{http://unitsofmeasure.org/ucum-essence}"
        self.prefixes = {
            p.attrib["Code"]: Decimal(_value(p, ns).attrib["value"])
            for p in root.iter(f"{ns}prefix")
        }
        self.bases = {b.attrib["Code"] for b in root.iter(f"{ns}base-unit")} | _BASE_KEEP
        self.units: dict[str, tuple[Decimal, str, bool, bool]] = {}
        for unit in root.iter(f"{ns}unit"):
            value = _value(unit, ns)
            self.units[unit.attrib["Code"]] = (
                Decimal(value.attrib.get("value", "1")),
                value.attrib.get("Unit", "1"),
                unit.attrib.get("isSpecial") == "yes",
                unit.attrib.get("isArbitrary") == "yes",
            )
        self._atoms: dict[str, _Term | None] = {}
        self._lock = threading.Lock()

    def parse(self, code: str) -> Any:
        from ucumvert.parser import InvalidUcumError, parse_ucum

        try:
            with self._lock:  # lark parsers are not documented as thread-safe
                return parse_ucum(code, self._parser)
        except InvalidUcumError as exc:
            raise UcumError(f"'{code}' is not a valid UCUM unit") from exc

    def atom(self, code: str) -> _Term:
        """An atom (unit symbol without prefix) reduced to canonical form."""
        if code in self._atoms:
            found = self._atoms[code]
            if found is None:
                raise _NotConvertible(code)
            return found
        self._atoms[code] = None  # also breaks definition cycles
        if code in self.bases:
            term: _Term = (Decimal(1), {code: 1})
        else:
            value, unit, special, arbitrary = self.units.get(code, (Decimal(1), "", True, False))
            if special:
                raise _NotConvertible(code)
            if arbitrary and unit == "1":
                term = (Decimal(1), {code: 1})
            else:
                try:
                    defined = self.reduce(self.parse(unit))
                except UcumError as exc:  # a definition outside the grammar
                    raise _NotConvertible(code) from exc
                term = (_CONTEXT.multiply(value, defined[0]), defined[1])
        self._atoms[code] = term
        return term

    def reduce(self, node: Any) -> _Term:
        """Reduce a ucumvert parse tree (or token) to (factor, base-unit exponents)."""
        from lark import Token

        if isinstance(node, Token):
            if node.type == "ANNOTATION":
                return Decimal(1), {}
            raise UcumError(f"unexpected '{node}'")
        rule, children = node.data, node.children
        if rule == "main_term":
            if len(children) == 2:  # leading '/': the inverse
                return _multiply((Decimal(1), {}), self.reduce(children[1]), -1)
            return self.reduce(children[0])
        if rule == "term":
            left, operator, right = children
            return _multiply(self.reduce(left), self.reduce(right), -1 if operator == "/" else 1)
        if rule == "component":  # annotatable + annotation: the annotation is ignored
            return self.reduce(children[0])
        if rule == "annotatable":
            return _power(self.reduce(children[0]), int(children[1]))
        if rule == "simple_unit":
            if children[0].type == "FACTOR":
                return Decimal(str(children[0])), {}
            if len(children) == 2:
                factor, dims = self.atom(str(children[1]))
                return _CONTEXT.multiply(self.prefixes[str(children[0])], factor), dims
            return self.atom(str(children[0]))
        raise UcumError(f"unexpected UCUM construct {rule}")


def _value(element: ElementTree.Element, ns: str) -> ElementTree.Element:
    found = element.find(f"{ns}value")
    return found if found is not None else ElementTree.Element("value")


@lru_cache(maxsize=1)
def _ucum() -> _Ucum:
    return _Ucum()


def _unit_code(dims: _Dims) -> str:
    if not dims:
        return "1"
    return ".".join(base if exp == 1 else f"{base}{exp}" for base, exp in sorted(dims.items()))


@lru_cache(maxsize=4096)
def canonical(code: str) -> Canonical | None:
    """The canonical form of a UCUM unit code; None for special units.

    Raises ``UcumError`` when the code is not valid UCUM.
    """
    if not code or code != code.strip():
        raise UcumError(f"'{code}' is not a valid UCUM unit")
    ucum = _ucum()
    try:
        factor, dims = ucum.reduce(ucum.parse(code))
    except _NotConvertible:
        return None
    return Canonical(float(_ROUND.plus(factor)), _unit_code(dims))


def scale(value: float, factor: float) -> float:
    """``value × factor`` rounded to 15 significant digits (what a double holds exactly).

    A binary float product drifts in the last digits (4294 µmol/L → 4.2940000000000005
    mol/m³); stored and searched values are both rounded the same way so an exact
    conversion compares equal, and ``gt``/``lt`` stay strict.
    """
    return float(f"{value * factor:.15g}")


def try_canonical(code: str | None) -> Canonical | None:
    """Like ``canonical`` but None for anything that is not a convertible UCUM code."""
    if not code:
        return None
    try:
        return canonical(code)
    except UcumError:
        return None
