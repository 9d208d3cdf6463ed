"""A tiny training run end to end: loss falls, checkpoints load, resume continues."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from retnet_core.checkpoint import load_pretrained
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer
from retnet_core.training.baseline import TransformerConfig, TransformerLM, match_ffn, param_count
from retnet_core.training.evaluation import evaluate_checkpoint, plot_log
from retnet_core.training.train import TrainConfig, cli, load_config, lr_at, train
from retnet_core.training.train_setup import retnet_config

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[TrainConfig, Path, dict]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny")
    cfg = replace(load_config(TINY), out_dir=str(out))
    return cfg, out, train(cfg)


def test_loss_falls(tiny_run) -> None:
    _, out, result = tiny_run
    steps = [r for r in _log(out) if "loss" in r and "eval" not in r]
    first, last = steps[0]["loss"], steps[-1]["loss"]
    assert math.log(320) - 0.5 < first  # starts near uniform over the vocabulary
    assert last < first - 1.0
    evals = [r["eval"] for r in _log(out) if "eval" in r]
    assert len(evals) == 2 and evals[-1]["loss"] < first
    assert set(result["eval"]) >= {"ppl", "bits_per_char", "in_context", "recall_no_memory"}
    assert result["step"] == 30


def test_checkpoint_loads_and_matches(tiny_run) -> None:
    _, out, result = tiny_run
    ckpt = out / "checkpoint"
    model = load_pretrained(ckpt)
    tok = ChatTokenizer.load(ckpt)
    assert tok.vocab_size == model.config.vocab_size
    ids = torch.tensor([tok.render_ids([{"role": "user", "content": "hello there"}])])
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], tok.vocab_size)
    assert torch.isfinite(logits).all()
    # the saved weights are the trained ones, not a fresh init
    fresh = RetNetLM(model.config)
    assert not torch.allclose(fresh(ids), logits)
    assert (out / "best" / "model.safetensors").exists()
    saved = json.loads((ckpt / "train_config.json").read_text())
    assert saved["seq_len"] == 32


def test_resume_continues(tiny_run) -> None:
    cfg, out, _ = tiny_run
    before = torch.load(out / "trainer_state.pt", weights_only=False)
    assert before["step"] == 30
    # a second call with a later max_steps picks up the optimiser and step count
    result = train(replace(cfg, max_steps=34, eval_interval=0))
    assert result["step"] == 34
    log = _log(out)
    steps = [r["step"] for r in log if "loss" in r and "eval" not in r]
    assert steps[-1] == 34 and 31 not in steps[:-3] and steps.count(1) == 1


def test_transformer_baseline_trains(tmp_path) -> None:
    cfg = replace(
        load_config(TINY),
        out_dir=str(tmp_path),
        arch="transformer",
        max_steps=12,
        eval_interval=0,
        memory_frac=0.0,
    )
    result = train(cfg)
    steps = [r for r in _log(tmp_path) if "loss" in r and "eval" not in r]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5
    model = TransformerLM.from_pretrained(tmp_path / "checkpoint")
    assert math.isfinite(result["eval"]["bits_per_char"])
    # same parameter count as the RetNet the same config builds (within one MLP column)
    target = RetNetLM(retnet_config(cfg, 320)).num_parameters()
    slack = 2 * model.config.d_model * model.config.n_layers * 8
    assert abs(model.num_params() - target) <= slack


def test_match_ffn_and_param_count() -> None:
    cfg = TransformerConfig(vocab_size=4096, d_model=256, n_layers=6, n_heads=4)
    assert param_count(cfg) == TransformerLM(cfg).num_params()
    width = match_ffn(cfg, 6_180_000)
    got = param_count(replace(cfg, ffn_dim=width))
    assert abs(got - 6_180_000) <= 2 * 256 * 6 * 8


def test_lr_schedule() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 120))


def test_config_yaml_and_toml(tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('arch = "transformer"\nseq_len = 64\n[model]\nd_model = 64\n')
    cfg = load_config(toml)
    assert (cfg.arch, cfg.seq_len, cfg.model) == ("transformer", 64, {"d_model": 64})
    assert load_config(TINY).model["d_model"] == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("sequence_length: 64\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(bad)
    with pytest.raises(ValueError):
        TrainConfig(precision="fp16")


def test_cli_overrides_and_fresh_start(tmp_path, capsys) -> None:
    for _ in range(2):  # the second, non-resuming run starts over in the same directory
        cli(TINY, out_dir=tmp_path, max_steps=3, resume=False)
        printed = json.loads(capsys.readouterr().out)
        assert printed["step"] == 3
    assert (tmp_path / "checkpoint" / "tokenizer.json").exists()
    assert [r["step"] for r in _log(tmp_path) if "eval" not in r] == [1, 3]


def test_evaluate_checkpoint(tiny_run) -> None:
    _, out, _ = tiny_run
    scores = evaluate_checkpoint(
        out / "checkpoint", split="test", seq_len=32, max_windows=4, examples=4
    )
    assert scores["tokens"] == 4 * 32
    assert 0 < scores["bits_per_char"] < 10 and scores["ppl"] > 1
    assert {"in_context", "passage", "recall_no_memory"} <= set(scores)
    assert scores["params"] == load_pretrained(out / "checkpoint").num_parameters()


def test_bf16_chunkwise_run(tmp_path) -> None:
    cfg = replace(
        load_config(TINY),
        out_dir=str(tmp_path),
        precision="bf16",
        max_steps=4,
        eval_interval=0,
        eval_windows=2,
        eval_examples=2,
    )
    assert cfg.seq_len > cfg.chunk_size  # the chunkwise (prefill) path is the one trained
    result = train(cfg)
    assert math.isfinite(result["eval"]["loss"])
    assert all(math.isfinite(r["loss"]) for r in _log(tmp_path) if "loss" in r)


def test_plot_log(tiny_run, tmp_path) -> None:
    _, out, _ = tiny_run
    png = plot_log(out / "log.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_runs_unchanged_under_torchrun_ddp(tmp_path) -> None:
    """Two gloo ranks on the CPU: the same command, one log, twice the tokens per step."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "retnet_core.training.train",
        str(TINY),
        "--out-dir",
        str(out),
        "--max-steps",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert steps[-1]["step"] == 4
    tiny = load_config(TINY)
    per_rank = tiny.batch_size * tiny.grad_accum * tiny.seq_len
    assert steps[-1]["tokens"] == 4 * 2 * per_rank  # both ranks' rows count
    assert load_pretrained(out / "checkpoint").config.n_layers == 2


def test_a_second_stage_starts_from_trained_weights(tiny_run, tmp_path) -> None:
    """init_from loads the weights and their tokenizer; lr 0 leaves them untouched."""
    first = tiny_run[1] / "checkpoint"
    cfg = replace(
        load_config(TINY),
        out_dir=str(tmp_path),
        init_from=str(first),
        max_steps=1,
        lr=0.0,
        eval_interval=0,
    )
    train(cfg)
    a = load_pretrained(first).state_dict()
    b = load_pretrained(tmp_path / "checkpoint").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "checkpoint" / "tokenizer.json").read_text() == (
        first / "tokenizer.json"
    ).read_text()
