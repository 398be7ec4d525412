"""Tables that read well on a terminal and in a log.

On a terminal a rich table fits the window. In a log (not a TTY: CI, Airflow's task log, a file)
a wide table would be cut at 80 columns ("refinemen... kept"), so each row is printed vertically,
one ``column: value`` line per cell, never truncated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def plain(cell: object) -> str:
    """A cell's text without rich markup (``"[green]ok[/]"`` -> ``"ok"``)."""
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


def vertical_lines(table: Table) -> list[str]:
    """The table as text lines: a two-column table as ``key: value``; a wider one as a block per
    row, headed by its first cell."""
    headers = [plain(c.header) for c in table.columns]
    rows = list(zip(*[[plain(cell) for cell in c.cells] for c in table.columns], strict=True))
    lines = [plain(table.title)] if table.title else []
    if len(headers) == 2:
        width = max((len(r[0]) for r in rows), default=0)
        return lines + [f"  {key:<{width}}  {value}" for key, value in rows]
    for row in rows:
        lines.append(f"- {headers[0]}: {row[0]}")
        lines += [f"    {h}: {v}" for h, v in zip(headers[1:], row[1:], strict=True)]
    return lines


def print_table(console: Console, table: Table) -> None:
    """``table`` as a rich table on a terminal, vertically in a log."""
    if console.is_terminal:
        console.print(table)
        return
    console.print("\n".join(vertical_lines(table)), soft_wrap=True, highlight=False, markup=False)
