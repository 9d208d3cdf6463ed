"""Measurements for ``scripts/gpu_bench.py``: one function per kind of row.

Every function returns a row dict and never raises: out-of-memory becomes a row with
``status: "oom"`` (the memory is given back before the next row), any other failure a row
with ``status: "error"`` and the message. Row fields:

    kind     "decode" | "prefill" | "kernel"
    model    "ours" | "llama-full" | "llama-gqa" | "fla-bf16" | "fla-fp32"
    variant  how it ran (dispatch of the retention op, Llama's cache kind, ...)
    L, B     prompt length (tokens already in the state or cache), batch size
    status   "ok" | "oom" | "error"
    ms       decode: ms per step (one token for each of the B rows); prefill/kernel: ms per call
    tokens_s decode: B·1000/ms; prefill/kernel: B·L·1000/ms
    peak_bytes, memory_kind
             CUDA: the allocator's peak during the row, minus what was allocated before it,
             plus the model's own weights ("cuda peak"); CPU: weights plus the state or cache
             tensors ("tensor bytes"), since CPU has no allocator statistics.

Decode timing: ``warmup`` untimed steps, then ``steps`` steps fed back greedily (argmax),
one synchronisation at the end: ms = wall time / steps, Python launch overhead included
(it is part of decoding). Prefill: one untimed call at the same length, then the best of
``reps`` timed calls. Kernel rows: the median of ``kernel_reps`` CUDA-event timed calls.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDA_ERROR_OUT_OF_MEMORY")


@dataclass
class Env:
    """What every row shares: device, weight dtype, step counts, the smoke test's memory cap.

    ``kv_cap_bytes``: a synthesised state or KV cache larger than this raises a simulated
    out-of-memory error (the smoke test's way to walk the OOM path on CPU); None on GPUs,
    where the allocator decides.
    """

    device: torch.device
    dtype: torch.dtype
    steps: int
    warmup: int
    reps: int
    kernel_reps: int = 10
    kv_cap_bytes: int | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (a tied weight counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def check_cap(env: Env, nbytes: int, what: str) -> None:
    """Raise the simulated OOM of the smoke test when ``nbytes`` exceeds the cap."""
    if env.kv_cap_bytes is not None and nbytes > env.kv_cap_bytes:
        raise torch.OutOfMemoryError(
            f"simulated out of memory: {what} needs {nbytes} bytes > cap {env.kv_cap_bytes}"
        )


class Meter:
    """Peak memory of one row: see the module docstring (``peak_bytes``)."""

    def __init__(self, env: Env, own_weights: int) -> None:
        self.env, self.own_weights, self.base = env, own_weights, 0
        if env.cuda:
            torch.cuda.synchronize(env.device)
            torch.cuda.reset_peak_memory_stats(env.device)
            self.base = torch.cuda.memory_allocated(env.device)

    def read(self, tensor_bytes: int) -> dict[str, Any]:
        if self.env.cuda:
            torch.cuda.synchronize(self.env.device)
            peak = torch.cuda.max_memory_allocated(self.env.device) - self.base
            return {"peak_bytes": peak + self.own_weights, "memory_kind": "cuda peak"}
        return {"peak_bytes": tensor_bytes + self.own_weights, "memory_kind": "tensor bytes"}


def guarded(row: dict[str, Any], env: Env, measure: Callable[[], dict[str, Any]]) -> dict:
    """``row`` completed by ``measure()``, or marked "oom"/"error"; memory freed after.

    The exception (and with it every frame holding the row's tensors) is dropped before
    the cache is emptied, so an OOM row leaves the card as it found it.
    """
    error = None
    try:
        row.update(measure(), status="ok")
    except Exception as exc:  # every failure becomes a row: the run goes on
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        is_oom = isinstance(exc, torch.OutOfMemoryError) or any(m in text for m in OOM_MARKERS)
        error = ("oom" if is_oom else "error", text)
    if error is not None:
        row.update(status=error[0], error=error[1], simulated="simulated" in error[1])
    gc.collect()
    if env.cuda:
        torch.cuda.empty_cache()
    return row


def _timed_steps(env: Env, step: Callable[[], None]) -> float:
    """Wall seconds of ``env.steps`` calls of ``step`` after ``env.warmup`` untimed ones."""
    for _ in range(env.warmup):
        step()
    env.sync()
    t0 = time.perf_counter()
    for _ in range(env.steps):
        step()
    env.sync()
    return time.perf_counter() - t0


def _best_call_ms(env: Env, call: Callable[[], Any]) -> float:
    """Best wall ms of ``env.reps`` calls after one untimed call (compile, allocator)."""
    call()
    env.sync()
    best = float("inf")
    for _ in range(env.reps):
        t0 = time.perf_counter()
        call()
        env.sync()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


# ---- ours -------------------------------------------------------------------------------


def ours_prefill(model, env: Env, length: int, variant: str) -> tuple[dict, Any]:
    """Chunkwise prefill of one random prompt of ``length`` tokens at batch 1.

    -> (row, the state after the prompt, or None when the row failed).
    """
    row = {"kind": "prefill", "model": "ours", "variant": variant, "L": length, "B": 1}
    last: dict[str, Any] = {}  # the state of the latest call

    def call() -> None:
        _, last["state"] = model.prefill(tokens, last_only=True)

    def measure() -> dict:
        meter = Meter(env, weight_bytes(model))
        with torch.inference_mode():
            ms = _best_call_ms(env, call)
        return {"ms": ms, "tokens_s": length * 1e3 / ms, **meter.read(last["state"].nbytes)}

    tokens = torch.randint(0, model.config.vocab_size, (1, length), device=env.device)
    row = guarded(row, env, measure)
    return row, last.get("state") if row["status"] == "ok" else None


def ours_decode(model, env: Env, prompt_state, batch: int, variant: str) -> dict:
    """Greedy decode of ``batch`` rows from ``prompt_state`` (batch 1) replicated ``batch``
    times: the step's cost depends on the state's shape, not on its values."""
    length = int(prompt_state.position[0])
    row = {"kind": "decode", "model": "ours", "variant": variant, "L": length, "B": batch}

    def measure() -> dict:
        check_cap(env, prompt_state.nbytes * batch, f"state of batch {batch}")
        meter = Meter(env, weight_bytes(model))
        cur = {"state": prompt_state.select([0] * batch)}
        cur["tok"] = torch.randint(0, model.config.vocab_size, (batch,), device=env.device)

        def step() -> None:
            logits, cur["state"] = model.step(cur["tok"], cur["state"])
            cur["tok"] = logits.argmax(-1)

        with torch.inference_mode():
            secs = _timed_steps(env, step)
        ms = secs * 1e3 / env.steps
        return {"ms": ms, "tokens_s": batch * 1e3 / ms, **meter.read(cur["state"].nbytes)}

    return guarded(row, env, measure)


@contextlib.contextmanager
def torch_retention():
    """retnet_core's retention dispatch forced onto the pure-torch reference, then restored."""
    from retnet_core import retention as R

    saved = list(R._fast)
    R._fast[:] = [None]
    try:
        yield
    finally:
        R._fast[:] = saved


def retention_dispatch(device: torch.device) -> str:
    """Retention dispatch on ``device``: "fla" (through fla_ops) or "torch" (the reference)."""
    from retnet_core import retention as R

    return "fla" if R._cuda_ops(torch.empty(1, device=device)) is not None else "torch"


# ---- Hugging Face Llama -----------------------------------------------------------------


def _cache_arg(model) -> str:
    """Name of the forward's cache argument (transformers ≥ 5.2x renames it ``cache``)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def llama_cache_bytes(config, batch: int, length: int, elem: int) -> int:
    """Bytes of a KV cache: layers · 2 (K, V) · B · kv heads · L · head dim · elem."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads
    return config.num_hidden_layers * 2 * batch * kv * length * head_dim * elem


def synthetic_cache(model, env: Env, kind: str, batch: int, length: int, room: int):
    """A KV cache holding ``length`` random positions, as a prefill would leave it.

    kind "dynamic": transformers' DynamicCache (its default; grows by concatenation);
    "static": StaticCache preallocated to ``length + room`` positions (written in place).
    """
    from transformers.cache_utils import DynamicCache, StaticCache

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    shape = (batch, cfg.num_key_value_heads, length, head_dim)
    if kind == "dynamic":
        cache, kw = DynamicCache(), {}
    else:
        cache = StaticCache(config=cfg, max_cache_len=length + room)
        kw = {"cache_kwargs": {"cache_position": torch.arange(length, device=env.device)}}
    for layer in range(cfg.num_hidden_layers):
        k = torch.randn(shape, device=env.device, dtype=env.dtype)
        v = torch.randn(shape, device=env.device, dtype=env.dtype)
        cache.update(k, v, layer, **kw)
        del k, v
    return cache


def llama_decode(model, env: Env, name: str, cache_kind: str, length: int, batch: int) -> dict:
    """Greedy decode of ``batch`` rows after a synthesised cache of ``length`` tokens."""
    row = {"kind": "decode", "model": name, "variant": f"sdpa, {cache_kind} cache"}
    row.update(L=length, B=batch)

    def measure() -> dict:
        nbytes = llama_cache_bytes(model.config, batch, length, env.dtype.itemsize)
        check_cap(env, nbytes, f"KV cache of batch {batch} at {length}")
        meter = Meter(env, weight_bytes(model))
        room = env.warmup + env.steps + 1
        with torch.inference_mode():
            cache = synthetic_cache(model, env, cache_kind, batch, length, room)
            arg = _cache_arg(model)
            cur = {"p": length}
            cur["tok"] = torch.randint(0, model.config.vocab_size, (batch, 1), device=env.device)

            def step() -> None:
                p = cur["p"]
                out = model(
                    input_ids=cur["tok"],
                    position_ids=torch.full((batch, 1), p, device=env.device),
                    cache_position=torch.tensor([p], device=env.device),
                    use_cache=True,
                    **{arg: cache},
                )
                cur["tok"], cur["p"] = out.logits[:, -1].argmax(-1, keepdim=True), p + 1

            secs = _timed_steps(env, step)
        ms = secs * 1e3 / env.steps
        grown = llama_cache_bytes(model.config, batch, cur["p"], env.dtype.itemsize)
        return {"ms": ms, "tokens_s": batch * 1e3 / ms, **meter.read(grown)}

    return guarded(row, env, measure)


def llama_prefill(model, env: Env, name: str, length: int) -> dict:
    """One forward over a random prompt at batch 1, filling its cache (logits of the last
    position only, as generation does)."""
    row = {"kind": "prefill", "model": name, "variant": "sdpa, dynamic cache"}
    row.update(L=length, B=1)

    def measure() -> dict:
        check_cap(env, llama_cache_bytes(model.config, 1, length, env.dtype.itemsize), "cache")
        meter = Meter(env, weight_bytes(model))
        tokens = torch.randint(0, model.config.vocab_size, (1, length), device=env.device)

        def call() -> Any:
            return model(input_ids=tokens, use_cache=True, logits_to_keep=1)

        with torch.inference_mode():
            ms = _best_call_ms(env, call)
        nbytes = llama_cache_bytes(model.config, 1, length, env.dtype.itemsize)
        return {"ms": ms, "tokens_s": length * 1e3 / ms, **meter.read(nbytes)}

    return guarded(row, env, measure)


# ---- retention kernels alone ------------------------------------------------------------


def _event_ms(env: Env, call: Callable[[], Any]) -> float:
    """Median ms of ``env.kernel_reps`` calls after one untimed (CUDA events; CPU: wall)."""
    call()
    env.sync()
    times = []
    for _ in range(env.kernel_reps):
        if env.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize(env.device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def kernel_row(env: Env, who: str, length: int, heads: int, dk: int, dv: int) -> dict:
    """Chunkwise retention of one sequence (B = 1) alone, without the model around it.

    who "fla-bf16": fla's ``chunk_simple_gla`` on bf16 (B, T, H, D) inputs, scale D_k^−½:
    what fla's own RetNet layer calls. "fla-fp32": the same kernel on float32 inputs.
    "ours": ``retnet_core.retention.chunkwise`` on float32 (B, H, T, D) inputs, as our layer
    calls it (the layout change and fla_ops' wrapper included; the reference without fla).
    """
    from retnet_core.layers import head_log_decay

    row = {"kind": "kernel", "model": who, "L": length, "B": 1}
    g_gamma = head_log_decay(heads).float().to(env.device)

    def measure() -> dict:
        gen = torch.Generator(device=env.device).manual_seed(0)
        dtype = torch.bfloat16 if who == "fla-bf16" else torch.float32

        def rand(d: int, head_first: bool) -> torch.Tensor:
            shape = (1, heads, length, d) if head_first else (1, length, heads, d)
            return (torch.randn(shape, generator=gen, device=env.device) * 0.1).to(dtype)

        with torch.inference_mode():
            if who == "ours":
                from retnet_core import retention as R

                q, k, v = rand(dk, True), rand(dk, True), rand(dv, True)
                variant = f"retention.chunkwise fp32, {retention_dispatch(env.device)} dispatch"
                # chunk 256 only matters to the reference (fla picks its own chunks)
                ms = _event_ms(env, lambda: R.chunkwise(q, k, v, g_gamma, None, 256))
            else:
                from fla.ops.simple_gla import chunk_simple_gla

                q, k, v = rand(dk, False), rand(dk, False), rand(dv, False)
                scale = dk**-0.5 if who == "fla-bf16" else 1.0
                variant = f"chunk_simple_gla {str(dtype).removeprefix('torch.')}"

                def call() -> Any:
                    return chunk_simple_gla(
                        q=q, k=k, v=v, g_gamma=g_gamma, scale=scale, output_final_state=True
                    )

                ms = _event_ms(env, call)
        return {"variant": variant, "ms": ms, "tokens_s": length * 1e3 / ms}

    return guarded(row, env, measure)
