"""Chit-chat corpus: loading, a deterministic split by conversation, packing and batching.

The corpus is the ``chitchat-dataset`` package's bundled ``dataset.json`` (7,168
conversations, MIT licence); nothing is downloaded. Each conversation is a list of
messages, each message a list of utterances by one sender. We join a message's
utterances with a newline and map the first sender to ``user`` and the second to
``assistant``. 3,150 conversations hold a single one-line message (a greeting nobody
answered); ``min_messages=2`` drops them because they teach no turn-taking.

The split is decided per conversation by a hash of its id, so it is the same on
every machine and every run, and no conversation straddles two splits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from retnet_core.tokenizer import ChatTokenizer, Message

SPLITS = ("train", "val", "test")
IGNORE_INDEX = -100  # label value that cross-entropy skips


@dataclass(frozen=True)
class Conversation:
    """One chit-chat conversation with a stable id."""

    id: str
    messages: tuple[Message, ...]

    def text(self) -> str:
        """Plain text of the conversation, one line-break between messages.

        Its length is the character count used for bits per character: the role and
        end tokens stand in for the separators a plain-text corpus would have.
        """
        return "\n".join(m.content for m in self.messages)


def chitchat_path() -> Path:
    """Path of the JSON file bundled with the ``chitchat-dataset`` package."""
    import chitchat_dataset  # local: only training and tests need the corpus

    return Path(chitchat_dataset.__file__).with_name("dataset.json")


def parse_chitchat(raw: dict, min_messages: int = 2) -> list[Conversation]:
    """Turn the package's raw dict into conversations, in sorted-id order."""
    out: list[Conversation] = []
    for conv_id in sorted(raw):
        groups = [g for g in raw[conv_id]["messages"] if g]
        if len(groups) < min_messages:
            continue
        speakers: dict[str, str] = {}
        messages = []
        for group in groups:
            sender = group[0]["sender"]
            if sender not in speakers:
                # first sender is the user, the second the assistant; a rare third
                # speaker alternates like the second.
                speakers[sender] = "user" if not speakers else "assistant"
            text = "\n".join(u["text"].strip() for u in group if u["text"].strip())
            if text:
                messages.append(Message(speakers[sender], text))
        if len(messages) >= min_messages:
            out.append(Conversation(conv_id, tuple(messages)))
    return out


def load_chitchat(path: str | Path | None = None, min_messages: int = 2) -> list[Conversation]:
    """Read every usable conversation of the bundled corpus (or of ``path``).

    Parsed once per process (the JSON is 40 MB and takes seconds to read).
    """
    return list(_load_cached(str(path or chitchat_path()), min_messages))


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, min_messages: int) -> tuple[Conversation, ...]:
    with open(path, encoding="utf-8") as f:
        return tuple(parse_chitchat(json.load(f), min_messages=min_messages))


def split_of(conv_id: str, val_frac: float = 0.05, test_frac: float = 0.05) -> str:
    """Which split a conversation belongs to, from a hash of its id alone."""
    h = int.from_bytes(hashlib.sha256(conv_id.encode()).digest()[:8], "big") / 2**64
    if h < test_frac:
        return "test"
    if h < test_frac + val_frac:
        return "val"
    return "train"


def split_conversations(
    conversations: Iterable[Conversation], val_frac: float = 0.05, test_frac: float = 0.05
) -> dict[str, list[Conversation]]:
    """Partition by :func:`split_of`; each list keeps the input order."""
    out: dict[str, list[Conversation]] = {s: [] for s in SPLITS}
    for conv in conversations:
        out[split_of(conv.id, val_frac, test_frac)].append(conv)
    return out


_WORD = re.compile(r"[A-Za-z0-9]+")


def words_of(texts: Iterable[str]) -> set[str]:
    """Lower-cased alphanumeric words in ``texts`` (used to keep held-out values unseen)."""
    out: set[str] = set()
    for text in texts:
        out.update(w.lower() for w in _WORD.findall(text))
    return out


# --------------------------------------------------------------------------- packing
@dataclass
class TokenStream:
    """Conversations rendered and concatenated into one id stream.

    ``n_chars`` counts the characters of :meth:`Conversation.text` over every
    conversation, for bits per character; ``n_conversations`` is informational.
    """

    ids: Tensor  # (N,) int64
    n_chars: int
    n_conversations: int

    def __len__(self) -> int:
        return int(self.ids.numel())


def pack(tok: ChatTokenizer, conversations: Sequence[Conversation]) -> TokenStream:
    """Render every conversation with the chat template and concatenate."""
    contents = [m.content for c in conversations for m in c.messages]
    encoded = iter(tok.encode_batch(contents))  # batched: ~10x faster than one by one
    ids: list[int] = []
    n_chars = 0
    for conv in conversations:
        for msg in conv.messages:
            ids.extend(tok.opening(msg.role))  # one role token in the memsvc format
            ids.extend(next(encoded))
            ids.append(tok.end_id)
        n_chars += len(conv.text())
    return TokenStream(torch.tensor(ids, dtype=torch.int64), n_chars, len(conversations))


def sample_windows(
    stream: TokenStream, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random windows of the stream: inputs (B, T) and next-token labels (B, T)."""
    high = len(stream) - seq_len - 1
    if high <= 0:
        raise ValueError(f"stream of {len(stream)} tokens is too short for seq_len {seq_len}")
    starts = torch.randint(0, high + 1, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    rows = stream.ids[starts.unsqueeze(1) + offsets]  # (B, T+1)
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def eval_windows(
    stream: TokenStream, seq_len: int, max_windows: int | None = None
) -> Iterable[tuple[Tensor, Tensor]]:
    """Non-overlapping windows covering the stream in order, one (1, T) pair each.

    Every token but the first is predicted exactly once (the last window may be
    shorter), so summed losses give the stream's total bits.
    """
    n = len(stream)
    for count, start in enumerate(range(0, n - 1, seq_len)):
        if max_windows is not None and count >= max_windows:
            return
        row = stream.ids[start : min(start + seq_len + 1, n)]
        yield row[:-1].unsqueeze(0), row[1:].unsqueeze(0)


def pad_examples(
    examples: Sequence[tuple[Sequence[int], Sequence[bool]]], seq_len: int, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Right-pad (ids, targets) pairs into inputs (B, T) and labels (B, T).

    Labels hold the next token where the *next* token is a target and
    :data:`IGNORE_INDEX` elsewhere; sequences longer than ``seq_len + 1`` are cut
    from the left so the answer at the end survives. Right padding is safe for a
    causal model: padded positions come after everything that is scored.
    """
    inputs = torch.full((len(examples), seq_len), pad_id, dtype=torch.int64)
    labels = torch.full((len(examples), seq_len), IGNORE_INDEX, dtype=torch.int64)
    for row, (ids, targets) in enumerate(examples):
        ids, targets = list(ids)[-(seq_len + 1) :], list(targets)[-(seq_len + 1) :]
        n = len(ids) - 1
        inputs[row, :n] = torch.tensor(ids[:-1])
        nxt = torch.tensor(ids[1:])
        mask = torch.tensor(targets[1:], dtype=torch.bool)
        labels[row, :n] = torch.where(mask, nxt, torch.full_like(nxt, IGNORE_INDEX))
    return inputs, labels
