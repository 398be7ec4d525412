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
What the full demo will do once the loop exists (issues [2/7] to [7/7]):
  1. bootstrap v0: train a small code model on public code (the stdlib), register it as champion
  2. world: simulated developers write real team-repo code against the champion -> raw telemetry
  3. nightly (Airflow): ingest -> mine refinements -> build gold datasets, on Spark
  4. train (Airflow): DeepSpeed fine-tune from the champion on the gold data -> challenger
  5. evaluate + promote: held-out acceptance, paired CI, promotion gate -> new champion
  ... for two nightly rounds, then a round-by-round table of acceptance with CIs."""


def stage(title: str, *args: str) -> None:
    console.print(Rule(f"[bold]{title}"))
    start = time.perf_counter()
    proc = subprocess.run([ECHOCTL, *args], check=False)
    if proc.returncode != 0:
        console.print(f"[bold red]demo stopped:[/] `echoctl {' '.join(args)}` exited {proc.returncode}")
        raise SystemExit(proc.returncode)
    console.print(f"[dim]{title}: {time.perf_counter() - start:.0f} s[/]")


def main() -> None:
    start = time.perf_counter()
    stage("1/1 doctor: every component of the stack, for real", "doctor")
    console.print(Rule())
    console.print(PLANNED, highlight=False)
    console.print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
