"""Completion telemetry of assistants teams already run -> Echo's event contract, in the raw lake.

``echoctl import continue PATH`` and ``echoctl import tabby PATH`` map each client's own log onto
contract v1 (:mod:`echo_lib.core.events`) and land it as raw partitions, so the same ingest, mining
and training run on it. The mappings follow the projects' published schemas and writers (versions
cited in ``docs/events.md``):

* **Continue** "dev data" (``~/.continue/dev_data/<schema>/autocomplete.jsonl``, schemas 0.1.0 and
  0.2.0 of ``packages/config-yaml/src/schemas/data/autocomplete``): one line per outcome, logged
  when a completion is accepted, or with ``accepted: false`` once it has been on screen 10 s.
* **Tabby** event log (``~/.tabby/events/YYYY-MM-DD.json``, ``crates/tabby-common/src/api/event.rs``):
  a ``completion`` with its choices, then ``view``, ``select`` (``kind: "line"``: a partial accept)
  or ``dismiss`` per choice.

Neither records what the user kept afterwards, only what was shown and accepted, so the events
carry no ``doc_change`` or ``region_snapshot``: mining labels each proposal by its reaction
(``accepted_unsettled``, ``rejected_unsettled``, ``partially_accepted``, ``abandoned``) and
leaves ``final`` empty rather than invent it. These rows are labels: every gold dataset today
needs the kept code, so none of them uses the rows yet.

Every source line either maps to events or goes to ``quarantine/imports`` with a reason, so
``lines = mapped + quarantined``. Event ids and file names are derived from the source, so
importing the same path again replaces what it wrote instead of adding to it (overlapping paths,
say a folder and then one file in it, write a second copy whose events ingest drops as
redeliveries by ``event_id``).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import unquote, urlparse

from echo_lib.core.events import SCHEMA_VERSION, dumps, validate_event

FORMATS = ("continue", "tabby")
QUARANTINE_TABLE = "quarantine/imports"
KEEP_CHARS = 64_000  # of a quarantined source line
NAMESPACE = uuid.UUID("6f1c1f0e-3a55-4b8e-9a1e-2d0c4f6a7b10")  # event ids of imported records
LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust",
             ".java": "java", ".rb": "ruby", ".c": "c", ".cpp": "cpp", ".kt": "kotlin"}  # fmt: skip


class ClientLogError(ValueError):
    """The path holds nothing this format can read."""


@dataclass(frozen=True)
class SourceLine:
    path: str
    line_no: int  # 1-based
    text: str


@dataclass
class Shown:
    """One proposal shown to a user, and what they did with it (None: nothing)."""

    lines: list[SourceLine]
    ts: datetime
    request_id: str
    user: str
    repo_id: str
    doc_id: str
    language: str
    client: str
    model_version: str
    prefix: str
    suffix: str
    proposal: str
    latency_ms: int | None = None
    reaction: str | None = None  # accepted, rejected
    reaction_ts: datetime | None = None
    accepted_len: int | None = None
    reject_reason: str | None = None


@dataclass
class Mapped:
    shown: list[Shown] = field(default_factory=list)
    quarantined: list[tuple[SourceLine, str, str]] = field(default_factory=list)  # line, reason, detail

    def reject(self, line: SourceLine, reason: str, detail: str) -> None:
        self.quarantined.append((line, reason, detail))


# ---- shared helpers -------------------------------------------------------------------------------


def pseudonym(kind: str, value: str) -> str:
    """A stable pseudonymous id: Echo never stores a client's raw user or machine id."""
    return f"{kind}-{hashlib.sha256(value.encode()).hexdigest()[:16]}"


def language_of(path: str) -> str:
    return LANGUAGES.get(PurePosixPath(path).suffix.lower(), "unknown")


def repo_of(remote: str | None) -> str:
    """``https://github.com/acme/invoices.git`` or ``acme/invoices`` -> ``acme/invoices``."""
    if not remote:
        return "unknown"
    text = re.sub(r"\.git$", "", remote.strip().rstrip("/"))
    text = re.sub(r"^[a-z+]+://([^@/]*@)?[^/]+/", "", text)  # scheme, credentials, host
    return re.sub(r"^[^@]+@[^:]+:", "", text) or "unknown"  # git@host:owner/name


def doc_of(path: str, repo_id: str) -> str:
    """A document path inside its repository, without the home folder or host (personal details)
    that an absolute path or URI carries: ``file:///home/alice/src/invoices/invoices/models.py``
    with repo ``acme/invoices`` -> ``invoices/models.py``; the file name alone when the root is
    unknown. Remote URIs (``vscode-remote://ssh-remote+box/home/...``) and Windows paths
    (``C:\\Users\\alice\\...``) are read the same way; a relative path is already inside the repository."""
    if re.match(r"^[a-zA-Z][\w+.\-]+://", path):
        path = unquote(urlparse(path).path)
    windows = bool(re.match(r"^/?[a-zA-Z]:[\\/]|^\\\\", path))
    pure = (
        PureWindowsPath(path.lstrip("/") if windows else path)
        if windows or "\\" in path
        else PurePosixPath(path)
    )
    if not (windows or pure.is_absolute()):
        return pure.as_posix()
    parts = [p for p in pure.parts if p not in ("/", "\\") and not p.endswith((":\\", ":"))]
    if not parts:
        return "unknown"
    name = repo_id.rsplit("/", 1)[-1]
    return "/".join(parts[parts.index(name) + 1 :]) if name in parts[:-1] else parts[-1]


def trigger_of(prefix: str) -> str:
    return "line_start" if not prefix.rsplit("\n", 1)[-1].strip() else "mid_line"


def from_epoch_ms(value: float) -> datetime:
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"timestamp {value!r} is out of range") from exc


def parse_time(value: Any) -> datetime:
    """Continue writes epoch milliseconds (0.1.0, and 0.2.0 in 2025-03..07) or an ISO string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("timestamp is neither a number nor a string")
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # ValueError when it is not one
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return from_epoch_ms(float(value))


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def read_lines(paths: Iterable[Path]) -> Iterator[SourceLine]:
    for path in paths:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                if raw.strip():
                    yield SourceLine(str(path), number, raw.decode("utf-8", "replace").rstrip("\r\n"))


def decode(line: SourceLine, mapped: Mapped) -> dict[str, Any] | None:
    try:
        record = json.loads(line.text)
    except json.JSONDecodeError as exc:
        mapped.reject(line, "malformed_json", str(exc))
        return None
    if not isinstance(record, dict):
        mapped.reject(line, "not_an_object", type(record).__name__)
        return None
    return record


def need(record: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in record or record[key] is None:
        raise KeyError(key)
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise TypeError(f"{key} is {type(value).__name__}")
    return value


# ---- Continue ----------------------------------------------------------------------------------------


def continue_files(path: Path) -> list[Path]:
    """``autocomplete.jsonl`` itself, or every ``<schema>/autocomplete.jsonl`` under a dev_data folder."""
    if path.is_file():
        return [path]
    return sorted(path.rglob("autocomplete.jsonl"))


def map_continue(lines: Iterable[SourceLine]) -> Mapped:
    mapped = Mapped()
    seen: dict[str, Shown] = {}
    for line in lines:
        record = decode(line, mapped)
        if record is None:
            continue
        event_name = record.get("eventName", "autocomplete")  # 0.1.0 lines have no base fields
        if event_name != "autocomplete":
            mapped.reject(line, "not_a_completion", f"eventName {event_name!r}")
            continue
        try:
            completion = need(record, "completion", str)
            accepted = need(record, "accepted", bool)  # optional in the schema, set before every write
            ts = parse_time(record.get("timestamp"))
            filepath = need(record, "filepath", str)
            prefix = need(record, "prefix", str)
            suffix = record.get("suffix") or ""
            machine = record.get("uniqueId") or record.get("userId") or "unknown"
        except KeyError as exc:
            mapped.reject(line, "missing_field", f"{exc.args[0]} is required")
            continue
        except (TypeError, ValueError) as exc:
            mapped.reject(line, "wrong_type", str(exc))
            continue
        repo = repo_of(record.get("gitRepo"))
        agent = re.search(r"Continue/([\w.\-]+)", str(record.get("userAgent") or ""))
        model = "/".join(str(record[k]) for k in ("modelProvider", "modelName") if record.get(k))
        time_ms = record.get("time")
        request_id = str(record.get("completionId") or pseudonym("req", line.text))
        earlier = seen.get(request_id)
        if earlier is not None:
            # the 10 s timer logs accepted:false without forgetting the completion, so a later
            # accept logs the same completionId again: one proposal, and the accept wins
            earlier.lines.append(line)
            earlier.ts = min(earlier.ts, ts)
            if accepted and earlier.reaction != "accepted":
                earlier.reaction, earlier.reaction_ts = "accepted", ts
                earlier.accepted_len, earlier.reject_reason = len(completion), None
            continue
        seen[request_id] = Shown(
            lines=[line],
            ts=ts,
            request_id=request_id,
            user=pseudonym("u", str(machine)),
            repo_id=repo,
            doc_id=doc_of(filepath, repo),
            language=language_of(filepath),
            client=f"continue/{agent.group(1) if agent else record.get('schema', '0.1.0')}"[:64],
            model_version=f"{model or 'unknown'} (continue)"[:256],
            prefix=prefix,
            suffix=suffix,
            proposal=completion,
            latency_ms=int(time_ms) if isinstance(time_ms, int | float) and time_ms >= 0 else None,
            # one line per outcome: an accept right away, a non-accept after 10 s on screen
            reaction="accepted" if accepted else "rejected",
            reaction_ts=ts,
            accepted_len=len(completion) if accepted else None,
            reject_reason=None if accepted else "timed_out",
        )
    mapped.shown = list(seen.values())
    return mapped


# ---- Tabby -----------------------------------------------------------------------------------------------


def tabby_files(path: Path) -> list[Path]:
    """One day's ``YYYY-MM-DD.json``, or every such file in an events folder."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob("*.json") if re.fullmatch(r"\d{4}-\d{2}-\d{2}\.json", p.name))


def partial_accept_len(text: str) -> int:
    """Tabby's ``select`` with ``kind: "line"`` accepts a line or a word without saying how much:
    the first line of a multi-line choice (leading newlines included), else its first word; a
    lower bound of at least one character, and the whole choice when it is one character long."""
    body = text.lstrip("\n")
    lead = len(text) - len(body)
    if "\n" in body.rstrip("\n"):
        taken = lead + len(body.split("\n", 1)[0])
    else:
        word = re.match(r"\s*\S+?(?=\W|$)", text)
        taken = word.end() if word else 0
    return min(max(taken, 1), len(text) - 1) if len(text) > 1 else len(text)


def map_tabby(lines: Iterable[SourceLine]) -> Mapped:
    mapped = Mapped()
    completions: dict[str, tuple[SourceLine, dict[str, Any], dict[str, Any]]] = {}
    actions: dict[str, list[tuple[str, SourceLine, dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for line in lines:
        entry = decode(line, mapped)
        if entry is None:
            continue
        event = entry.get("event")
        if not isinstance(event, dict) or len(event) != 1 or not isinstance(entry.get("ts"), int | float):
            mapped.reject(line, "missing_field", "a Tabby line is {user, ts, event: {<kind>: {...}}}")
            continue
        [(kind, body)] = event.items()
        if kind == "chat_completion":
            mapped.reject(line, "not_a_completion", "chat_completion")
            continue
        if kind not in ("completion", "view", "select", "dismiss") or not isinstance(body, dict):
            mapped.reject(line, "unknown_event_type", str(kind))
            continue
        if not isinstance(body.get("completion_id"), str):
            mapped.reject(line, "missing_field", "completion_id is required")
            continue
        if kind != "completion" and (
            not isinstance(body.get("choice_index"), int) or isinstance(body.get("choice_index"), bool)
        ):
            mapped.reject(line, "wrong_type", "choice_index must be an integer")
            continue
        if kind == "completion":
            if body["completion_id"] in completions:  # the same file imported twice, or a copied line
                mapped.reject(line, "duplicate", f"completion {body['completion_id']} appeared before")
                continue
            completions[body["completion_id"]] = (line, entry, body)
        else:
            actions[body["completion_id"]].append((kind, line, entry, body))

    for completion_id, events in actions.items():
        if completion_id not in completions:
            for _, line, _, _ in events:
                mapped.reject(
                    line, "reaction_without_completion", f"no completion {completion_id} in these files"
                )
    for completion_id, (line, entry, body) in completions.items():
        events = actions.get(completion_id, [])
        segments = body.get("segments")
        choices = body.get("choices")
        if not isinstance(segments, dict) or not isinstance(segments.get("prefix"), str):
            detail = "no segments: a raw-prompt request has no prefix or suffix to learn from"
            for bad in [line, *(e[1] for e in events)]:
                mapped.reject(bad, "no_segments", detail)
            continue
        if not isinstance(choices, list) or not all(
            isinstance(c, dict) and isinstance(c.get("index"), int) and isinstance(c.get("text"), str)
            for c in choices
        ):
            for bad in [line, *(e[1] for e in events)]:
                mapped.reject(bad, "wrong_type", "choices must be [{index, text}]")
            continue
        by_index = {c["index"]: c["text"] for c in choices}
        shown_indexes = sorted({b.get("choice_index") for _, _, _, b in events} & set(by_index))
        if not shown_indexes:
            mapped.reject(line, "never_viewed", "no view, select or dismiss: the completion was not shown")
        stray = [e for e in events if e[3].get("choice_index") not in by_index]
        for _, bad, _, b in stray:
            mapped.reject(bad, "invalid_value", f"choice_index {b.get('choice_index')!r} is not a choice")
        repo = repo_of(segments.get("git_url"))
        filepath = segments.get("filepath") or "unknown"
        agent = re.search(r"tabby-agent/[\w.\-]+", str(body.get("user_agent") or ""))
        for index in shown_indexes:
            own = sorted((e for e in events if e[3].get("choice_index") == index), key=lambda e: e[2]["ts"])
            text = by_index[index]
            first_view = next((e for e in own if e[0] == "view"), own[0])
            # a choice can be shown again after a dismissal: what the user finally took wins
            rank = {"select": 0, "line": 1, "dismiss": 2}
            reactions = [e for e in own if e[0] in ("select", "dismiss")]
            reaction = min(
                reactions,
                key=lambda e: rank["line" if e[3].get("kind") == "line" else e[0]],
                default=None,
            )
            shown = Shown(
                lines=[line, *(e[1] for e in own)] if index == shown_indexes[0] else [e[1] for e in own],
                ts=from_epoch_ms(first_view[2]["ts"]),
                request_id=f"{completion_id}:{index}",
                # before 2024-04 Tabby kept the user inside the completion
                user=pseudonym("u", str(entry.get("user") or body.get("user") or "anonymous")),
                repo_id=repo,
                doc_id=doc_of(filepath, repo) if filepath != "unknown" else "unknown",
                language=str(body.get("language") or language_of(filepath))[:32],
                client=(agent.group(0) if agent else "tabby")[:64],
                model_version="unknown (tabby does not log the model)",
                prefix=segments["prefix"],
                suffix=segments.get("suffix") or "",
                proposal=text,
            )
            if reaction is not None:
                kind, _, event, b = reaction
                shown.reaction_ts = from_epoch_ms(event["ts"])
                if kind == "select":
                    shown.reaction = "accepted"
                    shown.accepted_len = partial_accept_len(text) if b.get("kind") == "line" else len(text)
                else:
                    shown.reaction, shown.reject_reason = "rejected", "dismissed"
            mapped.shown.append(shown)
    return mapped


# ---- to events and the lake ------------------------------------------------------------------------------


def session_events(fmt: str, key: tuple[str, str, str, str], items: list[Shown]) -> list[dict[str, Any]]:
    """One session's events: its proposals in time order, each followed by its reaction."""
    user, repo, doc, day = key
    session_id = pseudonym("s", f"{fmt}:{user}:{repo}:{doc}:{day}")
    out: list[dict[str, Any]] = []

    def add(event_type: str, ts: datetime, s: Shown, **fields: Any) -> None:
        out.append(
            {
                "event_id": str(uuid.uuid5(NAMESPACE, f"{fmt}:{session_id}:{s.request_id}:{event_type}")),
                "schema_version": SCHEMA_VERSION,
                "event_type": event_type,
                "ts": rfc3339(ts),
                "seq": len(out),
                "session_id": session_id,
                "user_id": user,
                "repo_id": repo,
                "doc_id": doc,
                "language": s.language,
                "client": s.client,
                **fields,
            }
        )

    for s in sorted(items, key=lambda s: (s.ts, s.request_id)):
        shown = {
            "request_id": s.request_id,
            "model_version": s.model_version,
            "offset": len(s.prefix),  # within the logged window: neither client logs a document offset
            "prefix": s.prefix,
            "suffix": s.suffix,
            "proposal": s.proposal,
            "trigger": trigger_of(s.prefix),
        }
        if s.latency_ms is not None:
            shown["latency_ms"] = s.latency_ms
        add("completion_shown", s.ts, s, **shown)
        if s.reaction == "accepted":
            add("completion_accepted", s.reaction_ts, s, request_id=s.request_id, accepted_len=s.accepted_len)
        elif s.reaction == "rejected":
            add("completion_rejected", s.reaction_ts, s, request_id=s.request_id, reason=s.reject_reason)
    return out


def to_events(fmt: str, shown: list[Shown]) -> dict[str, list[dict[str, Any]]]:
    """Contract-v1 events by date: one session per user, document and day (``seq`` orders it)."""
    sessions: dict[tuple[str, str, str, str], list[Shown]] = defaultdict(list)
    for s in shown:
        sessions[(s.user, s.repo_id, s.doc_id, s.ts.date().isoformat())].append(s)
    by_date: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, items in sorted(sessions.items()):
        by_date[key[3]] += session_events(fmt, key, items)
    return dict(by_date)


def import_logs(lake: str, fmt: str, path: str | Path) -> dict[str, Any]:
    """Map a client's log file (or folder) onto the contract and land it as raw partitions; return
    the reconciliation (``lines == mapped_lines + quarantined``)."""
    from echo_lib.core import lake as lake_io
    from echo_lib.mining.privacy import scrub

    if fmt not in FORMATS:
        raise ClientLogError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = Path(path)
    if not source.exists():
        raise ClientLogError(f"{source} does not exist")
    files = continue_files(source) if fmt == "continue" else tabby_files(source)
    if not files:
        wanted = "autocomplete.jsonl" if fmt == "continue" else "YYYY-MM-DD.json"
        raise ClientLogError(f"no {wanted} under {source}")
    lines = list(read_lines(files))
    mapped = map_continue(lines) if fmt == "continue" else map_tabby(lines)

    events = to_events(fmt, mapped.shown)
    invalid = {}
    for day_events in events.values():
        for record in day_events:
            problem = validate_event(record)
            if problem is not None:
                invalid[record["request_id"]] = f"{problem.reason}: {problem.detail}"
    if invalid:  # a record the contract refuses (an oversize prefix, ...) is quarantined whole
        keep = [s for s in mapped.shown if s.request_id not in invalid]
        for s in mapped.shown:
            if s.request_id in invalid:
                for line in s.lines:
                    mapped.reject(line, "contract", invalid[s.request_id])
        mapped.shown = keep
        events = to_events(fmt, keep)

    digest = hashlib.sha256("\n".join(sorted(str(f.resolve()) for f in files)).encode()).hexdigest()[:16]
    name = f"part-import-{fmt}-{digest}.jsonl.gz"
    days = sorted(set(events) | {_day_of(line, mapped) for line, _, _ in mapped.quarantined})
    written = []
    for day in days:
        folder = f"raw/events/dt={day}"
        if day in events:
            written.append(
                lake_io.write_bytes_atomic(
                    lake, f"{folder}/{name}", lake_io.gzip_lines([dumps(e) for e in events[day]])
                )
            )
        else:
            lake_io.delete_matching(lake, folder, name)
        rows = [
            json.dumps(
                {
                    "source_file": line.path,
                    "line_no": line.line_no,
                    "reason": reason,
                    "detail": detail,
                    "raw": scrub(line.text[:KEEP_CHARS])[0],
                },
                ensure_ascii=False,
            )
            for line, reason, detail in mapped.quarantined
            if _day_of(line, mapped) == day
        ]
        target = f"{QUARANTINE_TABLE}/dt={day}"
        if rows:
            written.append(lake_io.write_bytes_atomic(lake, f"{target}/{name}", lake_io.gzip_lines(rows)))
        else:
            lake_io.delete_matching(lake, target, name)

    quarantined_lines = {(q.path, q.line_no) for q, _, _ in mapped.quarantined}
    mapped_lines = {(m.path, m.line_no) for s in mapped.shown for m in s.lines} - quarantined_lines
    reactions = Counter(s.reaction or "none" for s in mapped.shown)
    return {
        "format": fmt,
        "files": [str(f) for f in files],
        "lines": len(lines),
        "mapped_lines": len(mapped_lines),
        "quarantined": len(quarantined_lines),
        "quarantine_reasons": dict(sorted(Counter(r for _, r, _ in mapped.quarantined).items())),
        "shown": len(mapped.shown),
        "reactions": {k: reactions.get(k, 0) for k in ("accepted", "rejected", "none")},
        "events": sum(len(v) for v in events.values()),
        "sessions": len({e["session_id"] for v in events.values() for e in v}),
        "dates": sorted(events),
        "written": written,
    }


def _day_of(line: SourceLine, mapped: Mapped) -> str:
    """The partition a quarantined line goes to: its own time when it has one, else the first date
    the import maps (a line with no readable time still lands beside its neighbours)."""
    try:
        record = json.loads(line.text)
        value = record.get("ts", record.get("timestamp")) if isinstance(record, dict) else None
        return parse_time(value).date().isoformat()
    except (ValueError, TypeError, OverflowError, OSError):
        pass
    days = sorted(s.ts.date().isoformat() for s in mapped.shown)
    return days[0] if days else datetime.now(UTC).date().isoformat()
