"""Raw text leaves the lake when its retention ends; gold (scrubbed) stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echo_lib.core.config import LakeSettings
from echo_lib.mining.retention import RAW_TEXT_TABLES, expire_raw_text, expired_dates
from tests.conftest import run_echoctl

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]


def lake_with(root: Path, tables: tuple[str, ...], dates: list[str]) -> Path:
    for table in tables:
        for dt in dates:
            folder = root / table / f"dt={dt}"
            folder.mkdir(parents=True)
            (folder / "part-0.parquet").write_bytes(b"users' text")
            (folder / "_SUCCESS").touch()
    return root


def dates_of(root: Path, table: str) -> list[str]:
    return sorted(p.name[3:] for p in (root / table).glob("dt=*"))


def test_expired_dates_count_back_from_the_logical_date() -> None:
    assert expired_dates(DAYS, "2026-01-05", 2) == DAYS[:3]  # keeps D and D-1, which the nightly re-mines
    assert expired_dates(DAYS, "2026-01-03", 2) == DAYS[:1]  # a backfill's day, not the wall clock
    assert expired_dates(DAYS, "2026-01-05", 0) == []  # 0 keeps forever
    with pytest.raises(ValueError, match="re-mines"):
        LakeSettings(raw_text_days=1)


def test_expiry_deletes_raw_text_only_and_skips_a_partition_being_written(tmp_path: Path) -> None:
    lake = lake_with(tmp_path, (*RAW_TEXT_TABLES, "gold/sft", "gold/_manifests"), DAYS)
    (lake / "bronze/events/_leases").mkdir()
    (lake / "bronze/events/_leases/dt=2026-01-01").write_text('{"pid": 1}')  # a backfill writes it
    (lake / "silver/refinements/_trash/expired-dt=2025-12-31-abc").mkdir(parents=True)  # a crash's debris

    deleted = expire_raw_text(str(lake), "2026-01-05", 3)

    for table in RAW_TEXT_TABLES:
        kept = [DAYS[0], *DAYS[2:]] if table == "bronze/events" else DAYS[2:]
        assert dates_of(lake, table) == kept, table
    assert deleted["raw/events"] == DAYS[:2] and deleted["bronze/events"] == DAYS[1:2]
    assert dates_of(lake, "gold/sft") == DAYS == dates_of(lake, "gold/_manifests")
    assert not list((lake / "silver/refinements/_trash").iterdir())
    assert expire_raw_text(str(lake), "2026-01-05", 3) == {}  # a rerun is a no-op (the lease still holds)


def test_echoctl_expire_defaults_to_the_newest_raw_day(tmp_path: Path) -> None:
    var = tmp_path / "var"
    lake = lake_with(var / "lake", RAW_TEXT_TABLES, DAYS)
    proc = run_echoctl(var, "--set", "lake.raw_text_days=4", "expire", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["as_of"] == "2026-01-05" and result["deleted"]["silver/refinements"] == DAYS[:1]
    assert dates_of(lake, "bronze/events") == DAYS[1:]
    proc = run_echoctl(var, "expire", "--days", "1")
    assert proc.returncode == 2 and "re-mines" in proc.stderr
