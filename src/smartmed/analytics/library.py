"""The starter library: ViewDefinitions shipped with smartmed (``analytics/views/*.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

FOLDER = Path(__file__).parent / "views"


def names() -> list[str]:
    """Names of the starter views."""
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    """A starter view by name, or a ViewDefinition JSON file by path."""
    path = FOLDER / f"{name}.json"
    if not path.is_file():
        path = Path(name)
    if not path.is_file():
        raise KeyError(f"no starter view or file named {name!r}; starter views: {names()}")
    view: dict[str, Any] = orjson.loads(path.read_bytes())
    return view
