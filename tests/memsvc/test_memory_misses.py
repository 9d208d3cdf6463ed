"""scripts/memory_misses.py sorts each missed question by what its reply did."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "memory_misses.py"


def _load():
    spec = importlib.util.spec_from_file_location("memory_misses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _item(measure: str, kind: str, reply: str, ok: bool = False) -> dict:
    return {"measure": measure, "kind": kind, "reply": reply, "ok": ok}


def test_misses_fall_in_the_first_cause_that_fits() -> None:
    misses = _load()
    plan = {
        "user": 0,
        "facts": [
            {"kind": "sister", "value": "Ann"},
            {"kind": "dog", "value": "Rex"},
            {"kind": "city", "value": "Lyon"},
        ],
        "update": {"fact": 0, "value": "Annie"},
    }
    items = [
        _item("latest", "sister", "Your sister is called Ann."),  # the replaced value
        _item("latest", "sister", "Your sister is called Annie.", ok=True),  # not a miss
        _item("recall_trained", "dog", "I don't know your dog's name."),
        _item("forget_keeps", "dog", "Your dog is called Annie."),  # another told value
        _item("forget_keeps", "city", "You live in Paris."),
        _item("declines", "name", "Your name is Rex."),
    ]
    bench = {"plans": [plan], "memory_on": [{"user": 0, "items": items}]}
    table = misses.miss_table(bench)
    assert table["latest"] == {"names the replaced value": 1}
    assert table["recall_trained"] == {"refuses": 1}
    assert table["forget_keeps"] == {"names another told value": 1, "other": 1}
    assert table["declines"] == {"names a value": 1}
    # whole words only: "Annabel" does not name the replaced "Ann"
    assert misses.miss_cause(_item("latest", "sister", "Annabel, I think."), plan) == "other"


def test_notes_are_replayed_as_the_service_picks_them() -> None:
    """A miss whose note held the asked fact is the model's; one whose note lacked it
    (here: an update worded unlike both the question and what it changed) the pick's."""
    misses = _load()
    plan = {
        "user": 0,
        "facts": [
            {"kind": "dog", "value": "Rex", "tell": "My dog is called Rex."},
            {"kind": "city", "value": "Lyon", "tell": "I live in Lyon."},
            {"kind": "band", "value": "Kestrel", "tell": "Kestrel is my favourite band."},
        ],
        "update": {"fact": 1, "value": "Porto", "said": "Porto it is, from now on."},
        "forget": {"fact": 2, "said": "Please forget my favourite band."},
    }
    asked = {"recall_trained": "What's my dog called?", "latest": "Where do I live?"}
    items = [
        {**_item(m, k, "I don't know."), "value": v, "asked": asked[m]}
        for m, k, v in (("recall_trained", "dog", "Rex"), ("latest", "city", "Porto"))
    ]
    keeps = {
        **_item("forget_keeps", "dog", "No idea."),
        "value": "Rex",
        "asked": asked["recall_trained"],
    }
    bench = {"plans": [plan], "memory_on": [{"user": 0, "items": [*items, keeps]}]}
    said = misses.said_before(keeps, plan)
    assert said == ["My dog is called Rex.", "I live in Lyon.", "Porto it is, from now on."]
    lacking = misses.notes_lacking(bench, 0.1, 0.2, 0.15)
    assert lacking == {"recall_trained": 0, "latest": 1, "forget_keeps": 0}
