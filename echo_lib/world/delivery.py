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

import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from echo_lib.core.events import dumps, parse_ts

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


def partition(day: date) -> str:
    """The raw partition of ``day``, relative to the lake."""
    return f"raw/events/dt={day.isoformat()}"


def write_day(
    lake: str | Path, day: date, sessions: list[list[dict[str, Any]]], params: DeliveryParams, seed: int
) -> dict[str, Any]:
    """Write one simulated day as the collector would, to any lake URI (a folder, s3://, hdfs://);
    return what landed where."""
    from echo_lib.core import lake as lake_io

    lake = str(lake)
    rng = random.Random(seed)
    delivered = arrivals(sessions, params, rng)
    on_time = [dumps(event) for _, event, late in delivered if not late]
    late = [dumps(event) for _, event, late in delivered if late]
    target = partition(day)
    lake_io.delete_matching(
        lake, target, "part-0*.jsonl.gz"
    )  # re-simulating a day replaces its own parts only
    files = []
    for index in range(0, max(len(on_time), 1), LINES_PER_PART):
        name = f"{target}/part-{index // LINES_PER_PART:05d}.jsonl.gz"
        files.append(
            lake_io.write_bytes_atomic(
                lake, name, lake_io.gzip_lines(on_time[index : index + LINES_PER_PART])
            )
        )
    late_name = f"part-late-{day.isoformat()}.jsonl.gz"
    next_day = partition(day + timedelta(days=1))
    if late:
        files.append(lake_io.write_bytes_atomic(lake, f"{next_day}/{late_name}", lake_io.gzip_lines(late)))
    else:
        lake_io.delete_matching(lake, next_day, late_name)
    return {
        "files": files,
        "lines": len(on_time) + len(late),
        "late_lines": len(late),
        "duplicates": len(on_time) + len(late) - sum(map(len, sessions)),
    }
