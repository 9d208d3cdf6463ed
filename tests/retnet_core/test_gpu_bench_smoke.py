"""scripts/gpu_bench.sh --smoke on CPU: the GPU benchmark's code path, its report and wrapper.

The real run needs a CUDA machine; this walks the same script end to end at a tiny shape
(no fla: retention falls back to the pure-torch reference; the step is forced onto the
generic per-module path the GPU uses), through the same wrapper the device tool runs.
The smoke plan's memory cap makes the full-head Llama's largest cache "run out of memory",
so the OOM path is walked too; a second run without transformers must still report ours.
Not a timing test: only structure and arithmetic. transformers is a test dependency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

from gpu_bench_table import summarize  # noqa: E402
from gpu_bench_triton import pick_configs  # noqa: E402

ROW_KEYS = {"kind", "model", "L", "B", "status"}
OK_KEYS = {"ms", "tokens_s"}


def _wrapper(args: list[str], out: Path, cache: Path, **env: str):
    run_env = {**os.environ, "PY": sys.executable, "OUT": str(out), "TRITON_CACHE_DIR": str(cache)}
    run_env.update(env)
    cmd = ["bash", str(SCRIPTS / "gpu_bench.sh"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run through the wrapper; a stand-in Triton cache file to be saved."""
    base = tmp_path_factory.mktemp("gpu_bench")
    cache = base / "triton"
    cache.mkdir()
    (cache / "stand_in.json").write_text("{}")
    # a generous budget: a loaded CI machine must not turn rows into "skipped"
    proc = _wrapper(["--smoke", "--budget-s", "500"], base / "out", cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((base / "out" / "gpu.json").read_text())
    return SimpleNamespace(out=base / "out", report=report, proc=proc)


def _rows(report, **match):
    return [r for r in report["rows"] if all(r.get(k) == v for k, v in match.items())]


def test_wrapper_leaves_report_log_and_triton_cache(smoke):
    for name in ("gpu.json", "gpu.md", "log.txt", "triton_cache.tgz"):
        assert (smoke.out / name).is_file(), name
    with tarfile.open(smoke.out / "triton_cache.tgz") as tar:
        assert "./stand_in.json" in tar.getnames()
    assert "gpu_bench.py exit status 0" in smoke.proc.stdout


def test_wrapper_restores_the_cache_on_a_fresh_machine(smoke, tmp_path):
    fresh = tmp_path / "fresh_cache"
    fresh.mkdir()
    tgz = str(smoke.out / "triton_cache.tgz")
    proc = _wrapper(["--smoke", "--help"], tmp_path / "out", fresh, GPU_BENCH_CACHE_TGZ=tgz)
    assert proc.returncode == 0, proc.stderr
    assert (fresh / "stand_in.json").is_file()
    assert f"restored: yes (from {tgz})" in proc.stdout


def test_headline_keys_and_values(smoke):
    r = smoke.report
    assert r["complete"] is True
    assert r["plan"]["headline_length"] == 64 and r["plan"]["memory_batch"] == 2
    assert r["prefill_kernel_ratio_8k"] is None  # no fla on CPU: no fla kernel rows
    assert set(r["targets_met"]) == {
        "throughput_ratio_8k",
        "memory_saving_b32",
        "prefill_kernel_ratio_8k",
    }
    assert r["throughput_ratio_8k"] > 0
    assert r["memory_saving_b32"] < 1


def test_rows_cover_the_plan_with_their_fields(smoke):
    r, plan = smoke.report, smoke.report["plan"]
    for row in r["rows"]:
        assert row.keys() >= ROW_KEYS, row
        assert row["status"] in ("ok", "oom", "error"), row
        if row["status"] == "ok":
            assert row.keys() >= OK_KEYS and row["ms"] > 0 and row["tokens_s"] > 0, row
            if row["kind"] != "kernel":
                assert row["peak_bytes"] > 0 and row["memory_kind"] == "tensor bytes", row
    assert not _rows(r, status="error"), _rows(r, status="error")
    for length in plan["lengths"]:
        assert [x["status"] for x in _rows(r, kind="prefill", model="ours", L=length)] == ["ok"]
        assert len(_rows(r, kind="kernel", model="ours", L=length, status="ok")) == 1
        got = sorted(x["B"] for x in _rows(r, kind="decode", model="ours", L=length, status="ok"))
        extra = plan["extra_batches"] if length == plan["headline_length"] else []
        assert got == plan["batches"] + extra
    assert len(_rows(r, kind="decode", model="llama-gqa", status="ok")) == 6
    dynamic = _rows(r, kind="decode", model="llama-full", variant="sdpa, dynamic cache")
    assert sorted((x["L"], x["B"]) for x in dynamic) == [
        (16, 1), (16, 2), (16, 4), (64, 1), (64, 2), (64, 4), (64, 6)
    ]  # fmt: skip
    assert len(_rows(r, kind="prefill", model="llama-full", status="ok")) == 2


def test_oom_is_a_row_and_the_run_goes_on(smoke):
    r = smoke.report
    oom = _rows(r, model="llama-full", L=64, B=4)
    assert {x["variant"] for x in oom} == {"sdpa, dynamic cache", "sdpa, static cache"}
    assert all(x["status"] == "oom" and x["simulated"] for x in oom), oom
    ok = _rows(r, model="llama-full", L=64, B=2, status="ok")
    assert len(ok) == 2  # the batch below the cap fits, in both caches
    (beyond,) = _rows(r, model="llama-full", L=64, B=6)  # an extra batch, after the OOM
    assert beyond["status"] == "oom" and beyond["error"].startswith("not tried: B=4")
    after = r["rows"].index(oom[0]) + 1
    assert any(x["status"] == "ok" for x in r["rows"][after:])  # the run went on


def test_headline_ratios_come_from_the_rows(smoke):
    r = smoke.report
    ours = max(x["tokens_s"] for x in _rows(r, kind="decode", model="ours", L=64, status="ok"))
    llama = max(
        x["tokens_s"] for x in _rows(r, kind="decode", model="llama-full", L=64, status="ok")
    )
    assert r["throughput_ratio_8k"] == pytest.approx(ours / llama)
    grid = r["plan"]["batches"]
    ours_grid = max(
        x["tokens_s"]
        for x in _rows(r, kind="decode", model="ours", L=64, status="ok")
        if x["B"] in grid
    )
    assert r["throughput_ratio_8k_grid"] == pytest.approx(ours_grid / llama)  # Llama: B ≤ 2
    mine = _rows(r, kind="decode", model="ours", L=64, B=2)[0]["peak_bytes"]
    theirs = _rows(r, kind="decode", model="llama-full", L=64, B=2, variant="sdpa, dynamic cache")
    assert r["memory_saving_b32"] == pytest.approx(1 - mine / theirs[0]["peak_bytes"])


def test_markdown_table(smoke):
    md = (smoke.out / "gpu.md").read_text()
    for part in ("## Headline", "## Decode", "## Prefill", "## Chunkwise retention alone"):
        assert part in md
    assert "| ours | torch step | 64 | 2 |" in md
    assert "simulated OOM" in md


def test_without_transformers_ours_is_still_reported(tmp_path):
    """transformers missing (a stand-in package that fails to import): no Llama rows, a
    skip that says why, no ratios, every row of ours."""
    shim = tmp_path / "shim" / "transformers"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), str(ROOT)])}
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPTS / "gpu_bench.py"), "--smoke", "--budget-s", "500"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "gpu.json").read_text())
    assert not [x for x in r["rows"] if x["model"].startswith("llama")]
    assert any(s.startswith("llama-full: cannot build") for s in r["skipped"]), r["skipped"]
    assert r["throughput_ratio_8k"] is None and r["memory_saving_b32"] is None
    assert len(_rows(r, kind="decode", model="ours", status="ok")) == 7  # 2 lengths × 3 + 1 extra


def test_report_script_copies_into_docs(smoke, tmp_path):
    from gpu_bench_report import main as report_main

    docs, cache = tmp_path / "docs", tmp_path / "cache"
    assert report_main([str(smoke.out), "--docs", str(docs), "--cache", str(cache)]) == 0
    assert (docs / "gpu.json").read_text() == (smoke.out / "gpu.json").read_text()
    assert (docs / "gpu.md").read_text() == (smoke.out / "gpu.md").read_text()
    assert (docs / "gpu_log.txt").is_file() and (cache / "triton_cache.tgz").is_file()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gpu.json").write_text(json.dumps({"rows": []}))
    assert report_main([str(broken), "--docs", str(docs), "--cache", str(cache)]) == 1


# ---- pure parts ---------------------------------------------------------------------------


def _row(kind, model, length, b, tokens_s=None, peak=None, status="ok", variant="v"):
    return {"kind": kind, "model": model, "variant": variant, "L": length, "B": b,
            "status": status, "ms": 1.0, "tokens_s": tokens_s, "peak_bytes": peak,
            "memory_kind": "cuda peak"}  # fmt: skip


def test_summarize_takes_the_best_fitting_rows_at_the_headline_length():
    dyn, static = "sdpa, dynamic cache", "sdpa, static cache"
    rows = [
        _row("decode", "ours", 8, 1, 200, peak=10),
        _row("decode", "ours", 8, 2, 500, peak=12),
        _row("decode", "ours", 8, 4, 9999, status="error"),  # failed rows never count
        _row("decode", "ours", 8, 16, 600),  # beyond the grid
        _row("decode", "ours", 4, 2, 8888),  # another length
        _row("decode", "llama-full", 8, 1, 100, peak=40, variant=dyn),
        _row("decode", "llama-full", 8, 2, None, status="oom", variant=dyn),
        _row("decode", "llama-full", 8, 1, 150, peak=35, variant=static),
        _row("decode", "llama-gqa", 8, 1, 7777, variant=dyn),  # for the record only
        _row("kernel", "fla-bf16", 8, 1, 1000),
        _row("kernel", "ours", 8, 1, 800),
    ]
    s = summarize(rows, length=8, memory_batch=1, grid=[1, 2, 4])
    assert s["throughput_ratio_8k"] == pytest.approx(600 / 150)
    assert s["throughput_ratio_8k_grid"] == pytest.approx(500 / 150)
    assert s["throughput_ratio_8k_dynamic"] == pytest.approx(600 / 100)
    assert s["throughput_ratio_8k_same_batch"] == pytest.approx(200 / 150)  # Llama peaks at B=1
    assert s["memory_saving_b32"] == pytest.approx(1 - 10 / 40)  # the dynamic cache's row
    assert s["prefill_kernel_ratio_8k"] == pytest.approx(1.25)
    assert s["prefill_ratio_8k"] is None
    assert s["targets_met"] == {
        "throughput_ratio_8k": False,
        "memory_saving_b32": True,
        "prefill_kernel_ratio_8k": True,
    }
    assert s["from"]["llama_best"]["variant"] == static and s["from"]["ours_best"]["B"] == 16
    assert summarize(rows, length=8, memory_batch=2)["memory_saving_b32"] is None  # Llama OOM


def test_pick_configs_keeps_a_smaller_tile_beside_the_best():
    def cfg(bk, bv, warps, stages):
        return SimpleNamespace(kwargs={"BK": bk, "BV": bv}, num_warps=warps, num_stages=stages)

    configs = [
        cfg(bk, bv, w, s)
        for bk in (32, 64)
        for bv in (32, 64)
        for w in (1, 2, 4, 8)
        for s in (2, 3, 4)
    ]
    best, other = pick_configs(configs, 2)
    assert (best.kwargs, best.num_warps, best.num_stages) == ({"BK": 64, "BV": 64}, 4, 2)
    assert other.kwargs != best.kwargs and other.num_warps == 4
    assert pick_configs(configs, 1) == [best]
    warps_only = [SimpleNamespace(kwargs={}, num_warps=w, num_stages=3) for w in (8, 4)]
    assert [c.num_warps for c in pick_configs(warps_only, 1)] == [4]
    assert [c.num_warps for c in pick_configs(warps_only, 2)] == [4, 8]


def test_warm_up_workers_past_the_deadline_are_killed():
    from gpu_bench_triton import wait_warm_workers

    start = time.time()
    workers = [
        ("slow", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]), start),
        ("fast", subprocess.Popen([sys.executable, "-c", "pass"]), start),
    ]
    done = wait_warm_workers(workers, deadline=start + 3)
    assert done["slow"]["rc"] == "killed at the warm-up deadline"
    assert done["fast"]["rc"] == 0
    assert time.time() - start < 30
