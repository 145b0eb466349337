"""Progress display for long command-line loads (rich's bar on stderr, plain lines without)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_PLAIN_EVERY = 100  # advances between two plain progress lines

Advance = Callable[[int], None]


@contextmanager
def progress(total: int, label: str) -> Iterator[Advance]:
    """Yield ``advance(n)``; shows ``label`` done/total while the block runs."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    except ImportError:  # pragma: no cover - rich comes with typer
        done = [0, 0]

        def plain(n: int) -> None:
            done[0] += n
            done[1] += 1
            if done[1] % _PLAIN_EVERY == 0 or done[0] >= total:
                print(f"{label}: {done[0]}/{total}", file=sys.stderr, flush=True)

        yield plain
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(label, total=total)

        def rich_advance(n: int) -> None:
            bar.advance(task, n)

        yield rich_advance
