"""The demo's round table: both numbers, their CIs and the gains, never cut in a log; and the
vertical layout every table uses when the output is not a terminal."""

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
    blocks = text.split("- round: ")[1:]
    assert len(blocks) == 2  # one block per round, each cell on its own line
    assert "acceptance among shown: 7.62% [6.88%, 8.35%]" in blocks[0]
    assert "retained chars / request: 0.195 [0.171, 0.223]" in blocks[0]
    assert "12.01% [11.02%, 12.99%]" in blocks[1] and "+4.39% [+3.50%, +5.20%]" in blocks[1]
    assert "+0.106 [+0.080, +0.130]" in blocks[1] and "v2 (pass)" in blocks[1]
    assert "refinements kept" in blocks[1] and "…" not in text


def test_tables_are_vertical_in_a_log_and_boxed_on_a_terminal() -> None:
    from rich.table import Table

    from echo_lib.ops.tables import print_table

    table = Table(title="echoctl doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    table.add_row("spark", "[green]ok[/]", "local[2] " + "x" * 120)
    table.add_row("mlflow", "[bold red]FAIL[/]", "no store")
    log = Console(record=True, width=80, force_terminal=False)
    print_table(log, table)
    assert log.export_text().splitlines() == [
        "echoctl doctor",
        "- check: spark",
        "    status: ok",
        "    detail: local[2] " + "x" * 120,  # long values are not cut
        "- check: mlflow",
        "    status: FAIL",
        "    detail: no store",
    ]
    pairs = Table()
    pairs.add_column("metric")
    pairs.add_column("value")
    pairs.add_row("acceptance", "12.0%")
    pairs.add_row("shown per trigger", "0.41")
    print_table(log := Console(record=True, force_terminal=False), pairs)
    assert log.export_text().splitlines() == ["  acceptance         12.0%", "  shown per trigger  0.41"]
    terminal = Console(record=True, width=80, force_terminal=True)
    print_table(terminal, table)
    assert "┃" in terminal.export_text()  # a real box drawing on a terminal


def test_mlflow_links_open_on_runs_not_traces() -> None:
    """MLflow 3's UI defaults to its GenAI view; Echo's links carry the "Model training" switch."""
    from echo_lib.core.tracking import ui_link

    assert (
        ui_link("http://127.0.0.1:5000/", "models")
        == "http://127.0.0.1:5000/#/models?workflowType=machine_learning"
    )
    assert ui_link("http://m:5000", "/experiments/1/runs/abc").endswith(
        "#/experiments/1/runs/abc?workflowType=machine_learning"
    )
