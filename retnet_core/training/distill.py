"""Distil a softmax Llama-family teacher into a retention (or hybrid) student.

Run ``memsvc distill configs/distill-hybrid.yaml`` (or ``python -m
retnet_core.training.distill CONFIG``). The same command runs under ``torchrun
--nproc_per_node N`` (DDP; gloo on CPU, nccl on CUDA) and picks CUDA when present.

The student starts from the teacher's weights (``retnet_core.convert_llama``); stages
run in order (``retnet_core.training.distill_setup``: attention transfer, then logits
distillation), each training the parameters its glob patterns name: LoRA adapters on
q/k/v/o, feature maps, learned decays, the hybrid's α. Base weights never change, so
what a run produces is a *delta* of a few MB (``retnet_core.lora``) that
:func:`retnet_core.assemble.assemble` turns back into a full checkpoint.

Output directory::

    checkpoint/delta.safetensors, delta.json   the latest delta and its manifest
    checkpoint/trainer_state.pt                stage, steps, tokens, optimiser (resume)
    log.jsonl                                  one JSON object per log or eval event
    teacher_eval.json                          the teacher's held-out score (cached)

A checkpoint is written every ``ckpt_interval_s`` seconds, at every stage's end and on
SIGTERM/SIGINT, always whole (a temporary directory renamed into place). Batches come
from generators seeded by (seed, rank, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from retnet_core.assemble import (
    DeltaManifest,
    base_parameter_names,
    read_delta,
    resolve_base,
    sha256_file,
    write_delta,
)
from retnet_core.lora import (
    adapter_parameter_names,
    added_targets,
    attach_lora,
    delta_state,
    load_delta,
    set_trainable,
)
from retnet_core.training.distill_data import heldout_texts, prepare_distill_data
from retnet_core.training.distill_setup import (
    DistillConfig,
    DistillObjective,
    Stage,
    heldout_bits,
    load_distill_config,
    make_teacher,
    retention_off,
)
from retnet_core.training.train import _dist_env, _pick_device

__all__ = ["DistillConfig", "Distiller", "Stage", "cli", "distill", "load_distill_config"]


class Distiller:
    """One distillation run; rank 0 logs, evaluates and writes checkpoints."""

    def __init__(self, cfg: DistillConfig) -> None:
        from retnet_core.convert_llama import load_llama
        from retnet_core.llama_source import read_source

        self.cfg = cfg
        self.rank, self.world, local = _dist_env()
        self.device = _pick_device(cfg.device, local)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        self.main = self.rank == 0
        self.out = Path(cfg.out_dir)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not cfg.resume:
                (self.out / "log.jsonl").unlink(missing_ok=True)
                shutil.rmtree(self.out / "checkpoint", ignore_errors=True)
        self._barrier()
        base_path = resolve_base(cfg.base)
        self.base_sha256 = sha256_file(base_path)
        src = read_source(base_path)
        overrides = dict(cfg.student)
        student, self.tok = load_llama(src, overrides.pop("mixer"), **overrides)
        del src  # the dequantized source: the model holds what it needs
        self.base_names = base_parameter_names(student.config)
        patterns = [p for st in cfg.stages for p in st.train]
        trained_base = {
            n for n in self.base_names if any(fnmatch.fnmatchcase(n, p) for p in patterns)
        }
        self.extra = sorted(trained_base)  # base tensors a stage trains: part of the delta
        self.teacher = make_teacher(student, clone=trained_base)
        if cfg.lora and int(cfg.lora.get("rank", 0)) > 0:
            attach_lora(
                student, int(cfg.lora["rank"]), float(cfg.lora["alpha"]), cfg.lora["targets"]
            )
        self.student = student.to(self.device)
        self.teacher = self.teacher.to(self.device)
        self.data = prepare_distill_data(self.tok, cfg.chitchat_limit)
        self.texts = heldout_texts(cfg.eval_conversations) if self.main else []
        self.stage, self.stage_step, self.step, self.tokens = 0, 0, 0, 0
        self.elapsed, self.last_eval_t, self.evals = 0.0, 0.0, 0
        self.stop_requested = False
        opt_state = self._resume()
        self._enter_stage(opt_state)

    # ------------------------------------------------------------------ helpers
    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def log(self, record: dict) -> None:
        if self.main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    @property
    def current(self) -> Stage:
        return self.cfg.stages[min(self.stage, len(self.cfg.stages) - 1)]

    def _enter_stage(self, opt_state: dict | None = None) -> None:
        """Freeze all but the stage's patterns; a fresh optimiser (or the saved one)."""
        st = self.current
        names = set(set_trainable(self.student, st.train))
        params = [p for n, p in self.student.named_parameters() if n in names]
        decay = [p for p in params if p.dim() >= 2]
        flat = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}]
        groups.append({"params": flat, "weight_decay": 0.0})
        self.opt = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=st.lr, betas=(self.cfg.beta1, self.cfg.beta2)
        )
        if opt_state is not None:
            self.opt.load_state_dict(opt_state)
        self.objective: nn.Module = DistillObjective(self.student, self.teacher, self.cfg.stages)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        self.n_trainable = sum(p.numel() for p in params)

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> dict | None:
        """Continue the run's own checkpoint (delta + optimiser), else the committed delta
        ``init_from`` names (a new machine: its position, a fresh optimiser), else start
        (also when no delta has been committed there yet)."""
        ckpt = self.out / "checkpoint"
        if self.cfg.resume and (ckpt / "trainer_state.pt").exists():
            _, delta = read_delta(ckpt)
            load_delta(self.student, delta, self.base_names)
            state = torch.load(
                ckpt / "trainer_state.pt", map_location=self.device, weights_only=False
            )
            self.stage, self.stage_step = state["stage"], state["stage_step"]
            self.step, self.tokens = state["step"], state["tokens"]
            self.elapsed, self.evals = state["elapsed"], state.get("evals", 0)
            return state["optimizer"]
        if self.cfg.resume and self.cfg.init_from and Path(self.cfg.init_from).is_dir():
            manifest, delta = read_delta(self.cfg.init_from)
            mine = self.manifest()
            same = (manifest.base_sha256, manifest.student)
            try:  # the run may add adapters (new targets, B = 0) on top of the delta's
                added = added_targets(manifest.lora, mine.lora)
            except ValueError as e:
                raise ValueError(f"{self.cfg.init_from}: another LoRA setup: {e}") from e
            if same != (mine.base_sha256, mine.student):
                raise ValueError(f"{self.cfg.init_from}: another base or student")
            fresh = adapter_parameter_names(self.student, added)
            load_delta(self.student, delta, self.base_names, fresh=fresh)
            if added:
                self.log({"event": "adapters_added", "targets": added, "tensors": len(fresh)})
            t = manifest.trained
            self.stage, self.stage_step = t["stage_index"], t["stage_step"]
            self.step, self.tokens, self.elapsed = t["step"], t["tokens"], t["elapsed_s"]
            self.evals = t.get("evals", 1)
        return None

    def manifest(self) -> DeltaManifest:
        cfg = self.cfg
        return DeltaManifest(
            base=cfg.base,
            base_sha256=self.base_sha256,
            student=dict(cfg.student),
            lora=dict(cfg.lora) if cfg.lora and int(cfg.lora.get("rank", 0)) > 0 else {},
            trained={
                "stage": self.current.name,
                "stage_index": self.stage,  # = len(stages) when every stage is done
                "stage_step": self.stage_step,
                "step": self.step,
                "tokens": self.tokens,
                "elapsed_s": round(self.elapsed, 1),
                "evals": self.evals,
                "precision": cfg.precision,
            },
        )

    def save(self) -> Path:
        """Write ``checkpoint/`` whole: delta, manifest and trainer state (rank 0)."""
        final = self.out / "checkpoint"
        if not self.main:
            return final
        tmp, old = self.out / ".checkpoint.tmp", self.out / ".checkpoint.old"
        shutil.rmtree(tmp, ignore_errors=True)
        write_delta(tmp, delta_state(self.student, self.base_names, self.extra), self.manifest())
        state = {
            "stage": self.stage,
            "stage_step": self.stage_step,
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "evals": self.evals,
            "optimizer": self.opt.state_dict(),
            "config": asdict(self.cfg),
        }
        torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """Held-out bits/char of student (and with α = 0) beside the teacher's (cached)."""
        if not self.main:
            return {}
        cfg, c = self.cfg, self.student.config
        edge = c.window + c.sinks if c.mixer == "hybrid" else 0
        kw = dict(
            edge=edge, piece=cfg.eval_piece, max_tokens=cfg.eval_max_tokens, device=self.device
        )

        def score(model: nn.Module) -> dict:
            return heldout_bits(model, self.tok, self.texts, autocast=self._autocast(), **kw)

        self.student.eval()
        out = {"student": score(self.student)}
        if cfg.eval_off and c.mixer == "hybrid":
            with retention_off(self.student):
                out["retention_off"] = score(self.student)
        cache = self.out / "teacher_eval.json"
        key = f"{cfg.eval_conversations}:{cfg.eval_max_tokens}:{cfg.precision}:{edge}"
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        if key not in cached:
            cached[key] = score(self.teacher)
            cache.write_text(json.dumps(cached, indent=2) + "\n")
        out["teacher"] = cached[key]
        self.student.train()
        self.evals += 1
        return out

    def _eval_and_log(self) -> dict:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        record = {
            "step": self.step,
            "stage": self.current.name,
            "stage_step": self.stage_step,
            "tokens": self.tokens,
            "elapsed_s": round(self.elapsed, 1),
            "eval_s": round(time.perf_counter() - t0, 1),
            "eval": metrics,
        }
        self.log(record)
        self.last_eval_t = time.perf_counter()
        self._barrier()
        return record

    # ------------------------------------------------------------------ loop
    def train_step(self) -> tuple[float, dict]:
        """One optimiser step over ``grad_accum`` micro-batches; (mean loss, parts)."""
        cfg, st = self.cfg, self.current
        lr = st.lr_at(self.stage_step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank * 7_919 + self.step)
        total, parts = 0.0, {}
        for micro in range(cfg.grad_accum):
            batch = self.data.batch(
                cfg.batch_size,
                cfg.seq_len,
                gen,
                cfg.dialogue_frac,
                cfg.far_frac,
                st.note_frac,
                st.note_passage_rate,
                st.note_kinds,
                st.note_same_kind_rate,
                st.note_wide_rate,
                st.ask_rates(),
            )
            tokens, lengths = batch.tokens.to(self.device), batch.lengths.to(self.device)
            answer = None if batch.answer is None else batch.answer.to(self.device)
            last = micro == cfg.grad_accum - 1
            sync = nullcontext() if last or self.world == 1 else self.objective.no_sync()
            with sync, self._autocast():
                loss, p = self.objective(tokens, lengths, self.stage, answer)
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
            for k, v in p.items():
                if isinstance(v, list):
                    acc = parts.setdefault(k, [0.0] * len(v))
                    parts[k] = [a + x / cfg.grad_accum for a, x in zip(acc, v, strict=True)]
                else:
                    parts[k] = parts.get(k, 0.0) + v / cfg.grad_accum
            self.tokens += batch.n_tokens * self.world
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        if cfg.grad_clip > 0:
            parts["grad_norm"] = float(nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.stage_step += 1
        if "layers" in parts:
            parts["layers"] = [round(x, 5) for x in parts["layers"]]
        return total, parts

    def _should_stop(self, started: float) -> bool:
        over = (
            self.cfg.max_time_s is not None and time.perf_counter() - started >= self.cfg.max_time_s
        )
        flag = torch.tensor(int(over or self.stop_requested), device=self.device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def _on_signal(self, signum, frame) -> None:  # finish the step, save, exit
        self.stop_requested = True

    def run(self) -> dict:
        """Run the remaining stages (or until max_time_s / a signal); final eval record."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        cfg = self.cfg
        if self.main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
            self.log({"event": "start", "step": self.step, "stage": self.current.name,
                      "trainable": self.n_trainable, "world": self.world,
                      "device": str(self.device), "config": asdict(cfg)})  # fmt: skip
        started = last_ckpt = self.last_eval_t = time.perf_counter()
        last: dict = {}
        if self.evals == 0 and self.step == 0 and cfg.eval_at_start:
            last = self._eval_and_log()  # zero-shot, before any training
        progress = Progress(
            TextColumn("distill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), disable=not (self.main and cfg.progress),
        )  # fmt: skip
        with progress:
            task = progress.add_task("distill", total=cfg.total_steps, completed=self.step, info="")
            window_t, window_tok = time.perf_counter(), self.tokens
            while self.stage < len(cfg.stages) and not self._should_stop(started):
                t0 = time.perf_counter()
                loss, parts = self.train_step()
                self.elapsed += time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}")
                if self.stage_step % cfg.log_interval == 0 or self.stage_step == self.current.steps:
                    now = time.perf_counter()
                    tps = (self.tokens - window_tok) / max(now - window_t, 1e-9)
                    window_t, window_tok = now, self.tokens
                    self.log({"step": self.step, "stage": self.current.name,
                              "stage_step": self.stage_step, "loss": loss,
                              "lr": self.current.lr_at(self.stage_step - 1),
                              "tokens": self.tokens, "tok_per_s": round(tps, 2),
                              "elapsed_s": round(self.elapsed, 1), **parts})  # fmt: skip
                    progress.update(
                        task, info=f"{self.current.name} loss {loss:.4f} {tps:,.1f} tok/s"
                    )
                progress.update(task, completed=self.step)
                if self.stage_step >= self.current.steps:  # stage done: score, save, move on
                    if cfg.eval_at_stage_end:
                        last = self._eval_and_log()
                    self.stage, self.stage_step = self.stage + 1, 0
                    if self.stage < len(cfg.stages):
                        self._enter_stage()
                    self.save()
                    last_ckpt = time.perf_counter()
                    continue
                now = time.perf_counter()
                if cfg.eval_interval_s and now - self.last_eval_t >= cfg.eval_interval_s:
                    last = self._eval_and_log()
                if now - last_ckpt >= cfg.ckpt_interval_s:
                    self.save()
                    last_ckpt = time.perf_counter()
        self.save()
        self._barrier()
        return last


def distill(cfg: DistillConfig) -> dict:
    """Run the distillation ``cfg`` describes; returns the last eval record."""
    runner = Distiller(cfg)
    try:
        return runner.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cli(
    config: Path,
    out_dir: Path | None = None,
    max_time_s: float | None = None,
    device: str | None = None,
    resume: bool = True,
) -> None:
    """Distil a teacher into a retention student from a YAML config (``memsvc distill``).

    Options override the file's values; a run resumes from its last checkpoint unless
    ``--no-resume``.
    """
    cfg = load_distill_config(config)
    overrides = {
        "out_dir": str(out_dir) if out_dir else None,
        "max_time_s": max_time_s,
        "device": device,
    }
    cfg = replace(cfg, resume=resume, **{k: v for k, v in overrides.items() if v is not None})
    result = distill(cfg)
    if _dist_env()[0] == 0:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import typer

    typer.run(cli)
