"""SQL transactions per turn on Postgres + Redis, memory on, a user with 20 memories.

Counted with SQLAlchemy ``begin`` events on the service's engine, from the request's
arrival to its acknowledgment, auth included (``memsvc.bench.turn_cost.measure``).
"""

from __future__ import annotations

from service_testkit import REDIS_URL
from talkative_model import make_talkative_checkpoint

from memsvc.bench.turn_cost import measure, scratch_postgres

MAX_TRANSACTIONS = 12


def test_a_turn_costs_a_small_constant_number_of_transactions(tmp_path):
    ckpt = make_talkative_checkpoint(tmp_path / "ckpt")
    with scratch_postgres() as url:
        one, eight = measure(url, REDIS_URL, ckpt, slots=20, data_dir=tmp_path / "data")
    assert (one.tokens, eight.tokens) == (1, 8)  # the talkative model never stops early
    assert one.transactions <= MAX_TRANSACTIONS, one
    assert eight.transactions == one.transactions, (one, eight)  # 0 per extra token
    assert one.writes == eight.writes == 1, (one, eight)  # the turn's one commit
