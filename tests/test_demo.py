"""The demo's round table: both numbers, their CIs and the gains, one line per row in a log."""

from __future__ import annotations

from rich.console import Console

from echo_lib.ops import demo


def test_round_table_shows_acceptance_and_what_users_got(monkeypatch) -> None:
    console = Console(record=True, width=80, force_terminal=False)
    monkeypatch.setattr(demo, "console", console)
    row = {
        "date": "2026-11-24",
        "events": 28291,
        "refinements_kept": 2389,
        "challenger": "2",
        "verdict": "pass",
        "champion": "2",
        "before_version": "1",
        "before_acceptance": [0.0762, 0.0688, 0.0835],
        "before_retained": [0.195, 0.171, 0.223],
        "after_acceptance": [0.1201, 0.1102, 0.1299],
        "after_retained": [0.301, 0.27, 0.33],
        "acceptance_gain": [0.0439, 0.0350, 0.0520],
        "retained_gain": [0.106, 0.08, 0.13],
    }
    demo.print_rounds([row])
    text = console.export_text()
    lines = [line for line in text.splitlines() if line.startswith(("| 0 ", "| 1 "))]
    assert len(lines) == 2  # one line per round even in an 80-column log, nothing cut
    assert "7.62% [6.88%, 8.35%]" in lines[0] and "0.195 [0.171, 0.223]" in lines[0]
    assert "12.01% [11.02%, 12.99%]" in lines[1] and "+4.39% [+3.50%, +5.20%]" in lines[1]
    assert "+0.106 [+0.080, +0.130]" in lines[1] and "v2 (pass)" in lines[1]
    assert "…" not in text
    header = next(line for line in text.splitlines() if line.startswith("| round"))
    assert all(line.count(" | ") == header.count(" | ") for line in lines)  # every cell in its column
