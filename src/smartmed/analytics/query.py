"""A checked ViewDefinition → one SQL query for a dialect.

The select tree becomes lateral joins on the resource row
(https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/#processing-algorithm): ``forEach`` a
``CROSS JOIN LATERAL`` over the collection, ``forEachOrNull`` a ``LEFT JOIN LATERAL``
(one all-null row when empty, ``%rowIndex`` 0), ``unionAll`` a lateral ``UNION ALL``
subquery, ``repeat`` a lateral recursive CTE ordered depth-first; sibling selects are a
cross product. Compile errors become an OperationOutcome naming the element.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smartmed.analytics.compiler import HOISTED, ROOT, CompileError, Compiler, Val
from smartmed.analytics.dialects import Dialect, Unsupported
from smartmed.analytics.types import ANY, BOOL, TEXT, TypeModel, kind_of
from smartmed.analytics.viewdef import Column, Expr, Select, View
from smartmed.fhir.errors import Invalid


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """One column of the result: name, SQL kind (or 'json') and whether it is an array."""

    name: str
    kind: str
    collection: bool
    fhir_type: str | None


@dataclass(frozen=True, slots=True)
class CompiledView:
    """The SQL of a view and the shape of its rows."""

    sql: str
    columns: tuple[OutputColumn, ...]
    resource: str


@dataclass(slots=True)
class _Level:
    cols: list[tuple[OutputColumn, str] | _Union] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    per_resource: set[int] = field(default_factory=set)  # cols on the resource row alone

    def expand(self) -> list[tuple[list[tuple[OutputColumn, str]], list[str], list[str]]]:
        """Each combination of unionAll branches as (columns, joins, filters) of one flat
        query (a cross product distributes over UNION ALL)."""
        combos: list[tuple[list[tuple[OutputColumn, str]], list[str], list[str]]]
        combos = [([], list(self.joins), list(self.where))]
        for item in self.cols:
            if isinstance(item, _Union):
                combos = [
                    (cols + bcols, joins + bjoins, where + bwhere)
                    for cols, joins, where in combos
                    for branch in item.branches
                    for bcols, bjoins, bwhere in branch.expand()
                ]
            else:
                combos = [(cols + [item], joins, where) for cols, joins, where in combos]
        return combos


@dataclass(slots=True)
class _Union:
    """A unionAll kept as its branches, for dialects that expand it (Spark)."""

    branches: list[_Level]


class _ViewCompiler:
    def __init__(self, view: View, d: Dialect, model: TypeModel) -> None:
        self.view = view
        self.d = d
        self.c = Compiler(d, model, view.constants)

    def expr(self, e: Expr, focus: Val, row_index: str) -> Val:
        try:
            return self.c.compile(e.node, focus, row_index)
        except (CompileError, Unsupported) as exc:
            raise Invalid(f"{e.text!r}: {exc}", expression=e.where) from None

    def column(self, col: Column, focus: Val, row_index: str) -> tuple[OutputColumn, str]:
        v = self.expr(col.path, focus, row_index)
        declared = kind_of(col.type) if col.type else None
        kind = declared or v.kind or (TEXT if col.type else "json")
        if col.type and declared is None and self.c.model.named(col.type) is None:
            raise Invalid(f"unknown column type '{col.type}'", expression=f"{col.where}.type")
        out = OutputColumn(col.name, kind, bool(col.collection), col.type or v.type.name)
        if col.collection:
            coll = self.c.coll(v)
            item = self.c.element(Val(v.type, many=coll))
            value = self.c.text(item) if kind == "json" else self.c.native(item, kind)
            return out, self.d.array(coll, value, TEXT if kind == "json" else kind)
        if col.collection is False and v.many is not None:
            # sql-on-fhir-v2: collection must be true when a path can return several values
            raise Invalid(
                f"{col.path.text!r} can return several values; set collection: true",
                expression=f"{col.where}.collection",
            )
        try:
            return out, self.c.text(v) if kind == "json" else self.c.native(v, kind)
        except Unsupported as exc:
            raise Invalid(str(exc), expression=col.path.where) from None

    def select(self, sel: Select, focus: Val, row_index: str, level: _Level) -> None:
        try:
            if sel.for_each is not None:
                focus, row_index = self.for_each(sel, focus, row_index, level)
            elif sel.repeat:
                focus, row_index = self.repeat(sel, focus, row_index, level)
        except Unsupported as exc:
            raise Invalid(str(exc), expression=sel.where) from None
        for col in sel.columns:
            if not level.joins and focus.one == ROOT:
                level.per_resource.add(len(level.cols))
            level.cols.append(self.column(col, focus, row_index))
        for child in sel.selects:
            self.select(child, focus, row_index, level)
        if sel.union_all and self.d.flat_unions:
            subs = []
            for branch in sel.union_all:
                subs.append(_Level())
                self.select(branch, focus, row_index, subs[-1])
            level.cols.append(_Union(subs))
        elif sel.union_all:
            branches, subs = [], []
            for branch in sel.union_all:
                subs.append(_Level())
                self.select(branch, focus, row_index, subs[-1])
                one = self.d.one_row(self.c.alias())
                branches.append(self.render(subs[-1], one, []))
            a = self.c.alias()
            level.joins.append(f" CROSS JOIN LATERAL ({' UNION ALL '.join(branches)}) AS {a}")
            for out, _ in subs[0].expand()[0][0]:
                level.cols.append((out, f"{a}.{self.d.ident(out.name)}"))

    def for_each(self, sel: Select, focus: Val, row_index: str, level: _Level) -> tuple[Val, str]:
        assert sel.for_each is not None
        v = self.expr(sel.for_each, focus, row_index)
        coll = self.c.coll(v)
        if coll.single and not sel.or_null:
            # forEach over a singleton (``where(value.exists())``): at most this row, so a
            # filter on it; the focus stays the singleton (fields still parsed once).
            present = [] if coll.value == ROOT else [f"{coll.value} IS NOT NULL"]
            level.where.append(" AND ".join([*present, *coll.conds]) or "TRUE")
            item = v if v.many is None else Val(v.type, one=coll.value, native=coll.native)
            return item, "0"
        a = self.c.alias()
        if sel.or_null:
            level.joins.append(f" LEFT JOIN LATERAL {self.d.with_index(coll)} AS {a} ON TRUE")
            index = f"COALESCE({a}.i, 0)"
        elif (each := self.d.unnest(coll, a)) is not None:  # a table function, no subquery
            level.joins.append(f" CROSS JOIN LATERAL {each}")
            index = f"({a}.i - 1)"
        else:
            level.joins.append(f" CROSS JOIN LATERAL {self.d.with_index(coll)} AS {a}")
            index = f"{a}.i"
        return Val(v.type, one=f"{a}.v", native=coll.native), index

    def repeat(self, sel: Select, focus: Val, row_index: str, level: _Level) -> tuple[Val, str]:
        # A repeat path that does not exist on a level's type adds nothing at that level
        # (the paths are applied to the resource and then to every item they reach).
        rec, a, s = self.c.alias(), self.c.alias(), self.c.alias()
        seeds, steps = [], []
        items = [self._lenient(p, focus, row_index) for p in sel.repeat]
        item_type = next((v.type for v in items if v is not None), None)
        for b, v in enumerate(items):
            if v is not None:
                seed = self.c.coll(v)
                seeds.append(self._repeat_part(seed, self.d.int_array([str(b), *seed.order])))
        if item_type is None:
            empty = self.d.int_array(["0"])
            seeds = [f"SELECT CAST(NULL AS {self.d.types['json']}) AS v, {empty} AS p WHERE FALSE"]
        else:
            for b, path in enumerate(sel.repeat):
                w = self._lenient(path, Val(item_type, one=f"{rec}.v"), row_index)
                if w is not None:
                    step = self.c.coll(w)
                    order = self.d.int_array([str(b), *step.order])
                    steps.append(self._repeat_part(step, self.d.concat_arrays(f"{rec}.p", order)))
        recursive = (
            f" UNION ALL SELECT {s}.v, {s}.p FROM {rec} CROSS JOIN LATERAL "
            f"({' UNION ALL '.join(steps)}) AS {s}"
            if steps
            else ""
        )
        cte = (
            f"WITH RECURSIVE {rec}(v, p) AS ({' UNION ALL '.join(seeds)}{recursive}) "
            f"SELECT v, row_number() OVER (ORDER BY p) - 1 AS i FROM {rec}"
        )
        level.joins.append(f" CROSS JOIN LATERAL ({cte}) AS {a}")
        return Val(item_type or ANY, one=f"{a}.v"), f"{a}.i"

    def _lenient(self, e: Expr, focus: Val, row_index: str) -> Val | None:
        try:
            return self.c.compile(e.node, focus, row_index)
        except CompileError as exc:
            if "has no element" in str(exc):
                return None
            raise Invalid(f"{e.text!r}: {exc}", expression=e.where) from None

    def _repeat_part(self, coll: object, path_sql: str) -> str:
        from smartmed.analytics.dialects import Coll

        assert isinstance(coll, Coll)
        where = " AND ".join([*coll.conds, f"{coll.value} IS NOT NULL"])
        sources = coll.sources[0] + "".join(self.d.lateral(x) for x in coll.sources[1:])
        return f"SELECT {coll.value} AS v, {path_sql} AS p FROM {sources} WHERE {where}"

    def render(self, level: _Level, source: str, where: list[str]) -> str:
        queries = []
        for cols, joins, filters in level.expand():
            names = ", ".join(f"{sql} AS {self.d.ident(out.name)}" for out, sql in cols)
            sql = f"SELECT {names} FROM {source}{''.join(joins)}"
            conds = [*where, *filters]
            queries.append(sql + (" WHERE " + " AND ".join(conds) if conds else ""))
        return " UNION ALL ".join(queries)

    def compile(self, source: str) -> CompiledView:
        resource = self.c.model.resource(self.view.resource)
        if resource is None:
            raise Invalid(
                f"'{self.view.resource}' is not a FHIR R4 resource type",
                expression="ViewDefinition.resource",
            )
        focus = Val(resource, one=ROOT)
        conds = []
        for w in self.view.where:
            v = self.expr(w, focus, "0")
            try:
                conds.append(self.c.boolean(v, "a where path"))
            except CompileError as exc:
                raise Invalid(f"{w.text!r}: {exc}", expression=w.where) from None
            if v.kind != BOOL:
                conds[-1] = f"COALESCE({conds[-1]}, FALSE)"
        level = _Level()
        for sel in self.view.select:
            self.select(sel, focus, "0", level)
        if self.c.hoisted:
            # the whole resource is carried along only when something still reads it
            whole = ROOT in self.render(level, "t AS r", conds)
            source = self.d.hoist(source, list(self.c.hoisted), HOISTED, whole)
        if self.d.flat_unions and self.d.lists and len(level.expand()) > 1:
            # several flat queries over the same rows: the resources parsed once, and the
            # columns of the resource alone computed once per resource, not once per row
            once = []
            for i in sorted(level.per_resource):
                out, col_sql = level.cols[i]  # type: ignore[misc]
                once.append(f"{col_sql} AS __c{i}")
                level.cols[i] = (out, f"r.__c{i}")
            if once:
                source = f"(SELECT r.*, {', '.join(once)} FROM {source} AS r)"
            sql = self.render(level, "__resources AS r", conds)
            sql = f"WITH __resources AS MATERIALIZED {source} {sql}"
        else:
            sql = self.render(level, f"{source} AS r", conds)
        columns = tuple(out for out, _ in level.expand()[0][0])
        return CompiledView(sql, columns, self.view.resource)


def compile_view(view: View, d: Dialect, model: TypeModel, source: str) -> CompiledView:
    """The SQL of ``view`` over ``source`` (a relation with a ``content`` column)."""
    return _ViewCompiler(view, d, model).compile(source)
