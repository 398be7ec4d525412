"""``make demo``: run Echo end to end on embedded defaults and say what happened.

Each stage is a real ``echoctl`` command run as a subprocess, exactly as a user would run it,
so the demo exercises the same entry points as production and prints nothing it did not measure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

console = Console()
ECHOCTL = str(Path(sys.executable).with_name("echoctl"))

ROUNDS = 2
DEMO_SETTINGS = ("--set", "promotion.enabled=true")  # the demo lets the gate move @champion


def stage(title: str, *args: str) -> None:
    console.print(Rule(f"[bold]{title}"))
    start = time.perf_counter()
    proc = subprocess.run([ECHOCTL, *args], check=False)
    if proc.returncode != 0:
        console.print(f"[bold red]demo stopped:[/] `echoctl {' '.join(args)}` exited {proc.returncode}")
        raise SystemExit(proc.returncode)
    console.print(f"[dim]{title}: {time.perf_counter() - start:.0f} s[/]")


def show_heldout_completions(count: int = 5, seed: int = 0) -> None:
    """A few completions v0 makes on held-out team code, next to what the developer really wrote."""
    import random

    from echo_lib.agent.engine import CompletionEngine, EngineSettings
    from echo_lib.core import registry
    from echo_lib.core.config import load_config
    from echo_lib.world import corpus

    cfg = load_config().config
    engine = CompletionEngine.load(
        registry.model_uri(cfg),
        EngineSettings(),
        tracking_uri=cfg.mlflow_tracking_uri,
        cache_dir=cfg.var_path / "cache" / "models",
    )
    files = corpus.scan(corpus.team_repos(cfg), cfg).select("heldout")
    rng = random.Random(seed)
    console.print(f"completions by {engine.model_version} on held-out team code (greedy, to end of line):")
    for f in rng.sample(files, count):
        lines = f.text.splitlines(keepends=True)
        candidates = [i for i, line in enumerate(lines) if line.strip() and i > 3]
        i = rng.choice(candidates)
        cut = len(lines[i]) - len(lines[i].lstrip()) + len(lines[i].strip()) // 2
        prefix = "".join(lines[:i]) + lines[i][:cut]
        real = lines[i][cut:].rstrip("\n")
        [proposal] = engine.complete([prefix])
        console.print(f"[dim]{f.doc_id}:{i + 1}[/]  [cyan]{lines[i][:cut].strip()!s}[/]", highlight=False)
        console.print(
            f"    model: {proposal.text!r}  (confidence {proposal.confidence:.2f})", highlight=False
        )
        console.print(f"    real : {real!r}", highlight=False)


def round_row(cfg, day: str) -> dict:
    """What one round did, read back from the lake and the registry (nothing assumed)."""
    from echo_lib.core import registry
    from echo_lib.core.lake import read_manifest
    from echo_lib.evaluation.heldout import evaluation_tags

    gold = read_manifest(cfg.lake_uri, day)
    bronze = Path(cfg.lake_uri) / "bronze" / "events" / f"dt={day}" / "_manifest.json"
    events = json.loads(bronze.read_text())["lines_read"] if bronze.is_file() else None
    champion = registry.version_by_alias(cfg, registry.CHAMPION)
    challenger = registry.version_by_alias(cfg, registry.CHALLENGER)
    tags = {**challenger.tags, **evaluation_tags(cfg, challenger)} if challenger else {}
    row = {
        "date": day,
        "events": events,
        "refinements_kept": gold["datasets"]["sft"]["rows"],
        "challenger": str(challenger.version) if challenger else None,
        "verdict": tags.get("echo.gate.verdict"),
        "champion": str(champion.version),
    }
    # the evaluation measured both models on the same held-out sessions: report the champion's
    role = "challenger" if str(champion.version) == row["challenger"] else "champion"

    def triple(prefix: str, key: str, low: str, high: str) -> list[float] | None:
        keys = [f"echo.eval.{prefix}.{k}" for k in (key, low, high)]
        return [float(tags[k]) for k in keys] if all(k in tags for k in keys) else None

    if tags.get("echo.eval.against"):
        row["before_version"] = tags["echo.eval.against"]
        for side, prefix in (("after", role), ("before", "champion")):
            row[f"{side}_acceptance"] = triple(
                prefix, "acceptance_rate", "acceptance_ci_low", "acceptance_ci_high"
            )
            row[f"{side}_retained"] = triple(
                prefix, "retained_per_request", "retained_ci_low", "retained_ci_high"
            )
        for gain in ("acceptance", "retained"):
            keys = [f"echo.eval.{gain}_gain{k}" for k in ("", "_ci_low", "_ci_high")]
            if all(k in tags for k in keys):
                row[f"{gain}_gain"] = [float(tags[k]) for k in keys]
    return row


def _ci(values: list[float] | None, fmt: str) -> str:
    if not values:
        return "not measured"
    value, low, high = values
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


ROUND_COLUMNS = (
    "round",
    "date",
    "events",
    "refinements kept",
    "challenger (gate)",
    "challenger - champion: acceptance; retained chars/request",
    "champion",
    "acceptance among shown",
    "retained chars / request",
)


def round_cells(rows: list[dict]) -> list[list[str]]:
    """The round table's cells: round 0 is the first champion, then one row per round."""
    cells = []
    if rows and rows[0].get("before_acceptance"):
        first = rows[0]
        cells.append(
            ["0", "-", "-", "-", "-", "-", f"v{first['before_version']}"]
            + [_ci(first["before_acceptance"], ".2%"), _ci(first["before_retained"], ".3f")]
        )
    for i, r in enumerate(rows, 1):
        gains = "-"
        if r.get("acceptance_gain") and r.get("retained_gain"):
            gains = f"{_ci(r['acceptance_gain'], '+.2%')}; {_ci(r['retained_gain'], '+.3f')}"
        cells.append(
            [
                str(i),
                r["date"],
                f"{r['events']:,}" if r["events"] is not None else "?",
                f"{r['refinements_kept']:,}",
                f"v{r['challenger']} ({r['verdict'] or '-'})",
                gains,
                f"v{r['champion']}",
                _ci(r.get("after_acceptance"), ".2%"),
                _ci(r.get("after_retained"), ".3f"),
            ]
        )
    return cells


def print_rounds(rows: list[dict]) -> None:
    """A table on a terminal; in a log (not a TTY) one block per round, never cut."""
    from rich.table import Table

    from echo_lib.ops.tables import print_table

    table = Table(
        title="Echo, round by round (held-out world: 95% CIs over paired sessions)", title_justify="left"
    )
    for column in ROUND_COLUMNS:
        table.add_column(column)
    for row in round_cells(rows):
        table.add_row(*row)
    print_table(console, table)


def main() -> None:
    from datetime import UTC, datetime, timedelta

    from echo_lib.core.config import load_config, quiet_libraries
    from echo_lib.core.tracking import ui_link

    quiet_libraries()  # the demo's own model loading shows no library bars either
    start = time.perf_counter()
    first = datetime.now(UTC).date() - timedelta(days=ROUNDS - 1)
    days = [(first + timedelta(days=k)).isoformat() for k in range(ROUNDS)]
    stage("doctor: every component of the stack, for real", "doctor")
    stage("bootstrap v0 on public code (reuses the champion if one exists)", "bootstrap")
    show_heldout_completions()
    cfg = load_config(overrides={"promotion.enabled": True}).config
    rows = []
    for r, day in enumerate(days, 1):
        for dag_id, what in (
            ("echo_world", "simulated developers write the day's code against @champion"),
            ("echo_nightly", "Spark: ingest, mine, build gold"),
            ("echo_train", "DeepSpeed fine-tune -> @challenger, evaluate, promotion gate"),
        ):
            stage(
                f"round {r}/{ROUNDS} {day}: {dag_id} ({what})",
                *DEMO_SETTINGS,
                "airflow",
                "dags-test",
                dag_id,
                day,
            )
        rows.append(round_row(cfg, day))
        print_rounds(rows)
    console.print(Rule())
    console.print(
        "Airflow UI (the DAG runs above):  .venv/bin/echoctl airflow up     "
        f"-> http://{cfg.airflow.host}:{cfg.airflow.port}\n"
        "MLflow UI (runs and the registry): make mlflow                     "
        f"-> {ui_link('http://127.0.0.1:5000', 'models')}",
        highlight=False,
    )
    console.print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
