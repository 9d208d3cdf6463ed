"""The tables of ``memsvc bench longmemeval``: rows → summary → markdown.

A row is one question (see :func:`memsvc.bench.longmemeval.play_one`): its type, whether
it is an abstention, the imported history and, per condition (``memory_on``,
``memory_off``), the reply with ``correct`` / ``exact`` / ``contains``, latency and usage.
"""

from __future__ import annotations

from typing import Any

from memsvc.bench._live import percentile

CONDITIONS = ("memory_on", "memory_off")
LENGTH_BUCKETS = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 10**9))  # sessions imported


def _bucket(lo: int, hi: int) -> str:
    """``1``, ``2-3``, ``32+``: the name of a history-length bucket."""
    return str(lo) if lo == hi else f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}"


def _group(rows: list[dict]) -> dict[str, Any]:
    """Counts and rates of one group of rows, per condition."""
    out: dict[str, Any] = {"n": len(rows)}
    for cond in CONDITIONS:
        for key in ("correct", "exact", "contains"):
            hits = sum(bool(r[cond][key]) for r in rows)
            out[f"{cond}_{key}"] = hits / len(rows) if rows else float("nan")
    return out


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Accuracy per question type (``_abs`` questions in their own group, so the groups'
    counts add up to the total) and per history length (:data:`LENGTH_BUCKETS` of
    sessions imported), p50/p95 latency of the question turn, token totals."""
    answerable = [r for r in rows if not r["abstention"]]
    types = sorted({r["question_type"] for r in answerable})
    summary: dict[str, Any] = {
        "questions": len(rows),
        "by_type": {t: _group([r for r in answerable if r["question_type"] == t]) for t in types},
        "abstention": _group([r for r in rows if r["abstention"]]),
        "overall": _group(rows),
        "tokens": {
            "fed_import": sum(r["fed_import"] for r in rows),
            "turns_imported": sum(r["turns_imported"] for r in rows),
            "sessions_imported": sum(r["sessions"] for r in rows),
            "turns_changed": sum(r["turns_changed"] for r in rows),
            "memory_writes": sum(r["memory_writes"] for r in rows),
        },
        "by_history": {
            _bucket(lo, hi): _group([r for r in rows if lo <= r["sessions"] <= hi])
            for lo, hi in LENGTH_BUCKETS
            if any(lo <= r["sessions"] <= hi for r in rows)
        },
        "latency": {},
    }
    for cond in CONDITIONS:
        lat = [r[cond]["latency_s"] * 1000 for r in rows]
        summary["latency"][cond] = {"p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95)}
        for key in ("prompt_tokens", "cached_tokens", "completion_tokens"):
            summary["tokens"][f"{cond}_{key}"] = sum(r[cond][key] for r in rows)
    return summary


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def markdown(summary: dict, meta: dict, rows: list[dict]) -> str:
    """The committed table: accuracy per type memory on vs off, latency, tokens."""
    s, t = summary, summary["tokens"]
    judged = meta["judge"] is not None
    lines = [
        "# LongMemEval through the REST API (memory on vs off)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Data: `{meta['data']}` ({meta['instances_in_file']} instances, first "
        f"{s['questions']} run), variant `{meta['variant']}`; model `{meta['model_dir']}`; "
        f"backend: {meta['backend']}; max_tokens {meta['max_tokens']}, greedy; "
        f"{meta['machine']['cpus']} CPUs, load {meta['machine']['loadavg_1_5_15']}; "
        f"{meta['wall_s']:.0f} s.",
        "",
        "Each instance is a new user: its sessions are imported through "
        "`POST /v1/sessions/{id}/transcript`, then the question is asked in a new session "
        'with `memory_scope: "user"` (on) and `"none"` (off). Correct = '
        + ("the judge's verdict" if judged else "the normalised answer is in the reply")
        + "; `_abs` questions are correct when the reply declines.",
        "",
        "| question type | n | on: correct | on: exact | off: correct | off: exact |",
        "|---|---|---|---|---|---|",
    ]
    groups = [*s["by_type"].items(), ("abstention (`_abs` ids, any type)", s["abstention"])]
    for name, g in [*groups, ("**all**", s["overall"])]:
        lines.append(
            f"| {name} | {g['n']} | {_pct(g['memory_on_correct'])} | {_pct(g['memory_on_exact'])}"
            f" | {_pct(g['memory_off_correct'])} | {_pct(g['memory_off_exact'])} |"
        )
    lines += [
        "",
        "By history length (sessions imported, all question kinds):",
        "",
        "| sessions | n | on: correct | off: correct |",
        "|---|---|---|---|",
    ]
    for name, g in s["by_history"].items():
        lines.append(
            f"| {name} | {g['n']} | {_pct(g['memory_on_correct'])} | "
            f"{_pct(g['memory_off_correct'])} |"
        )
    on, off = s["latency"]["memory_on"], s["latency"]["memory_off"]
    lines += [
        "",
        "| question turn | p50 ms | p95 ms | tokens fed (prompt) | served from saved state |",
        "|---|---|---|---|---|",
        f"| memory on | {on['p50_ms']:.0f} | {on['p95_ms']:.0f} | "
        f"{t['memory_on_prompt_tokens']} | {t['memory_on_cached_tokens']} |",
        f"| memory off | {off['p50_ms']:.0f} | {off['p95_ms']:.0f} | "
        f"{t['memory_off_prompt_tokens']} | {t['memory_off_cached_tokens']} |",
        "",
        f"History imported: {t['sessions_imported']} sessions, {t['turns_imported']} messages, "
        f"**{t['fed_import']} tokens fed** once (prefilled, nothing generated; "
        f"{t['memory_writes']} memory writes; {t['turns_changed']} messages adjusted to "
        "user/assistant pairs). The question session is new, so no history is served from "
        "a saved state (0 by design) and none is re-fed: with memory on, the history "
        "reaches the question only through the memories written at import.",
        "",
        "Misses with memory on (first 10):",
        "",
    ]
    misses = [r for r in rows if not r["memory_on"]["correct"]][:10]
    lines += [
        f"- `{r['question_id']}` {r['question']!r} (answer {r['answer']!r}): "
        f"{r['memory_on']['reply']!r}"
        for r in misses
    ] or ["- none"]
    return "\n".join(lines) + "\n"
