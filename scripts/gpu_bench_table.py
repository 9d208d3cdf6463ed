"""The headline ratios of ``scripts/gpu_bench.py`` from its rows, and its markdown table.

Ratios (None when a side is missing; each comes with the rows it was taken from):

- ``throughput_ratio_8k``: our best decode tokens/s over any batch and dispatch at the
  headline length, over the full-head Llama's best over the batches that fit (any cache);
- ``throughput_ratio_8k_dynamic``: the same against Llama's default (dynamic) cache only;
- ``throughput_ratio_8k_grid``: the same over the issue's batches only (1, 8, 32, 64);
- ``throughput_ratio_8k_same_batch``: ours at the batch where Llama peaks, over Llama there;
- ``memory_saving_b32``: 1 − our peak / the full-head Llama's peak (dynamic cache, else
  static) at the memory batch and the headline length;
- ``prefill_kernel_ratio_8k``: fla's own chunk kernel (bf16) tokens/s over our chunkwise
  retention's (float32, as the model calls it), at the headline length (≤ 1.5 is the target);
- ``prefill_ratio_8k``: our model's prefill tokens/s over the full-head Llama's.
"""

from __future__ import annotations

from typing import Any

GIB = 1024**3

TARGETS = {  # issue 11, "GPU, when lent, 1.3B at 8k"
    "throughput_ratio_8k": (">=", 8.0),
    "memory_saving_b32": (">=", 0.70),
    "prefill_kernel_ratio_8k": ("<=", 1.5),
}


def _ok(rows: list[dict], **match: Any) -> list[dict]:
    """Rows with status "ok" whose fields equal ``match``."""
    return [r for r in rows if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def _best(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["tokens_s"], default=None)


def _pick(r: dict | None) -> dict | None:
    """The fields of a row that a headline ratio quotes."""
    if r is None:
        return None
    keys = ("model", "variant", "L", "B", "ms", "tokens_s", "peak_bytes", "memory_kind")
    return {k: r.get(k) for k in keys}


def _ratio(a: dict | None, b: dict | None) -> float | None:
    return a["tokens_s"] / b["tokens_s"] if a and b else None


def summarize(
    rows: list[dict], length: int, memory_batch: int, grid: list[int] | None = None
) -> dict[str, Any]:
    """The headline ratios (module docstring) and which rows they came from; ``grid``: the
    batches of ``throughput_ratio_8k_grid`` (None: every batch)."""
    ours = _ok(rows, kind="decode", model="ours", L=length)
    llama = _ok(rows, kind="decode", model="llama-full", L=length)

    def in_grid(rs: list[dict]) -> list[dict]:
        return [r for r in rs if grid is None or r["B"] in grid]

    llama_dyn = [r for r in llama if "dynamic" in r["variant"]]
    best_ours, best_llama, best_dyn = _best(ours), _best(llama), _best(llama_dyn)
    same = _best([r for r in ours if best_llama and r["B"] == best_llama["B"]])

    mem_ours = min(
        _ok(rows, kind="decode", model="ours", L=length, B=memory_batch),
        key=lambda r: r["peak_bytes"],
        default=None,
    )
    at_b = _ok(rows, kind="decode", model="llama-full", L=length, B=memory_batch)
    mem_llama = next((r for r in at_b if "dynamic" in r["variant"]), at_b[0] if at_b else None)
    saving = None
    if mem_ours and mem_llama:
        saving = 1.0 - mem_ours["peak_bytes"] / mem_llama["peak_bytes"]

    fla_own = _best(_ok(rows, kind="kernel", model="fla-bf16", L=length))
    our_kernel = _best(_ok(rows, kind="kernel", model="ours", L=length))
    our_prefill = _best(_ok(rows, kind="prefill", model="ours", L=length))
    llama_prefill = _best(_ok(rows, kind="prefill", model="llama-full", L=length))
    values = {
        "throughput_ratio_8k": _ratio(best_ours, best_llama),
        "throughput_ratio_8k_dynamic": _ratio(best_ours, best_dyn),
        "throughput_ratio_8k_grid": _ratio(_best(in_grid(ours)), _best(in_grid(llama))),
        "throughput_ratio_8k_same_batch": _ratio(same, best_llama),
        "memory_saving_b32": saving,
        "prefill_kernel_ratio_8k": _ratio(fla_own, our_kernel),
        "prefill_ratio_8k": _ratio(our_prefill, llama_prefill),
    }
    met = {}
    for key, (op, bound) in TARGETS.items():
        v = values[key]
        met[key] = None if v is None else (v >= bound if op == ">=" else v <= bound)
    sources = {
        "ours_best": best_ours,
        "llama_best": best_llama,
        "llama_best_dynamic": best_dyn,
        "ours_at_llama_peak_batch": same,
        "ours_memory": mem_ours,
        "llama_memory": mem_llama,
        "fla_kernel": fla_own,
        "our_kernel": our_kernel,
        "ours_prefill": our_prefill,
        "llama_prefill": llama_prefill,
    }
    return {**values, "targets_met": met, "from": {k: _pick(v) for k, v in sources.items()}}


# ---- markdown ---------------------------------------------------------------------------


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _gib(nbytes: int | None) -> str:
    """GiB, 2 decimals (3 significant digits below 0.1 GiB: the smoke shape's KiBs)."""
    if nbytes is None:
        return "–"
    gib = nbytes / GIB
    return f"{gib:.2f}" if gib >= 0.1 else f"{gib:.3g}"


def _params(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n:,}"


MODEL_ORDER = {"ours": 0, "llama-full": 1, "llama-gqa": 2, "fla-bf16": 3, "fla-fp32": 4}


def _status(r: dict) -> str:
    if r["status"] == "ok":
        return "ok"
    why = "simulated OOM" if r.get("simulated") else r["status"].upper()
    return f"{why}: {r.get('error', '')[:80]}" if r["status"] == "error" else why


def _rows_table(rows: list[dict], kind: str) -> list[str]:
    sel = sorted(
        (r for r in rows if r["kind"] == kind),
        key=lambda r: (MODEL_ORDER.get(r["model"], 9), r.get("variant", ""), r["L"], r["B"]),
    )
    if not sel:
        return ["(none)"]
    unit = "ms/step" if kind == "decode" else "ms/call"
    out = [
        f"| model | variant | L | B | {unit} | tokens/s | peak GiB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sel:
        out.append(
            f"| {r['model']} | {r.get('variant', '')} | {r['L']} | {r['B']} | "
            f"{_num(r.get('ms'), '.2f')} | {_num(r.get('tokens_s'), ',.0f')} | "
            f"{_gib(r.get('peak_bytes'))} | {_status(r)} |"
        )
    return out


def _headline(report: dict) -> list[str]:
    s, length = report, report["plan"]["headline_length"]
    grid = ", ".join(str(b) for b in report["plan"]["batches"])
    b = report["plan"]["memory_batch"]
    src = s["from"]

    def met(key: str) -> str:
        m = s["targets_met"].get(key)
        return "–" if m is None else ("yes" if m else "NO")

    def who(r: dict | None) -> str:
        if r is None:
            return "missing"
        return f"{r['model']} ({r['variant']}) B={r['B']}: {r['tokens_s']:,.0f} tokens/s"

    mem = "–"
    if src["ours_memory"] and src["llama_memory"]:
        mem = f"ours {_gib(src['ours_memory']['peak_bytes'])} GiB"
        mem += f", Llama {_gib(src['llama_memory']['peak_bytes'])} GiB"
        mem += f" ({src['llama_memory']['variant']}; {src['llama_memory']['memory_kind']})"
    return [
        "| measure | value | from | target | met |",
        "|---|---|---|---|---|",
        f"| decode throughput, ours best / full-head Llama best, L={length} | "
        f"{_num(s['throughput_ratio_8k'], '.2f')}× | {who(src['ours_best'])}; "
        f"{who(src['llama_best'])} | ≥ 8× | {met('throughput_ratio_8k')} |",
        f"| the same against Llama's default dynamic cache | "
        f"{_num(s['throughput_ratio_8k_dynamic'], '.2f')}× | "
        f"{who(src['llama_best_dynamic'])} | | |",
        f"| the same over batches {grid} only | "
        f"{_num(s['throughput_ratio_8k_grid'], '.2f')}× | | | |",
        f"| the same at Llama's peak batch | {_num(s['throughput_ratio_8k_same_batch'], '.2f')}× "
        f"| {who(src['ours_at_llama_peak_batch'])} | | |",
        f"| GPU memory saving at B={b}, L={length} | {_num(s['memory_saving_b32'], '.1%')} | "
        f"{mem} | ≥ 70% | {met('memory_saving_b32')} |",
        f"| fla's own chunk kernel (bf16) / our chunkwise retention, tokens/s, L={length} | "
        f"{_num(s['prefill_kernel_ratio_8k'], '.2f')}× | {who(src['fla_kernel'])}; "
        f"{who(src['our_kernel'])} | ≤ 1.5× | {met('prefill_kernel_ratio_8k')} |",
        f"| prefill tokens/s, ours / full-head Llama, B=1, L={length} | "
        f"{_num(s['prefill_ratio_8k'], '.2f')}× | {who(src['ours_prefill'])}; "
        f"{who(src['llama_prefill'])} | | |",
    ]


def markdown(report: dict) -> str:
    """The report as markdown: header, headline ratios, one table per kind of row."""
    env, plan = report["env"], report["plan"]
    lines = [
        f"# GPU benchmark: RetNet at the fla-hub 1.3B shape vs a same-size Llama ({plan['name']})",
        "",
        f"Ran {report['started']} on {env['device_name']}: torch {env['torch']}, "
        f"triton {env.get('triton')}, fla-core {env.get('fla')}, "
        f"transformers {env.get('transformers')}; weights {plan['dtype']}, random.",
        "",
        f"Command (device tool): `{report['command']}`",
        "",
        f"Elapsed {report['elapsed_s']:.0f} s of a {plan['budget_s']:.0f} s budget; "
        f"Triton kernels warmed in {_num(report.get('warm_s'), '.0f')} s "
        f"(cache restored: {env.get('triton_cache_restored')}); "
        f"fla autotune kept {plan['autotune_keep']} configs per kernel "
        f"(0 = all); TRITON_F32_DEFAULT={env.get('triton_f32_default')}.",
        "",
        "## Headline",
        "",
        *_headline(report),
        "",
        "## Models",
        "",
        "| model | shape | parameters | weights GiB |",
        "|---|---|---|---|",
    ]
    for m in report["models"]:
        lines.append(
            f"| {m['name']} | {m['shape']} | {_params(m['params'])} | {_gib(m['weight_bytes'])} |"
        )
    lines += ["", "## Decode", "", *_rows_table(report["rows"], "decode")]
    lines += ["", "## Prefill (batch 1)", "", *_rows_table(report["rows"], "prefill")]
    lines += ["", "## Chunkwise retention alone (batch 1)", ""]
    lines += _rows_table(report["rows"], "kernel")
    if report["skipped"]:
        lines += ["", "## Not run", ""] + [f"- {s}" for s in report["skipped"]]
    lines += ["", "## Method", "", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"
