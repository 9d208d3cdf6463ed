"""The service benchmarks run end to end at a toy size and write what they promise.

Each bench starts its own live server(s) with the tiny test checkpoint; the resume bench
uses the real PostgreSQL and Redis of the other service tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from service_testkit import PG_ADMIN, REDIS_URL

from memsvc.bench import resume, service

FAST = {"MEMSVC_RAG_ENABLED": "false"}


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_service_bench_toy(checkpoint: Path, tmp_path: Path) -> None:
    report = service.run(
        tmp_path, levels=(1, 2), max_tokens=4, min_samples=2, max_rounds=2,
        model_dir=checkpoint, extra_env=FAST,
    )  # fmt: skip
    saved = json.loads((tmp_path / "service.json").read_text())
    assert saved["levels"] == json.loads(json.dumps(report["levels"]))
    assert [lv["n"] for lv in saved["levels"]] == [1, 2]
    for lv in saved["levels"]:
        assert lv["turns"] == lv["n"] * lv["rounds"] == len(lv["samples"])
        assert lv["turns"] >= 2
        for key in ("ttft_p50_ms", "ttft_p99_ms", "tokens_per_s", "per_token_p50_ms"):
            assert _finite(lv[key]) and lv[key] > 0, (key, lv[key])
        assert lv["ttft_p50_ms"] <= lv["ttft_p99_ms"] <= lv["ttft_max_ms"]
        assert all(s["completion_tokens"] <= 4 for s in lv["samples"])
        # the first round starts from an empty state, later rounds resume the session
        assert {s["state_source"] for s in lv["samples"] if s["round"] == 0} == {"new"}
    assert saved["target"] == {"n": 50, "measured": False}
    assert saved["machine_before"]["cpus"] >= 1
    assert len(saved["machine_before"]["loadavg_1_5_15"]) == 3
    md = (tmp_path / "service.md").read_text()
    assert "| N | turns |" in md
    assert (tmp_path / "service.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("lengths", [(64,)])
def test_resume_bench_toy(checkpoint: Path, tmp_path: Path, lengths: tuple[int, ...]) -> None:
    service_dir = tmp_path / "out"
    resume.run(
        service_dir, lengths=lengths, reps=2, replays=1, model_dir=checkpoint,
        pg_admin_url=PG_ADMIN, redis_url=REDIS_URL, extra_env=FAST,
    )  # fmt: skip
    saved = json.loads((service_dir / "resume.json").read_text())
    (row,) = saved["rows"]
    assert row["history_tokens"] == 64
    # the resumed turns really were served from the saved history (not replayed)
    assert row["cached_tokens"] >= 64
    assert row["replay_prompt_tokens"] >= 60
    assert len(row["samples"]["redis"]) == len(row["samples"]["sql"]) == 2
    for key in ("ttft_replay_ms", "ttft_redis_ms", "ttft_postgres_ms", "speedup_redis"):
        assert _finite(row[key]) and row[key] > 0, (key, row[key])
    assert row["component_state_bytes"] > 0 and _finite(row["component_state_load_ms"])
    assert saved["target"]["measured"] is False
    assert "| history tokens |" in (service_dir / "resume.md").read_text()
    assert (service_dir / "resume.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_table_states_targets_and_the_shipped_column(tmp_path: Path) -> None:
    from memsvc.bench import quality

    def score(bpc: float) -> dict:
        return {
            "params": 6.3e6, "tokens": 1000, "ppl": 2**bpc, "bits_per_char": bpc,
            "in_context": 0.1, "passage": 0.2, "recall_no_memory": 0.0,
        }  # fmt: skip

    meta = {"command": "memsvc bench quality ..."}
    two = quality._markdown({"retnet": score(1.5), "transformer": score(1.45)}, meta)
    assert "| bits / character | 1.5000 | 1.4500 |" in two and "shipped" not in two
    assert "**missed** (1.5000, gap +0.1000)" in two  # the 1.40 target
    assert "met (RetNet/Transformer − 1 = +3.45%)" in two  # within 5%
    res = {"retnet": score(1.3), "transformer": score(1.45), "shipped": score(1.35)}
    three = quality._markdown(res, meta)
    assert "| bits / character | 1.3000 | 1.4500 | 1.3500 |" in three
    assert "RetNet ≤ 1.40 bits/char: met (1.3000)" in three

    log = tmp_path / "a" / "log.jsonl"
    log.parent.mkdir()
    log.write_text('{"step": 10, "loss": 3.0}\n{"step": 20, "loss": 2.5, "eval": {"loss": 2.6}}\n')
    quality._curves({"RetNet": log, "RetNet stage 2": log}, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_precision_bench_toy(tmp_path: Path) -> None:
    from memsvc.bench import precision

    precision.cli(out=tmp_path, shapes=["shipped"], prompt=8, steps=2, repeats=1, threads=None)
    rows = json.loads((tmp_path / "precision.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16", "int8"]
    fp32, bf16, int8 = rows
    assert fp32["logit_rel_error"] == 0.0 and 0 < bf16["logit_rel_error"] < 0.05
    assert int8["weight_mb"] < bf16["weight_mb"] < fp32["weight_mb"]
    assert all(_finite(r["decode_ms_per_token"]) and r["decode_ms_per_token"] > 0 for r in rows)
    table = (tmp_path / "precision.md").read_text()
    assert "memsvc bench precision --out" in table and table.count("| shipped |") == 3
