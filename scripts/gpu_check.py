"""GPU check: fla-core fast paths against the pure-torch reference, and timings on CUDA.

Run on a CUDA machine with fla-core importable:

    python scripts/gpu_check.py --out DIR [--f32 ieee|tf32]

``--f32`` sets ``TRITON_F32_DEFAULT`` before triton compiles anything: ``ieee`` gives
true float32 dots in fla's chunk kernels, ``tf32`` is triton's default on Hopper.
Writes ``gpu_check_<f32>.json`` and ``.md`` to DIR and exits non-zero when an
equivalence check misses its tolerance. Not a pytest: CI has no GPU, and a skipped test
must never count as a pass.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    """Progress on stdout at once: a long autotune must not look like a hang."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prune_autotune(keep: int) -> int:
    """Cut every fla triton autotuner to at most ``keep`` configs; returns how many were cut.

    fla autotunes each kernel over up to ~48 configs, each a separate compile: minutes on
    a fresh machine. Correctness does not depend on the config; timings may be slightly
    worse than a full autotune would give (the report says which was used).
    """
    from triton.runtime.autotuner import Autotuner

    cut = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("fla.ops") or module is None:
            continue
        for obj in vars(module).values():
            if isinstance(obj, Autotuner) and len(obj.configs) > keep:
                preferred = [c for c in obj.configs if c.num_warps == 4] or obj.configs
                obj.configs = preferred[:keep]
                cut += 1
    return cut


def rel_err(got, ref) -> float:
    """max |got − ref| / max |ref| (0 when both are 0)."""
    scale = ref.abs().max().item()
    return (got.double() - ref.double()).abs().max().item() / (scale or 1.0)


@contextlib.contextmanager
def reference_only():
    """Force retnet_core's dispatch onto the pure-torch reference, then restore it."""
    from retnet_core import retention as R

    saved = list(R._fast)
    R._fast[:] = [None]
    try:
        yield
    finally:
        R._fast[:] = saved


def op_checks(torch, tol: float, padded_cases: bool) -> list[dict]:
    """fla_ops.{chunkwise, recurrent, step} vs the reference on random inputs, fp32.

    ``padded_cases`` picks the right-padded batches (fla's varlen kernels) or the rest.
    """
    from retnet_core import fla_ops
    from retnet_core import retention as R
    from retnet_core.layers import head_log_decay

    gen = torch.Generator(device="cuda").manual_seed(0)
    h, dk, dv = 8, 64, 128
    ld = head_log_decay(h).float().cuda()
    rows = []
    for b, t, with_state, padded in [
        (2, 1, False, False),
        (2, 63, True, False),
        (2, 300, True, False),
        (2, 1000, False, True),
        (1, 4096, True, False),
        (3, 517, True, True),
    ]:
        if padded != padded_cases:
            continue
        q = torch.randn(b, h, t, dk, device="cuda", generator=gen) * dk**-0.5
        k = torch.randn(b, h, t, dk, device="cuda", generator=gen) * dk**-0.5
        v = torch.randn(b, h, t, dv, device="cuda", generator=gen)
        s0 = torch.randn(b, h, dk, dv, device="cuda", generator=gen) if with_state else None
        lengths = torch.tensor([t - 7 * i for i in range(b)], device="cuda") if padded else None
        ref_o, ref_s = R.retention_chunkwise(q, k, v, ld, s0, 64, None, lengths)
        case = f"B={b} T={t} state={with_state} padded={padded}"
        fla_o, fla_s = fla_ops.chunkwise(q, k, v, ld, s0, None, None, lengths)
        rows.append(_row("chunkwise", case, fla_o, ref_o, fla_s, ref_s, tol))
        if t <= 1000:
            fla_o, fla_s = fla_ops.recurrent(q, k, v, ld, s0, lengths)
            rows.append(_row("recurrent", case, fla_o, ref_o, fla_s, ref_s, tol))
        q1, k1, v1 = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        ref_o, ref_s = R.retention_step(q1, k1, v1, ld, s0)
        fla_o, fla_s = fla_ops.step(q1, k1, v1, ld, s0)
        rows.append(_row("step", case, fla_o, ref_o, fla_s, ref_s, tol))
    return rows


def _row(op, case, fo, ro, fs, rs, tol) -> dict:
    err_o, err_s = rel_err(fo, ro), rel_err(fs, rs)
    log(f"{op} {case}: out {err_o:.2e} state {err_s:.2e}")
    return {
        "op": op,
        "case": case,
        "out_rel": err_o,
        "state_rel": err_s,
        "ok": max(err_o, err_s) <= tol,
    }


def _bench_model(torch, model, prompt_len: int, steps: int) -> dict:
    """Prefill seconds and median decode ms/token (synchronised per step)."""
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), device="cuda")
    with torch.inference_mode():
        model.prefill(prompt[:, :256], last_only=True)  # warm-up (kernel compile, caches)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits, state = model.prefill(prompt, last_only=True)
        torch.cuda.synchronize()
        prefill_s = time.perf_counter() - t0
        token, times = logits.argmax(-1), []
        for i in range(steps + 5):
            t0 = time.perf_counter()
            logits, state = model.step(token, state)
            token = logits.argmax(-1)
            torch.cuda.synchronize()
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1e3)
    return {"L": prompt_len, "prefill_s": prefill_s, "decode_ms": statistics.median(times)}


def model_equivalence(torch, tol: float, norm: str, padded: bool) -> list[dict]:
    """A small model's prefill and step logits with fla vs the reference dispatch."""
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    torch.manual_seed(0)
    cfg = RetNetConfig(
        vocab_size=1000, d_model=256, n_layers=2, n_heads=4, ffn_dim=512, retention_norm=norm
    )
    model = RetNetLM(cfg).cuda().eval()
    tokens = torch.randint(0, 1000, (2, 700), device="cuda")
    lengths = torch.tensor([700, 650], device="cuda") if padded else None
    valid = 650 if padded else 700
    with torch.inference_mode():
        fast, fs = model.prefill(tokens, lengths=lengths, boundaries=[100, 333])
        sf, _ = model.step(tokens[:, 0], fs)
        with reference_only():
            ref, rs = model.prefill(tokens, lengths=lengths, boundaries=[100, 333])
            sr, _ = model.step(tokens[:, 0], rs)
    case = f"B=2 T=700 padded={padded}"
    err = max(rel_err(fast[0], ref[0]), rel_err(fast[1, :valid], ref[1, :valid]))
    state_err = max(rel_err(a, b) for a, b in zip(fs.S, rs.S, strict=True))
    log(f"model {norm} {case}: prefill {err:.2e} state {state_err:.2e}")
    rows = [
        {
            "op": f"model prefill ({norm})",
            "case": case,
            "out_rel": err,
            "state_rel": state_err,
            "ok": max(err, state_err) <= tol,
        }
    ]
    step_err = rel_err(sf, sr)
    rows.append(
        {
            "op": f"model step ({norm})",
            "case": "after prefill",
            "out_rel": step_err,
            "state_rel": 0.0,
            "ok": step_err <= tol,
        }
    )
    return rows


def model_timings(torch) -> list[dict]:
    """Prefill and decode at the decode benchmark's shape, fla vs reference dispatch."""
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    torch.manual_seed(0)
    big = RetNetLM(RetNetConfig()).cuda().eval()
    timings = []
    for length in (1024, 8192, 32768):
        fast = _bench_model(torch, big, length, 64)
        with reference_only():
            ref = _bench_model(torch, big, length, 64)
        timings.append({"L": length, "fla": fast, "torch": ref})
        log(f"model L={length}: fla {fast}, torch {ref}")
    return timings


def _cuda_ms(torch, fn, *args) -> float:
    """Median of 10 timed calls of fn(*args) in ms (CUDA events), after one warm-up."""
    fn(*args)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_timings(torch) -> list[dict]:
    """chunkwise forward alone at B=1, H=8, D_k=64, D_v=128: fla vs reference (chunk 256)."""
    from retnet_core import fla_ops
    from retnet_core import retention as R
    from retnet_core.layers import head_log_decay

    ld = head_log_decay(8).float().cuda()
    rows = []
    for t in (2048, 8192, 32768):
        q, k = (torch.randn(1, 8, t, 64, device="cuda") * 0.125 for _ in range(2))
        v = torch.randn(1, 8, t, 128, device="cuda")
        fla_ms = _cuda_ms(torch, fla_ops.chunkwise, q, k, v, ld)
        torch_ms = _cuda_ms(torch, R.retention_chunkwise, q, k, v, ld, None, 256)
        rows.append({"T": t, "fla_ms": fla_ms, "torch_ms": torch_ms})
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check ({report['device']}, TRITON_F32_DEFAULT={report['f32']})",
        "",
        f"fla autotune: {report['autotune']}.",
        "",
        f"torch {report['torch']}, fla-core {report['fla']}, triton {report['triton']}",
        "",
        f"Equivalence, tolerance {report['tol']:g} (max abs diff / max abs ref):",
        "",
        "| op | case | out rel | state rel | ok |",
        "|---|---|---|---|---|",
    ]
    for r in report["checks"]:
        ok = "yes" if r["ok"] else "NO"
        errs = f"{r['out_rel']:.2e} | {r['state_rel']:.2e}"
        lines.append(f"| {r['op']} | {r['case']} | {errs} | {ok} |")
    lines += [
        "",
        "Model at the decode bench's shape (fp32, batch 1):",
        "",
        "| L | prefill s fla | prefill s torch | decode ms/token fla | decode torch |",
        "|---|---|---|---|---|",
    ]
    for r in report["model_timings"]:
        f, t = r["fla"], r["torch"]
        lines.append(
            f"| {r['L']} | {f['prefill_s']:.4f} | {t['prefill_s']:.4f} | "
            f"{f['decode_ms']:.2f} | {t['decode_ms']:.2f} |"
        )
    lines += [
        "",
        "Chunkwise kernel alone (B=1, H=8, D_k=64, D_v=128):",
        "",
        "| T | fla ms | torch ms |",
        "|---|---|---|",
    ]
    for r in report["kernel_timings"]:
        lines.append(f"| {r['T']} | {r['fla_ms']:.3f} | {r['torch_ms']:.3f} |")
    if report["skipped"]:
        lines += ["", f"Not run (time budget): {', '.join(report['skipped'])}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--f32", choices=["ieee", "tf32"], default="ieee")
    p.add_argument("--autotune-keep", type=int, default=0, help="0: full fla autotune")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no section after this")
    args = p.parse_args()
    os.environ["TRITON_F32_DEFAULT"] = args.f32  # before triton compiles any kernel
    sys.path.insert(0, str(ROOT))
    import fla
    import torch
    import triton

    assert torch.cuda.is_available(), "gpu_check needs CUDA"
    import retnet_core.fla_ops  # noqa: F401 - loads fla's kernels so they can be pruned

    pruned = prune_autotune(args.autotune_keep) if args.autotune_keep else 0
    log(f"fla {fla.__version__}, triton {triton.__version__}; pruned {pruned} autotuners")
    tol = 1e-4 if args.f32 == "ieee" else 5e-3
    report = {
        "autotune": f"pruned to {args.autotune_keep} configs" if pruned else "full",
        "device": torch.cuda.get_device_name(),
        "f32": args.f32,
        "tol": tol,
        "torch": torch.__version__,
        "fla": getattr(fla, "__version__", "?"),
        "triton": triton.__version__,
        "checks": [],
        "model_timings": [],
        "kernel_timings": [],
        "skipped": [],
    }
    # Most valuable first: each new kernel variant costs minutes of compile on a fresh
    # machine, so a run cut short by --budget-s still reports what it reached.
    sections = [
        ("checks", "ops", lambda: op_checks(torch, tol, padded_cases=False)),
        ("checks", "model decay", lambda: model_equivalence(torch, tol, "decay", False)),
        ("model_timings", "model timings", lambda: model_timings(torch)),
        ("kernel_timings", "kernel timings", lambda: kernel_timings(torch)),
        ("checks", "ops padded", lambda: op_checks(torch, tol, padded_cases=True)),
        ("checks", "model torchscale", lambda: model_equivalence(torch, tol, "torchscale", True)),
    ]
    start = time.perf_counter()
    for key, name, run in sections:
        if time.perf_counter() - start > args.budget_s:
            report["skipped"].append(name)
            log(f"skipped {name}: over --budget-s")
            continue
        report[key] += run()
        save(report, args.out, args.f32)
    print(markdown(report))
    return 0 if all(r["ok"] for r in report["checks"]) else 1


def save(report: dict, out: Path, f32: str) -> None:
    """Write the report so far as gpu_check_<f32>.json and .md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_check_{f32}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"gpu_check_{f32}.md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
