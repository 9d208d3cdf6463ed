"""fla and Triton for ``scripts/gpu_bench.py``: import, autotune pruning, parallel warm-up.

On a fresh machine each fla kernel variant costs many seconds of Triton compilation (and
autotuning compiles one kernel per config). The run needs three variants: the chunk
kernels on float32 (our prefill), on bf16 (fla's own layer, for the kernel comparison),
and the fused recurrent kernel on float32 with a state (our decode step). Worker
processes compile them in parallel into ``TRITON_CACHE_DIR`` while the main process
builds the models; the main process then loads the compiled kernels and the autotune
choices (fla autotunes with ``cache_results``) from that cache.

Never imported on CPU runs: the CPU path never imports fla or triton.
"""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

WARM_KERNELS = ("chunk-fp32", "chunk-bf16", "step-fp32")
MAIN = Path(__file__).resolve().parent / "gpu_bench.py"


def version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (None when absent)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _config_rank(c: Any) -> tuple:
    """Order fla's autotune configs: 4 warps, 2-3 stages, larger tiles (≤ 64) first."""
    size = 1
    for v in c.kwargs.values():
        if isinstance(v, int):
            size *= min(v, 64)
    return (c.num_warps != 4, c.num_stages not in (2, 3), -size, c.num_stages)


def pick_configs(configs: list, keep: int) -> list:
    """``keep`` of an autotuner's configs: the best-ranked one, then the best-ranked ones
    with other tile sizes (so that one still compiles if the first runs out of shared
    memory), then the next best. Deterministic: worker processes and the main process
    must agree, or the autotune results they cache would not be found."""
    ranked = sorted(configs, key=_config_rank)
    kept = [ranked[0]]
    kept += [c for c in ranked if c.kwargs != ranked[0].kwargs][: keep - 1]
    kept += [c for c in ranked if c not in kept][: keep - len(kept)]
    return kept


def autotuners(obj: Any) -> list:
    """The Triton autotuners inside a module-level kernel object.

    fla stacks ``@triton.heuristics`` over ``@triton.autotune`` for its main kernels
    (chunk_fwd_kernel_h, chunk_fwd_kernel_o, fused_recurrent_fwd_kernel), so the module
    attribute is a Heuristics whose ``.fn`` is the Autotuner: follow ``.fn`` down.
    """
    from triton.runtime.autotuner import Autotuner

    found = []
    for _ in range(4):  # heuristics -> autotune -> jit -> function, at most
        if isinstance(obj, Autotuner):
            found.append(obj)
        obj = getattr(obj, "fn", None)
        if obj is None:
            break
    return found


def prune_autotune(keep: int) -> int:
    """Cut every loaded fla autotuner to ``keep`` configs (0: all); returns how many were cut.

    fla tunes chunk_fwd_kernel_h over 48 configs, each a separate compilation. Timings may
    be a little worse than a full autotune's; the report says how many configs were kept.
    """
    if keep <= 0:
        return 0
    cut = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("fla.ops") or module is None:
            continue
        for obj in vars(module).values():
            for tuner in autotuners(obj):
                if len(tuner.configs) > keep:
                    tuner.configs = pick_configs(tuner.configs, keep)
                    cut += 1
    return cut


def load_fla(plan: Any) -> dict:
    """Import fla through retnet_core.fla_ops and prune its autotuners (CUDA runs only)."""
    if plan.device == "cpu":
        return {"fla": None, "why": "CPU run: the CPU path never imports fla or triton"}
    try:
        import retnet_core.fla_ops  # noqa: F401 - loads fla's kernels so they can be pruned
    except Exception as exc:  # no fla here: the model falls back to the torch reference
        return {"fla": None, "why": f"fla not importable: {exc}"}
    found = version("fla-core") or "imported (version unknown)"
    return {"fla": found, "pruned": prune_autotune(plan.autotune_keep)}


def warm_kernel(name: str, plan: Any) -> int:
    """Worker: call one fla kernel variant once at the run's shapes (compile + autotune)."""
    import torch

    from retnet_core import fla_ops
    from retnet_core.layers import head_log_decay

    prune_autotune(plan.autotune_keep)
    h, d = plan.retnet["n_heads"], plan.retnet["d_model"]
    dk, dv, t = d // h, 2 * d // h, plan.headline_length
    ld = head_log_decay(h).float().cuda()

    def rand(*shape, dtype=torch.float32):
        return (torch.randn(*shape, device="cuda") * 0.1).to(dtype)

    with torch.inference_mode():
        if name == "chunk-fp32":  # our prefill: (B, H, T, D) fp32, no initial state
            fla_ops.chunkwise(rand(1, h, t, dk), rand(1, h, t, dk), rand(1, h, t, dv), ld)
        elif name == "chunk-bf16":  # fla's own layer: (B, T, H, D) bf16
            from fla.ops.simple_gla import chunk_simple_gla

            bf = torch.bfloat16
            q, k, v = (rand(1, t, h, n, dtype=bf) for n in (dk, dk, dv))
            chunk_simple_gla(q=q, k=k, v=v, g_gamma=ld, scale=dk**-0.5, output_final_state=True)
        else:  # our decode step: fp32, with a state
            b = 8
            fla_ops.step(rand(b, h, dk), rand(b, h, dk), rand(b, h, dv), ld, rand(b, h, dk, dv))
        torch.cuda.synchronize()
    return 0


def start_warm_workers() -> list[tuple[str, subprocess.Popen, float]]:
    """One worker process per kernel variant, compiling in parallel into the Triton cache."""
    args = [a for a in sys.argv[1:] if a != "--no-warm-workers"]
    return [
        (n, subprocess.Popen([sys.executable, str(MAIN), *args, "--warm-kernel", n]), time.time())
        for n in WARM_KERNELS
    ]


def wait_warm_workers(workers, deadline: float) -> dict:
    """Wait for the workers until ``deadline`` (time.time()); kill the late ones."""
    done = {}
    for name, proc, t0 in workers:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()  # only this worker, which we started
            proc.wait()
            rc = "killed at the warm-up deadline"
        done[name] = {"rc": rc, "s": round(time.time() - t0, 1)}
    return done
