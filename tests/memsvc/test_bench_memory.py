"""`memsvc bench memory`: scoring, the per-user plans, and a toy run end to end.

The end-to-end run starts its own live server on the tiny test checkpoint (random
weights: the rates are not the point, the protocol and its counts are).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memsvc.bench import memory
from memsvc.bench.memory_data import KINDS, OTHER, TRAINED, WORDS, make_plans, training_phrasings
from memsvc.bench.memory_report import MEASURES
from memsvc.cli.main import app
from retnet_core.training.dialogues import ATTRIBUTES

POOLS = {
    "person": [f"Pers{i}a" for i in range(50)],
    "place": [f"Plac{i}ford" for i in range(50)],
    "code": [str(1000 + i) for i in range(50)],
    "thing": [f"Thin{i}ix" for i in range(50)],
}


@pytest.mark.parametrize(
    ("value", "reply", "expected"),
    [
        ("Ziggy", "Your dog is called ziggy!", True),
        ("Ziggy", "Your dog is called Ziggyx.", False),
        ("4821", "The code is 48210.", False),
        ("4821", "It's 4821.", True),
        ("teal", "Teal, I think", True),
    ],
)
def test_contains_is_whole_word_any_case(value: str, reply: str, expected: bool) -> None:
    assert memory.contains(value, reply) is expected


@pytest.mark.parametrize(
    ("reply", "values", "expected"),
    [
        ("I don't know your dog's name.", "person", True),
        ("I do not know where you grew up.", "place", True),
        ("Sorry, you haven't told me your favourite colour.", "colour", True),
        ("I'm not sure. I don't remember your locker code.", "code", True),
        ("Your dog is called Bouford.", "person", False),  # no decline: invents
        ("I don't know, maybe Bouford?", "person", False),  # declines but names a name
        ("I don't know your locker code, 4821?", "code", False),  # names a number
        ("I don't know, teal?", "colour", False),  # names a colour
        ("I don't know, blue maybe.", "colour", False),  # a common one too
        ("I don't know. Teal?", "colour", False),  # even at a sentence start
        ("I don't know your band.", "thing", True),
    ],
)
def test_is_decline(reply: str, values: str, expected: bool) -> None:
    assert memory.is_decline(reply, values) is expected


def test_told_values_count_as_named() -> None:
    # a value told in the run (here a code) named in a "decline" is no decline
    assert not memory.is_decline("I don't know my friend qq77.", "person", known=["qq77"])
    assert memory.is_decline("I don't know my friend.", "person", known=["qq77"])


def test_kinds_are_split_and_phrasings_held_out() -> None:
    assert set(TRAINED) == set(ATTRIBUTES) and not set(OTHER) & set(ATTRIBUTES)
    for name, kind in TRAINED.items():
        assert kind.values == ATTRIBUTES[name].value_kind  # same value pools as training
    trained = training_phrasings()
    for kind in KINDS.values():
        for text in (*kind.tells, *kind.asks, *kind.updates):
            assert text not in trained and "forget" not in text.lower()
        for text in (*kind.tells, *kind.updates):
            assert text.count("{v}") == 1
        assert kind.values in POOLS or kind.values in WORDS


def test_plans_are_deterministic_and_balanced() -> None:
    plans = make_plans(12, seed=3, heldout=POOLS)
    assert plans == make_plans(12, seed=3, heldout=POOLS)
    assert plans != make_plans(12, seed=4, heldout=POOLS)
    trained = Counter(sum(KINDS[f.kind].trained for f in p.facts) for p in plans)
    assert trained == {2: 6, 1: 6}  # 18 trained + 18 other facts
    values = [f.value for p in plans for f in p.facts]
    assert len(set(values)) == len(values)  # no value twice while the pools last
    for p in plans:
        kinds = [f.kind for f in p.facts]
        assert len(set(kinds)) == 3 and p.never not in kinds
        assert p.update != p.forget and p.new_value != p.facts[p.update].value
        assert p.new_value in p.update_text and p.current(p.update) == p.new_value
        for f in p.facts:
            assert f.value in f.tell
            pool = POOLS.get(KINDS[f.kind].values) or WORDS[KINDS[f.kind].values]
            assert f.value in pool
    assert {KINDS[p.never].trained for p in plans} == {True, False}


def test_chatter_buries_every_telling_and_keeps_the_plan() -> None:
    from memsvc.bench.memory_data import buried, chatter_lines

    lines = chatter_lines()
    assert len(lines) > 100 and all(30 <= len(t) <= 90 for t in lines)
    plans = make_plans(6, seed=3, heldout=POOLS)
    for p, b in zip(plans, [buried(p, lines) for p in plans], strict=True):
        assert b == buried(p, lines)  # deterministic per user
        for f, g in zip(p.facts, b.facts, strict=True):
            assert (g.kind, g.value) == (f.kind, f.value)
            before, after = g.tell.split(f" {f.tell} ")  # the telling, whole, inside
            assert before in lines and after in lines
        assert f" {p.update_text} " in b.update_text and b.forget_text == p.forget_text
        assert (b.update, b.forget, b.never, b.new_value) == (
            p.update, p.forget, p.never, p.new_value
        )  # fmt: skip


def test_cli_is_listed_and_rejects_bad_options(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["bench", "--help"])
    assert res.exit_code == 0 and "memory" in res.output
    res = CliRunner().invoke(app, ["bench", "memory", "--out", str(tmp_path), "--users", "0"])
    assert res.exit_code == 2 and "--users" in res.output


def test_bench_end_to_end_on_tiny_model(checkpoint: Path, tmp_path: Path) -> None:
    users = 3
    summary = memory.run(tmp_path, model_dir=checkpoint, users=users, seed=5, max_tokens=3,
                         concurrency=4, extra_env={"MEMSVC_RAG_ENABLED": "false"})  # fmt: skip
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(summary))
    plans = saved["plans"]
    assert [p["user"] for p in plans] == list(range(users))
    n_trained = sum(KINDS[f["kind"]].trained for p in plans for f in p["facts"])
    m = summary["measures"]
    expected = {"recall_trained": n_trained, "recall_other": 3 * users - n_trained,
                "declines": users, "latest": users, "forget_removes": users,
                "forget_keeps": 2 * users, "cross_user": users}  # fmt: skip
    assert {k: v["n"] for k, v in m.items()} == expected
    assert summary["facts"] == 3 * users and summary["users"] == users
    for spec in MEASURES:
        got = m[spec.key]
        assert got["rate"] == pytest.approx(got["ok"] / got["n"])
        assert got["gap"] == pytest.approx(got["rate"] - spec.target, abs=1e-4)
        base = got["memory_off"]
        assert (base is not None) == spec.baseline
        if base is not None:
            assert base["n"] == got["n"]
    for u, p in zip(saved["memory_on"], plans, strict=True):
        items = u["items"]
        assert Counter(it["measure"] for it in items)["forget_keeps"] == 2
        removes = next(it for it in items if it["measure"] == "forget_removes")
        assert removes["value"] == p["facts"][p["forget"]["fact"]]["value"]
        assert removes["ok"] == (removes["gone_reply"] and removes["gone_store"])
        latest = next(it for it in items if it["measure"] == "latest")
        assert latest["value"] == p["update"]["value"]
        for it in items:
            assert isinstance(it["reply"], str) and it["asked"]
        # the tiny model writes every told turn (write threshold 0)
        assert u["facts_written"] > 0 and u["memories"] >= 3
    removes = [
        it for u in saved["memory_on"] for it in u["items"] if it["measure"] == "forget_removes"
    ]
    by_kind = summary["recall_by_kind"]
    assert sum(n for _, n in by_kind.values()) == 3 * users
    assert (
        sum(ok for ok, _ in by_kind.values()) == m["recall_trained"]["ok"] + m["recall_other"]["ok"]
    )
    diag = summary["diagnostics"]
    assert diag["forget_value_gone_from_memories"] == sum(it["gone_store"] for it in removes)
    assert diag["forget_requests_removing_a_memory"] == sum(
        bool(it["removed_texts"]) for it in removes
    )
    assert diag["users_with_a_fact_written"] == users
    off = [it for u in saved["memory_off"] for it in u["items"]]
    assert len(off) == 5 * users and all(u["facts_written"] == 0 for u in saved["memory_off"])
    md = (tmp_path / "memory.md").read_text()
    assert md.startswith("# Cross-session memory") and "Command: `memsvc bench memory" in md
    assert f"--users {users} --seed 5 --max-tokens 3" in md
    for spec in MEASURES:
        assert f"| {spec.label} | {m[spec.key]['n']} |" in md


def test_the_command_line_names_a_query_adapter_and_contrast_only_when_not_the_default() -> None:
    from memsvc.bench.memory_report import command_line

    args = (Path("out"), None, 70, 13, 24, 8, False, False, "int8", False)
    assert "--query-adapter" not in command_line(*args)
    assert command_line(*args, query_adapter="none").endswith(
        "--no-baseline --weights int8 --query-adapter none"
    )
    assert "--note-contrast" not in command_line(*args)  # the server's default weight
    assert command_line(*args, query_adapter="none", note_contrast=0.0).endswith(
        "--query-adapter none --note-contrast 0"
    )
    assert command_line(*args, note_contrast=1.5).endswith("--weights int8 --note-contrast 1.5")
    assert "--no-note-check" not in command_line(*args)  # checked, as served
    assert command_line(*args, note_contrast=0.0, note_check=False).endswith(
        "--note-contrast 0 --no-note-check"
    )
