from __future__ import annotations

import inspect
import json
from pathlib import Path

from echo_lib.agent.tokenizer import EOS, PAD, load_tokenizer, train_tokenizer

TRICKY = [
    "def f(x):\n\treturn x  \n",  # tab indentation and trailing spaces
    "class A:\n        pass\n\n\n\n",  # deep indentation, blank lines
    "s = 'héllo wörld ✓ — 日本'\n",  # non-ASCII
    "x=1;y=2\r\n",  # CR
    "    \n  \t \n",  # whitespace only
    "",
]


def test_round_trips_code_exactly_and_loads_with_from_pretrained(tmp_path: Path) -> None:
    import json as json_module

    texts = [inspect.getsource(json_module.decoder), inspect.getsource(json_module.encoder)]
    tokenizer = train_tokenizer(texts * 3, vocab_size=400)
    for text in TRICKY + texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.eos_token == EOS and loaded.pad_token == PAD
    for text in TRICKY:
        assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
    assert loaded(texts[0])["input_ids"] == tokenizer(texts[0])["input_ids"]
