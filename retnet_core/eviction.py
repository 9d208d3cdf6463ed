"""Eviction policies for a full memory bank: pure functions of :class:`SlotStats`.

Every policy answers "which ``n`` slots go first" and returns their ids, lowest
score first. Ties are broken by the older slot (smaller ``created``, then smaller
id) so that the choice is deterministic and testable.

Ticks are the bank's logical clock (see :mod:`retnet_core.slots`): ``created`` is
the tick of the write, ``last_read`` the tick of the latest read or -1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from retnet_core.slots import SlotStats

POLICIES = ("lru", "lfu", "utility")


def last_used(stats: SlotStats) -> Tensor:
    """Tick of the latest write or read of each slot: max(created, last_read), (N,)."""
    return torch.maximum(stats.created, stats.last_read)


def _lowest(score: Tensor, stats: SlotStats, n: int) -> Tensor:
    """Ids of the ``n`` slots with the lowest ``score``; ties go to the older slot."""
    n = min(n, int(stats.ids.numel()))
    if n <= 0:
        return torch.empty(0, dtype=torch.int64)
    # Lexicographic sort (score, created, id): stable sorts applied from the last key.
    order = torch.argsort(stats.ids, stable=True)
    order = order[torch.argsort(stats.created[order], stable=True)]
    order = order[torch.argsort(score[order].to(torch.float64), stable=True)]
    return stats.ids[order[:n]]


def lru_scores(stats: SlotStats) -> Tensor:
    """Least recently used: score = last_used (older use goes first), (N,)."""
    return last_used(stats).to(torch.float64)


def lfu_scores(stats: SlotStats) -> Tensor:
    """Least frequently used: score = reads; among equals the least recent goes first.

    score = reads + last_used / (now + 1), so the recency term stays in [0, 1) and
    never outranks one whole read.
    """
    now = float(last_used(stats).max().item()) if stats.ids.numel() else 0.0
    return stats.reads.to(torch.float64) + last_used(stats).to(torch.float64) / (now + 1.0)


def utility_scores(stats: SlotStats, half_life: float = 64.0) -> Tensor:
    """Lowest utility goes first: u = gate × (1 + reads) × 2^(−age / half_life), (N,).

    age = now − last_used in ticks, now = the newest tick in ``stats``. ``1 + reads``
    rather than ``reads`` so a fresh, unread slot keeps the value of its gate instead
    of tying at zero with every other unread slot.
    """
    if stats.ids.numel() == 0:
        return torch.empty(0, dtype=torch.float64)
    used = last_used(stats).to(torch.float64)
    age = used.max() - used
    recency = torch.pow(2.0, -age / half_life)
    return stats.gate.to(torch.float64) * (1.0 + stats.reads.to(torch.float64)) * recency


_SCORES: dict[str, Callable[[SlotStats], Tensor]] = {
    "lru": lru_scores,
    "lfu": lfu_scores,
    "utility": utility_scores,
}


def select_victims(policy: str, stats: SlotStats, n: int) -> Tensor:
    """Ids (≤ n,) of the slots that ``policy`` ('lru' | 'lfu' | 'utility') evicts first."""
    if policy not in _SCORES:
        raise ValueError(f"unknown eviction policy {policy!r}; expected one of {POLICIES}")
    return _lowest(_SCORES[policy](stats), stats, n)
