"""Synthetic data for the experiments: facts told in one session, asked in the next.

Vocabulary (ids): PAD 0, '=' 1, ';' 2, '?' 3, '~' 4 (hedge: "I heard that ..."),
16 letters, 10 digits, 8 chatter words.

- fact   ``n1 n2 n3 = d1 d2 ;``   a 3-letter name and a 2-digit value (one span)
- hedge  ``~ n1 n2 n3 = x1 x2 ;`` a rumour contradicting a real fact (noise span)
- chatter 7 chatter words           irrelevant talk (noise span)
- query  ``? n1 n2 n3 = d1 d2 ;``  session B; the loss is on d1 (at '=') and d2 (at d1)

Held out: names with (name id % 5 == 0) and values with (digit sum % 5 == 0) occur
only in the test split, so a model must bind and recall, not memorise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PAD, EQ, SEMI, ASK, HEDGE = 0, 1, 2, 3, 4
N_LETTERS, N_DIGITS, N_CHAT = 16, 10, 8
LETTER0 = 5
DIGIT0 = LETTER0 + N_LETTERS
CHAT0 = DIGIT0 + N_DIGITS
VOCAB = CHAT0 + N_CHAT
IGNORE = -100


@dataclass
class Sessions:
    """One batch. a (B, La) session A; spans (B, S, La) bool, one per written span;
    noise (B, S) bool: the span is a hedge or chatter; b (B, Lb) session B; target (B, Lb)
    the next token to predict at answer positions, IGNORE elsewhere."""

    a: Tensor
    spans: Tensor
    noise: Tensor
    b: Tensor
    target: Tensor

    def to(self, dev: torch.device) -> Sessions:
        return Sessions(*(t.to(dev) for t in (self.a, self.spans, self.noise, self.b, self.target)))

    def in_context(self) -> tuple[Tensor, Tensor]:
        """Session A then session B in one sequence (the Transformer reference's input)."""
        tgt = torch.full_like(self.a, IGNORE)
        return torch.cat([self.a, self.b], 1), torch.cat([tgt, self.target], 1)


def _pool(n: int, split: str, g: torch.Generator, count: int) -> Tensor:
    """``count`` distinct ids of range(n) from the split: held out (test) are names with
    id % 5 == 0 and values whose digit sum % 5 == 0, so every symbol still occurs at
    every position in training."""
    ids = torch.arange(n)
    key = (ids // 10 + ids % 10) if n == 100 else ids
    ids = ids[(key % 5 != 0)] if split == "train" else ids[key % 5 == 0]
    return ids[torch.randperm(ids.numel(), generator=g)[:count]]


def _name_tokens(name: Tensor) -> list[int]:
    return [LETTER0 + int(name) // 256, LETTER0 + (int(name) // 16) % 16, LETTER0 + int(name) % 16]


def _value_tokens(value: int) -> list[int]:
    return [DIGIT0 + value // 10, DIGIT0 + value % 10]


def sample(
    batch: int, n_facts: int, g: torch.Generator, split: str = "train", noise_rate: float = 0.0
) -> Sessions:
    """Draw a batch; a fraction ``noise_rate`` of the written spans is noise (half hedges,
    half chatter), so n_noise = round(n_facts · r / (1 − r))."""
    n_noise = round(n_facts * noise_rate / (1.0 - noise_rate)) if noise_rate > 0 else 0
    rows_spans, rows_b, rows_t = [], [], []
    for _ in range(batch):
        names = _pool(16**3, split, g, n_facts)
        values = _pool(100, split, g, n_facts).tolist()
        while len(values) < n_facts:  # fewer held-out values than facts: repeat
            values.append(values[len(values) % 20])
        spans = [
            (_name_tokens(n) + [EQ] + _value_tokens(v) + [SEMI], False)
            for n, v in zip(names, values, strict=True)
        ]
        for j in range(n_noise):
            if j % 2 == 0:
                victim = names[int(torch.randint(n_facts, (1,), generator=g))]
                fake = int(torch.randint(100, (1,), generator=g))
                spans.append(
                    ([HEDGE] + _name_tokens(victim) + [EQ] + _value_tokens(fake) + [SEMI], True)
                )
            else:
                chat = (CHAT0 + torch.randint(N_CHAT, (7,), generator=g)).tolist()
                spans.append((chat, True))
        order = torch.randperm(len(spans), generator=g).tolist()
        rows_spans.append([spans[i] for i in order])
        b, t = [], []
        for i in torch.randperm(n_facts, generator=g).tolist():
            q = [ASK] + _name_tokens(names[i]) + [EQ] + _value_tokens(values[i]) + [SEMI]
            b += q
            t += [IGNORE] * 4 + q[5:7] + [IGNORE, IGNORE]
        rows_b.append(b)
        rows_t.append(t)
    return _collate(rows_spans, rows_b, rows_t)


def _collate(rows_spans, rows_b, rows_t) -> Sessions:
    la = max(sum(len(s) for s, _ in row) for row in rows_spans)
    n_spans = len(rows_spans[0])
    a = torch.full((len(rows_spans), la), PAD)
    spans = torch.zeros(len(rows_spans), n_spans, la, dtype=torch.bool)
    noise = torch.zeros(len(rows_spans), n_spans, dtype=torch.bool)
    for r, row in enumerate(rows_spans):
        pos = 0
        for s, (toks, is_noise) in enumerate(row):
            a[r, pos : pos + len(toks)] = torch.tensor(toks)
            spans[r, s, pos : pos + len(toks)] = True
            noise[r, s] = is_noise
            pos += len(toks)
    return Sessions(a, spans, noise, torch.tensor(rows_b), torch.tensor(rows_t))


def exact_recall(logits: Tensor, target: Tensor) -> float:
    """Fraction of queries whose two answer digits are both right. logits (B, L, V)."""
    pred = logits.argmax(-1)
    mask = target != IGNORE
    ok = (pred == target) | ~mask
    # answer positions come in pairs; a query is right when both of its digits are
    per_query = ok[mask].reshape(-1, 2).all(dim=1)
    return per_query.float().mean().item()
