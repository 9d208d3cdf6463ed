"""What distillation reads: chat-rendered chit-chat, memory dialogues, far-recall rows,
and the held-out conversations it is scored on.

All text is rendered with the student's own chat format (ChatML for SmolLM2), exactly
as ``memsvc`` renders a chat, so the student learns the inputs it will serve.

Rows of a batch come from three sources, drawn by a seeded generator:

- *windows* of the chit-chat **train** split: every conversation rendered with the chat
  template, each preceded by the pad token (``<|endoftext|>``, the source's document
  separator), concatenated, and cut at random offsets into ``seq_len`` tokens;
- *dialogues*: generated single-session memory dialogues (training values only);
- *far recall*: facts told, then as much of a real chit-chat conversation as fits in
  ``seq_len`` (``filler``), then one fact asked: the answer lies further back than a
  short softmax window reaches, so a hybrid's retention path must carry it.

The loss targets are the teacher's outputs, so every real position counts; rows shorter
than ``seq_len`` are right-padded and carry their ``lengths``. The held-out **test**
split is only scored (:func:`heldout_texts`), never trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.data import (
    Conversation,
    TokenStream,
    load_chitchat,
    sample_windows,
    split_conversations,
    words_of,
)
from retnet_core.training.dialogues import DialogueGenerator, MemoryExample, ValuePools

__all__ = [
    "Batch",
    "DistillData",
    "chat_stream",
    "far_recall",
    "heldout_texts",
    "prepare_distill_data",
]

DIALOGUE_KINDS = ("in_context", "passage")


@dataclass
class Batch:
    """tokens (B, T) int64; lengths (B,) valid tokens per row (right padding)."""

    tokens: Tensor
    lengths: Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())


def chat_stream(tok: ChatTokenizer, conversations: Sequence[Conversation]) -> TokenStream:
    """Each conversation as ``pad`` + its chat rendering, concatenated (see module doc)."""
    ids: list[int] = []
    n_chars = 0
    for conv in conversations:
        ids.append(tok.pad_id)
        ids.extend(tok.render_ids(conv.messages))
        n_chars += len(conv.text())
    return TokenStream(torch.tensor(ids, dtype=torch.int64), n_chars, len(conversations))


def far_recall(
    tok: ChatTokenizer,
    gen: DialogueGenerator,
    filler: Sequence[Message],
    budget: int,
) -> tuple[MemoryExample, list[int], int]:
    """A recall example with as much of ``filler`` between telling and asking as fits.

    Returns (the example, its ids: pad + told + filler + asked, at most ``budget``
    long when the told and asked turns fit at all, the filler's length in tokens: how
    far back the answer lies beyond the question). Filler goes in whole user/assistant
    pairs, so turns keep alternating.
    """
    ex = gen.recall()
    told, asked = (tok.render_ids(s) for s in ex.sessions)
    room = budget - 1 - len(told) - len(asked)
    middle: list[int] = []
    turns = list(filler)
    if turns and turns[0].role != "user":
        turns = turns[1:]
    for i in range(0, len(turns) - 1, 2):
        pair = tok.render_ids(turns[i : i + 2])
        if len(middle) + len(pair) > room:
            break
        middle += pair
    return ex, [tok.pad_id, *told, *middle, *asked], len(middle)


def _pad_rows(rows: list[list[int]], seq_len: int, pad_id: int) -> Batch:
    """Right-pad id lists into a Batch; rows longer than ``seq_len`` keep their end."""
    tokens = torch.full((len(rows), seq_len), pad_id, dtype=torch.int64)
    lengths = torch.zeros(len(rows), dtype=torch.int64)
    for i, row in enumerate(rows):
        row = row[-seq_len:]
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        lengths[i] = len(row)
    return Batch(tokens, lengths)


@dataclass
class DistillData:
    """The training stream and generators of one distillation run."""

    tok: ChatTokenizer
    train: TokenStream
    pools: ValuePools
    conversations: tuple[tuple[Message, ...], ...]  # train split, for far-recall fillers

    def batch(
        self,
        rows: int,
        seq_len: int,
        gen: torch.Generator,
        dialogue_frac: float = 0.0,
        far_frac: float = 0.0,
    ) -> Batch:
        """``rows`` rows: windows of the stream, then dialogues and far-recall rows."""
        n_dia, n_far = round(rows * dialogue_frac), round(rows * far_frac)
        n_win = max(rows - n_dia - n_far, 0)
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        parts: list[list[int]] = []
        if n_win:
            x, y = sample_windows(self.train, n_win, seq_len - 1, gen)
            parts += [[*a.tolist(), int(b[-1])] for a, b in zip(x, y, strict=True)]
        dg = DialogueGenerator(self.pools, "train", seed=seed)
        for ex in dg.sample(n_dia, DIALOGUE_KINDS) if n_dia else ():
            parts.append([self.tok.pad_id, *self.tok.render_ids(ex.flat())])
        rng = random.Random(seed)
        for _ in range(n_far):
            filler = rng.choice(self.conversations) if self.conversations else ()
            parts.append(far_recall(self.tok, dg, filler, seq_len)[1])
        return _pad_rows(parts, seq_len, self.tok.pad_id)


def prepare_distill_data(
    tok: ChatTokenizer, chitchat_limit: int | None = None, filler_chars: int = 400
) -> DistillData:
    """Render the chit-chat train split; value pools exclude its words (held-out values
    stay unseen). ``filler_chars`` caps each filler message."""
    splits = split_conversations(load_chitchat())
    train = splits["train"][:chitchat_limit] if chitchat_limit else splits["train"]
    pools = ValuePools.build(exclude=words_of(m.content for c in train for m in c.messages))
    fillers = tuple(
        tuple(Message(m.role, m.content[:filler_chars]) for m in c.messages)
        for c in train
        if len(c.messages) >= 4
    )
    return DistillData(tok, chat_stream(tok, train), pools, fillers)


def heldout_texts(n: int) -> list[str]:
    """Plain text (``Conversation.text()``) of the first ``n`` test-split conversations."""
    return [c.text() for c in split_conversations(load_chitchat())["test"][:n]]
