"""Progress bars for long commands (``verify``, ``export``): tqdm on standard
error when it is a terminal, nothing at all otherwise, so that scripts, pipes
and logs see only the command's own output."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm


class Bar:
    """``update(n)`` after n more items; ``write(text)`` prints a line (stdout by
    default) without breaking the bar."""

    def __init__(self, bar: tqdm[Any] | None) -> None:
        self._bar = bar

    def update(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def write(self, text: str, file: TextIO | None = None) -> None:
        out = sys.stdout if file is None else file
        if self._bar is None:
            print(text, file=out)
        else:
            tqdm.write(text, file=out)


def wanted(*, output_is_terminal: bool = False) -> bool:
    """Whether to show a bar: standard error is a terminal, and the command's
    output does not go to that terminal too (events scrolling past a bar)."""
    try:
        return sys.stderr.isatty() and not output_is_terminal
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


@contextmanager
def progress_bar(total: int | None, what: str, *, enabled: bool | None = None) -> Iterator[Bar]:
    if enabled is None:
        enabled = wanted()
    if not enabled:
        yield Bar(None)
        return
    with tqdm(total=total, desc=what, unit=" events", file=sys.stderr, leave=False) as bar:
        yield Bar(bar)
