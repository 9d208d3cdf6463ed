"""The tokenizer of an fla RetNet directory, for ``retnet_core.convert_fla``.

fla-hub models ship Llama's 32k SentencePiece tokenizer, as ``tokenizer.json`` (read
with ``tokenizers``) and ``tokenizer.model`` (converted through ``transformers`` only
when there is no tokenizer.json; that needs ``sentencepiece``). A base model has no chat
template, so it gets a plain transcript format (:func:`base_chat_format`). The tokenizer
must round-trip sample text (:func:`check_round_trip`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retnet_core.llama_source import SourceError
from retnet_core.tokenizer import ChatFormat, ChatTokenizer

__all__ = ["base_chat_format", "check_round_trip", "fla_tokenizer", "special_tokens"]

ROUND_TRIP_SAMPLES = (
    "Hello world! RetNet keeps a small recurrent state.",
    "The quick brown fox jumps over the lazy dog, 42 times.",
)


def special_tokens(src: Path) -> dict[str, str | None]:
    """bos/eos/unk/pad token text from tokenizer_config.json or special_tokens_map.json."""
    out: dict[str, str | None] = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": None}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = src / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        for k in out:
            tok = data.get(f"{k}_token")
            tok = tok.get("content") if isinstance(tok, dict) else tok
            if tok:
                out[k] = tok
    return out


def fla_tokenizer(src: Path) -> Any:
    """The directory's tokenizer as a ``tokenizers.Tokenizer``: tokenizer.json, else
    tokenizer.model converted through ``transformers`` (needs ``sentencepiece``)."""
    from tokenizers import Tokenizer

    if (src / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(src / "tokenizer.json"))
    if not (src / "tokenizer.model").is_file():
        raise SourceError(f"{src}: no tokenizer.json or tokenizer.model")
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(str(src), use_fast=True)
        return fast.backend_tokenizer
    except Exception as exc:  # no sentencepiece/protobuf, or an unreadable model file
        raise SourceError(
            f"{src} has tokenizer.model but no tokenizer.json, and converting it failed "
            f"({type(exc).__name__}: {exc}). Write tokenizer.json where transformers and "
            "sentencepiece are installed: AutoTokenizer.from_pretrained(SRC).save_pretrained(SRC)"
        ) from exc


def base_chat_format(tokenizer: Any, special: dict[str, str | None]) -> ChatFormat:
    """A plain-text chat format for a base model: ``Role: content</s>`` per turn.

    Turns close on the end-of-sequence token; padding is the pad token, else unk.
    """
    end = special["eos"]
    pad = next((t for t in (special["pad"], special["unk"]) if t and t != end), None)
    for what, tok in (("eos", end), ("pad/unk", pad)):
        if tok is None or tokenizer.token_to_id(tok) is None:
            raise SourceError(f"the tokenizer has no {what} token ({tok!r})")
    names = {"system": "System:", "user": "User:", "assistant": "Assistant:"}
    names["passage"] = "Document:"
    return ChatFormat(openings=names, end=end, pad=pad, name="plain")


def check_round_trip(tok: ChatTokenizer, samples: tuple[str, ...] = ROUND_TRIP_SAMPLES) -> None:
    """decode(encode(text)) == text on sample text, else SourceError."""
    for text in samples:
        back = tok.decode(tok.encode(text))
        if back != text:
            raise SourceError(f"the tokenizer does not round-trip {text!r} (got {back!r})")
