"""What the verbs print: aligned tables."""

from __future__ import annotations


def print_table(header: list[str], rows: list[list]) -> None:
    """Print ``rows`` under ``header`` in aligned columns."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
