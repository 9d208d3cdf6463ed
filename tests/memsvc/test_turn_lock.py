"""The session lock is released before the client hears that its turn ended."""

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


class OneShot(TurnManager):
    def __init__(self, outcome: object) -> None:  # only what _run touches
        self.metrics = Metrics()
        self.outcome = outcome

    async def _run_locked(self, turn, session, req, max_new, accepted):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def run_turn(outcome: object) -> tuple[RecordingLock, object]:
    async def go() -> tuple[RecordingLock, object]:
        manager = OneShot(outcome)
        turn = Turn(queue=asyncio.Queue())
        lock = RecordingLock(turn)
        await manager._run(turn, lock, SimpleNamespace(id="s1"), None, 1)
        return lock, turn.queue.get_nowait()

    return asyncio.run(go())


def test_lock_is_free_before_the_result_is_delivered() -> None:
    result = object()
    lock, delivered = run_turn(result)
    # a client that sends its next turn as soon as this one returns must find it free
    assert lock.queued_at_release == 0
    assert delivered is result


def test_lock_is_free_before_a_failure_is_delivered() -> None:
    lock, delivered = run_turn(ValueError("boom"))
    assert lock.queued_at_release == 0
    assert isinstance(delivered, ValueError)
