"""Training a model without memory layers to answer from its memory note: the examples
(training values only, the latest value after an update, refusals), their rows (the
reply's positions exactly, packed and cut), the loss (replies leave the KL for a
cross-entropy on the truth) and a distillation stage that lowers that cross-entropy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_distill import TRANSFER, _config
from tiny_llama import tiny_llama_dir

from retnet_core.memory_note import NOTE_HEADER, nothing_note
from retnet_core.training.dialogues import UNKNOWN, ValuePools
from retnet_core.training.distill import Distiller
from retnet_core.training.distill_data import _pad_rows, packed_notes
from retnet_core.training.distill_setup import _valid, answer_ce, logits_loss
from retnet_core.training.note_dialogues import NOTE_ATTRIBUTES, NoteDialogues, note_row
from retnet_core.training.note_phrasings import UPDATE_OPENERS, UPDATE_STATES, framed_asks


@pytest.fixture(scope="module")
def pools() -> ValuePools:
    return ValuePools.build()


def test_examples_answer_from_the_note(pools: ValuePools) -> None:
    gen = NoteDialogues(pools, "train", seed=3)
    train = {v for vs in pools.train.values() for v in vs}
    heldout = pools.all_heldout()
    kinds = set()
    for _ in range(200):
        ex = gen.note_example()
        kinds.add(ex.kind)
        note, question, reply = ex.turns
        assert (note.role, question.role, reply.role) == ("system", "user", "assistant")
        assert note.content.startswith(NOTE_HEADER + "\n- ")
        lines = note.content.split("\n")[1:]
        assert 1 <= len(lines) <= 5  # up to 4 facts and one aside
        if ex.kind == "unknown":
            assert ex.answer == "" and reply.content.startswith(UNKNOWN.split("{")[0])
            continue
        assert ex.answer in reply.content and ex.answer in train and ex.answer not in heldout
        assert any(ex.answer in line for line in lines), note.content
    assert kinds == {"recall", "update", "unknown"}


def test_update_names_the_latest_value_last_among_its_attribute(pools: ValuePools) -> None:
    gen = NoteDialogues(pools, "train", seed=5)
    marked = worded = 0
    for _ in range(50):
        ex = gen.note_update()
        lines = ex.turns[0].content.split("\n")[1:]
        changed = [i for i, line in enumerate(lines) if ex.answer in line]
        assert len(changed) == 1 and changed[0] >= 1  # told after at least one line
        marked += lines[changed[0]][2:].startswith(UPDATE_OPENERS)
        own = {t.format(v=ex.answer) for t in UPDATE_STATES.get(ex_attr(ex), ())}
        worded += lines[changed[0]][2:] in own
    # most say "Actually, ..." or the change in its own words; some only tell it again
    assert 15 < marked < 45 and 3 < worded < 25 and marked + worded < 50


def test_chain_names_the_last_of_three_tellings(pools: ValuePools) -> None:
    """A chain tells one attribute three times in order; only the last is the answer."""
    gen = NoteDialogues(pools, "train", seed=8, kinds={"chain": 1.0})
    for _ in range(40):
        ex = gen.note_example()
        lines = ex.turns[0].content.split("\n")[1:]
        first, middle = ex.superseded
        at = [
            next(i for i, line in enumerate(lines) if v in line)
            for v in (*ex.superseded, ex.answer)
        ]
        assert ex.kind == "chain" and len({first, middle, ex.answer}) == 3
        assert at == sorted(at) and len(set(at)) == 3  # told in order, one line each
        reply = ex.turns[-1].content
        assert ex.answer in reply and first not in reply and middle not in reply
    assert (
        len(NoteDialogues(pools, "train", seed=8, kinds={"update": 1.0}).note_update().superseded)
        == 1
    )
    assert NoteDialogues(pools, "train", seed=8).kinds["chain"] == 0.0  # off by default


def test_alike_tells_one_kind_and_asks_one_of_them_or_an_untold_one(pools: ValuePools) -> None:
    """Every fact of an ``alike`` note has a value of one kind; the reply names the asked
    one's value only, or refuses about an attribute of that kind that was never told."""
    gen = NoteDialogues(pools, "train", seed=9, kinds={"alike": 1.0})
    refusals = 0
    for _ in range(80):
        ex = gen.note_example()
        lines = ex.turns[0].content.split("\n")[1:]
        kind = NOTE_ATTRIBUTES[_asked(ex)].value_kind
        told = [v for v in pools.train[kind] if any(v in line for line in lines)]
        assert ex.kind == "alike" and 2 <= len(told) <= 4
        reply = ex.turns[-1].content
        assert [v for v in told if v in reply] == ([ex.answer] if ex.answer else [])
        refusals += not ex.answer
    assert 8 < refusals < 35  # ALIKE_UNKNOWN_RATE of 80
    assert NoteDialogues(pools, "train", seed=9).kinds["alike"] == 0.0  # off by default


def test_same_kind_rate_sets_recalls_and_changes_among_facts_of_one_kind(
    pools: ValuePools,
) -> None:
    """At ``same_kind_rate`` 1 every recall, update and chain tells 2+ facts whose values
    share the asked attribute's kind, all distinct; the reply names the asked (latest)
    value and no other told one. At 0 (the default) facts of any kinds are drawn."""
    gen = NoteDialogues(
        pools, "train", seed=5, kinds={"recall": 1, "update": 1, "chain": 1}, same_kind_rate=1.0
    )
    drawn = set()
    for _ in range(45):
        ex = gen.note_example()
        drawn.add(ex.kind)
        lines = ex.turns[0].content.split("\n")[1:]
        kind = NOTE_ATTRIBUTES[ex_attr(ex)].value_kind
        told = [v for v in pools.train[kind] if any(_names(line, v) for line in lines)]
        assert len(told) >= 2 + len(ex.superseded), lines  # others of the kind beside the asked
        assert ex.answer in told and set(ex.superseded) < set(told)
        assert [v for v in told if _names(ex.turns[-1].content, v)] == [ex.answer]
    assert drawn == {"recall", "update", "chain"}
    plain = NoteDialogues(pools, "train", seed=5)  # rate 0: facts of any kinds
    kinds_told = [
        {NOTE_ATTRIBUTES[a].value_kind for a, _ in plain._facts_around(3, 4)} for _ in range(2)
    ]
    assert any(len(k) > 1 for k in kinds_told)
    with pytest.raises(ValueError, match="same_kind_rate"):
        NoteDialogues(pools, "train", same_kind_rate=1.5)


def test_wide_kinds_ask_about_many_more_things(pools: ValuePools) -> None:
    """At ``wide_rate`` 1 the examples tell and ask the built kinds too: far more distinct
    attributes than the 21 handwritten ones, each recall's value on one of its note's
    lines and the reply in the asked kind's words; at 0 none is drawn; a bad rate raises."""
    from retnet_core.training.note_dialogues import WIDE_NOTE_ATTRIBUTES
    from retnet_core.training.note_wide_kinds import WIDE_ATTRIBUTES

    mix = {"recall": 3.0, "update": 2.0, "chain": 1.0, "unknown": 0.5, "nothing": 0.5}
    wide = NoteDialogues(pools, "train", seed=6, kinds=mix, wide_rate=1.0)
    asked, built = set(), 0
    for _ in range(400):
        ex = wide.note_example()
        reply = ex.turns[-1].content
        if not ex.answer:  # a refusal names the asked attribute in its own words
            attr = next(a for a, at in WIDE_NOTE_ATTRIBUTES.items()
                        if reply == UNKNOWN.format(yours=at.yours))  # fmt: skip
        else:
            attr = next(a for a, at in WIDE_NOTE_ATTRIBUTES.items()
                        if reply == at.answer.format(v=ex.answer))  # fmt: skip
            assert any(_names(line, ex.answer) for line in ex.turns[0].content.split("\n")[1:])
        asked.add(attr)
        built += attr in WIDE_ATTRIBUTES
    assert len(asked) > 70 and built > 300, (len(asked), built)
    plain = NoteDialogues(pools, "train", seed=6, kinds=mix)
    texts = [m.content for _ in range(400) for m in plain.note_example().turns]
    assert not [t for t in texts if "godfather" in t or "library card" in t]
    with pytest.raises(ValueError, match="wide_rate"):
        NoteDialogues(pools, "train", wide_rate=-0.1)


def test_failed_questions_are_drawn_more_often(pools: ValuePools, tmp_path) -> None:
    """With ask rates, a question the student always failed is drawn about five times as
    often as its always-answered siblings (``1 + HARD_ASK_BOOST``); without them the
    stream is the earlier stages' own; a stage reads the rates from its JSON."""
    from retnet_core.training.distill_setup import Stage
    from retnet_core.training.note_dialogues import HARD_ASK_BOOST, note_asks

    mix = {"recall": 1.0}
    hard = "Any idea who I am?"
    asks = note_asks(NOTE_ATTRIBUTES["name"], "name")
    assert hard in asks and len(asks) == len(set(asks))
    rates = {"name": {a: (0.0 if a == hard else 1.0) for a in asks}}

    def share(gen: NoteDialogues) -> float:
        said = [ex.turns[1].content for ex in (gen.note_example() for _ in range(3000))]
        named = [q for q in said if _asked_name(q)]
        return sum(q.lower().endswith(hard.lower()) for q in named) / len(named)

    base = share(NoteDialogues(pools, "train", seed=9, kinds=mix))
    boosted = share(NoteDialogues(pools, "train", seed=9, kinds=mix, ask_rates=rates))
    assert boosted > 3 * base and base > 0, (base, boosted)
    assert HARD_ASK_BOOST == 4.0
    plain, again = (NoteDialogues(pools, "train", seed=3, ask_rates=r) for r in (None, None))
    assert [plain.note_example() for _ in range(200)] == [again.note_example() for _ in range(200)]
    default = NoteDialogues(pools, "train", seed=3)
    unrated = NoteDialogues(pools, "train", seed=3, ask_rates={})
    assert [default.note_example() for _ in range(200)] == [
        unrated.note_example() for _ in range(200)
    ]  # no rates: the earlier stages' stream
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(rates))
    assert Stage("s", "logits", 1, 1e-4, ["*"], note_ask_rates=str(path)).ask_rates() == rates
    assert Stage("s", "logits", 1, 1e-4, ["*"]).ask_rates() is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": 0.5}))
    with pytest.raises(ValueError, match="rate expected"):
        Stage("s", "logits", 1, 1e-4, ["*"], note_ask_rates=str(bad)).ask_rates()


def _asked_name(question: str) -> bool:
    """Whether ``question`` (after any opener) is one of the name attribute's asks."""
    from retnet_core.training.note_dialogues import note_asks

    low = question.lower()
    return any(low.endswith(a.lower()) for a in note_asks(NOTE_ATTRIBUTES["name"], "name"))


def _names(text: str, value: str) -> bool:
    """``value`` stands in ``text`` as whole words ("Tousa" is not in "Tousath")."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None


def _asked(ex) -> str:
    """The attribute a note example asks, from its reply (a value or a refusal)."""
    reply = ex.turns[-1].content
    for name, at in NOTE_ATTRIBUTES.items():
        if reply in (at.answer.format(v=ex.answer), UNKNOWN.format(yours=at.yours)):
            return name
    raise AssertionError(reply)


def ex_attr(ex) -> str:
    """The attribute a note example asks, from its reply ("Your dog is called Rex.")."""
    reply = ex.turns[-1].content
    return next(a for a, at in NOTE_ATTRIBUTES.items() if reply == at.answer.format(v=ex.answer))


def test_kind_weights_set_the_mix(pools: ValuePools) -> None:
    """``kinds`` weights the drawn kinds; a zero weight draws none; bad weights refused."""
    mixed = NoteDialogues(pools, "train", seed=4, kinds={"recall": 1, "update": 3})
    drawn = [mixed.note_example().kind for _ in range(400)]
    assert "unknown" not in drawn and 250 < drawn.count("update") < 350
    default = [NoteDialogues(pools, "train", seed=4).note_example().kind for _ in range(1)]
    assert default[0] in {"recall", "update", "unknown"}
    for bad in ({"recall": -1.0}, {"gossip": 1.0}, {}, {"recall": 0.0}):
        with pytest.raises(ValueError, match="kinds"):
            NoteDialogues(pools, "train", kinds=bad)


def test_nothing_kind_refuses_over_the_empty_note(pools: ValuePools) -> None:
    """``nothing`` draws only the empty note and a refusal; weighted above ``unknown`` it
    cuts the refusals taught over lines that are there; by default it draws none."""
    gen = NoteDialogues(pools, "train", seed=5, kinds={"nothing": 1, "unknown": 1})
    drawn = [gen.note_example() for _ in range(300)]
    nothing = [ex for ex in drawn if ex.kind == "nothing"]
    assert 110 < len(nothing) < 190
    for ex in nothing:
        note, _, reply = ex.turns
        assert note.content == nothing_note() and ex.answer == ""
        assert reply.content.startswith("I don't know")
    empty = nothing_note()
    over_lines = [ex for ex in drawn if ex.kind == "unknown" and ex.turns[0].content != empty]
    assert len(over_lines) > 60  # unknown still refuses over other facts
    default = NoteDialogues(pools, "train", seed=5)
    assert "nothing" not in {default.note_example().kind for _ in range(300)}


def test_framed_asks_reach_every_attribute(pools: ValuePools) -> None:
    """A fifth of the questions are :data:`ASK_FRAMES` around the attribute's own words,
    note-only attributes included."""
    from retnet_core.training.note_dialogues import NOTE_ATTRIBUTES
    from retnet_core.training.note_phrasings import ASK_FRAMES

    framed = {t for a in NOTE_ATTRIBUTES.values() for t in framed_asks(a)}
    assert len(framed) == len(ASK_FRAMES) * len(NOTE_ATTRIBUTES)
    assert "Tell me where I live, please." in framed
    gen = NoteDialogues(pools, "train", seed=3, kinds={"recall": 1})
    asked = [gen.note_example().turns[1].content for _ in range(400)]
    hits = [q for q in asked if any(q.endswith(_tail(f)) for f in framed)]
    assert 40 < len(hits) < 130


def _tail(question: str) -> str:
    """The question without its first letter's case (an opener lowers it)."""
    return question[1:]


def test_passage_questions_answer_from_the_passage(pools: ValuePools) -> None:
    """``passage_rate`` of the draws are passage questions fed as the service feeds them
    (passage, sometimes a note of other facts, the question); the reply is the
    passage's sentence naming a training value. At rate 0 none are drawn."""
    heldout = pools.all_heldout()
    gen = NoteDialogues(pools, "train", seed=7, passage_rate=0.5)
    drawn = [gen.note_example() for _ in range(200)]
    passages = [ex for ex in drawn if ex.kind == "passage"]
    assert 70 < len(passages) < 130
    with_note = 0
    for ex in passages:
        *prompt, question, reply = ex.turns
        assert prompt[0].role == "passage" and (question.role, reply.role) == ("user", "assistant")
        assert reply.content in prompt[0].content and ex.answer in reply.content
        assert ex.answer not in heldout
        if len(prompt) == 2:
            with_note += 1
            assert prompt[1].role == "system" and prompt[1].content.startswith(NOTE_HEADER)
            assert ex.answer not in prompt[1].content
    assert 10 < with_note < len(passages) - 10
    plain = NoteDialogues(pools, "train", seed=7)
    assert all(plain.note_example().kind != "passage" for _ in range(200))
    with pytest.raises(ValueError, match="passage_rate"):
        NoteDialogues(pools, "train", passage_rate=1.5)


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Distiller:
    torch.set_num_threads(1)
    base = tiny_llama_dir(tmp_path_factory.mktemp("base"))
    out = tmp_path_factory.mktemp("notes")
    stage = {
        "name": "notes",
        "loss": "logits",
        "steps": 12,
        "lr": 0.02,
        "warmup_steps": 1,
        "note_frac": 0.5,
        "answer_weight": 1.0,
        "train": ["*.lora_a", "*.lora_b", *TRANSFER],
    }
    return Distiller(_config(base, out, stages=[stage], seq_len=160, dialogue_frac=0.0))


def test_rows_mark_the_reply_exactly(runner: Distiller, pools: ValuePools) -> None:
    tok = runner.data.tok
    gen = NoteDialogues(pools, "train", seed=1)
    ex = gen.note_example()
    ids, answer = note_row(tok, ex)
    assert ids[0] == tok.pad_id
    target = tok.decode([ids[t + 1] for t in answer], False)
    assert target.startswith(ex.turns[2].content) and answer[-1] == len(ids) - 2
    prompt = tok.decode(ids[: answer[0] + 1], False)
    assert prompt.endswith(tok.decode(tok.generation_prompt(), False))

    packed, positions = packed_notes(tok, NoteDialogues(pools, "train", seed=1), 600)
    assert len(packed) <= 600 and packed.count(tok.pad_id) >= 2  # several examples
    assert packed[: len(ids)] == ids and positions[: len(answer)] == answer
    for t in positions:  # every marked position predicts a reply token
        assert packed[t + 1] != tok.pad_id

    passage = NoteDialogues(pools, "train", seed=2, passage_rate=1.0).note_example()
    ids, answer = note_row(tok, passage)
    target = tok.decode([ids[t + 1] for t in answer], False)
    assert target.startswith(passage.turns[-1].content)
    assert tok.decode(ids[: answer[0]], False).count(passage.turns[0].content) == 1

    batch = _pad_rows([packed, [tok.pad_id] * 5], 40, tok.pad_id, [positions])
    cut = len(packed) - 40
    assert batch.tokens[0].tolist() == packed[cut:]
    assert batch.answer[0].nonzero().flatten().tolist() == [t - cut for t in positions if t >= cut]
    assert not batch.answer[1].any()


def test_replies_leave_the_kl_for_the_truth(runner: Distiller) -> None:
    gen = torch.Generator().manual_seed(0)
    batch = runner.data.batch(2, 160, gen, note_frac=0.5)
    assert batch.answer is not None and batch.answer[0].any() and not batch.answer[1].any()
    student, teacher = runner.student, runner.teacher
    with torch.no_grad():
        plain, parts = logits_loss(student, teacher, batch.tokens, batch.lengths)
        mixed, mparts = logits_loss(
            student, teacher, batch.tokens, batch.lengths, answer=batch.answer, answer_weight=2.0
        )
        s_logits = student(batch.tokens, lengths=batch.lengths)
        t_logits = teacher(batch.tokens, lengths=batch.lengths)
    # by hand: KL over the real positions that are not replies, + 2 × the replies' CE
    mask = _valid(batch.lengths, batch.tokens.shape[1]) * (~batch.answer).float()
    log_pt, log_ps = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
    kl = ((log_pt.exp() * (log_pt - log_ps)).sum(-1) * mask).sum() / mask.sum()
    pos = batch.answer[:, :-1]
    ce = -log_ps[:, :-1][pos].gather(-1, batch.tokens[:, 1:][pos][:, None]).mean()
    assert mparts["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert mparts["answer_ce"] == pytest.approx(float(ce), rel=1e-4)
    assert float(mixed) == pytest.approx(float(kl + 2.0 * ce), rel=1e-4)
    assert "answer_ce" not in parts and float(plain) != pytest.approx(float(mixed))
    assert float(answer_ce(s_logits, batch.tokens, batch.answer)) == pytest.approx(float(ce))


def test_a_notes_stage_lowers_the_replies_loss(runner: Distiller) -> None:
    """On one fixed batch (a clean signal), twelve steps of the stage lower the CE."""
    gen = torch.Generator().manual_seed(1)
    batch = runner.data.batch(2, 160, gen, note_frac=0.5)
    runner.data.batch = lambda *a, **k: batch
    runner.run()
    log = [
        json.loads(x) for x in (Path(runner.cfg.out_dir) / "log.jsonl").read_text().split("\n") if x
    ]
    ce = [r["answer_ce"] for r in log if "answer_ce" in r]
    assert len(ce) == 12 and ce[-1] < 0.5 * ce[0], ce


def test_note_phrasings_keep_the_memory_bench_held_out(pools: ValuePools) -> None:
    """The wider note phrasings and the built kinds share no sentence with ``memsvc bench
    memory`` and name none of its "other" kinds, so its held-out measures stay held out."""
    from memsvc.bench.memory_data import KINDS, OTHER
    from retnet_core.training.note_dialogues import NOTE_ATTRIBUTES
    from retnet_core.training.note_phrasings import EXTRA_ASKS, EXTRA_STATES

    assert not set(NOTE_ATTRIBUTES) & set(OTHER)
    ours = [t for a in NOTE_ATTRIBUTES.values() for t in (*a.states, *a.asks)]
    extra = (*EXTRA_STATES.values(), *EXTRA_ASKS.values(), *UPDATE_STATES.values())
    ours += [t for ts in extra for t in ts]
    ours += [t for a in NOTE_ATTRIBUTES.values() for t in framed_asks(a)]
    from retnet_core.training.note_wide_kinds import WIDE_ATTRIBUTES

    built = WIDE_ATTRIBUTES.values()
    ours += [t for a in built for t in (*a.states, *a.asks, a.answer, *framed_asks(a))]
    bench = {t for k in KINDS.values() for t in (*k.tells, *k.asks, *k.updates)}
    assert not set(ours) & bench
    held_words = r"\b(colou?r|food|dish|instrument|cat|partner|married|road|car|bike)\b"
    assert not [t for t in ours if re.search(held_words, t, re.I)]
    gen = NoteDialogues(pools, "train", seed=11)
    lines = [ln for _ in range(300) for ln in gen.note_example().turns[0].content.split("\n")]
    assert any(ln.startswith("- Oh, ") for ln in lines)  # chatter around statements
    assert len({ln for ln in lines}) > 250


def test_ask_and_tell_words_a_pair_as_note_examples_do() -> None:
    """The query adapter's pairs: a question from the attribute's asks and a statement
    naming a fresh training value; the same seed gives the same pairs."""
    from retnet_core.training.note_dialogues import NOTE_ATTRIBUTES, NoteDialogues, note_asks

    pools = ValuePools.build(per_kind=200)
    first, again = (NoteDialogues(pools, "train", seed=3) for _ in range(2))
    pairs = [first.ask_and_tell("dog") for _ in range(20)]
    assert pairs == [again.ask_and_tell("dog") for _ in range(20)]
    asks = {a.lower() for a in note_asks(NOTE_ATTRIBUTES["dog"], "dog")}
    values = set(pools.train[NOTE_ATTRIBUTES["dog"].value_kind])
    for question, statement in pairs:
        assert any(question.lower().endswith(a) for a in asks), question
        assert any(v in statement for v in values), statement
    assert len({s for _, s in pairs}) > 10  # fresh values, varied wordings
