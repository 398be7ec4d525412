"""``make demo``: run Echo end to end on embedded defaults and say what happened.

Each stage is a real ``echoctl`` command run as a subprocess, exactly as a user would run it,
so the demo exercises the same entry points as production and prints nothing it did not measure.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

console = Console()
ECHOCTL = str(Path(sys.executable).with_name("echoctl"))

PLANNED = """\
Still to come (issues [5/7] to [7/7]), each added to this demo as it lands:
  - train: DeepSpeed fine-tune from the champion on the gold data -> challenger
  - evaluate + promote: held-out acceptance, paired CI, promotion gate -> new champion
  - Airflow runs it all as nightly DAGs, two rounds, then a round-by-round acceptance table."""


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

    from echo_lib import corpus, registry
    from echo_lib.config import load_config
    from echo_lib.engine import CompletionEngine, EngineSettings

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


def main() -> None:
    from datetime import UTC, datetime, timedelta

    start = time.perf_counter()
    now = datetime.now(UTC).date()
    today, tomorrow = now.isoformat(), (now + timedelta(days=1)).isoformat()
    stage("1/7 doctor: every component of the stack, for real", "doctor")
    stage("2/7 bootstrap v0 on public code (reuses the champion if one exists)", "bootstrap")
    show_heldout_completions()
    stage(f"3/7 world: one day ({today}) of developers on experience code", "simulate", "--date", today)
    stage(f"4/7 ingest {today} (Spark): validate, quarantine, deduplicate", "ingest", "--date", today)
    stage(
        f"4/7 ingest {tomorrow}: late uploads of {today}'s sessions land there", "ingest", "--date", tomorrow
    )
    stage(f"5/7 mine {today} (Spark): one refinement per shown proposal", "mine", "--date", today)
    stage(f"6/7 gold datasets for {today} (Spark): denoise, scrub, dedupe", "build-dataset", "--date", today)
    stage("7/7 the champion's acceptance on held-out code (paired sessions, 95% CI)", "acceptance")
    console.print(Rule())
    console.print(PLANNED, highlight=False)
    console.print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
