"""Does the memory note hold what a question needs? The note's pick alone, no model.

``memsvc bench memory`` scores replies, which mixes two failures: the note lacked the
fact (the memory was never kept, or the pick left it out) and the model misread a note
that held it. This replays the bench's plans through the service's own write filter
(:func:`~memsvc.services.memory_notes.worth_keeping`) and pick
(:func:`~memsvc.services.memory_notes.pick`), with MiniLM as the service embeds, and
counts per question of the protocol:

- recall / keeps: the note holds a memory telling the asked fact (for the updated fact,
  the update);
- latest: the note holds the update;
- declines: the note is empty (then the service writes "(nothing about this)": the
  model declines far more reliably than over a note of other facts);
- alone: of the recall, latest and keeps questions, the share whose note holds the
  needed fact and no line of another fact (a common misread of the student is a
  distractor's value: "Your best friend is Dolbrul." over a note that also says "My cat
  is called Dolbrul.");
- small talk: of five chit-chat messages per user (the held-out test split's), the share
  that get no note: a note there only spends prompt tokens and may pull the reply
  toward a fact nobody asked about;
- lines: the mean number of note lines (over the protocol's questions).

Pick settings are compared side by side. The thresholds were chosen on seeds 7 and 21;
``memsvc bench memory`` reports seed 13. ``--adapter bundled`` adds rows of the note read
as served: the question moved by the query adapter (:mod:`memsvc.rag.query_adapter`)
under the floors it carries, and its neighbours.

    PYTHONPATH=. python scripts/note_pick_coverage.py --seeds 7,21,13 \\
        --out docs/bench/note-pick --adapter bundled
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from memsvc.bench.memory import heldout_pools
from memsvc.bench.memory_data import UserPlan, chatter_lines, make_plans
from memsvc.rag.feed import Embedder
from memsvc.rag.query_adapter import QueryAdapter, load_adapter
from memsvc.services.memory_notes import (
    _FIRST_PERSON,
    _KEEP_ASKED,
    FOLLOW_QUERY_SIMILARITY,
    FOLLOW_SIMILARITY,
    MARGIN,
    MIN_SIMILARITY,
    pick,
    worth_keeping,
)
from memsvc.store import MemoryRec


def kept_before(text: str) -> bool:
    """The write filter before tastes were kept ("Honestly X is the best band ever.")."""
    return worth_keeping(text) and bool(_FIRST_PERSON.search(text) or _KEEP_ASKED.search(text))


# (margin, follow, follow_query): stock MiniLM's setting and its neighbours (a follower's
# cosine with the message is ≥ -1 always: no floor); "before" (first row) also keeps
# with the earlier write filter
SETTINGS = (
    (0.2, None, -1), (0.2, None, -1), (0.2, 0.4, -1), (0.2, 0.3, -1), (0.2, 0.25, -1),
    (0.2, 0.2, -1), (0.3, None, -1), (0.3, 0.2, -1), (0.1, 0.2, -1), (0.1, 0.3, -1),
    (0.05, 0.3, -1), (0.2, 0.2, 0.15), (0.1, 0.2, 0.1), (0.1, 0.2, 0.15), (0.1, 0.2, 0.2),
)  # fmt: skip


def pick_label(margin: float, follow: float | None, follow_query: float) -> str:
    """A pick setting in words: "margin 0.1, followers ≥ 0.2 and ≥ 0.15 to the message"."""
    text = f"margin {margin}, " + ("no followers" if follow is None else f"followers ≥ {follow}")
    if follow is not None and follow_query > -1:
        text += f" and ≥ {follow_query} to the message"
    return text


def label(i: int, margin: float, follow: float | None, follow_query: float) -> str:
    """A setting's row label: its :func:`pick_label`, marked "before" or as stock's."""
    text = pick_label(margin, follow, follow_query)
    if i == 0:
        return "before: first person kept, " + text
    shipped = (margin, follow, follow_query) == (MARGIN, FOLLOW_SIMILARITY, FOLLOW_QUERY_SIMILARITY)
    return text + (" (stock MiniLM's setting)" if shipped else "")


# (floor, follow_query) on the query adapter's scale, its carried setting among them
ADAPTER_SETTINGS = (
    (0.12, 0.05),
    (0.15, 0.0),
    (0.15, 0.05),
    (0.15, 0.1),
    (0.18, 0.05),
    (0.25, 0.15),
)


def adapter_label(floor: float, follow_query: float, adapter: QueryAdapter) -> str:
    """A query-adapter row: its floor and followers' floor, "(carried)" for its own."""
    own = (floor, follow_query) == (adapter.min_similarity, adapter.follow_query)
    return (
        f"query adapter: floor {floor}, margin {adapter.margin}, followers ≥ "
        f"{FOLLOW_SIMILARITY} and ≥ {follow_query} to the message"
        + (" (carried, shipped)" if own else "")
    )


MEASURES = ("recall", "latest", "keeps", "declines", "alone", "small talk")
TALK_PER_USER = 5  # chit-chat messages per user for "small talk"


@dataclass(frozen=True)
class Question:
    """One question of the protocol: the memories said before it (oldest first), the
    index among them of the one it needs (None: a never-told kind), and which fact each
    of them tells (an update tells the fact it changes)."""

    measure: str
    asked: str
    said: tuple[str, ...]
    needs: int | None
    facts: tuple[int, ...]


def questions(plan: UserPlan) -> list[Question]:
    """The questions ``memsvc bench memory`` asks one user, in its order (cross-user
    and the forgotten fact left out: the first reads another namespace, the second
    an exact forget)."""
    tells = tuple(f.tell for f in plan.facts)
    told = tuple(range(len(tells)))
    out = [
        Question("recall", plan.ask(f.kind, i), tells, i, told) for i, f in enumerate(plan.facts)
    ]
    out.append(Question("declines", plan.ask(plan.never, 0), tells, None, told))
    updated, of = (*tells, plan.update_text), (*told, plan.update)
    out.append(Question("latest", plan.ask(plan.facts[plan.update].kind, 1), updated, 3, of))
    left = [j for j in range(len(updated)) if j != plan.forget]
    kept, kept_of = tuple(updated[j] for j in left), tuple(of[j] for j in left)
    for j, f in enumerate(plan.facts):
        if j != plan.forget:
            needs = kept.index(updated[3 if j == plan.update else j])
            out.append(Question("keeps", plan.ask(f.kind, 3 + j), kept, needs, kept_of))
    return out


def memory_record(i: int, text: str) -> MemoryRec:
    """Memory ``i`` of one user, written ``i`` minutes into the protocol, as the pick sees it."""
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i)
    return MemoryRec(
        id=str(i), tenant_id="t", user_id="u", namespace="user:u", session_id="s",
        message_id=str(i), span=(0, len(text)), text=text, collection=None, key=None,
        gate=1.0, slots=0, reads=0, last_read_at=None, created_at=at, updated_at=at,
        deleted_at=None,
    )  # fmt: skip


def coverage(
    qs: list[Question],
    vec: dict[str, np.ndarray],
    margin: float,
    follow,
    follow_query,
    keep,
    floor: float = MIN_SIMILARITY,
    move=None,
) -> dict:
    """Per measure: the share of questions whose note serves it; and the mean lines.
    ``move``: the query adapter's map of a question's vector (None: stock MiniLM)."""
    hit, n, lines = Counter(), Counter(), 0
    for q in qs:
        rows = [memory_record(i, t) for i, t in enumerate(q.said) if keep(t)]
        vectors = np.stack([vec[r.text] for r in rows]) if rows else np.zeros((0, 384))
        query = vec[q.asked] if move is None else move(vec[q.asked])
        picked = pick(
            rows, vectors, query, min_similarity=floor, margin=margin, follow=follow,
            follow_query=follow_query,
        )  # fmt: skip
        got = {int(s.memory.id) for s in picked}
        n[q.measure] += 1
        lines += len(got) if q.measure != "small talk" else 0
        hit[q.measure] += (not got) if q.needs is None else (q.needs in got)
        if q.needs is not None:
            n["alone"] += 1
            hit["alone"] += q.needs in got and {q.facts[i] for i in got} == {q.facts[q.needs]}
    asked = sum(n[m] for m in n if m not in ("alone", "small talk"))
    return {m: hit[m] / n[m] if n[m] else float("nan") for m in MEASURES} | {
        "lines": lines / asked,
        "questions": asked,
    }


def small_talk(plans: list[UserPlan], seed: int) -> list[Question]:
    """:data:`TALK_PER_USER` chit-chat messages of the held-out test split per user, each
    read against the user's tellings: a note there is noise in the prompt."""
    rng, talk = random.Random(f"talk:{seed}"), chatter_lines()
    return [
        Question("small talk", line, tuple(f.tell for f in p.facts), None, (0, 1, 2))
        for p in plans
        for line in rng.sample(talk, TALK_PER_USER)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="7,21,13")
    ap.add_argument("--users", type=int, default=70)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--adapter", help="also a query adapter's rows: 'bundled' or a path")
    args = ap.parse_args()
    heldout, embedder = heldout_pools(), Embedder()
    adapter = load_adapter(args.adapter) if args.adapter else None
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        plans = make_plans(args.users, seed, heldout)
        qs = [q for p in plans for q in questions(p)] + small_talk(plans, seed)
        texts = sorted({t for q in qs for t in (q.asked, *q.said)})
        vec = dict(zip(texts, embedder.embed(texts), strict=True))
        told = [f.tell for p in plans for f in p.facts] + [p.update_text for p in plans]
        results[seed] = {
            "kept": sum(map(worth_keeping, told)) / len(told),
            "settings": {
                label(i, *setting): coverage(
                    qs, vec, *setting, kept_before if i == 0 else worth_keeping
                )
                for i, setting in enumerate(SETTINGS)
            },
        }
        if adapter is not None:
            for floor, follow_query in ADAPTER_SETTINGS:
                results[seed]["settings"][adapter_label(floor, follow_query, adapter)] = coverage(
                    qs, vec, adapter.margin, FOLLOW_SIMILARITY, follow_query, worth_keeping,
                    floor=floor, move=adapter.apply,
                )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.json").write_text(json.dumps(results, indent=1))
    (args.out / "coverage.md").write_text(report(results, args))
    print(report(results, args))


def report(results: dict, args: argparse.Namespace) -> str:
    head = (
        "| seed | pick | recall | latest | keeps | declines (empty note) | alone "
        "| small talk (empty note) | lines |"
    )
    out = [
        "# The memory note's coverage of `memsvc bench memory`'s questions",
        "",
        f"`PYTHONPATH=. python scripts/note_pick_coverage.py --seeds {args.seeds} "
        f"--users {args.users} --out {args.out}"
        + (f" --adapter {args.adapter}" if args.adapter else "")
        + "` (no model: the pick alone; see the "
        "script's docstring). Seeds 7 and 21 chose the settings; the bench reports 13.",
        "",
        head,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in results.items():
        for lab, c in r["settings"].items():
            cells = " | ".join(f"{c[m]:.3f}" for m in MEASURES)
            out.append(f"| {seed} | {lab} | {cells} | {c['lines']:.2f} |")
    out += ["", "Statements kept as memories (tells and updates): "
            + ", ".join(f"seed {s} {r['kept']:.3f}" for s, r in results.items()), ""]  # fmt: skip
    return "\n".join(out)


if __name__ == "__main__":
    main()
