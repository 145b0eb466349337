"""Grants derived from resources by the policy's rules, kept in step by write hooks.

When a Contract, Consent, ServiceRequest, Encounter, Appointment or MedicationRequest is
written, its grants (``access_grant`` rows whose ``source`` is that resource) are replaced
in the same transaction, so a revoked consent or a terminated contract stops access at
once. Expressions are FHIRPath (fhirpathpy, R4 model) from the policy document.

fhirpathpy costs tens of µs per evaluation, and every written resource of a granting type
runs five or more expressions: each expression is compiled once, to the fast evaluator of
the search indexer when it is in its subset (plain member paths walked directly; ``when``
conditions made of ``path = 'x'``, ``path != 'x'``, ``path.exists()`` and
``path.where(f = 'x' and ...).exists()`` joined by ``and``/``or`` to small predicates), else
to fhirpathpy. fhirpathpy reads a primitive with a ``_name`` extension element differently
(``status = 'x'`` is false when ``_status`` is there) and keeps nulls of lists, so a
resource with either where a fast expression looks goes to fhirpathpy for that expression.
tests/access/test_grants_fast.py checks both give the same grants.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import fhirpathpy
import orjson
from fhirpathpy.models import models
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from smartmed.access.policy import GrantRule, Policy
from smartmed.access.tables import access_grant
from smartmed.fhir.hooks import WriteHooks
from smartmed.fhir.model import utcnow
from smartmed.fhir.search.convert import date_range
from smartmed.fhir.search.fhirpath_fast import Unsupported, compile_fast, split_top_level
from smartmed.fhir.storage.tables import resource

_MODEL = models["r4"]


Values = Callable[[dict[str, Any]], list[Any]]
Predicate = Callable[[dict[str, Any]], bool]


def _compile(expression: str) -> Values:
    fn = fhirpathpy.compile(expression, _MODEL)

    def run(body: dict[str, Any]) -> list[Any]:
        return [getattr(v, "data", v) for v in fn(body, {})]

    return run


class _Fallback(Exception):
    """The fast evaluation cannot tell this resource: ask fhirpathpy."""


# Member names that are choice elements somewhere ("start" of Timing..., "value[x]"): their
# extension elements are "_startDate" etc., so any key starting with "_start" counts.
_CHOICE_NAMES = frozenset(k.rsplit(".", 1)[1] for k in _MODEL["choiceTypePaths"])
_IDENT = r"[a-z][A-Za-z0-9_]*"
_LITERAL = r"'(?P<lit>[^'\\]*)'"
_COMPARE = re.compile(rf"^(?P<path>.+?)\s*(?P<op>!?=)\s*{_LITERAL}$")
_EXISTS = re.compile(r"^(?P<path>.+)\.exists\(\)$")
_WHERE = re.compile(r"^(?P<path>.+)\.where\((?P<cond>[^()]*)\)$")
_FIELD = re.compile(rf"^(?P<field>{_IDENT})\s*=\s*{_LITERAL}$")


def _split(expression: str, word: str) -> list[str]:
    """Split on a top-level ``word`` operator (outside parentheses and quotes)."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    token = f" {word} "
    while i < len(expression):
        char = expression[i]
        if char == "'":
            quoted = not quoted
        elif not quoted:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            elif depth == 0 and expression.startswith(token, i):
                parts.append(expression[start:i].strip())
                i += len(token)
                start = i
                continue
        i += 1
    parts.append(expression[start:].strip())
    return parts


def _irregular(data: dict[str, Any], name: str) -> bool:
    """Whether ``data`` holds the extension element of member ``name`` or a list with a
    null for it: fhirpathpy reads both differently from the fast evaluator."""
    if "_" + name in data:
        return True
    value = data.get(name)
    if type(value) is list and None in value:
        return True
    if name in _CHOICE_NAMES:
        for key, value in data.items():
            if key.startswith("_" + name) or (
                key.startswith(name) and type(value) is list and None in value
            ):
                return True
    return False


def _segments(expression: str) -> list[str]:
    """The top-level ``.``-separated steps of a path."""
    return split_top_level(expression, ".")


_WHERE_FIELD = re.compile(rf"^where\(\s*(?P<field>{_IDENT})\s*=\s*{_LITERAL}\s*\)$")
_EXTENSION_URL = re.compile(rf"^extension\(\s*{_LITERAL}\s*\)$")
_TYPE_FILTER = re.compile(r"^(?:ofType|as)\(\s*[A-Z][\w.]*\s*\)$")


def _walk(names: list[str]) -> Values:
    """A path of plain members, none a choice element: what the fast evaluator's member
    steps give, walked at once, checking the extension elements on the way."""
    underscored = [(name, "_" + name) for name in names]

    def values(body: dict[str, Any]) -> list[Any]:
        nodes: list[Any] = [body]
        for name, extension in underscored:
            out: list[Any] = []
            for data in nodes:
                if type(data) is not dict:
                    continue
                if extension in data:
                    raise _Fallback
                value = data.get(name)
                if value is None:
                    continue
                if type(value) is list:
                    if None in value:
                        raise _Fallback
                    out.extend(value)
                else:
                    out.append(value)
            if not out:
                return out
            nodes = out
        return nodes

    return values


def _fast_values(expression: str) -> Values:
    """The fast evaluation of a path, raising ``_Fallback`` for a resource where one of its
    members (or a field a ``where`` compares) has an extension element (``_name``) or a
    list with a null, which fhirpathpy reads differently; ``Unsupported`` outside the fast
    subset."""
    expression = expression.strip()
    full = compile_fast(expression)
    steps = _segments(expression)
    if all(re.fullmatch(_IDENT, step) and step not in _CHOICE_NAMES for step in steps):
        return _walk(steps)
    # (the path to the elements holding the member, the member)
    guards: list[tuple[str, str]] = []
    for k, step in enumerate(steps):
        before = ".".join(steps[:k])
        if re.fullmatch(_IDENT, step):
            guards.append((before, step))
        elif k == 0 and re.fullmatch(r"[A-Z]\w*", step):
            continue
        elif field := _WHERE_FIELD.match(step):
            guards.append((before, field.group("field")))
        elif _EXTENSION_URL.match(step):
            guards.append((before, "extension"))
            guards.append((f"{before}.extension" if before else "extension", "url"))
        elif not _TYPE_FILTER.match(step):
            raise Unsupported(step)
    checks = [(compile_fast(before) if before else None, name) for before, name in guards]

    def values(body: dict[str, Any]) -> list[Any]:
        for prefix, name in checks:
            parents = [body] if prefix is None else [n[0] for n in prefix(body)]
            for parent in parents:
                if type(parent) is dict and _irregular(parent, name):
                    raise _Fallback
        return [n[0] for n in full(body)]

    return values


def _fast_path(expression: str) -> Values:
    """The values of a path expression: fast when possible, fhirpathpy otherwise."""
    slow = _compile(expression)
    prefix_filter = re.match(
        rf"^(?P<path>.+)\.where\(\$this\.startsWith\({_LITERAL}\)\)$", expression.strip()
    )
    fast: Values
    try:
        if prefix_filter:
            inner = _fast_values(prefix_filter.group("path"))
            lit = prefix_filter.group("lit")

            def starting(body: dict[str, Any]) -> list[Any]:
                return [v for v in inner(body) if type(v) is str and v.startswith(lit)]

            fast = starting

        else:
            fast = _fast_values(expression)
    except Unsupported:
        return slow

    def run(body: dict[str, Any]) -> list[Any]:
        try:
            return fast(body)
        except _Fallback:
            return slow(body)

    return run


def _single(values: list[Any], literal: str) -> bool:
    return len(values) == 1 and type(values[0]) is str and values[0] == literal


def _atom(text: str) -> Predicate:
    """One condition of a ``when``, true exactly when fhirpathpy's result is ``[True]``
    (``_Fallback`` where it cannot tell)."""
    text = text.strip()
    compare = _COMPARE.match(text)
    if compare and "(" not in compare.group("path"):
        values = _fast_values(compare.group("path"))
        literal = compare.group("lit")
        if compare.group("op") == "=":
            return lambda body: _single(values(body), literal)

        def differs(body: dict[str, Any]) -> bool:
            found = values(body)
            return bool(found) and not _single(found, literal)

        return differs
    exists = _EXISTS.match(text)
    if exists is None:
        raise Unsupported(text)
    where = _WHERE.match(exists.group("path"))
    if where is None:
        path = _fast_values(exists.group("path"))
        return lambda body: bool(path(body))
    items = _fast_values(where.group("path"))
    fields: list[tuple[str, str]] = []
    for part in _split(where.group("cond"), "and"):
        field = _FIELD.match(part)
        if field is None:
            raise Unsupported(part)
        fields.append((field.group("field"), field.group("lit")))

    def found(item: Any) -> bool:
        if type(item) is not dict:
            return False
        for name, literal in fields:
            if _irregular(item, name):
                raise _Fallback
            value = item.get(name)
            if type(value) is list:
                if len(value) != 1:
                    return False
                value = value[0]
            if type(value) is not str or value != literal:
                return False
        return True

    return lambda body: any([found(item) for item in items(body)])


def _slow_when(expression: str) -> Predicate:
    slow = _compile(expression)
    return lambda body: _when_true(slow(body))


def _when(expression: str) -> Predicate:
    """A ``when`` condition: a predicate for ``or``s of ``and``s of simple conditions,
    else whether fhirpathpy's result is all true."""
    fallback = _slow_when(expression)
    text = expression.strip()
    if text == "true":
        return lambda body: True
    try:
        alternatives = [
            [_atom(c) for c in _split(alternative, "and")] for alternative in _split(text, "or")
        ]
    except Unsupported:
        return fallback

    def when(body: dict[str, Any]) -> bool:
        try:
            return any(all(c(body) for c in conds) for conds in alternatives)
        except _Fallback:
            return fallback(body)

    return when


@dataclass(frozen=True, slots=True)
class _Rule:
    rule: GrantRule
    when: Predicate
    patient: Values
    grantee: Values
    period: Values | None
    start: Values | None
    end: Values | None
    actions: Values | None


def _when_true(values: list[Any]) -> bool:
    return bool(values) and all(v is True for v in values)


def _instant(value: Any, *, end: bool) -> datetime | None:
    if not isinstance(value, str):
        return None
    found = date_range(value)
    if found is None:
        return None
    return found[1] if end else found[0]


class GrantDeriver:
    """The compiled grant rules of a policy."""

    def __init__(self, policy: Policy, *, fast: bool = True) -> None:
        self.by_type: dict[str, list[_Rule]] = {}
        opt = _fast_path if fast else _compile
        when = _when if fast else _slow_when
        for rule in policy.grants:
            self.by_type.setdefault(rule.source, []).append(
                _Rule(
                    rule,
                    when(rule.when),
                    opt(rule.patient),
                    opt(rule.grantee),
                    opt(rule.period) if rule.period else None,
                    opt(rule.from_) if rule.from_ else None,
                    opt(rule.to) if rule.to else None,
                    opt(rule.actions) if rule.actions else None,
                )
            )

    @property
    def types(self) -> Iterable[str]:
        return self.by_type.keys()

    def rows(self, type_: str, id_: str, body: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The ``access_grant`` rows resource ``type_/id_`` grants (none when deleted)."""
        if body is None:
            return []
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for compiled in self.by_type.get(type_, ()):
            rule = compiled.rule
            if not compiled.when(body):
                continue
            start = end = None
            if compiled.period is not None:
                for period in compiled.period(body):
                    if isinstance(period, dict):
                        start = _instant(period.get("start"), end=False)
                        end = _instant(period.get("end"), end=True)
                        break
            if compiled.start is not None:
                start = next((_instant(v, end=False) for v in compiled.start(body)), None)
            if compiled.end is not None:
                end = next((_instant(v, end=True) for v in compiled.end(body)), None)
            if end is None and rule.default_days is not None:
                end = (start or now) + timedelta(days=rule.default_days)
            if end is not None and rule.extend_days:
                end += timedelta(days=rule.extend_days)
            actions = None
            if compiled.actions is not None:
                actions = " ".join(sorted({str(a) for a in compiled.actions(body)}))
            patients = {
                p.removeprefix("Patient/")
                for p in compiled.patient(body)
                if isinstance(p, str) and p.startswith("Patient/")
            }
            grantees = {g for g in compiled.grantee(body) if isinstance(g, str) and "/" in g}
            for patient in sorted(patients):
                for grantee in sorted(grantees):
                    rows.append(
                        {
                            "source": f"{type_}/{id_}",
                            "kind": rule.kind,
                            "grantee": grantee,
                            "patient_id": patient,
                            "resource_type": type_ if rule.resource_only else None,
                            "resource_id": id_ if rule.resource_only else None,
                            "actions": actions,
                            "valid_from": start,
                            "valid_to": end,
                            "reason": None,
                            "created_at": now,
                        }
                    )
        return rows

    async def replace(
        self, conn: AsyncConnection, type_: str, id_: str, content: str | None
    ) -> None:
        """Make the grants of ``type_/id_`` match its stored content."""
        await conn.execute(delete(access_grant).where(access_grant.c.source == f"{type_}/{id_}"))
        rows = self.rows(type_, id_, orjson.loads(content) if content is not None else None)
        if rows:
            await conn.execute(insert(access_grant), rows)

    def install(self, hooks: WriteHooks) -> None:
        """Keep the grants in step with every write of a granting type: per batch of
        writes, one DELETE for the updated/deleted ones (a new resource has no grants
        yet) and one INSERT."""
        types = frozenset(self.types)

        async def after(
            conn: AsyncConnection, writes: list[tuple[str, str, str, str | None]]
        ) -> None:
            changed = [
                f"{t}/{i}" for t, i, action, _ in writes if t in types and action != "create"
            ]
            if changed:
                await conn.execute(delete(access_grant).where(access_grant.c.source.in_(changed)))
            rows = [
                g
                for t, i, _, content in writes
                if t in types and content is not None
                for g in self.rows(t, i, orjson.loads(content))
            ]
            if rows:
                await conn.execute(insert(access_grant), rows)

        hooks.add_after_batch(after)

    async def rebuild(self, conn: AsyncConnection, *, batch: int = 500) -> int:
        """Derive every grant again from the stored resources; the number of grants."""
        await conn.execute(
            delete(access_grant).where(access_grant.c.source.not_like("break-glass/%"))
        )
        total = 0
        r = resource.c
        for type_ in self.types:
            last = 0
            while True:
                rows = (
                    await conn.execute(
                        select(r.pk, r.id, r.content)
                        .where(r.type == type_, r.deleted.is_(False), r.pk > last)
                        .order_by(r.pk)
                        .limit(batch)
                    )
                ).all()
                if not rows:
                    break
                last = rows[-1].pk
                grants = [
                    g for row in rows for g in self.rows(type_, row.id, orjson.loads(row.content))
                ]
                if grants:
                    await conn.execute(insert(access_grant), grants)
                total += len(grants)
        return total
