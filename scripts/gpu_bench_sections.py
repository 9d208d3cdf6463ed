"""The run of ``scripts/gpu_bench.py``: models, sections in order of value, time budget.

Order (a run cut short by its budget keeps the most valuable rows):

1. ours at the headline length: prefill, then decode at every batch;
2. full-head Llama decode at the headline length (its default dynamic cache);
3. the chunkwise kernels alone at the headline length (fla's own bf16 vs ours);
4. ours and the full-head Llama at the extra batches (headline length only);
5. ours at the other lengths; 6. full-head Llama at the other lengths;
7. full-head Llama with a static (preallocated) cache at the headline length;
8. full-head Llama prefill; 9. the kernels at the other lengths;
10. grouped-head Llama decode (for the record); 11. ours with the pure-torch step.

No row starts once fewer than ``ROW_NEED_S`` seconds of the budget are left; what was
not run is listed under ``skipped``. gpu.json and gpu.md are rewritten after every row.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from gpu_bench_rows import (
    Env,
    kernel_row,
    llama_decode,
    llama_prefill,
    ours_decode,
    ours_prefill,
    retention_dispatch,
    torch_retention,
    weight_bytes,
)
from gpu_bench_table import markdown, summarize
from gpu_bench_triton import load_fla, start_warm_workers, version, wait_warm_workers

ROW_NEED_S = 8.0  # no row starts with less budget left (the longest rows take a few s)
WARM_WAIT_S = 240.0  # longest wait for the kernel warm-up workers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dump(report: dict, out: Path) -> None:
    """Write gpu.json, then gpu.md, each atomically (a kill mid-write keeps the previous).

    The JSON is the record: a table that fails to render never costs it.
    """
    out.mkdir(parents=True, exist_ok=True)
    try:
        md = markdown(report)
    except Exception as exc:  # a rendering bug must not lose the measurements
        md = f"# GPU benchmark\n\ngpu.md could not be rendered ({exc!r}); see gpu.json.\n"
    for name, body in (("gpu.json", json.dumps(report, indent=2) + "\n"), ("gpu.md", md)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(body)
        os.replace(tmp, out / name)


def method_notes(plan: Any) -> list[str]:
    return [
        "Our decode state: one chunkwise prefill (the rows under Prefill) of a random prompt "
        "of L tokens at batch 1, replicated B times: a step's cost depends on the state's "
        "shape, not its values, and the shape does not depend on L.",
        "Llama's KV caches are synthesised: L random bf16 positions per layer, written "
        "through the cache's own update() as a prefill would leave them (decode cost depends "
        "on their shape only). 'dynamic' is transformers' default cache (grows by "
        "concatenation every step); 'static' is preallocated and written in place.",
        f"Decode: {plan.warmup} untimed step(s), then {plan.steps} greedy steps, one "
        "synchronisation at the end; ms/step is wall time (Python launch overhead included), "
        "tokens/s = B · 1000 / ms. Ours is model.step (the generic per-module path on CUDA, "
        "retention through fla_ops); Llama's is model.forward with its cache, no generate().",
        "Our weights are bf16; our retention and state run in float32 (the layer casts q, k, "
        "v to the state dtype). 'fla-bf16' is fla's chunk_simple_gla on bf16 inputs, as "
        "fla's own RetNet layer calls it; 'fla-fp32' the same kernel on our float32 inputs.",
        "Peak memory: the CUDA allocator's peak during the row minus what was allocated "
        "before it, plus the model's own weights (so the other model's weights never count).",
        f"Prefill: one untimed call, then the best of {plan.reps}; kernels: the median of "
        f"{plan.kernel_reps} CUDA-event timed calls after one untimed.",
        "OOM rows: the allocation failed and was freed; once a batch runs out of memory at a "
        "length, larger batches at that length are recorded as OOM without being tried.",
    ]


class Budget:
    """Seconds since the start against the run's budget."""

    def __init__(self, total_s: float) -> None:
        self.total, self.t0 = total_s, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, need_s: float) -> bool:
        return self.elapsed() + need_s <= self.total


class Bench:
    """One run: builds the models, runs the sections, keeps gpu.json/gpu.md up to date."""

    def __init__(self, plan: Any, out: Path, command: str) -> None:
        self.plan, self.out, self.budget = plan, out, Budget(plan.budget_s)
        self.models: dict[str, Any] = {}
        self.states: dict[int, Any] = {}
        self.oom_at: dict[tuple, int] = {}  # (model, cache, L) -> first batch that ran out
        self.env: Env | None = None
        self.report: dict[str, Any] = {
            "command": command,
            "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": 0.0,
            "complete": False,
            "plan": asdict(plan),
            "env": {},
            "models": [],
            "warm": {},
            "warm_s": None,
            "rows": [],
            "skipped": [],
            "notes": method_notes(plan),
        }

    # ---- bookkeeping ----------------------------------------------------------------------
    def save(self) -> None:
        self.report["elapsed_s"] = self.budget.elapsed()
        p = self.plan
        self.report.update(
            summarize(self.report["rows"], p.headline_length, p.memory_batch, p.batches)
        )
        dump(self.report, self.out)

    def skip(self, what: str) -> None:
        log(f"skipped {what}")
        self.report["skipped"].append(what)

    def row(self, label: str, measure) -> dict | None:
        if not self.budget.allows(ROW_NEED_S):
            self.skip(f"{label}: time budget spent")
            return None
        r = measure()
        self.report["rows"].append(r)
        extra = f" {r.get('error', '')}" if r["status"] != "ok" else ""
        log(f"{label}: {r['status']} ms={r.get('ms')} tokens/s={r.get('tokens_s')}{extra}")
        self.save()
        return r

    # ---- models ---------------------------------------------------------------------------
    def _add_model(self, name: str, model, shape: str) -> None:
        params = sum(p.numel() for p in model.parameters())
        info = {"name": name, "shape": shape, "params": params}
        self.report["models"].append({**info, "weight_bytes": weight_bytes(model)})

    def build_ours(self) -> Any:
        from retnet_core.config import RetNetConfig
        from retnet_core.model import RetNetLM

        cfg = RetNetConfig(**self.plan.retnet)
        torch.manual_seed(0)
        with torch.device(self.env.device):
            model = RetNetLM(cfg)
        model = model.to(self.env.dtype).eval()
        if self.env.device.type == "cpu":  # walk the CUDA code path (generic step) on CPU too
            model._fast_ok = lambda: False
        model.fingerprint()  # hashed once now, not inside a timed row
        shape = (
            f"d {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, D_k {cfg.key_dim}, "
            f"D_v {cfg.head_value_dim}, FFN {cfg.ffn_dim}, vocab {cfg.vocab_size}"
        )
        self._add_model("ours", model, shape)
        self.models["ours"] = model
        return model

    def llama(self, name: str) -> Any:
        """The Llama called ``name`` ("llama-full" | "llama-gqa"), built once; None if absent."""
        if name in self.models:
            return self.models[name]
        if name == "llama-gqa":  # one Llama on the card at a time
            self.models.pop("llama-full", None)
            gc.collect()
            if self.env.cuda:
                torch.cuda.empty_cache()
        p, heads = self.plan.llama, self.plan.llama_heads
        kv = heads if name == "llama-full" else heads // self.plan.gqa_group
        try:
            from transformers import LlamaConfig, LlamaForCausalLM

            cfg = LlamaConfig(
                vocab_size=p["vocab"],
                hidden_size=p["hidden"],
                intermediate_size=p["intermediate"],
                num_hidden_layers=p["layers"],
                num_attention_heads=heads,
                num_key_value_heads=kv,
                max_position_embeddings=2 * max(self.plan.lengths),
                rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                attn_implementation="sdpa",
            )
            torch.manual_seed(0)
            with torch.device(self.env.device):
                model = LlamaForCausalLM(cfg)
            model = model.to(self.env.dtype).eval()
        except Exception as exc:  # no transformers here: the Llama rows are skipped
            self.skip(f"{name}: cannot build ({type(exc).__name__}: {exc})"[:300])
            self.models[name] = None
            return None
        shape = (
            f"d {p['hidden']}, {p['layers']} layers, {heads} heads × {p['hidden'] // heads}, "
            f"{kv} KV heads, SwiGLU {p['intermediate']}, vocab {p['vocab']}, "
            f"attention {model.config._attn_implementation}"
        )
        self._add_model(name, model, shape)
        self.models[name] = model
        return model

    # ---- sections -------------------------------------------------------------------------
    def ours_at(self, length: int) -> None:
        model, env = self.models["ours"], self.env
        dispatch = retention_dispatch(env.device)
        got: dict[str, Any] = {}

        def prefill(variant: str) -> dict:
            r, got["state"] = ours_prefill(model, env, length, variant)
            return r

        r = self.row(f"ours prefill L={length}", lambda: prefill(f"chunkwise, {dispatch} kernel"))
        if r is not None and r["status"] == "error" and dispatch == "fla":
            with torch_retention():  # the decode rows still need a prompt state
                self.row(
                    f"ours prefill L={length}, torch fallback",
                    lambda: prefill("chunkwise, torch kernel (fla failed)"),
                )
        if got.get("state") is None:
            self.skip(f"ours decode at L={length}: no prompt state")
            return
        self.states[length] = got["state"]
        self.ours_decode(length, self.plan.batches)

    def ours_decode(self, length: int, batches: list[int]) -> None:
        model, env, state = self.models["ours"], self.env, self.states.get(length)
        if state is None:
            self.skip(f"ours decode at L={length} B={batches}: no prompt state")
            return
        dispatch = retention_dispatch(env.device)
        for b in batches:
            self.row(
                f"ours decode L={length} B={b}",
                lambda b=b: ours_decode(model, env, state, b, f"{dispatch} step"),
            )

    def ours_torch_step(self, length: int) -> None:
        if retention_dispatch(self.env.device) == "torch":
            self.skip("ours with the pure-torch step: the main rows already use it")
            return
        state, model = self.states.get(length), self.models["ours"]
        if state is None:
            self.skip(f"ours with the pure-torch step: no prompt state at L={length}")
            return
        with torch_retention():
            for b in self.plan.batches:
                self.row(
                    f"ours torch-step decode L={length} B={b}",
                    lambda b=b: ours_decode(model, self.env, state, b, "torch step"),
                )

    def llama_decode(
        self, name: str, cache: str, lengths: list[int], batches: list[int] | None = None
    ) -> None:
        model = self.llama(name)
        if model is None:
            return
        for length in lengths:
            for b in batches or self.plan.batches:
                label = f"{name} {cache} decode L={length} B={b}"
                oom_at = self.oom_at.get((name, cache, length))
                if oom_at is not None and b > oom_at:
                    self.report["rows"].append(
                        {"kind": "decode", "model": name, "variant": f"sdpa, {cache} cache",
                         "L": length, "B": b, "status": "oom", "simulated": False,
                         "error": f"not tried: B={oom_at} ran out of memory at this length"}
                    )  # fmt: skip
                    continue
                r = self.row(
                    label,
                    lambda b=b, n=length: llama_decode(model, self.env, name, cache, n, b),
                )
                if r is not None and r["status"] == "oom" and oom_at is None:
                    self.oom_at[(name, cache, length)] = b

    def llama_prefill(self, name: str, lengths: list[int]) -> None:
        model = self.llama(name)
        if model is None:
            return
        for length in lengths:
            self.row(
                f"{name} prefill L={length}",
                lambda length=length: llama_prefill(model, self.env, name, length),
            )

    def kernels(self, lengths: list[int]) -> None:
        r = self.plan.retnet
        h, dk, dv = r["n_heads"], r["d_model"] // r["n_heads"], 2 * r["d_model"] // r["n_heads"]
        have_fla = self.report["env"].get("fla") is not None
        for length in lengths:
            for who in ("fla-bf16", "fla-fp32", "ours"):
                if who != "ours" and not have_fla:
                    self.skip(f"{who} kernel L={length}: {self.report['env'].get('fla_note')}")
                    continue
                self.row(
                    f"{who} kernel L={length}",
                    lambda who=who, length=length: kernel_row(self.env, who, length, h, dk, dv),
                )

    # ---- the run --------------------------------------------------------------------------
    def env_info(self, fla: dict) -> dict:
        dev = self.env.device
        info = {
            "device_name": torch.cuda.get_device_name(dev) if self.env.cuda else "CPU",
            "cpu": platform.processor() or platform.machine(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "triton": version("triton"),
            "fla": fla.get("fla"),
            "fla_note": fla.get("why"),
            "fla_pruned_autotuners": fla.get("pruned"),
            "transformers": version("transformers"),
            "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR"),
            "triton_cache_restored": os.environ.get("GPU_BENCH_CACHE_RESTORED", "no"),
            "triton_f32_default": os.environ.get("TRITON_F32_DEFAULT", "unset (tf32)"),
            "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        }
        if self.env.cuda:
            info["gpu_memory_bytes"] = torch.cuda.get_device_properties(dev).total_memory
        return info

    def run(self, warm: bool = True) -> int:
        p = self.plan
        device = torch.device(p.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            self.skip("everything: CUDA is not available here")
            self.report["env"] = {"device_name": "none", "torch": torch.__version__}
            self.env = Env(torch.device("cpu"), torch.bfloat16, 1, 0, 1)
            self.save()
            return 2
        self.env = Env(device, torch.bfloat16, p.steps, p.warmup, p.reps, p.kernel_reps)
        self.env.kv_cap_bytes = p.kv_cap_bytes
        fla = load_fla(p)
        self.report["env"] = self.env_info(fla)
        workers = start_warm_workers() if warm and fla.get("fla") else []
        t_warm = time.perf_counter()
        self.save()
        log(f"building models ({p.name}); fla: {fla}")
        try:
            self.build_ours()
        except Exception as exc:  # nothing to measure without our model: say why, stop
            traceback.print_exc()
            self.skip(f"everything: our model could not be built: {type(exc).__name__}: {exc}")
            self.save()
            return 1
        self.llama("llama-full")
        if workers:
            wait = min(WARM_WAIT_S, max(0.0, p.budget_s - self.budget.elapsed() - 120))
            self.report["warm"] = wait_warm_workers(workers, time.time() + wait)
            self.report["warm_s"] = time.perf_counter() - t_warm
            log(f"kernel warm-up: {self.report['warm']}")
        H = p.headline_length
        rest = [n for n in p.lengths if n != H]
        sections = [
            lambda: self.ours_at(H),
            lambda: self.llama_decode("llama-full", "dynamic", [H]),
            lambda: self.kernels([H]),
            lambda: self.ours_decode(H, p.extra_batches),
            lambda: self.llama_decode("llama-full", "dynamic", [H], p.extra_batches),
            lambda: [self.ours_at(n) for n in rest],
            lambda: self.llama_decode("llama-full", "dynamic", rest),
            lambda: self.llama_decode("llama-full", "static", [H]),
            lambda: self.llama_prefill("llama-full", p.lengths),
            lambda: self.kernels(rest),
            lambda: self.llama_decode("llama-gqa", "dynamic", p.lengths),
            lambda: self.ours_torch_step(H),
        ]
        for i, section in enumerate(sections, 1):
            try:
                section()
            except Exception as exc:  # a bug in one section must not cost the others
                traceback.print_exc()
                self.skip(f"the rest of section {i}: {type(exc).__name__}: {exc}"[:300])
        self.report["complete"] = True
        self.save()
        log(f"done in {self.budget.elapsed():.0f} s: {self.out / 'gpu.json'}")
        return 0
