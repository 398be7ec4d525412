"""Scrub secrets and personal data from text before it can reach a training row.

Detection reuses detect-secrets' maintained plugins: the regex denylists of its provider plugins
(AWS, GitHub, GitLab, Slack, Stripe, OpenAI, JWT, private keys, basic auth, ...), its
``KeywordDetector`` for passwords and tokens in assignments, and its high-entropy plugins and
heuristic filters for quoted random strings. Echo adds what those plugins miss in code
fragments: provider formats newer than the plugins, unquoted ``KEY=value`` assignments
(``.env`` files, ``export`` lines), credentials in request headers, the base64 body of a private
key whose header fell outside the window, e-mail addresses, and public IP addresses (validated
by the standard ``ipaddress`` module). Every rule is measured for recall on planted secrets and
for false positives on clean code by ``python -m echo_lib.mining.privacy_quality`` (docs/mining.md).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter

SECRET = "<SECRET>"
EMAIL = "<EMAIL>"
IP = "<IP>"

PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S
)
KEY_BODY_LINE = re.compile(r"^[ \t]*[A-Za-z0-9+/]{40,}={0,2}[ \t]*$", re.M)

# Provider formats detect-secrets 1.5 does not know (prefixes documented by each provider).
EXTRA_PROVIDERS = tuple(
    re.compile(p)
    for p in (
        r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
        r"\bGOCSPX-[0-9A-Za-z_-]{28}\b",  # Google OAuth client secret
        r"\bya29\.[0-9A-Za-z_-]{20,}",  # Google OAuth access token
        r"\bsk-ant-(?:api|admin)\d{2}-[0-9A-Za-z_-]{20,}",  # Anthropic
        r"\bsk-(?:proj|svcacct|admin)-[0-9A-Za-z_-]{20,}",  # OpenAI project/service keys
        r"\bsk-[0-9A-Za-z]{48}\b",  # OpenAI legacy user key
        r"\bhf_[0-9A-Za-z]{30,}\b",  # Hugging Face
        r"\bgithub_pat_[0-9A-Za-z_]{22,}",  # GitHub fine-grained token
        r"\bglpat-[0-9A-Za-z_-]{20}\b",  # GitLab personal access token
        r"\bnpm_[0-9A-Za-z]{36}\b",  # npm
        r"\bpypi-[0-9A-Za-z_-]{50,}",  # PyPI upload token
        r"\bshp(?:at|ca|pa|ss)_[0-9a-fA-F]{32}\b",  # Shopify
        r"\bdo[opr]_v1_[0-9a-f]{64}\b",  # DigitalOcean
        r"\bPMAK-[0-9a-f]{24}-[0-9a-f]{34}\b",  # Postman
        r"\bdapi[0-9a-f]{32}\b",  # Databricks
        r"\bATATT3[0-9A-Za-z_=-]{20,}",  # Atlassian
        r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{24,}\b",  # Stripe (test keys and longer live keys too)
        r"\bxapp-\d-[0-9A-Z]+-\d+-[0-9a-f]{32,}\b",  # Slack app token
        r"\bSG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43}\b",  # SendGrid
        r"\bAC[0-9a-f]{32}\b|\bSK[0-9a-f]{32}\b",  # Twilio account / API key sid
        r"https://[0-9a-f]{32}@[0-9A-Za-z.-]+/\d+",  # Sentry DSN
    )
)
# KEY=value without quotes: .env files, shell `export`, CI variables. The name is upper case (as
# environment variables are) and the value has a digit and no call or index syntax, so code such
# as `TOKEN = next_token()` or `PASSWORD = settings.PASSWORD` stays.
UNQUOTED_ASSIGNMENT = re.compile(
    r"(?<![\w.])[A-Z0-9_]*(?:SECRET|PASSWORD|PASSWD|PWD|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?|AUTH)"
    r"[A-Z0-9_]*[ \t]*[=:][ \t]*(?P<value>(?=[^\s'\"]*\d)[^\s'\"()\[\]{}<>,;]{8,})(?=[\s;]|$)",
    re.M,
)
# Authorization: Bearer <token>, X-Api-Key: <key>, as in curl -H, HTTP dumps and header dicts
AUTH_HEADER = re.compile(
    r"(?i)\b(?:authorization|proxy-authorization|x-api-key|api-key|x-auth-token|private-token)"
    r"['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|basic|token|bot)\s+)?(?P<value>[0-9A-Za-z._~+/=-]{16,})"
)
# quoted strings long enough to be a key: candidates for the entropy plugins
QUOTED = re.compile(r"""(['"])([0-9A-Za-z+/=_-]{20,})\1""")

# E-mail: the domain must end in a real top-level domain, so `x@self.weight` (matrix product in
# Python) and `a@b.T` are code, while `jane.doe@corp.example.com` is an address.
EMAIL_RE = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+(?P<tld>[A-Za-z]{2,24})\b")
GENERIC_TLDS = frozenset(
    [
        "com",
        "org",
        "net",
        "edu",
        "gov",
        "mil",
        "int",
        "info",
        "biz",
        "name",
        "pro",
        "io",
        "ai",
        "dev",
        "app",
        "cloud",
        "tech",
        "online",
        "site",
        "xyz",
        "email",
        "mail",
        "co",
        "me",
        "tv",
        "cc",
        "ly",
        "us",
        "uk",
        "de",
        "fr",
        "nl",
        "be",
        "ch",
        "at",
        "se",
        "no",
        "dk",
        "fi",
        "ie",
        "es",
        "pt",
        "it",
        "pl",
        "cz",
        "ru",
        "ua",
        "jp",
        "cn",
        "kr",
        "tw",
        "hk",
        "sg",
        "in",
        "au",
        "nz",
        "ca",
        "br",
        "mx",
        "ar",
        "cl",
        "za",
        "il",
        "tr",
        "gr",
        "hu",
        "ro",
        "eu",
        "asia",
    ]
)
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}:?[0-9A-Fa-f]{0,4}(?![\w:])")


@functools.cache
def _denylists() -> list[re.Pattern[str]]:
    """The regex denylists of detect-secrets' registered provider plugins (its plugin registry,
    the ``RegexBasedDetector`` contract), then Echo's extra provider formats."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector
    from detect_secrets.plugins.ip_public import IPPublicDetector

    patterns: list[re.Pattern[str]] = []
    for plugin in get_mapping_from_secret_type_to_class().values():
        # entropy and keyword plugins are not regex-based and run below; IPs are personal data
        if issubclass(plugin, RegexBasedDetector) and plugin is not IPPublicDetector:
            patterns.extend(p for p in plugin.denylist if p not in patterns)
    return patterns + list(EXTRA_PROVIDERS)


@functools.cache
def _keyword_detector():
    from detect_secrets.plugins.keyword import KeywordDetector

    return KeywordDetector()


@functools.cache
def _keyword_hint() -> re.Pattern[str]:
    """Any of the keyword detector's words: each of its patterns needs one, so a line without one
    cannot match and is not handed to it (most code lines; the detector's per-line cost dominated)."""
    from detect_secrets.plugins.keyword import DENYLIST

    return re.compile("|".join(DENYLIST), re.IGNORECASE)


@functools.cache
def _entropy_plugins():
    from detect_secrets.plugins.high_entropy_strings import (
        Base64HighEntropyString,
        HexHighEntropyString,
    )

    return HexHighEntropyString(), Base64HighEntropyString()


def looks_random(value: str) -> bool:
    """detect-secrets' entropy test and heuristic filters, with the allow-listing code needs:
    identifiers, paths and words (snake_case, CamelCase, dotted names) are never secrets."""
    from detect_secrets.filters.heuristic import is_potential_uuid, is_sequential_string

    if is_sequential_string(value) or is_potential_uuid(value):
        return False
    if re.fullmatch(r"[A-Za-z]+(?:[_-][A-Za-z]+)*|(?:[A-Z][a-z]+)+|[a-z]+(?:[A-Z][a-z]+)+", value):
        return False  # a name, not a key (no digits, word-shaped)
    if not (re.search(r"\d", value) and re.search(r"[A-Za-z]", value)):
        return False
    hex_plugin, base64_plugin = _entropy_plugins()
    if re.fullmatch(r"[0-9a-fA-F]+", value):
        return hex_plugin.calculate_shannon_entropy(value) > hex_plugin.entropy_limit
    return base64_plugin.calculate_shannon_entropy(value) > base64_plugin.entropy_limit


# a dotted quad after these is a version, a section number or an object identifier
NOT_AN_ADDRESS_BEFORE = re.compile(
    r"(?i)version|release|section|rfc|\boid|objectidentifier|§|\bv$|==|>=|<=|~="
)


def _is_public_ip(match: re.Match[str]) -> bool:
    """A global IPv4/IPv6 address: private, loopback, documentation and unspecified addresses
    identify nobody, strings that only look like one (`1::2` is a slice) are not addresses, and
    a dotted quad after `version`, `section` or `ObjectIdentifier(` is not an address."""
    try:
        address = ipaddress.ip_address(match.group(0))
    except ValueError:
        return False
    line_start = match.string.rfind("\n", 0, match.start()) + 1
    before = match.string[max(line_start, match.start() - 40) : match.start()]
    return address.is_global and not (address.version == 4 and NOT_AN_ADDRESS_BEFORE.search(before))


def scrub(text: str | None, found_by: Counter | None = None) -> tuple[str | None, int]:
    """(text with secrets, e-mails and public IPs replaced, number of replacements).

    ``found_by``, when given, counts the replacements per rule (for the quality report).
    """
    if not text:
        return text, 0
    counts: Counter = found_by if found_by is not None else Counter()
    before = sum(counts.values())

    def replace_if(rule: str, keep, replacement: str, group: int | str = 0):
        """Replace ``group`` of each match (the value, not the name before it) unless ``keep(match)``."""

        def replace(match: re.Match[str]) -> str:
            if keep(match):
                return match.group(0)
            counts[rule] += 1
            start, end = (i - match.start() for i in match.span(group))
            return match.group(0)[:start] + replacement + match.group(0)[end:]

        return replace

    for rule, pattern in (("private_key", PRIVATE_KEY_BLOCK), ("private_key_body", KEY_BODY_LINE)):
        text, n = pattern.subn(SECRET, text)
        if n:
            counts[rule] += n
    for pattern in _denylists():
        text, n = pattern.subn(SECRET, text)
        if n:
            counts["provider_format"] += n
    for rule, pattern in (("auth_header", AUTH_HEADER), ("unquoted_assignment", UNQUOTED_ASSIGNMENT)):
        text = pattern.sub(replace_if(rule, lambda m: False, SECRET, "value"), text)
    hint = _keyword_hint()
    if hint.search(text):
        detector = _keyword_detector()
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if not hint.search(line):
                continue
            for secret in detector.analyze_line(filename="code.py", line=line, line_number=i + 1):
                value = secret.secret_value
                if value and value in line and value != SECRET:
                    line = line.replace(value, SECRET)
                    counts["keyword"] += 1
            lines[i] = line
        text = "\n".join(lines)
    text = QUOTED.sub(replace_if("high_entropy", lambda m: not looks_random(m.group(2)), SECRET, 2), text)
    text = EMAIL_RE.sub(
        replace_if("email", lambda m: m.group("tld").lower() not in GENERIC_TLDS, EMAIL), text
    )
    for pattern in (IPV4, IPV6):
        text = pattern.sub(replace_if("ip_address", lambda m: not _is_public_ip(m), IP), text)
    return text, sum(counts.values()) - before
