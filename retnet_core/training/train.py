"""Training: config file → tokenizer, data, model → AdamW + cosine → checkpoints.

Run ``memsvc train configs/default.yaml`` (or ``python -m retnet_core.training.train CONFIG``).
The same command runs unchanged under ``torchrun --nproc_per_node N`` (DDP; gloo on
CPU, nccl on CUDA) and picks CUDA when present.

Each step draws ``batch_size × grad_accum`` rows per rank: random windows of the packed
chit-chat stream, and a ``memory_frac`` share of generated single-session memory
dialogues (stated-then-asked facts and passage questions; loss on assistant turns).
Cross-session memory training (state reset, slots kept) plugs in through
``memory_objective`` (see :func:`load_hook`). Batches are drawn from generators seeded
by (seed, rank, step), so a resumed run continues exactly where it stopped.

Output directory::

    checkpoint/        latest model (save_pretrained) + tokenizer.json + train_config.json
    best/              the checkpoint with the lowest validation loss
    trainer_state.pt   optimiser, step, tokens, elapsed time (for resuming)
    log.jsonl          one JSON object per log or eval event
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from retnet_core.checkpoint import save_pretrained
from retnet_core.training.baseline import TransformerLM
from retnet_core.training.data import pad_examples, sample_windows
from retnet_core.training.evaluation import evaluate_lm, recall_report, render_supervised
from retnet_core.training.train_setup import (
    Data,
    LMObjective,
    TrainConfig,
    build_model,
    load_config,
    load_hook,
    prepare_data,
    prepare_tokenizer,
)

__all__ = ["TrainConfig", "cli", "load_config", "lr_at", "train"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, memory_lr_mult: float = 1.0) -> list:
    """AdamW groups: matrices decay, vectors do not; memory-layer weights learn at
    ``memory_lr_mult`` × the schedule's rate (a later stage teaching a new read)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        memory = ".memory." in f".{name}"
        groups.setdefault((p.dim() >= 2, memory), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_mult": memory_lr_mult if memory else 1.0,
        }
        for (decays, memory), params in groups.items()
    ]


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) otherwise."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(pref)


def make_batch(
    cfg: TrainConfig, data: Data, rows: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``rows`` training rows: chit-chat windows plus a ``memory_frac`` share of dialogues."""
    n_mem = round(rows * cfg.memory_frac) if data.memory_gen else 0
    x, y = sample_windows(data.train, rows - n_mem, cfg.seq_len, gen)
    if n_mem == 0:
        return x, y
    examples = data.memory_examples(n_mem, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
    mx, my = pad_examples(
        [render_supervised(data.tok, ex.flat()) for ex in examples], cfg.seq_len, data.tok.pad_id
    )
    return torch.cat([x, mx]), torch.cat([y, my])


class Trainer:
    """One training run; rank 0 logs and writes checkpoints."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.rank, self.world, local = _dist_env()
        self.device = _pick_device(cfg.device, local)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.out_dir)
        self.main = self.rank == 0
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not cfg.resume:  # a fresh run must not append to, or resume from, an old one
                for stale in ("log.jsonl", "trainer_state.pt"):
                    (self.out / stale).unlink(missing_ok=True)
                shutil.rmtree(self.out / "checkpoint", ignore_errors=True)
        self._barrier()
        self.tok = prepare_tokenizer(cfg, self.out, self.main, self._barrier)
        self.data = prepare_data(cfg, self.tok)
        self.model = build_model(cfg, self.tok.vocab_size, self.out / "checkpoint").to(self.device)
        self.memory_objective = load_hook(cfg.memory_objective)
        self.lm = LMObjective(
            self.model,
            cfg.chunk_size,
            self.memory_objective,
            self.tok,
            cfg.seq_len,
            cfg.memory_weight,
            compile=cfg.compile,
        )
        self.objective: nn.Module = self.lm
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # memory layers sit idle in batches without a memory objective
            unused = bool(getattr(self.model.config, "memory_layers", None))
            self.objective = nn.parallel.DistributedDataParallel(
                self.objective, device_ids=ids, find_unused_parameters=unused
            )
        self.opt = torch.optim.AdamW(
            param_groups(self.model, cfg.weight_decay, cfg.memory_lr_mult),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=self.device.type == "cuda",
        )
        self.step, self.tokens, self.elapsed, self.best = 0, 0, 0.0, float("inf")
        self.parts: dict[str, float] = {}  # loss terms of the last step (lm, memory)
        self._resume()

    # ------------------------------------------------------------------ helpers
    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def log(self, record: dict) -> None:
        """Append one JSON line to log.jsonl (rank 0 only)."""
        if self.main:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _resume(self) -> None:
        path = self.out / "trainer_state.pt"
        if not self.cfg.resume or not path.exists():
            return
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.elapsed, self.best = state["elapsed"], state["best"]

    def save(self, name: str = "checkpoint", with_state: bool = True) -> Path:
        """Write the model, tokenizer and config atomically to ``out/name``."""
        if not self.main:
            return self.out / name
        final, tmp = self.out / name, self.out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(self.model, TransformerLM):  # the baseline writes its own format
            self.model.save_pretrained(tmp)
        else:
            save_pretrained(self.model, tmp)
        self.tok.save(tmp)
        (tmp / "train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        old = self.out / f".{name}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        if with_state:
            state = {
                "optimizer": self.opt.state_dict(),
                "step": self.step,
                "tokens": self.tokens,
                "elapsed": self.elapsed,
                "best": self.best,
            }
            torch.save(state, self.out / "trainer_state.tmp")
            os.replace(self.out / "trainer_state.tmp", self.out / "trainer_state.pt")
        return final

    def logits_fn(self, tokens: Tensor) -> Tensor:
        """Eval forward (no DDP wrapper: every rank evaluates the same windows)."""
        with self._autocast():
            return self.lm.logits(tokens)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation perplexity / bits per char and held-out memory answer rates."""
        self.model.eval()
        cfg = self.cfg
        out = evaluate_lm(
            self.logits_fn,
            self.data.val,
            cfg.seq_len,
            cfg.eval_windows,
            cfg.batch_size,
            self.device,
        )
        if self.data.eval_examples:
            out.update(
                recall_report(
                    self.logits_fn, self.tok, self.data.eval_examples, cfg.seq_len, self.device
                )
            )
        hook = load_hook(cfg.memory_eval)
        if hook is not None:
            multi = {k: v for k, v in self.data.eval_examples.items() if k in cfg.session_kinds}
            out.update(hook(self.model, self.tok, multi, self.device, seq_len=cfg.seq_len))
        self.model.train()
        return out

    # ------------------------------------------------------------------ loop
    def train_step(self) -> float:
        """One optimiser step over ``grad_accum`` micro-batches; returns the mean loss."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.rank * 7_919 + self.step)
        total = 0.0
        self.parts = {}
        for micro in range(cfg.grad_accum):
            x, y = make_batch(cfg, self.data, cfg.batch_size, gen)
            x, y = x.to(self.device), y.to(self.device)
            last = micro == cfg.grad_accum - 1
            sync = nullcontext() if last or self.world == 1 else self.objective.no_sync()
            mem = None
            if self.memory_objective is not None and cfg.memory_weight > 0:
                mem = self.data.memory_examples(
                    cfg.memory_batch,
                    seed=int(torch.randint(0, 2**31, (1,), generator=gen)),
                    kinds=cfg.session_kinds,
                )
            with sync, self._autocast():
                loss = self.objective(x, y, mem)
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
            for key, value in self.lm.parts.items():
                self.parts[key] = self.parts.get(key, 0.0) + value / cfg.grad_accum
            self.tokens += int(x.numel()) * self.world
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def _stop(self) -> bool:
        if self.step >= self.cfg.max_steps:
            return True
        over = self.cfg.max_time_s is not None and self.elapsed >= self.cfg.max_time_s
        flag = torch.tensor(int(over))
        if dist.is_initialized():  # every rank must stop at the same step
            dist.all_reduce(flag.to(self.device), op=dist.ReduceOp.MAX)
        return bool(flag)

    def run(self) -> dict:
        """Train until max_steps or max_time_s; returns the final evaluation."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        cfg = self.cfg
        self.model.train()
        progress = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not (self.main and cfg.progress),
        )
        last_eval: dict = {}
        with progress:
            task = progress.add_task("train", total=cfg.max_steps, completed=self.step, info="")
            window_t, window_tok = time.perf_counter(), self.tokens
            while not self._stop():
                t0 = time.perf_counter()
                loss = self.train_step()
                self.elapsed += time.perf_counter() - t0
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}")
                if self.step % cfg.log_interval == 0 or self.step in (1, cfg.max_steps):
                    now = time.perf_counter()
                    tps = (self.tokens - window_tok) / max(now - window_t, 1e-9)
                    window_t, window_tok = now, self.tokens
                    rec = {
                        "step": self.step,
                        "loss": loss,
                        "lr": lr_at(self.step - 1, cfg),
                        "tokens": self.tokens,
                        "tok_per_s": tps,
                        "elapsed_s": self.elapsed,
                        **self.parts,
                    }
                    self.log(rec)
                    progress.update(task, info=f"loss {loss:.3f} {tps:,.0f} tok/s")
                progress.update(task, completed=self.step)
                if cfg.eval_interval and self.step % cfg.eval_interval == 0:
                    last_eval = self._eval_and_save()
                elif cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0:
                    self.save()
        if not last_eval or last_eval.get("step") != self.step:
            last_eval = self._eval_and_save()
        self._barrier()
        return last_eval

    def _eval_and_save(self) -> dict:
        metrics = self.evaluate()
        record = {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed_s": self.elapsed,
            "eval": metrics,
        }
        if metrics["loss"] < self.best:
            self.best = metrics["loss"]
            self.save("best", with_state=False)
        self.save()
        self.log(record)
        return record


def train(cfg: TrainConfig) -> dict:
    """Run training described by ``cfg``; returns the final eval record."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def cli(
    config: Path,
    out_dir: Path | None = None,
    max_steps: int | None = None,
    max_time_s: float | None = None,
    device: str | None = None,
    resume: bool = True,
) -> None:
    """Train a model from a YAML or TOML config (``memsvc train CONFIG``).

    Options override the config file's values; everything else lives in the file.
    """
    cfg = load_config(config)
    overrides = {
        "out_dir": str(out_dir) if out_dir else None,
        "max_steps": max_steps,
        "max_time_s": max_time_s,
        "device": device,
    }
    cfg = replace(cfg, resume=resume, **{k: v for k, v in overrides.items() if v is not None})
    result = train(cfg)
    if _dist_env()[0] == 0:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import typer

    typer.run(cli)
