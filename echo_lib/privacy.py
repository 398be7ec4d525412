"""Scrub secrets and personal data from text before it can reach a training row.

Detection reuses detect-secrets' maintained plugins: the regex denylists of its provider plugins
(AWS, GitHub, GitLab, Slack, Stripe, OpenAI, JWT, private keys, basic auth, ...) and its
``KeywordDetector`` for passwords and tokens in assignments. Echo adds what those plugins do not
cover in code fragments: e-mail addresses and the base64 body of a private key whose header fell
outside the window.
"""

from __future__ import annotations

import functools
import re

SECRET = "<SECRET>"
EMAIL = "<EMAIL>"
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
)
KEY_BODY_LINE = re.compile(r"^[ \t]*[A-Za-z0-9+/]{40,}={0,2}[ \t]*$", re.M)


@functools.cache
def _denylists() -> list[re.Pattern[str]]:
    import importlib
    import pkgutil

    import detect_secrets.plugins as plugins

    patterns: list[re.Pattern[str]] = []
    for module in pkgutil.iter_modules(plugins.__path__):
        if module.name in ("base", "high_entropy_strings", "keyword", "ip_public"):
            continue  # entropy is too noisy on code; keywords are handled line by line; IPs are not secrets
        mod = importlib.import_module(f"detect_secrets.plugins.{module.name}")
        for obj in vars(mod).values():
            denylist = getattr(obj, "denylist", None) if isinstance(obj, type) else None
            if not isinstance(denylist, list | tuple):  # the abstract base declares it as a property
                continue
            patterns.extend(p for p in denylist if p not in patterns)
    return patterns


@functools.cache
def _keyword_detector():
    from detect_secrets.plugins.keyword import KeywordDetector

    return KeywordDetector()


def scrub(text: str | None) -> tuple[str | None, int]:
    """(text with secrets and e-mails replaced, number of replacements)."""
    if not text:
        return text, 0
    found = 0
    text, n = PRIVATE_KEY_BLOCK.subn(SECRET, text)
    found += n
    text, n = KEY_BODY_LINE.subn(SECRET, text)
    found += n
    for pattern in _denylists():
        text, n = pattern.subn(SECRET, text)
        found += n
    detector = _keyword_detector()
    lines = text.split("\n")
    for i, line in enumerate(lines):
        for secret in detector.analyze_line(filename="code.py", line=line, line_number=i + 1):
            value = secret.secret_value
            if value and value in line and value != SECRET:
                line = line.replace(value, SECRET)
                found += 1
        lines[i] = line
    text = "\n".join(lines)
    text, n = EMAIL_RE.subn(EMAIL, text)
    return text, found + n
