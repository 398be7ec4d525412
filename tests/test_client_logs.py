"""Continue and Tabby logs -> Echo's contract -> ingest -> mining, on fixtures that follow the
clients' published schemas line for line (tests/fixtures/clients/README.md says what each line is)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from echo_lib.core.events import validate_event
from echo_lib.mining.client_logs import (
    ClientLogError,
    doc_of,
    import_logs,
    partial_accept_len,
    repo_of,
)
from tests.conftest import REPO, run_echoctl

FIXTURES = REPO / "tests" / "fixtures" / "clients"
DAY = "2026-01-05"


def raw_events(lake: Path) -> list[dict]:
    [part] = (lake / "raw" / "events" / f"dt={DAY}").glob("part-import-*.jsonl.gz")
    return [json.loads(line) for line in gzip.decompress(part.read_bytes()).splitlines()]


def quarantine(lake: Path) -> list[dict]:
    [part] = (lake / "quarantine" / "imports" / f"dt={DAY}").glob("part-import-*.jsonl.gz")
    return [json.loads(line) for line in gzip.decompress(part.read_bytes()).splitlines()]


def test_helpers_keep_personal_paths_out_and_read_remotes() -> None:
    assert repo_of("https://github.com/acme/invoices.git") == "acme/invoices"
    assert repo_of("git@github.com:acme/invoices.git") == "acme/invoices"
    assert repo_of("https://token@gitlab.example.com/acme/invoices") == "acme/invoices"
    assert repo_of(None) == "unknown"
    assert (
        doc_of("file:///home/alice/src/invoices/invoices/models.py", "acme/invoices") == "invoices/models.py"
    )
    assert doc_of("file:///home/alice/scratch/notes.py", "unknown") == "notes.py"  # no home folder
    remote = "vscode-remote://ssh-remote%2Bbox/home/alice/src/invoices/invoices/tax.py"
    assert doc_of(remote, "acme/invoices") == "invoices/tax.py"  # no host either
    assert doc_of("C:\\Users\\alice\\invoices\\invoices\\models.py", "acme/invoices") == "invoices/models.py"
    assert doc_of("file:///c%3A/Users/bob/notes.py", "unknown") == "notes.py"
    assert doc_of("invoices/tax.py", "acme/invoices") == "invoices/tax.py"  # Tabby's, already relative
    # a partial ("line") accept is always shorter than the choice
    assert partial_accept_len("for item in items:\n    total += item") == len("for item in items:")
    assert 0 < partial_accept_len("return self.quantity") < len("return self.quantity")


def test_continue_fixture_maps_every_line_or_quarantines_it(tmp_path: Path) -> None:
    result = import_logs(str(tmp_path), "continue", FIXTURES / "continue")
    # 0.2.0: 7 valid lines + 2 malformed; 0.1.0 (legacy, before 2025-02): 3 valid lines
    assert result["lines"] == 12 == result["mapped_lines"] + result["quarantined"]
    assert result["quarantine_reasons"] == {"malformed_json": 1, "missing_field": 1}
    assert result["shown"] == 10 and result["reactions"] == {"accepted": 6, "rejected": 4, "none": 0}
    events = raw_events(tmp_path)
    assert len(events) == result["events"] == 20 and all(validate_event(e) is None for e in events)
    shown = [e for e in events if e["event_type"] == "completion_shown"]
    # 0.2.0 line 6 has no gitRepo: without a repository root only the file name is kept
    assert {e["doc_id"] for e in shown} == {"invoices/models.py", "invoices/tax.py", "models.py"}
    assert not any("alice" in json.dumps(e) or "5f0c8e2a" in e["user_id"] for e in events)  # pseudonymous
    assert all("confidence" not in e for e in shown)  # Continue logs none: nothing is invented
    rejected = [e for e in events if e["event_type"] == "completion_rejected"]
    assert {e["reason"] for e in rejected} == {"timed_out"}  # Continue logs a non-accept after 10 s
    reasons = {(Path(q["source_file"]).parent.name, q["line_no"]): q["reason"] for q in quarantine(tmp_path)}
    assert reasons == {("0.2.0", 8): "malformed_json", ("0.2.0", 9): "missing_field"}


def test_tabby_fixture_maps_views_selects_and_dismissals(tmp_path: Path) -> None:
    result = import_logs(str(tmp_path), "tabby", FIXTURES / "tabby" / "events")
    assert result["lines"] == 16 == result["mapped_lines"] + result["quarantined"]
    assert result["quarantine_reasons"] == {
        "malformed_json": 1,  # line 15, cut short
        "never_viewed": 1,  # line 10: completion C4 was never shown
        "no_segments": 3,  # lines 11-13: a raw-prompt request and its view and select
        "not_a_completion": 1,  # line 14: chat_completion
        "reaction_without_completion": 1,  # line 16: a select of an unknown completion
    }
    events = raw_events(tmp_path)
    by_request = {e["request_id"]: e for e in events if e["event_type"] == "completion_shown"}
    # C3 had two choices; only choice 1 was viewed, so only it was shown
    assert sorted(k.rsplit(":", 1)[1] for k in by_request) == ["0", "0", "1"]
    reactions = {e["request_id"]: e for e in events if e["event_type"] != "completion_shown"}
    partial = next(e for k, e in reactions.items() if e.get("accepted_len") is not None and
                   e["accepted_len"] < len(by_request[k]["proposal"]))  # fmt: skip
    assert partial["event_type"] == "completion_accepted"  # line 6: select kind "line"
    assert [e["reason"] for e in reactions.values() if e["event_type"] == "completion_rejected"] == [
        "dismissed"
    ]
    assert {e["repo_id"] for e in events} == {"acme/invoices"} and all(
        validate_event(e) is None for e in events
    )


def test_edge_cases_of_the_writers_map_to_one_proposal_each(tmp_path: Path) -> None:
    """Continue logs accepted:false from its 10 s timer and then accepted:true for the same
    completionId when the user accepts late; Tabby may show a choice again after a dismissal.
    Odd values are quarantined, never crash the import."""
    base = json.loads((FIXTURES / "continue" / "0.2.0" / "autocomplete.jsonl").read_text().splitlines()[0])
    late = {**base, "accepted": False, "timestamp": "2026-01-05T09:02:21.387Z"}
    accept = {**base, "accepted": True, "timestamp": "2026-01-05T09:02:25.000Z"}
    huge = {**base, "completionId": "other", "timestamp": 1e20}
    (tmp_path / "continue").mkdir()
    (tmp_path / "continue" / "autocomplete.jsonl").write_text(
        "\n".join(json.dumps(r) for r in (late, accept, huge)) + "\n"
    )
    r = import_logs(str(tmp_path / "lake"), "continue", tmp_path / "continue")
    assert (r["lines"], r["mapped_lines"], r["quarantine_reasons"]) == (3, 2, {"wrong_type": 1})
    assert r["shown"] == 1 and r["reactions"] == {"accepted": 1, "rejected": 0, "none": 0}

    lines = (FIXTURES / "tabby" / "events" / "2026-01-05.json").read_text().splitlines()
    c3 = [json.loads(x) for x in lines[6:9]]  # completion C3, view of choice 1, dismiss of choice 1
    select = {**c3[2], "ts": c3[2]["ts"] + 5000, "event": {"select": dict(c3[2]["event"]["dismiss"])}}
    odd = {**c3[1], "event": {"view": {**c3[1]["event"]["view"], "choice_index": [1]}}}
    (tmp_path / "tabby").mkdir()
    (tmp_path / "tabby" / "2026-01-05.json").write_text(
        "\n".join(json.dumps(x) for x in (*c3, c3[1], select, c3[0], odd)) + "\n"
    )
    r = import_logs(str(tmp_path / "lake"), "tabby", tmp_path / "tabby")
    assert r["lines"] == 7 == r["mapped_lines"] + r["quarantined"]
    assert r["quarantine_reasons"] == {"duplicate": 1, "wrong_type": 1}
    assert r["shown"] == 1 and r["reactions"]["accepted"] == 1  # shown again after the dismissal, then taken


def test_importing_again_replaces_instead_of_adding(tmp_path: Path) -> None:
    first = import_logs(str(tmp_path), "tabby", FIXTURES / "tabby" / "events")
    again = import_logs(str(tmp_path), "tabby", FIXTURES / "tabby" / "events")
    assert first == again and len(raw_events(tmp_path)) == first["events"]
    with pytest.raises(ClientLogError, match="no YYYY-MM-DD.json"):
        import_logs(str(tmp_path), "tabby", FIXTURES / "continue")


@pytest.mark.integration
def test_imported_logs_go_through_ingest_and_mining_into_labelled_rows(spark, tmp_path: Path) -> None:
    """The CLI lands both clients' logs; the same ingest and mining turn them into silver rows
    labelled by reaction, with no final invented (neither client records what the user kept)."""
    from echo_lib.mining.ingest import run_ingest
    from echo_lib.mining.refinements import run_mine

    var = tmp_path / "var"
    lake = var / "lake"
    for fmt, path in (("continue", FIXTURES / "continue"), ("tabby", FIXTURES / "tabby" / "events")):
        copy = tmp_path / fmt
        shutil.copytree(path, copy)
        proc = run_echoctl(var, "import", fmt, str(copy), "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["lines"] == summary["mapped_lines"] + summary["quarantined"]

    bronze = run_ingest(spark, str(lake), DAY)
    assert bronze["lines_read"] == 20 + 6 and bronze["quarantined"] == 0  # the import checked the contract
    mined = run_mine(spark, str(lake), DAY)
    assert mined["refinements"] == 13
    assert {k: v for k, v in mined["by_outcome"].items() if v} == {
        "accepted_unsettled": 7,  # Continue 6 + Tabby C1
        "rejected_unsettled": 5,  # Continue 4 (timed out) + Tabby C3 choice 1 (dismissed)
        "partially_accepted": 1,  # Tabby C2, select kind "line"
    }
    silver = spark.read.parquet(str(lake / "silver" / "refinements" / f"dt={DAY}"))
    assert silver.where("final IS NOT NULL").count() == 0  # labelled, never given an invented final
