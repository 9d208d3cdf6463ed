"""`memsvc bench longmemeval`: the format parse, the synthetic set, and a run end to end.

The end-to-end run starts its own live server on the tiny test checkpoint (random
weights: accuracy is not the point), imports a few synthetic histories through the
transcript route and asks each question with memory on and off.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memsvc.bench import longmemeval as lme
from memsvc.bench.longmemeval_data import (
    DataError,
    load_instances,
    parse_date,
    select_sessions,
    transcript_pairs,
)
from memsvc.bench.longmemeval_synth import generate
from memsvc.cli.main import app


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lme") / "synth.json"
    path.write_text(json.dumps(generate(8, seed=3)))
    return path


def test_synthetic_set_is_valid_deterministic_and_grows(synthetic: Path) -> None:
    raw = json.loads(synthetic.read_text())
    assert raw == json.loads(json.dumps(generate(8, seed=3)))  # same seed, same file
    assert raw != json.loads(json.dumps(generate(8, seed=4)))
    insts = load_instances(synthetic)
    assert [i.question_type for i in insts[:4]] == [
        "single-session-user", "knowledge-update", "multi-session", "single-session-user",
    ]  # fmt: skip
    assert [i.abstention for i in insts] == [False, False, False, True] * 2
    lengths = [len(i.sessions) for i in insts]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0] + 5  # filler grows
    for inst in insts:
        oracle = select_sessions(inst, "oracle")
        assert [s.id for s in oracle] == list(inst.answer_session_ids)
        assert len(select_sessions(inst, "full")) == len(inst.sessions)
        dates = [s.date for s in inst.sessions]
        assert dates == sorted(dates) and inst.question_date > dates[-1]
        said = [" ".join(c for r, c in s.turns if r == "user") for s in oracle]
        # the answer is stated in exactly one evidence session (never, when abstaining)
        assert sum(inst.answer in t for t in said) == (0 if inst.abstention else 1)
    update = insts[1]
    old, new = select_sessions(update, "oracle")
    assert update.answer in " ".join(c for _, c in new.turns)
    assert update.answer not in " ".join(c for _, c in old.turns)


def _instance(**change: object) -> Callable[[], str]:
    """A file of one synthetic instance with ``change`` applied (made when the test runs)."""
    return lambda: json.dumps([{**generate(1, seed=0)[0], **change}])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('{"a": 1}', "JSON list"),
        ("[]", "no instances"),
        (_instance(question=None), "field 'question' must be a str"),
        (json.dumps([{"question_id": "q1"}]), "instance 0 (q1): missing field"),
        (_instance(haystack_dates=[]), "differ in length"),
        (_instance(question_date="May 20"), "question_date"),
        (_instance(answer=None), "'answer' must be a string or a number"),
        (lambda: json.dumps(generate(1) * 2), "occurs twice"),
        (
            _instance(haystack_sessions=[[{"role": "bot", "content": "x"}]]),
            "session 0, turn 0: needs role",
        ),
    ],
)
def test_malformed_files_are_clear_errors(
    tmp_path: Path, content: str | Callable[[], str], message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content() if callable(content) else content)
    with pytest.raises(DataError, match=re.escape(message)):
        load_instances(path)
    # the CLI says so and exits 2 before starting anything
    res = CliRunner().invoke(app, ["bench", "longmemeval", "--data", str(path), "--out", "x"])
    assert res.exit_code == 2 and message.split("'")[0] in res.output, res.output


def test_cli_generate_writes_a_valid_set(tmp_path: Path) -> None:
    path = tmp_path / "gen" / "synth.json"
    args = ["bench", "longmemeval", "--generate", "5", "--seed", "2", "--out-data", str(path)]
    res = CliRunner().invoke(app, [*args, "--max-filler", "3"])
    assert res.exit_code == 0, res.output
    insts = load_instances(path)
    assert len(insts) == 5 and json.loads(path.read_text()) == generate(5, seed=2, max_filler=3)
    assert max(len(i.sessions) - len(i.answer_session_ids) for i in insts) == 3
    res = CliRunner().invoke(app, ["bench", "longmemeval", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--data" in res.output


def test_parse_helpers() -> None:
    assert parse_date("2023/05/20 (Sat) 02:21").isoformat() == "2023-05-20T02:21:00+00:00"
    turns = (("assistant", "hi"), ("user", "a"), ("user", "b"), ("assistant", ""), ("user", "c"))
    pairs, changed = transcript_pairs(turns)
    # leading reply dropped, empty turn dropped, one role's turns joined, a reply added
    assert pairs == [("user", "a\nb\nc"), ("assistant", "Okay.")] and changed == 5
    assert transcript_pairs((("user", "x" * 20_000), ("assistant", "y")))[0][0][1] == "x" * 16_000
    assert lme.score("Ziggy Stardust", "Your dog is called ziggy stardust!", False)["contains"]
    assert not lme.score("Ziggy", "Your dog is called Ziggyx.", False)["contains"]
    assert lme.score("Ziggy", "ziggy", False)["exact"]
    assert lme.score("You did not mention it.", "I don't know your name.", True)["exact"]
    assert not lme.score("You did not mention it.", "Your name is Bo.", True)["contains"]


def judge_always(question: str, answer: str, reply: str) -> bool:
    """A judge hook for the test: every reply is right."""
    return True


def test_bench_end_to_end_on_tiny_model(checkpoint: Path, synthetic: Path, tmp_path: Path) -> None:
    summary = lme.run(
        synthetic, tmp_path, variant="full", limit=5, model_dir=checkpoint, max_tokens=4,
        judge="test_bench_longmemeval:judge_always", extra_env={"MEMSVC_RAG_ENABLED": "false"},
    )  # fmt: skip
    saved = json.loads((tmp_path / "longmemeval.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(summary))
    rows = saved["rows"]
    insts = load_instances(synthetic)[:5]
    assert [r["question_id"] for r in rows] == [i.question_id for i in insts]
    types = Counter(i.question_type for i in insts if not i.abstention)
    assert {t: g["n"] for t, g in summary["by_type"].items()} == dict(types)
    assert summary["abstention"]["n"] == 1
    assert sum(g["n"] for g in summary["by_history"].values()) == 5
    n_types = sum(g["n"] for g in summary["by_type"].values())
    assert n_types + summary["abstention"]["n"] == summary["questions"] == 5
    tokens = summary["tokens"]
    assert tokens["sessions_imported"] == sum(len(i.sessions) for i in insts)
    assert tokens["fed_import"] == sum(r["fed_import"] for r in rows) > 0
    assert tokens["turns_imported"] == sum(
        len(transcript_pairs(s.turns)[0]) for i in insts for s in i.sessions
    )
    for r in rows:
        for cond in ("memory_on", "memory_off"):
            got = r[cond]
            assert got["prompt_tokens"] > 0 and got["completion_tokens"] <= 4
            assert got["cached_tokens"] == 0 and got["state_source"] == "new"
            assert got["latency_s"] > 0 and got["judge"] is True and got["correct"] is True
    assert summary["overall"]["memory_on_correct"] == 1.0  # the judge decides
    for cond in ("memory_on", "memory_off"):
        lat = summary["latency"][cond]
        assert 0 < lat["p50_ms"] <= lat["p95_ms"]
    md = (tmp_path / "longmemeval.md").read_text()
    assert md.startswith("# LongMemEval") and "Command: `memsvc bench longmemeval" in md
    assert "| knowledge-update | 1 |" in md and "| **all** | 5 |" in md
