"""The completion engine: batched greedy decoding with a KV cache, token healing and line stopping.

A proposal is what the agent would insert at the cursor: the characters after ``prefix``. The
engine works on a Llama-style causal LM in Hugging Face format (``save_pretrained`` safetensors plus
the tokenizer in the same directory), loaded from a local directory or from MLflow
(``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``runs:/<run_id>/<path>``).

Decoding is an explicit loop rather than ``model.generate`` so that it can

* batch requests of different lengths (left padding, explicit ``attention_mask`` and
  ``position_ids``) and give exactly the proposals one-at-a-time decoding gives;
* drop finished rows from the batch and from the KV cache, so late steps run on fewer rows;
* heal the last token: a prefix that ends mid-token (``"    retu"``) is tokenised differently
  from how the same text appears in training data (``"    return"``), so the last prompt token is
  removed and generation is constrained to reproduce its text before it may continue freely;
* stop at the end of the current line (``mode="line"``) or after ``max_lines`` lines;
* reuse a recent prompt's KV cache (``prefix_cache``): a session's consecutive requests share almost
  all of their prompt, so only the tokens after the longest common token prefix with a cached
  prompt are run through the model. Reuse needs a prompt window whose start stays put while the
  cursor moves; see :func:`truncate_prompt` and ``prompt_window_step``;
* verify drafts (``draft_tokens``): code repeats itself, so the tokens that followed the last two
  tokens the previous time they occurred (in the prompt or the proposal so far) are a cheap guess
  at what comes next. A step feeds each row's guess after its last chosen token and keeps the
  guessed tokens that greedy decoding picks anyway, plus the first token it picks instead, so the
  proposals are those of one-token steps while late steps, when few rows are left, emit several
  tokens each. Guesses only fill a step up to ``step_tokens`` tokens: on a CPU a full batch's
  step is compute-bound and gains nothing from extra tokens.

Importing this module is cheap: torch, transformers and mlflow are imported inside functions.
"""

from __future__ import annotations

import bisect
import codecs
import functools
import hashlib
import math
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from echo_lib.agent.show_policy import ShowPolicy

__all__ = [
    "CompletionEngine",
    "EngineSettings",
    "HealingIndex",
    "ModelLoadError",
    "Proposal",
    "consistent_with",
    "token_byte_table",
    "truncate_prompt",
]


@dataclass(frozen=True)
class EngineSettings:
    max_new_tokens: int = 48
    mode: Literal["line", "lines"] = (
        "line"  # "line": stop at end of current line; "lines": up to max_lines lines
    )
    max_lines: int = 3
    show_threshold: float = 0.0  # without a show policy: proposals with confidence below are not shown
    use_model_policy: bool = True  # a model's calibrated show policy (show_policy.json) decides instead
    batch_size: int = 32
    max_prompt_tokens: int = 0  # 0 = model context length minus max_new_tokens; left-truncate prompts to this
    torch_threads: int | None = None
    prompt_window_step: int = 1  # see truncate_prompt: 1 = the last max_prompt_tokens tokens, as always
    prefix_cache: bool = False  # reuse recent prompts' KV caches (the plain decoder when False)
    prefix_cache_mb: float = 256  # memory bound of those caches; least recently used go first
    draft_tokens: int = 0  # prompt-lookup drafts verified per step and row (0 = one token per step)
    step_tokens: int = 32  # drafts only fill a step up to this many tokens (rows x width)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.mode not in ("line", "lines"):
            raise ValueError(f"mode must be 'line' or 'lines', got {self.mode!r}")
        if self.max_lines < 1:
            raise ValueError(f"max_lines must be >= 1, got {self.max_lines}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_prompt_tokens < 0:
            raise ValueError(f"max_prompt_tokens must be >= 0, got {self.max_prompt_tokens}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {self.torch_threads}")
        if self.prompt_window_step < 1:
            raise ValueError(f"prompt_window_step must be >= 1, got {self.prompt_window_step}")
        if self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")
        if self.draft_tokens < 0 or self.step_tokens < 1:
            raise ValueError(
                f"draft_tokens must be >= 0 and step_tokens >= 1, got {self.draft_tokens}, {self.step_tokens}"
            )

    @property
    def line_limit(self) -> int:
        """How many newlines end a proposal (the newline itself is never part of it)."""
        return 1 if self.mode == "line" else self.max_lines


@dataclass(frozen=True)
class Proposal:
    text: str  # the continuation after the cursor; never ends with the stopping newline; may be ""
    confidence: float  # exp(mean log-prob) of the generated tokens, in [0, 1]; 0.0 if nothing generated
    shown: bool  # the show policy (or confidence >= settings.show_threshold) says so and text.strip() != ""
    num_tokens: int  # tokens generated, including the healed token, the stopping one and eos


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one line naming the URI and the reason."""


# --------------------------------------------------------------------------------------------
# Token bytes and the token-healing constraint
# --------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-character map used by byte-level BPE vocabularies."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def token_byte_table(tokenizer) -> list[bytes | None]:
    """The raw bytes of every token id (``None`` for special tokens), indexed by id.

    Byte-level BPE tokens are strings over GPT-2's byte alphabet; they are mapped back to bytes
    exactly, so a token holding half of a UTF-8 character gets its one or two bytes. Tokens from
    other vocabularies (SentencePiece, say) fall back to ``decode([id])`` encoded as UTF-8.
    """
    byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    size = len(tokenizer)
    table: list[bytes | None] = [None] * size
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        if all(ch in byte_decoder for ch in piece):
            table[i] = bytes(byte_decoder[ch] for ch in piece)
        else:
            table[i] = tokenizer.decode([i], clean_up_tokenization_spaces=False).encode(
                "utf-8", "surrogatepass"
            )
    return table


def consistent_with(token: bytes, remaining: bytes) -> bool:
    """The healing rule: may a token with these bytes be generated while ``remaining`` is still owed?

    Yes iff the token is non-empty and either covers the rest of ``remaining`` (and maybe more) or
    is a prefix of it.
    """
    return bool(token) and (token.startswith(remaining) or remaining.startswith(token))


class HealingIndex:
    """Answers "which token ids are consistent with ``remaining``" without scanning the vocabulary.

    Tokens that start with ``remaining`` form a contiguous run in byte-sorted order (found by
    bisection); tokens that are proper prefixes of ``remaining`` are at most ``len(remaining)-1``
    dictionary look-ups. Answers are memoised per ``remaining``.
    """

    def __init__(self, token_bytes: Sequence[bytes | None]):
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(token_bytes):
            if b:
                by_bytes.setdefault(b, []).append(i)
        self._by_bytes = by_bytes
        self._sorted = sorted(by_bytes)
        self._memo: dict[bytes, list[int]] = {}

    def allowed_ids(self, remaining: bytes) -> list[int]:
        cached = self._memo.get(remaining)
        if cached is not None:
            return cached
        ids: list[int] = []
        for k in range(1, len(remaining)):
            ids.extend(self._by_bytes.get(remaining[:k], ()))
        i = bisect.bisect_left(self._sorted, remaining)
        while i < len(self._sorted) and self._sorted[i].startswith(remaining):
            ids.extend(self._by_bytes[self._sorted[i]])
            i += 1
        ids.sort()
        self._memo[remaining] = ids
        return ids


def _decode_utf8(data: bytes) -> str:
    """UTF-8 text of ``data``; an incomplete character at the end is dropped, invalid bytes replaced."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


# --------------------------------------------------------------------------------------------
# The prompt window (shared with training rows) and the prefix store
# --------------------------------------------------------------------------------------------


def _anchor_rank(previous: int, token: int) -> int:
    """A fixed pseudo-random rank of a token bigram (a 32-bit integer hash; no Python ``hash``,
    which is salted per process)."""
    h = (previous * 0x9E3779B1 ^ token * 0x85EBCA77) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    return h ^ (h >> 12)


def heal(ids: Sequence[int], token_bytes: Sequence[bytes | None]) -> tuple[list[int], bytes]:
    """Token healing's split, the one rule for serving and for training rows: a prefix that ends
    mid-token (``"    retu"``) is tokenised differently from the same text inside a word, so the
    last token is backed off and its bytes are owed: the proposal must start by regenerating them.
    Returns (the prompt's ids, the owed bytes); a one-token prefix or a special last token is kept."""
    ids = list(ids)
    if len(ids) > 1 and token_bytes[ids[-1]]:
        return ids[:-1], bytes(token_bytes[ids[-1]])
    return ids, b""


@functools.lru_cache(maxsize=8)
def cached_byte_table(tokenizer) -> list[bytes | None]:
    """:func:`token_byte_table`, computed once per tokenizer (training shapes rows one by one)."""
    return token_byte_table(tokenizer)


def truncate_prompt(ids: Sequence[int], budget: int, step: int = 1) -> list[int]:
    """The window of ``ids`` a prompt keeps: at most ``budget`` tokens, ending with the last one.

    ``step`` 1 keeps the last ``budget`` tokens. With ``step`` K > 1 the window starts at one of
    the K earliest starts that fit (so it keeps between budget-K+1 and budget tokens), chosen by
    content: the start whose bigram (token before, token at) has the lowest fixed rank. While a
    session types, that start stays on the same token of the document until it leaves the K
    candidates or a lower-ranked one enters them (about every K/2 tokens typed), and, unlike a
    start at a multiple of K from the front, it does not move when the client's character window
    drops text at the front (the world sends the last 4000 characters, so most prefixes lose as
    much at the front as they gain at the end). That is what lets a cached prompt be reused.
    Serving (:class:`CompletionEngine`) and training rows (``refine.sft_ids``) both call this.
    """
    ids = list(ids)
    cut = len(ids) - budget
    if cut <= 0:
        return ids
    if step > 1:
        candidates = range(cut, min(cut + step, len(ids)))
        cut = min(candidates, key=lambda i: (_anchor_rank(ids[i - 1], ids[i]), i))
    return ids[cut:]


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix (slice comparisons run in C; bisection over them)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _PrefixStore:
    """Recent prompts' per-layer key/value tensors ([1, heads, len, dim] each), LRU within a byte bound.

    Entries are found by their first ``HEAD`` tokens, then ranked by common prefix length: a
    prompt that shares fewer tokens than that with every entry gains too little to bother.
    """

    HEAD = 8

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self._by_head: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
        self.hits = self.lookups = self.reused_tokens = self.prompt_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, ids: tuple[int, ...]) -> tuple[int, list[tuple[Any, Any]] | None]:
        """(common prefix length, layers) of the entry sharing the most leading tokens with ``ids``."""
        best, found = 0, None
        for key in self._by_head.get(ids[: self.HEAD], ()):
            n = _common_prefix(key, ids)
            if n > best:
                best, found = n, key
        if found is None:
            return 0, None
        self._entries.move_to_end(found)
        return best, self._entries[found]

    def put(self, ids: tuple[int, ...], layers: list[tuple[Any, Any]]) -> None:
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        if size > self.max_bytes:
            return
        head = self._by_head.setdefault(ids[: self.HEAD], set())
        # an entry that is a prefix of this prompt can never match more than this one does
        for key in [k for k in head if len(k) <= len(ids) and ids[: len(k)] == k]:
            self._drop(key)
        self._entries[ids] = layers
        self._by_head.setdefault(ids[: self.HEAD], set()).add(ids)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        layers = self._entries.pop(key)
        self.bytes -= sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)
        head = self._by_head[key[: self.HEAD]]
        head.discard(key)
        if not head:
            del self._by_head[key[: self.HEAD]]


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class _Drafts:
    """Prompt-lookup drafts: after each pair of tokens, where the token that followed it last time is.

    ``draft(k)`` guesses the next ``k`` tokens of the sequence (prompt, then generated tokens) as
    the ones that followed the previous occurrence of its last two tokens.
    """

    __slots__ = ("after", "seq")

    def __init__(self, ids: Sequence[int]):
        self.seq = list(ids)
        seq = self.seq
        self.after = {(seq[i - 2], seq[i - 1]): i for i in range(2, len(seq))}

    def append(self, token: int) -> None:
        seq = self.seq
        if len(seq) >= 2:
            self.after[(seq[-2], seq[-1])] = len(seq)
        seq.append(token)

    def draft(self, k: int) -> list[int]:
        seq = self.seq
        if k <= 0 or len(seq) < 2:
            return []
        at = self.after.get((seq[-2], seq[-1]))
        return [] if at is None else seq[at : at + k]


@dataclass
class _Row:
    """The decoding state of one request."""

    prompt: list[int]
    owed: bytes  # healing: text of the backed-off token not yet reproduced by generated tokens
    out: bytearray  # proposal bytes (after the healed text)
    logprob: float = 0.0
    num_tokens: int = 0
    done: bool = False
    drafts: _Drafts | None = None  # set when the engine verifies drafts


class CompletionEngine:
    """Greedy code completion with a causal LM; see the module docstring.

    ``suffixes`` are accepted by :meth:`complete` for API completeness (fill-in-the-middle
    clients send them) but a left-to-right model cannot use them, so they are ignored.
    """

    def __init__(
        self,
        model,
        tokenizer,
        settings: EngineSettings = EngineSettings(),
        model_version: str = "local",
        show_policy: ShowPolicy | None = None,
    ):
        import torch

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.model = model.to(torch.float32).eval()
        self.tokenizer = tokenizer
        self.settings = settings
        self.model_version = model_version
        self.show_policy = show_policy  # the model version's own; applied when settings allow
        self.device = next(self.model.parameters()).device

        self.eos_id: int | None = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.pad_id: int = 0 if pad is None else int(pad)
        bos = getattr(tokenizer, "bos_token_id", None)
        start = bos if bos is not None else self.eos_id
        self.start_id: int = self.pad_id if start is None else int(start)  # prompt for an empty prefix

        self.token_bytes = token_byte_table(tokenizer)
        self.healing = HealingIndex(self.token_bytes)
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        banned = [i for i in range(vocab) if i >= len(self.token_bytes) or not self.token_bytes[i]]
        banned = [
            i for i in banned if i != self.eos_id
        ]  # specials and empty tokens never; eos ends a proposal
        self._banned = torch.tensor(banned, dtype=torch.long, device=self.device)

        context = getattr(self.model.config, "max_position_embeddings", None) or 0
        self.context_length = int(context)
        forward_params = _forward_parameters(self.model)
        self._cache_arg = "cache" if "cache" in forward_params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in forward_params
        self.prefix_store = (
            _PrefixStore(int(settings.prefix_cache_mb * (1 << 20))) if settings.prefix_cache else None
        )

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        uri: str,
        settings: EngineSettings = EngineSettings(),
        *,
        tracking_uri: str | None = None,
        cache_dir: Path | None = None,
    ) -> CompletionEngine:
        """Load from a local HF directory or an MLflow URI.

        MLflow URIs (``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``models:/<name>/latest``,
        ``runs:/<run_id>/<path>``) are resolved against ``tracking_uri`` (also used as the registry
        URI; default: MLflow's current URIs), downloaded once into
        ``cache_dir/<sanitised uri>-<hash of store, version and source>`` and reused afterwards.
        ``model_version`` is ``models:/<name>/<resolved version>`` for registry URIs, the URI for
        ``runs:/`` and the absolute directory for local paths.

        Any failure raises :class:`ModelLoadError` with a one-line message.
        """
        if uri.startswith(("models:/", "runs:/")):
            local_dir, version = _fetch_from_mlflow(uri, tracking_uri, cache_dir)
        else:
            local_dir = Path(uri).expanduser()
            version = str(local_dir.resolve())
        model, tokenizer = _load_hf_dir(uri, local_dir)
        try:
            policy = ShowPolicy.load(local_dir)
            return cls(model, tokenizer, settings, model_version=version, show_policy=policy)
        except Exception as exc:  # an unusable tokenizer/model pairing
            raise ModelLoadError(f"cannot load model {uri!r}: {_reason(exc)}") from exc

    # ---- completion --------------------------------------------------------------------------

    def complete(self, prefixes: list[str], suffixes: list[str] | None = None) -> list[Proposal]:
        """One greedy proposal per prefix, in input order.

        ``suffixes`` (text after the cursor) must match ``prefixes`` in length if given; they are
        ignored because a left-to-right model cannot condition on them.
        """
        import torch

        if isinstance(prefixes, str):
            raise TypeError("prefixes must be a list of strings, not a string")
        if suffixes is not None and len(suffixes) != len(prefixes):
            raise ValueError(f"got {len(prefixes)} prefixes but {len(suffixes)} suffixes")
        encoded = self.tokenizer(list(prefixes), add_special_tokens=False)["input_ids"] if prefixes else []
        rows = [self._prepare(list(ids)) for ids in encoded]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt))
        size = self.settings.batch_size
        with torch.inference_mode():
            if self.prefix_store is not None:
                self._decode_reusing(rows)
            else:
                for start in range(0, len(order), size):
                    self._decode([rows[i] for i in order[start : start + size]])
        return [self._proposal(row, prefix) for row, prefix in zip(rows, prefixes, strict=True)]

    def prompt_of(self, prefix: str) -> tuple[list[int], bytes]:
        """What the model is fed for ``prefix`` (token ids, healed and left-truncated) and the bytes
        every proposal for it starts with (the healed token's)."""
        row = self._prepare(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])
        return row.prompt, row.owed

    def _max_prompt_tokens(self) -> int:
        limit = self.settings.max_prompt_tokens
        if not limit and self.context_length:
            limit = self.context_length - self.settings.max_new_tokens
        return max(limit, 1) if limit else 1 << 30

    def _prepare(self, ids: list[int]) -> _Row:
        """The prompt for one prefix's token ids: healed (last token backed off) and left-truncated."""
        ids, owed = heal(ids, self.token_bytes)
        prompt = truncate_prompt(
            ids or [self.start_id], self._max_prompt_tokens(), self.settings.prompt_window_step
        )
        return _Row(prompt=prompt, owed=owed, out=bytearray())

    @property
    def active_policy(self) -> ShowPolicy:
        """What decides ``shown``: the model's calibrated policy, or the settings' threshold."""
        if self.show_policy is not None and self.settings.use_model_policy:
            return self.show_policy
        return ShowPolicy(threshold=self.settings.show_threshold)

    def _proposal(self, row: _Row, prefix: str) -> Proposal:
        text = _decode_utf8(bytes(row.out))
        confidence = math.exp(row.logprob / row.num_tokens) if row.num_tokens else 0.0
        confidence = min(max(confidence, 0.0), 1.0)
        shown = self.active_policy.shows(prefix, text, confidence)
        return Proposal(text=text, confidence=confidence, shown=shown, num_tokens=row.num_tokens)

    def _forward(self, input_ids, attention_mask, position_ids, cache, keep: int = 0):
        """The model's logits at the last position ([rows, vocab]), or at the last ``keep``
        positions ([rows, keep, vocab]), and the cache."""
        kwargs: dict[str, Any] = {self._cache_arg: cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = keep or 1
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if keep:
            return out.logits[:, -keep:, :].float(), cache
        return out.logits[:, -1, :].float(), cache

    def _decode(self, batch: list[_Row]) -> None:
        """Greedy-decode one chunk of rows in place."""
        import torch

        max_new = self.settings.max_new_tokens
        if max_new == 0:
            for row in batch:
                row.done = True
            return
        width = max(len(r.prompt) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            input_ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt, dtype=torch.long)
            mask[i, width - len(row.prompt) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(input_ids, mask, positions, None)
        self._generate(batch, logits, cache, mask, positions[:, -1])

    def _generate(self, active: list[_Row], logits, cache, mask, last_pos) -> None:
        """The decoding loop, from the prompt's last logits and its (left-padded) cache.

        Each step feeds every row its last chosen token, then (``draft_tokens``) its draft; the
        step's logits are read position by position, and a row keeps going along its draft while
        the token greedy decoding chooses is the drafted one. Unkept draft positions stay in the
        cache, masked out, so rows of one batch may advance by different numbers of tokens.
        """
        import torch

        settings = self.settings
        if settings.draft_tokens:
            for row in active:
                row.drafts = _Drafts(row.prompt)
        logits = logits.unsqueeze(1)  # [rows, positions fed, vocab]
        drafts: list[list[int]] = [[] for _ in active]
        # each row's position of the token fed last (at first the prompt's last token, which gave the
        # first logits); moved on below to where the next fed token goes
        next_pos = last_pos
        while True:
            if self._banned.numel():
                logits.index_fill_(2, self._banned, float("-inf"))
            for i, row in enumerate(active):
                if row.owed:  # healing rows get no draft: only their first position is read
                    allowed = torch.tensor(
                        self.healing.allowed_ids(row.owed), dtype=torch.long, device=self.device
                    )
                    keep = logits[i, 0].index_select(0, allowed)
                    logits[i, 0].fill_(float("-inf"))
                    logits[i, 0].index_copy_(0, allowed, keep)
            chosen_lp, chosen = torch.log_softmax(logits, dim=-1).max(dim=-1)
            chosen_list, lp_list = chosen.tolist(), chosen_lp.tolist()

            still: list[int] = []
            fed: list[int] = []  # per row still going: the last token chosen, fed next step
            kept: list[int] = []  # per row still going: draft tokens kept this step
            for i, row in enumerate(active):
                draft = drafts[i]
                j = 0
                while True:
                    token = chosen_list[i][j]
                    self._advance(row, token, lp_list[i][j])
                    if row.drafts is not None:
                        row.drafts.append(token)
                    if row.done or j >= len(draft) or token != draft[j]:
                        break
                    j += 1
                if not row.done:
                    still.append(i)
                    fed.append(token)
                    kept.append(j)
            if not still:
                break
            width = logits.shape[1]
            if width > 1:  # draft positions a row did not keep: out of its attention from now on
                block = mask[:, mask.shape[1] - width + 1 :]  # a view: writes go to mask
                for n, i in enumerate(still):
                    block[i, kept[n] :] = 0
            if len(still) < len(active):
                keep_idx = torch.tensor(still, dtype=torch.long, device=self.device)
                cache.batch_select_indices(keep_idx)
                mask, next_pos = mask[keep_idx], next_pos[keep_idx]
                active = [active[i] for i in still]
            # the token fed last and the kept draft tokens now sit before the next one
            next_pos = next_pos + 1 + torch.tensor(kept, dtype=torch.long, device=self.device)

            room = settings.step_tokens // len(active) - 1
            k = min(settings.draft_tokens, room)
            # a step emits at most its draft plus one token: no guesses past the token budget
            budget = settings.max_new_tokens - 1
            drafts = [
                [] if row.owed or row.drafts is None else row.drafts.draft(min(k, budget - row.num_tokens))
                for row in active
            ]
            width = 1 + max(map(len, drafts))
            input_ids = torch.full((len(active), width), self.pad_id, dtype=torch.long)
            block = torch.zeros((len(active), width), dtype=torch.long)
            for i, (token, draft) in enumerate(zip(fed, drafts, strict=True)):
                input_ids[i, 0] = token
                input_ids[i, 1 : 1 + len(draft)] = torch.tensor(draft, dtype=torch.long)
                block[i, : 1 + len(draft)] = 1
            input_ids, block = input_ids.to(self.device), block.to(self.device)
            mask = torch.cat([mask, block], dim=1)
            positions = next_pos.unsqueeze(1) + torch.arange(width, device=self.device)
            logits, cache = self._forward(input_ids, mask, positions, cache, keep=width)
        for row in active:
            row.done = True
            row.drafts = None

    def _decode_reusing(self, rows: list[_Row]) -> None:
        """Decode with the prefix store: prefill only what no cached prompt covers, then decode.

        Prefill runs in groups of rows with similar numbers of new tokens (a row that reuses 200
        tokens should not be padded to the width of one that reuses none); each group's batch
        holds the cached keys/values left-padded to the longest, then the new tokens left-padded,
        with an attention mask over both. Every prompt's cache is stored, then the rows decode in
        chunks of ``batch_size`` from caches left-padded to the longest prompt.
        """
        import torch

        store = self.prefix_store
        assert store is not None
        if self.settings.max_new_tokens == 0:
            for row in rows:
                row.done = True
            return
        plans = []  # (row, reused tokens, cached layers)
        for row in rows:
            key = tuple(row.prompt)
            n, layers = store.longest(key)
            n = min(n, len(row.prompt) - 1)  # at least one token runs, for the next-token logits
            store.lookups += 1
            store.hits += n > 0
            store.reused_tokens += n
            store.prompt_tokens += len(row.prompt)
            plans.append((row, n, layers if n > 0 else None))
        state: dict[int, tuple[Any, list[tuple[Any, Any]]]] = {}  # id(row) -> (last logits, layers)
        plans.sort(key=lambda p: len(p[0].prompt) - p[1])
        size = self.settings.batch_size
        start = 0
        while start < len(plans):
            new_first = len(plans[start][0].prompt) - plans[start][1]
            end = start + 1
            while (
                end < len(plans)
                and end - start < size
                and len(plans[end][0].prompt) - plans[end][1] <= 2 * new_first + 8
            ):
                end += 1
            self._prefill(plans[start:end], state)
            start = end
        for row, _n, _layers in plans:
            store.put(tuple(row.prompt), state[id(row)][1])

        order = sorted(rows, key=lambda r: len(r.prompt))
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            width = max(len(r.prompt) for r in chunk)
            mask = torch.zeros((len(chunk), width), dtype=torch.long, device=self.device)
            for i, row in enumerate(chunk):
                mask[i, width - len(row.prompt) :] = 1
            layers = [
                (
                    _left_pad([state[id(r)][1][j][0] for r in chunk], width),
                    _left_pad([state[id(r)][1][j][1] for r in chunk], width),
                )
                for j in range(len(state[id(chunk[0])][1]))
            ]
            logits = torch.cat([state[id(r)][0] for r in chunk])
            last_pos = torch.tensor([len(r.prompt) - 1 for r in chunk], dtype=torch.long, device=self.device)
            self._generate(list(chunk), logits, _dynamic_cache(layers), mask, last_pos)

    def _prefill(self, plans: list, state: dict) -> None:
        """Run one group's new prompt tokens on top of their cached prefixes; record each row's
        last logits and the keys/values of its whole prompt."""
        import torch

        cached = max(n for _row, n, _layers in plans)
        fresh = max(len(row.prompt) - n for row, n, _layers in plans)
        input_ids = torch.full((len(plans), fresh), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(plans), cached + fresh), dtype=torch.long)
        positions = torch.zeros((len(plans), fresh), dtype=torch.long)
        for i, (row, n, _layers) in enumerate(plans):
            new = row.prompt[n:]
            input_ids[i, fresh - len(new) :] = torch.tensor(new, dtype=torch.long)
            mask[i, cached - n : cached] = 1
            mask[i, cached + fresh - len(new) :] = 1
            positions[i, fresh - len(new) :] = torch.arange(n, len(row.prompt))
        input_ids, mask, positions = (
            input_ids.to(self.device),
            mask.to(self.device),
            positions.to(self.device),
        )
        cache = None
        if cached:
            depth = len(next(layers for _row, n, layers in plans if layers is not None))
            cache = _dynamic_cache(
                [
                    (
                        _left_pad([_head(layers, j, 0, n) for _row, n, layers in plans], cached),
                        _left_pad([_head(layers, j, 1, n) for _row, n, layers in plans], cached),
                    )
                    for j in range(depth)
                ]
            )
        logits, cache = self._forward(input_ids, mask, positions, cache)
        total = cached + fresh
        for i, (row, n, _layers) in enumerate(plans):
            new = len(row.prompt) - n
            keep = torch.cat([torch.arange(cached - n, cached), torch.arange(total - new, total)]).to(
                self.device
            )
            kept = [
                (layer.keys[i : i + 1].index_select(2, keep), layer.values[i : i + 1].index_select(2, keep))
                for layer in cache.layers
            ]
            state[id(row)] = (logits[i : i + 1], kept)

    def _advance(self, row: _Row, token: int, logprob: float) -> None:
        """Append one chosen token to ``row`` and decide whether it is finished."""
        if not math.isfinite(logprob):  # nothing was allowed (a healing dead end): give up on this row
            row.done = True
            return
        row.num_tokens += 1
        row.logprob += logprob
        if token == self.eos_id:
            row.done = True
            return
        piece = self.token_bytes[token] or b""
        if row.owed:
            if len(piece) >= len(row.owed):
                piece, row.owed = piece[len(row.owed) :], b""
            else:
                row.owed, piece = row.owed[len(piece) :], b""
        if piece:
            row.out += piece
            limit = self.settings.line_limit
            if b"\n" in piece and row.out.count(b"\n") >= limit:
                cut = -1
                for _ in range(limit):
                    cut = row.out.find(b"\n", cut + 1)
                del row.out[cut:]  # the line limit is reached: stop before its newline
                row.done = True
                return
        if row.num_tokens >= self.settings.max_new_tokens:
            row.done = True


# --------------------------------------------------------------------------------------------
# Loading helpers
# --------------------------------------------------------------------------------------------


def _head(layers, layer: int, which: int, n: int):
    """The first ``n`` positions of one cached key (0) or value (1) tensor; None when nothing is reused."""
    return layers[layer][which][:, :, :n] if layers is not None and n else None


def _left_pad(tensors: list, width: int):
    """Stack [1, heads, len, dim] tensors (None = empty) into [batch, heads, width, dim], right-aligned."""
    like = next(t for t in tensors if t is not None)
    out = like.new_zeros((len(tensors), like.shape[1], width, like.shape[3]))
    for i, t in enumerate(tensors):
        if t is not None and t.shape[2]:
            out[i, :, width - t.shape[2] :] = t[0]
    return out


def _dynamic_cache(layers: list):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers)


def _forward_parameters(model) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _reason(exc: BaseException) -> str:
    """One line: the exception type and the first line of its message, bounded."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load_hf_dir(uri: str, path: Path):
    """Model and tokenizer from a ``save_pretrained`` directory, or :class:`ModelLoadError`."""
    if not path.exists():
        raise ModelLoadError(f"cannot load model {uri!r}: directory {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"cannot load model {uri!r}: {path} is not a directory")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"cannot load model {uri!r}: no config.json in {path}")

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from echo_lib.agent.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {uri!r}: tokenizer in {path}: {_reason(exc)}") from exc
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # missing weights are reported below, as an error
    hf_logging.disable_progress_bar()  # a loading bar per model would drown the caller's own progress
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {uri!r}: weights in {path}: {_reason(exc)}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelLoadError(f"cannot load model {uri!r}: weights in {path} lack {shown}")
    return model, tokenizer


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+?)/?$")


def _default_cache_dir() -> Path:
    try:
        from echo_lib.core.config import load_config

        return load_config().config.var_path / "cache" / "models"
    except Exception:
        return Path(tempfile.gettempdir()) / "echo-model-cache"


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120]


def fetch_model(uri: str, tracking_uri: str | None = None, cache_dir: Path | None = None) -> Path:
    """Download an MLflow model URI's HF directory once (cached); return the local directory."""
    return _fetch_from_mlflow(uri, tracking_uri, cache_dir)[0]


def _fetch_from_mlflow(uri: str, tracking_uri: str | None, cache_dir: Path | None) -> tuple[Path, str]:
    """Resolve an MLflow URI and download its artifacts once; return (local dir, model_version)."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as exc:
        raise ModelLoadError(f"cannot load model {uri!r}: mlflow is not installed") from exc

    def fail(reason: str) -> ModelLoadError:
        return ModelLoadError(f"cannot load model {uri!r}: {reason}")

    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        store = tracking_uri or mlflow.get_tracking_uri()
        if m := _MODELS_URI.match(uri):
            name, alias, version = m["name"], m["alias"], m["version"]
            try:
                client.get_registered_model(name)
            except MlflowException as exc:
                if not _missing(exc):
                    raise
                raise fail(f"registered model {name!r} not found in {store}") from exc
            if alias:
                try:
                    mv = client.get_model_version_by_alias(name, alias)
                except MlflowException as exc:
                    if not _missing(exc, "INVALID_PARAMETER_VALUE"):
                        raise
                    raise fail(f"registered model {name!r} has no alias {alias!r}") from exc
            elif version and version.isdigit():
                try:
                    mv = client.get_model_version(name, version)
                except MlflowException as exc:
                    if not _missing(exc):
                        raise
                    raise fail(f"registered model {name!r} has no version {version}") from exc
            elif version and version.lower() == "latest":
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise fail(f"registered model {name!r} has no versions")
                mv = max(versions, key=lambda v: int(v.version))
            else:
                raise fail(f"unsupported version {version!r}; use @<alias>, /<number> or /latest")
            model_version = f"models:/{name}/{mv.version}"
            # Not ``models:/...`` itself: mlflow 3.17 resolves those against the process-global
            # registry URI even when ``registry_uri`` is passed to download_artifacts.
            download_uri = client.get_model_version_download_uri(name, mv.version)
            identity = f"{store}|{model_version}|{mv.source}|{mv.run_id}|{mv.creation_timestamp}"
        elif m := _RUNS_URI.match(uri):
            try:
                client.get_run(m["run_id"])
            except MlflowException as exc:
                if not _missing(exc):
                    raise
                raise fail(f"run {m['run_id']!r} not found in {store}") from exc
            model_version = download_uri = uri
            identity = f"{store}|{uri}"
        else:
            raise fail("expected models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>")

        root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        target = root / f"{_sanitise(model_version)}-{digest}"
        if not (target / "config.json").is_file():
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
            try:
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=download_uri,
                        dst_path=str(staging),
                        tracking_uri=tracking_uri,
                        registry_uri=tracking_uri,
                    )
                )
                found = _find_model_dir(local)
                if found is None:
                    raise fail(f"no config.json in the artifacts of {download_uri}")
                if target.exists():  # a stale partial copy, or a concurrent loader finished first
                    shutil.rmtree(target, ignore_errors=True)
                try:
                    os.replace(found, target)
                except OSError:
                    if not (target / "config.json").is_file():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target, model_version
    except ModelLoadError:
        raise
    except Exception as exc:  # unreachable store, permissions, bad artifact source ...
        raise fail(_reason(exc)) from exc


def _missing(exc: BaseException, *codes: str) -> bool:
    """Does an MlflowException say "no such thing" (rather than "cannot reach the store")?"""
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", *codes)


def _find_model_dir(path: Path) -> Path | None:
    """``path`` if it holds config.json, else its only descendant directory (depth <= 2) that does."""
    if (path / "config.json").is_file():
        return path
    hits = [p.parent for p in sorted(path.glob("*/config.json"))] or [
        p.parent for p in sorted(path.glob("*/*/config.json"))
    ]
    return hits[0] if len(hits) == 1 else None
