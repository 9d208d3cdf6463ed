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
  short softmax window reaches, so a hybrid's retention path must carry it;
- *notes*: a memory note, a question and the right reply
  (:mod:`retnet_core.training.note_dialogues`): ``answer`` marks the positions whose
  next token is the reply's, trained on the truth rather than on the teacher.

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
from retnet_core.training.note_dialogues import NoteDialogues, note_row

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
    """tokens (B, T) int64; lengths (B,) valid tokens per row (right padding); answer
    (B, T) bool: positions whose next token is a note example's reply (or None)."""

    tokens: Tensor
    lengths: Tensor
    answer: Tensor | None = None

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


def packed_notes(
    tok: ChatTokenizer, gen: NoteDialogues, seq_len: int
) -> tuple[list[int], list[int]]:
    """Note examples back to back (each after ``pad``) while they fit in ``seq_len``,
    at least one: (ids, answer positions). Later examples follow earlier ones in the
    state, as a note follows a session's history in the service."""
    ids: list[int] = []
    answer: list[int] = []
    while True:
        row, pos = note_row(tok, gen.note_example())
        if ids and len(ids) + len(row) > seq_len:
            return ids, answer
        answer += [len(ids) + t for t in pos]
        ids += row


def _pad_rows(
    rows: list[list[int]], seq_len: int, pad_id: int, answers: list[list[int]] | None = None
) -> Batch:
    """Right-pad id lists into a Batch; rows longer than ``seq_len`` keep their end.

    ``answers[i]``: row i's answer positions (see :class:`Batch`), shifted with a cut."""
    tokens = torch.full((len(rows), seq_len), pad_id, dtype=torch.int64)
    lengths = torch.zeros(len(rows), dtype=torch.int64)
    answer = torch.zeros(len(rows), seq_len, dtype=torch.bool) if answers else None
    for i, row in enumerate(rows):
        cut = max(len(row) - seq_len, 0)
        row = row[cut:]
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        lengths[i] = len(row)
        if answer is not None and i < len(answers):
            kept = [t - cut for t in answers[i] if t >= cut]
            answer[i, kept] = True
    return Batch(tokens, lengths, answer)


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
        note_frac: float = 0.0,
        note_passage_rate: float = 0.0,
        note_kinds: dict[str, float] | None = None,
        note_same_kind_rate: float = 0.0,
        note_wide_rate: float = 0.0,
        note_ask_rates: dict[str, dict[str, float]] | None = None,
    ) -> Batch:
        """``rows`` rows: note examples first (``note_passage_rate`` of them passage
        questions, the others drawn by ``note_kinds``' weights, ``note_same_kind_rate``
        of recalls, updates and chains among facts of one value kind, ``note_wide_rate`` of
        them over the built kinds too, questions drawn by ``note_ask_rates`` when given), then
        windows of the stream, dialogues and far-recall rows."""
        n_note = round(rows * note_frac)
        n_dia, n_far = round(rows * dialogue_frac), round(rows * far_frac)
        n_win = max(rows - n_note - n_dia - n_far, 0)
        seed = int(torch.randint(0, 2**31, (1,), generator=gen))
        parts: list[list[int]] = []
        answers: list[list[int]] = []
        notes = NoteDialogues(
            self.pools,
            "train",
            seed=seed,
            passage_rate=note_passage_rate,
            kinds=note_kinds,
            same_kind_rate=note_same_kind_rate,
            wide_rate=note_wide_rate,
            ask_rates=note_ask_rates,
        )
        for _ in range(n_note):
            ids, answer = packed_notes(self.tok, notes, seq_len)
            parts.append(ids)
            answers.append(answer)
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
        return _pad_rows(parts, seq_len, self.tok.pad_id, answers)


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
