"""Two concurrent turns of one user in two sessions share the user's memory bank.

The per-session lock does not cover the bank: both turns run at once, both commit, and
every slot either turn reported writing is in the bank afterwards (appends commute; the
bank version's compare-and-set merges the rest). Through HTTP, on both backends.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from service_testkit import Client
from test_chat import new_session

ROUNDS = 3


def test_two_sessions_of_one_user_commit_concurrently_and_lose_no_memory(
    api: Client, admin: Client
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    sids = [new_session(api, user_id=user, memory_scope="user") for _ in range(2)]

    def turn(sid: str, i: int) -> dict:
        body = {"content": f"Remember that my code number {i} is {4400 + i}", "max_tokens": 4}
        r = api("POST", f"/v1/sessions/{sid}/messages", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    written = {sid: 0 for sid in sids}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i in range(ROUNDS):  # each round: one turn per session, sent at the same time
            futures = [pool.submit(turn, sid, 2 * i + k) for k, sid in enumerate(sids)]
            for sid, fut in zip(sids, futures, strict=True):
                out = fut.result(timeout=120)
                written[sid] += out["usage"]["memory_writes"]
    for sid in sids:  # both sessions committed every turn
        messages = api("GET", f"/v1/sessions/{sid}/messages").json()["data"]
        assert len(messages) == 2 * ROUNDS
        assert api("GET", f"/v1/sessions/{sid}").json()["version"] == ROUNDS
    assert all(written.values()), f"the model wrote no memory: {written}"
    for sid in sids:  # no slot of either session was lost by the other's commit
        params = {"session_id": sid, "limit": 10_000}
        slots = admin("GET", "/admin/memory/slots", params=params).json()["data"]
        assert len(slots) == written[sid], (sid, len(slots), written)
    # one shared bank: the user's slots are the two sessions' slots together
    everyone = admin("GET", "/admin/memory/slots", params={"user_id": user, "limit": 10_000})
    assert len(everyone.json()["data"]) == sum(written.values())
