"""Distillation on a tiny random Llama: attention transfer lowers its loss; the trained
delta is small, assembles onto the base into a checkpoint whose logits equal the
student's exactly (checksums guard both inputs and the output); a resumed run continues
from the saved step and ends where an uninterrupted one does; DDP under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from tiny_llama import tiny_llama_dir

from retnet_core.assemble import (
    ASSEMBLED_MANIFEST,
    DELTA_WEIGHTS,
    AssembleError,
    assemble,
    read_delta,
    verify_assembled,
)
from retnet_core.checkpoint import load_pretrained
from retnet_core.lora import LoRALinear, attach_lora, merge_lora
from retnet_core.training.distill import Distiller, distill, load_distill_config
from retnet_core.training.distill_setup import DistillConfig

TRANSFER = ["*.feature_q", "*.feature_k", "*.decay_logit", "*.mix"]


def _config(base: Path, out: Path, **kw) -> DistillConfig:
    fields = dict(
        out_dir=str(out),
        base=str(base),
        student={
            "mixer": "hybrid",
            "window": 8,
            "sinks": 2,
            "decay": "learned",
            "feature_map": "hedgehog",
        },  # fmt: skip
        lora={"rank": 4, "alpha": 8, "targets": ["retention.in_proj", "retention.out_proj"]},
        stages=[
            {
                "name": "transfer",
                "loss": "attention",
                "steps": 4,
                "lr": 0.05,
                "warmup_steps": 1,
                "train": TRANSFER,
            },
            {
                "name": "distill",
                "loss": "logits",
                "steps": 4,
                "lr": 0.02,
                "warmup_steps": 1,
                "lm_weight": 0.1,
                "train": ["*.lora_a", "*.lora_b", *TRANSFER],
            },
        ],  # fmt: skip
        seq_len=40,
        batch_size=2,
        grad_accum=1,
        dialogue_frac=0.25,
        far_frac=0.25,
        chitchat_limit=30,
        eval_conversations=2,
        eval_max_tokens=48,
        eval_piece=16,
        eval_interval_s=None,
        num_threads=1,
        progress=False,
        resume=False,
    )
    fields.update(kw)
    return DistillConfig(**fields)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return tiny_llama_dir(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def run(base, tmp_path_factory) -> tuple[Distiller, Path]:
    """Both stages run to the end (the distiller object is kept to compare logits)."""
    out = tmp_path_factory.mktemp("run")
    runner = Distiller(_config(base, out))
    runner.run()
    return runner, out


def test_attention_transfer_loss_decreases(base, tmp_path) -> None:
    """Pure retention starts far from attention; transfer on fixed rows pulls it closer."""
    cfg = _config(
        base,
        tmp_path,
        student={"mixer": "retention", "decay": "learned", "feature_map": "hedgehog"},
        stages=[{"name": "transfer", "loss": "attention", "steps": 25, "lr": 0.05,
                 "warmup_steps": 1, "train": ["*.feature_q", "*.feature_k", "*.decay_logit"]}],
        eval_conversations=1,
    )  # fmt: skip
    runner = Distiller(cfg)
    gen = torch.Generator().manual_seed(0)
    batch = runner.data.batch(4, cfg.seq_len, gen)  # one fixed batch: a clean signal
    runner.data.batch = lambda *a, **k: batch
    runner.run()
    losses = [r["loss"] for r in _log(tmp_path) if "loss" in r]
    assert len(losses) == 25 and losses[-1] < 0.7 * losses[0], losses
    layers = [r["layers"] for r in _log(tmp_path) if "layers" in r]
    assert len(layers[0]) == 2 and all(b < a for a, b in zip(layers[0], layers[-1], strict=True))


def test_run_logs_evaluates_and_trains_only_the_delta(run) -> None:
    runner, out = run
    log = _log(out)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert {r["stage"] for r in steps} == {"transfer", "distill"}
    assert all("kl" in r for r in steps if r["stage"] == "distill")
    evals = [r for r in log if "eval" in r]
    assert [r["step"] for r in evals] == [0, 4, 8]  # zero-shot, then each stage's end
    first, last = evals[0]["eval"], evals[-1]["eval"]
    # zero-shot α = 0: the hybrid's retention path is off, both scores agree
    assert first["student"] == first["retention_off"]
    assert last["student"] != last["retention_off"]
    assert last["teacher"] == first["teacher"] and last["teacher"]["far_tokens"] > 0
    manifest, delta = read_delta(out / "checkpoint")
    assert manifest.trained["step"] == 8 and manifest.trained["tokens"] == steps[-1]["tokens"]
    names = set(delta)
    assert any(n.endswith("lora_a") for n in names) and any(n.endswith(".mix") for n in names)
    assert not any(n.endswith(("base.weight", "embed.weight", "ffn.w_in.weight")) for n in names)
    base_bytes = sum(p.numel() * 4 for p in runner.teacher.parameters())
    assert (out / "checkpoint" / DELTA_WEIGHTS).stat().st_size < 0.5 * base_bytes
    # the base tensors the teacher shares with the student never moved
    for name, p in runner.teacher.named_parameters():
        key = name.replace("in_proj.", "in_proj.base.").replace("out_proj.", "out_proj.base.")
        torch.testing.assert_close(p, runner.student.get_parameter(key), rtol=0, atol=0)


def test_assembled_checkpoint_reproduces_the_student_exactly(run, base, tmp_path) -> None:
    runner, out = run
    dest = assemble(tmp_path / "model", out / "checkpoint", base=base, progress=False)
    model = load_pretrained(dest)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    tokens = torch.randint(3, 300, (2, 30), generator=torch.Generator().manual_seed(1))
    runner.student.eval()
    with torch.no_grad():
        want = runner.student(tokens)
        got = model(tokens)
        assert torch.equal(got, want)  # bit for bit: the merge forms the same W' as training
        # and the recurrent form continues it (the served path)
        logits, state = model.prefill(tokens[:, :20])
        step, _ = model.step(tokens[:, 20], state)
    torch.testing.assert_close(step, want[:, 20], rtol=1e-4, atol=1e-4)
    record = json.loads((dest / ASSEMBLED_MANIFEST).read_text())
    assert set(record["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert verify_assembled(dest, record["delta_sha256"])
    # a second call (memsvc's entry point) finds it verified and keeps it; a damaged
    # file is rebuilt
    from memsvc.distilled import assemble as serve_assemble

    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert serve_assemble(dest, out / "checkpoint", base=base, progress=False) == dest
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime
    with open(dest / "config.json", "a") as f:
        f.write(" ")
    assert not verify_assembled(dest)
    assemble(dest, out / "checkpoint", base=base, progress=False)
    assert verify_assembled(dest)


def test_assemble_refuses_a_changed_base_or_delta(run, base, tmp_path) -> None:
    _, out = run
    other = tiny_llama_dir(tmp_path / "other", seed=1)  # same shapes, other weights
    with pytest.raises(AssembleError, match="not the base"):
        assemble(tmp_path / "a", out / "checkpoint", base=other, progress=False)
    bad = tmp_path / "delta"
    bad.mkdir()
    for f in (out / "checkpoint").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = bytearray((bad / DELTA_WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (bad / DELTA_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(AssembleError, match="SHA-256"):
        assemble(tmp_path / "b", bad, base=base, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_lora_merge_is_exact_and_starts_as_the_base() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3, bias=False))
    x = torch.randn(4, 6)
    ref = net(x)
    assert attach_lora(net, 2, 4.0, ["0", "1"]) == ["0", "1"]
    assert torch.equal(net(x), ref)  # B = 0
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_()
    trained = net(x)
    assert not torch.allclose(trained, ref)
    assert torch.equal(merge_lora(net)(x), trained)
    with pytest.raises(ValueError, match="no nn.Linear"):
        attach_lora(net, 2, 4.0, ["nothing"])


def test_resume_continues_from_the_saved_step(run, base, tmp_path) -> None:
    """Stopped after 3 steps (as a dying session would be), resumed, it ends exactly
    where the uninterrupted run ended."""
    _, full = run
    cfg = _config(base, tmp_path)
    first = Distiller(cfg)
    for _ in range(3):
        first.train_step()
    first.save()
    want_params = {n: p.detach().clone() for n, p in first.student.named_parameters()}
    del first
    # a new machine: only the committed delta (no optimiser state, no run directory)
    committed = tmp_path / "committed"
    committed.mkdir()
    for name in ("delta.json", DELTA_WEIGHTS):
        (committed / name).write_bytes((tmp_path / "checkpoint" / name).read_bytes())
    fresh = Distiller(replace(cfg, out_dir=str(tmp_path / "new"), resume=True,
                              init_from=str(committed)))  # fmt: skip
    assert (fresh.step, fresh.stage, fresh.stage_step) == (3, 0, 3)
    for name, p in fresh.student.named_parameters():
        assert torch.equal(p, want_params[name]), name
    with pytest.raises(ValueError, match="another LoRA setup"):
        Distiller(replace(cfg, out_dir=str(tmp_path / "x"), init_from=str(committed),
                          resume=True, lora={**cfg.lora, "rank": 2}))  # fmt: skip
    second = Distiller(replace(cfg, resume=True))
    assert (second.step, second.stage, second.stage_step) == (3, 0, 3)
    second.run()
    log = _log(tmp_path)
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == list(range(4, 9))  # the new process starts at step 4
    _, want = read_delta(full / "checkpoint")
    _, got = read_delta(tmp_path / "checkpoint")
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_run_grows_a_committed_delta_onto_the_mlps(run, base, tmp_path) -> None:
    """init_from a delta with more LoRA targets: the delta's tensors load as trained, the
    added adapters start at B = 0 (the grown student computes what the delta's did), they
    train, and the new delta assembles with both. Dropping a target or a rank change
    raises."""
    trained, full = run
    committed = full / "checkpoint"
    grown_lora = {**trained.cfg.lora, "targets": [*trained.cfg.lora["targets"], "ffn.w_in",
                                                  "ffn.w_out"]}  # fmt: skip
    extra = {"name": "more", "loss": "logits", "steps": 2, "lr": 0.02, "warmup_steps": 1,
             "train": ["*.lora_a", "*.lora_b"]}  # fmt: skip
    cfg = _config(base, tmp_path / "grow", resume=True, init_from=str(committed),
                  lora=grown_lora, stages=[*_config(base, full).stages, extra])  # fmt: skip
    grown = Distiller(cfg)
    assert (grown.step, grown.stage) == (8, 2)  # continues after the delta's two stages
    added = [r for r in _log(tmp_path / "grow") if r.get("event") == "adapters_added"]
    # 2 layers x 2 linears x (A, B)
    assert added == [{"event": "adapters_added", "targets": ["ffn.w_in", "ffn.w_out"],
                      "tensors": 8}]  # fmt: skip
    params = dict(grown.student.named_parameters())
    for name, p in trained.student.named_parameters():
        module, _, leaf = name.rpartition(".")  # a wrapped linear's W is now under .base
        assert torch.equal(params.get(name, params.get(f"{module}.base.{leaf}")), p), name
    ffn_b = [p for n, p in params.items() if ".ffn." in n and n.endswith("lora_b")]
    assert len(ffn_b) == 4 and all(not p.any() for p in ffn_b)
    ids = torch.randint(3, 300, (1, 20), generator=torch.Generator().manual_seed(2))
    grown.student.eval()
    trained.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(grown.student(ids), trained.student(ids), rtol=0, atol=0)
    grown.run()
    manifest, delta = read_delta(tmp_path / "grow" / "checkpoint")
    assert manifest.lora["targets"] == grown_lora["targets"] and manifest.trained["step"] == 10
    assert all(delta[n].any() for n in delta if ".ffn." in n and n.endswith("lora_b"))
    out = assemble(tmp_path / "assembled", tmp_path / "grow" / "checkpoint", base=base,
                   progress=False)  # fmt: skip
    grown.student.eval()
    with torch.no_grad():  # bit for bit, as for a delta of attention adapters only
        assert torch.equal(load_pretrained(out)(ids), grown.student(ids))
    for lora, match in [({**grown_lora, "targets": ["ffn.w_in"]}, "drops trained targets"),
                        ({**grown_lora, "alpha": 4}, "another LoRA rank")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            Distiller(replace(cfg, out_dir=str(tmp_path / "bad"), lora=lora))


def test_cli_config_and_ddp_under_torchrun(base, tmp_path) -> None:
    """Two gloo ranks on the CPU: one log, both ranks' tokens counted, a loadable delta."""
    cfg = _config(base, tmp_path / "ddp", eval_conversations=1)
    raw = {k: v for k, v in cfg.__dict__.items() if k != "stages"}
    raw["stages"] = [s.__dict__ for s in cfg.stages]
    raw["stages"][0]["steps"] = raw["stages"][1]["steps"] = 2
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_distill_config(path).stages[1].lm_weight == 0.1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "retnet_core.training.distill", str(path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = _log(tmp_path / "ddp")
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    start = next(r for r in log if r.get("event") == "start")
    assert start["world"] == 2
    manifest, _ = read_delta(tmp_path / "ddp" / "checkpoint")
    assert manifest.trained["tokens"] == steps[-1]["tokens"] > 0
    # every row is (at most) seq_len tokens, from both ranks
    assert steps[0]["tokens"] > cfg.batch_size * cfg.seq_len


def test_distill_function_runs_a_config_end_to_end(base, tmp_path) -> None:
    cfg = _config(
        base,
        tmp_path,
        student={"mixer": "retention", "decay": "learned"},
        lora={"rank": 2, "alpha": 2, "targets": ["retention.out_proj"]},
        stages=[{"name": "distill", "loss": "logits", "steps": 2, "lr": 0.01,
                 "train": ["*.lora_a", "*.lora_b", "*.decay_logit"]}],
        eval_conversations=1,
        eval_off=True,
    )  # fmt: skip
    result = distill(cfg)
    assert result["step"] == 2 and "retention_off" not in result["eval"]  # pure retention
