"""How telemetry reaches the lake: at least once, a little late, sometimes out of order.

The collector lands events by *arrival* time into ``raw/events/dt=YYYY-MM-DD/`` as gzip JSONL.
Artefacts (documented rates, all off with ``DeliveryParams.none()``):

* duplicates: an event delivered twice (a retried upload),
* out-of-order arrival: network delay varies per event, files are written in arrival order,
* late arrival: an offline client uploads part of a session the next day,
* clock skew is a property of the client and is applied when the session creates its events.

Same inputs and seed give byte-identical files (gzip mtime is fixed at 0).
"""

from __future__ import annotations

import gzip
import io
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from echo_lib.events import dumps, parse_ts

LINES_PER_PART = 200_000


@dataclass(frozen=True)
class DeliveryParams:
    duplicate_rate: float = 0.005  # per event
    mean_delay_s: float = 0.4  # exponential network delay per event: reorders close events
    slow_delay_rate: float = 0.01  # per event: a slow upload, 5-60 s late
    late_session_rate: float = 0.01  # per session: the tail of the session arrives next day
    clock_skew_user_rate: float = 0.1  # share of clients whose clock is off
    max_clock_skew_s: float = 300.0  # their error, uniform in +-this

    @classmethod
    def none(cls) -> DeliveryParams:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def arrivals(
    sessions: list[list[dict[str, Any]]], params: DeliveryParams, rng: random.Random
) -> list[tuple[datetime, dict[str, Any], bool]]:
    """Every delivered copy of every event with its arrival time and a 'next day' flag."""
    delivered: list[tuple[datetime, int, dict[str, Any], bool]] = []
    order = 0
    for events in sessions:
        late_from = len(events)
        if events and rng.random() < params.late_session_rate:
            late_from = rng.randrange(len(events))
        for i, event in enumerate(events):
            sent = parse_ts(event["ts"])
            delay = rng.expovariate(1 / params.mean_delay_s) if params.mean_delay_s > 0 else 0.0
            if rng.random() < params.slow_delay_rate:
                delay += rng.uniform(5, 60)
            copies = 2 if rng.random() < params.duplicate_rate else 1
            for copy in range(copies):
                arrival = sent + timedelta(seconds=delay + copy * rng.uniform(1, 30))
                delivered.append((arrival, order, event, i >= late_from))
                order += 1
    delivered.sort(key=lambda item: (item[3], item[0], item[1]))
    return [(arrival, event, late) for arrival, _, event, late in delivered]


def _gzip_lines(lines: list[str]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz:
        for line in lines:
            gz.write(line.encode("utf-8"))
            gz.write(b"\n")
    return buffer.getvalue()


def partition_dir(lake: str | Path, day: date) -> Path:
    return Path(lake) / "raw" / "events" / f"dt={day.isoformat()}"


def write_day(
    lake: str | Path, day: date, sessions: list[list[dict[str, Any]]], params: DeliveryParams, seed: int
) -> dict[str, Any]:
    """Write one simulated day as the collector would; return what landed where."""
    rng = random.Random(seed)
    delivered = arrivals(sessions, params, rng)
    on_time = [dumps(event) for _, event, late in delivered if not late]
    late = [dumps(event) for _, event, late in delivered if late]
    target = partition_dir(lake, day)
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("part-0*.jsonl.gz"):  # re-simulating a day replaces its own parts only
        stale.unlink()
    files = []
    for index in range(0, max(len(on_time), 1), LINES_PER_PART):
        path = target / f"part-{index // LINES_PER_PART:05d}.jsonl.gz"
        _atomic_write(path, _gzip_lines(on_time[index : index + LINES_PER_PART]))
        files.append(path)
    next_day = partition_dir(lake, day + timedelta(days=1))
    late_path = next_day / f"part-late-{day.isoformat()}.jsonl.gz"
    if late:
        next_day.mkdir(parents=True, exist_ok=True)
        _atomic_write(late_path, _gzip_lines(late))
        files.append(late_path)
    elif late_path.exists():
        late_path.unlink()
    return {
        "files": [str(f) for f in files],
        "lines": len(on_time) + len(late),
        "late_lines": len(late),
        "duplicates": len(on_time) + len(late) - sum(map(len, sessions)),
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
