"""The session lock (and the tenant's concurrent-turn place) is released before the
client hears that its turn ended."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from memsvc.metrics import Metrics
from memsvc.services.turns import Turn, TurnManager


class RecordingLock:
    """Stands in for storage's lock: records what the turn's queue held at release."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.queued_at_release: int | None = None

    def __exit__(self, *exc: object) -> None:
        self.queued_at_release = self.turn.queue.qsize()


class RecordingLimits:
    """Stands in for the tenant limits: records what the queue held when the place went."""

    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.given_back: list[tuple[str, str, int]] = []

    def give_back_turn(self, tenant_id: str, place: str) -> None:
        self.given_back.append((tenant_id, place, self.turn.queue.qsize()))


class OneShot(TurnManager):
    def __init__(self, outcome: object, limits: RecordingLimits) -> None:  # what _run touches
        self.metrics = Metrics()
        self.outcome = outcome
        self.limits = limits

    async def _run_locked(self, turn, session, req, max_new, accepted):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def run_turn(outcome: object) -> tuple[RecordingLock, object, RecordingLimits]:
    async def go() -> tuple[RecordingLock, object, RecordingLimits]:
        turn = Turn(queue=asyncio.Queue())
        limits = RecordingLimits(turn)
        manager = OneShot(outcome, limits)
        lock = RecordingLock(turn)
        session = SimpleNamespace(id="s1", tenant_id="t1")
        await manager._run(turn, (lock, "place-1"), session, None, 1)
        return lock, turn.queue.get_nowait(), limits

    return asyncio.run(go())


def test_lock_is_free_before_the_result_is_delivered() -> None:
    result = object()
    lock, delivered, limits = run_turn(result)
    # a client that sends its next turn as soon as this one returns must find it free
    assert lock.queued_at_release == 0
    assert limits.given_back == [("t1", "place-1", 0)]
    assert delivered is result


def test_lock_is_free_before_a_failure_is_delivered() -> None:
    lock, delivered, limits = run_turn(ValueError("boom"))
    assert lock.queued_at_release == 0
    assert limits.given_back == [("t1", "place-1", 0)]
    assert isinstance(delivered, ValueError)
