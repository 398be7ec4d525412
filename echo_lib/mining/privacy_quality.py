"""How well the scrubber works: recall on planted secrets, false positives on clean code.

    .venv/bin/python -m echo_lib.mining.privacy_quality --markdown docs/results/scrubbing.md

Recall: every kind of secret and personal data Echo promises to remove, with random bodies (a
fixed seed), planted in the places code carries them (a quoted assignment without a telltale
name, a comment, an ``export`` line, a ``.env`` line, a request header, a JSON/YAML config). A
plant counts as caught when its value is gone from the scrubbed text.

False positives: the scrubber over clean code that holds no secrets (the Python standard library,
the public corpus v0 trains on): every line it changes is a false positive, per rule.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import string
import sys
import sysconfig
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from echo_lib.mining.privacy import scrub

ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B64URL = ALNUM + "-_"

# where code carries a value: {v} is the value, {name} a variable name without a telltale word
CONTEXTS = {
    "quoted, plain name": 'config_value = "{v}"',
    "comment": "# temporary: {v}",
    "export line": "export SERVICE_CONFIG={v}",
    "JSON config": '{{"endpoint": "https://api.example.com", "value": "{v}"}}',
    "YAML config": "service:\n  value: {v}\n",
    "call argument": 'client = Client("{v}", timeout=30)',
}


@dataclass(frozen=True)
class Plant:
    kind: str
    context: str
    text: str
    value: str


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _public_ipv4(rng: random.Random) -> str:
    while True:
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if address.is_global:
            return str(address)


def _public_ipv6(rng: random.Random) -> str:
    while True:
        address = ipaddress.IPv6Address((0x2001 << 112) | (0x4860 << 96) | rng.getrandbits(96))
        if address.is_global:
            return address.compressed


PROVIDER_FORMATS = {
    "AWS access key id": lambda r: "AKIA" + _r(r, string.ascii_uppercase + string.digits, 16),
    "GitHub token": lambda r: "ghp_" + _r(r, ALNUM, 36),
    "GitHub fine-grained token": lambda r: "github_pat_" + _r(r, ALNUM, 22) + "_" + _r(r, ALNUM, 59),
    "GitLab token": lambda r: "glpat-" + _r(r, B64URL, 20),
    "Slack bot token": lambda r: (
        f"xoxb-{_r(r, string.digits, 11)}-{_r(r, string.digits, 12)}-{_r(r, ALNUM, 24)}"
    ),
    "Stripe live key": lambda r: "sk_live_" + _r(r, ALNUM, 24),
    "OpenAI project key": lambda r: "sk-proj-" + _r(r, B64URL, 48),
    "Anthropic key": lambda r: "sk-ant-api03-" + _r(r, B64URL, 93) + "AA",
    "Google API key": lambda r: "AIza" + _r(r, B64URL, 35),
    "Hugging Face token": lambda r: "hf_" + _r(r, ALNUM, 34),
    "npm token": lambda r: "npm_" + _r(r, ALNUM, 36),
    "PyPI token": lambda r: "pypi-AgEIcHlwaS5vcmc" + _r(r, B64URL, 60),
    "SendGrid key": lambda r: f"SG.{_r(r, B64URL, 22)}.{_r(r, B64URL, 43)}",
    "Twilio API key": lambda r: "SK" + _r(r, HEX, 32),
    "DigitalOcean token": lambda r: "dop_v1_" + _r(r, HEX, 64),
    "Shopify token": lambda r: "shpat_" + _r(r, HEX, 32),
    "Databricks token": lambda r: "dapi" + _r(r, HEX, 32),
    "JWT": lambda r: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9." + _r(r, B64URL, 40) + "." + _r(r, B64URL, 43),
    "random key, base64 (entropy)": lambda r: _r(r, ALNUM + "+/", 40),
    "random key, hex (entropy)": lambda r: _r(r, HEX, 40),
}
PERSONAL = {
    "e-mail address": lambda r: (
        f"{_r(r, string.ascii_lowercase, 6)}.{_r(r, string.ascii_lowercase, 5)}@"
        f"{_r(r, string.ascii_lowercase, 7)}.com"
    ),
    "public IPv4 address": _public_ipv4,
    "public IPv6 address": _public_ipv6,
}
NAMED = {  # secrets recognisable only by the name they are given
    "password in an assignment": ('db_password = "{v}"', lambda r: _r(r, ALNUM, 14)),
    "unquoted KEY=value (.env)": ("DATABASE_PASSWORD={v}", lambda r: _r(r, ALNUM, 18) + "7"),
    "export of a token": ("export DEPLOY_TOKEN={v}", lambda r: _r(r, ALNUM, 32) + "1"),
    "Authorization header": (
        'curl -H "Authorization: Bearer {v}" https://api.example.com/v1/items',
        lambda r: _r(r, B64URL, 40) + "9",
    ),
    "API key header": ('headers = {{"X-Api-Key": "{v}"}}', lambda r: _r(r, ALNUM, 32) + "3"),
}
# values that must go wherever they stand; random keys are only recognisable when quoted
ANYWHERE = {**PROVIDER_FORMATS, **PERSONAL}
QUOTED_ONLY = {"random key, base64 (entropy)", "random key, hex (entropy)"}


def planted(seed: int = 0, per_cell: int = 5) -> list[Plant]:
    """The planted corpus: every kind in every context it can appear in, ``per_cell`` times."""
    rng = random.Random(seed)
    plants = []
    for kind, make in ANYWHERE.items():
        for context, template in CONTEXTS.items():
            if kind in QUOTED_ONLY and '"{v}"' not in template:
                continue
            for _ in range(per_cell):
                value = make(rng)
                plants.append(Plant(kind, context, template.format(v=value), value))
    for kind, (template, make) in NAMED.items():
        for _ in range(per_cell * len(CONTEXTS)):
            value = make(rng)
            plants.append(Plant(kind, "its own", template.format(v=value), value))
    return plants


def recall(plants: list[Plant]) -> dict[str, tuple[int, int]]:
    """kind -> (caught, planted)."""
    out: dict[str, list[int]] = {}
    for plant in plants:
        text, _ = scrub(plant.text)
        cell = out.setdefault(plant.kind, [0, 0])
        cell[0] += plant.value not in text
        cell[1] += 1
    return {k: (c, n) for k, (c, n) in out.items()}


def clean_code_files(limit: int | None = None) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    return files[:limit] if limit else files


def false_positives(files: list[Path], examples_per_rule: int = 3) -> dict:
    """Lines the scrubber changes in code that holds no secrets, per rule, with examples."""
    lines = changed = 0
    by_rule: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for path in files:
        before = path.read_text(errors="replace").splitlines()
        found: Counter = Counter()
        after, _ = scrub("\n".join(before), found)  # one call per file, as gold scrubs whole fields
        by_rule.update(found)
        after_lines = after.splitlines() if after else []
        lines += len(before)
        if len(after_lines) != len(before):  # a multi-line match: count its lines as changed
            changed += abs(len(before) - len(after_lines)) + 1
            continue
        for old, new in zip(before, after_lines, strict=True):
            if old != new:
                changed += 1
                alone: Counter = Counter()
                scrub(old, alone)  # which rule changed this line
                for rule in alone:
                    if len(examples.setdefault(rule, [])) < examples_per_rule:
                        examples[rule].append(old.strip()[:120])
    return {"files": len(files), "lines": lines, "changed": changed, "by_rule": by_rule, "examples": examples}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "")


def render(rec: dict[str, tuple[int, int]], fp: dict, seconds: float) -> str:
    caught = sum(c for c, _ in rec.values())
    total = sum(n for _, n in rec.values())
    out = [
        "# Scrubbing quality",
        "",
        "Generated by `.venv/bin/python -m echo_lib.mining.privacy_quality --markdown docs/results/scrubbing.md`"
        f" ({seconds:.0f} s). Do not edit by hand.",
        "",
        f"## Recall on planted secrets: {caught:,} of {total:,} ({caught / total:.1%})",
        "",
        "| kind | caught | planted | recall |",
        "| --- | --- | --- | --- |",
    ]
    for kind, (c, n) in rec.items():
        out.append(f"| {kind} | {c} | {n} | {c / n:.0%} |")
    rate = fp["changed"] / fp["lines"] if fp["lines"] else 0.0
    out += [
        "",
        f"## False positives on clean code: {fp['changed']:,} of {fp['lines']:,} lines changed ({rate:.3%})",
        "",
        f"The Python standard library ({fp['files']:,} files) holds no real secrets, so every change is"
        " counted as a false positive here. Read the examples: e-mail replacements are mostly authors'"
        " real addresses (personal data the rule exists to remove), IP replacements mostly real"
        " addresses in networking tests, and the hex-entropy rule removes digests that look like keys.",
        "",
        "| rule | replacements | examples |",
        "| --- | --- | --- |",
    ]
    for rule, n in fp["by_rule"].most_common():
        shown = "<br>".join("`" + _cell(e) + "`" for e in fp["examples"].get(rule, []))
        out.append(f"| {rule} | {n:,} | {shown} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=None, help="clean-code files to read (default: all)")
    parser.add_argument("--markdown", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rec = recall(planted(args.seed))
    fp = false_positives(clean_code_files(args.files))
    report = render(rec, fp, time.perf_counter() - start)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
