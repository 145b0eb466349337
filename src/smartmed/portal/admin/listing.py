"""What every list page shares: the query string (search, filters, sort, page) turned into
FHIR search parameters, and the links of sortable headers and pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from fastapi import Request

PAGE_SIZE = 20


@dataclass(slots=True)
class ListQuery:
    """The state of a list page, from and back to its query string."""

    path: str
    q: str = ""
    sort: str = ""
    page: int = 1
    filters: dict[str, str] = field(default_factory=dict)
    size: int = PAGE_SIZE

    @classmethod
    def parse(cls, request: Request, sorts: dict[str, str], filters: tuple[str, ...]) -> ListQuery:
        params = request.query_params
        sort = params.get("sort", "")
        if sort.lstrip("-") not in sorts:
            sort = next(iter(sorts))
        try:
            page = max(1, int(params.get("page", "1")))
        except ValueError:
            page = 1
        chosen = {name: params[name].strip() for name in filters if params.get(name, "").strip()}
        return cls(request.url.path, params.get("q", "").strip()[:100], sort, page, chosen)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    def fhir_sort(self, sorts: dict[str, str]) -> tuple[str, str]:
        descending = self.sort.startswith("-")
        return ("_sort", ("-" if descending else "") + sorts[self.sort.lstrip("-")])

    def url(self, **changes: str | int) -> str:
        state: dict[str, str | int] = {"q": self.q, "sort": self.sort, "page": self.page}
        state.update(self.filters)
        state.update(changes)
        kept = {
            k: v for k, v in state.items() if v not in ("", None) and not (k == "page" and v == 1)
        }
        return f"{self.path}?{urlencode(kept)}" if kept else self.path

    def sort_url(self, key: str) -> str:
        """Link of a column header: sort by it, or reverse when it is the current sort."""
        return self.url(sort=f"-{key}" if self.sort == key else key, page=1)

    def sort_state(self, key: str) -> str:
        """``aria-sort`` of a column header."""
        if self.sort == key:
            return "ascending"
        if self.sort == f"-{key}":
            return "descending"
        return "none"
