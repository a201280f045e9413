"""Aligned plain-text tables, as the benchmarks print them."""
from __future__ import annotations

from typing import Callable


def print_table(header: tuple[str, ...] | list[str], rows: list,
                log: Callable[[str], object] = print) -> None:
    """Log a header, a rule and the rows; the first column left-aligned, the others right."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    for n, row in enumerate(cells):
        log("  ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in
                      enumerate(zip(row, widths))))
        if n == 0:
            log("  ".join("-" * w for w in widths))
