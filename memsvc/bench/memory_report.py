"""Rates, targets and the markdown table of ``memsvc bench memory``.

Each measure is a rate over scored items: ``rate = ok / n``. The gap is
``rate − target`` (≥ targets: negative means missed; the ≤ target of the cross-user
rate: positive means missed). Issue 13's "Targets" table gives the targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    op: str  # ">=" or "<="
    target: float
    baseline: bool  # the memory-off condition plays it


MEASURES = (
    Measure("recall_trained", "recall, trained kinds", ">=", 0.90, True),
    Measure("recall_other", "recall, kinds absent from memory training", ">=", 0.80, True),
    Measure("declines", "declines when never told", ">=", 0.80, True),
    Measure("latest", "latest value after an update", ">=", 0.80, True),
    Measure("forget_removes", '"please forget …": that fact gone', ">=", 0.95, False),
    Measure("forget_keeps", '"please forget …": the other facts kept', ">=", 0.90, False),
    Measure("cross_user", "another user of the tenant gets the fact", "<=", 0.05, False),
)


def met(m: Measure, rate: float | None) -> bool | None:
    """Whether ``rate`` meets the target (None without items)."""
    if rate is None:
        return None
    return rate >= m.target if m.op == ">=" else rate <= m.target


def _rate(items: list[dict], key: str, flag: str = "ok") -> dict[str, Any]:
    chosen = [it for it in items if it["measure"] == key]
    ok = sum(bool(it[flag]) for it in chosen)
    return {"n": len(chosen), "ok": ok, "rate": ok / len(chosen) if chosen else None}


def _items(users: list[dict]) -> list[dict]:
    return [it for u in users for it in u["items"]]


def summarise(rows: dict[str, list[dict]]) -> dict[str, Any]:
    """Per measure: n, ok, rate, target, gap, met (memory on) and the memory-off rate."""
    on, off = _items(rows["memory_on"]), _items(rows["memory_off"])
    measures = {}
    for m in MEASURES:
        r = _rate(on, m.key)
        base = _rate(off, m.key) if (m.baseline and rows["memory_off"]) else None
        measures[m.key] = {
            **r,
            "target": m.target,
            "op": m.op,
            "gap": None if r["rate"] is None else round(r["rate"] - m.target, 4),
            "met": met(m, r["rate"]),
            "memory_off": base,
        }
    latest = [it for it in on if it["measure"] == "latest"]
    removes = [it for it in on if it["measure"] == "forget_removes"]
    users = rows["memory_on"]
    by_kind: dict[str, list[int]] = {}
    for it in on:
        if it["measure"].startswith("recall"):
            ok_n = by_kind.setdefault(it["kind"], [0, 0])
            ok_n[0] += bool(it["ok"])
            ok_n[1] += 1
    return {
        "users": len(users),
        "recall_by_kind": dict(sorted(by_kind.items())),
        "facts": sum(measures[k]["n"] for k in ("recall_trained", "recall_other")),
        "measures": measures,
        "diagnostics": {
            "users_with_a_fact_written": sum(u["facts_written"] > 0 for u in users),
            "old_value_named_after_update": sum(it["old_named"] for it in latest),
            "forget_value_gone_from_reply": sum(it["gone_reply"] for it in removes),
            "forget_value_gone_from_memories": sum(it["gone_store"] for it in removes),
            "forget_requests_removing_a_memory": sum(
                it["forgotten_memories"] > 0 for it in removes
            ),
            "forget_requests_removing_no_memory_with_the_value": sum(
                not any(it["value"].lower() in t.lower() for t in it["removed_texts"])
                for it in removes
            ),
            "kept_facts_still_in_memories": sum(
                it["kept_in_store"] for it in on if it["measure"] == "forget_keeps"
            ),
        },
    }


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _row(m: Measure, s: dict[str, Any]) -> str:
    base = s["memory_off"]
    off = "–" if base is None else f"{_fmt(base['rate'])} ({base['ok']}/{base['n']})"
    verdict = {True: "met", False: "**missed**", None: "–"}[s["met"]]
    gap = "–" if s["gap"] is None else f"{s['gap']:+.2f}"
    return (
        f"| {m.label} | {s['n']} | {_fmt(s['rate'])} ({s['ok']}/{s['n']}) | {off} "
        f"| {m.op.replace('>=', '≥').replace('<=', '≤')} {m.target:.2f} | {gap} | {verdict} |"
    )


def markdown(summary: dict[str, Any], meta: dict[str, Any], rows: dict[str, list[dict]]) -> str:
    """memory.md: the command, the table with targets and gaps, diagnostics, misses."""
    mach = meta["machine"]
    lines = [
        "# Cross-session memory through REST (issue 13's protocol)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Model: `{meta['model_dir']}`; backend: {meta['backend']}; {summary['users']} users, "
        f"{summary['facts']} facts; {mach['cpus']} CPUs, load {mach['loadavg_1_5_15']}; "
        f"{meta['wall_s']:.0f} s.",
        "",
        "Each user tells three facts over two sessions (everyday phrasings and values held "
        "out of memory training) and is asked each one in a new session; is asked one kind "
        "never told; updates one fact and is asked it in a new session; asks to forget "
        "another and is asked all three in new sessions. Another user of the tenant is "
        "asked the first fact. Recall = the reply contains the value (whole word, any "
        "case); decline = the reply says it does not know and names no value of that "
        "kind; forget removes = the value is neither in the reply nor in any memory text "
        "(`GET /v1/users/{u}/memories`). Memory off = the same turns in sessions with "
        '`memory_scope: "none"`. Gap = rate − target (for the ≤ target, negative is good).',
        "",
        "| measure | n | memory on | memory off | target | gap | |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_row(m, summary["measures"][m.key]) for m in MEASURES]
    lines += ["", "Diagnostics (counts over users):", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in summary["diagnostics"].items()]
    kinds = ", ".join(f"{k} {ok}/{n}" for k, (ok, n) in summary["recall_by_kind"].items())
    lines += ["", f"Recall by kind (memory on): {kinds}."]
    lines += ["", "First misses per measure (memory on):", ""]
    items = [it for u in rows["memory_on"] for it in u["items"]]
    for m in MEASURES:
        bad = [it for it in items if it["measure"] == m.key and (it["ok"] != (m.op == ">="))]
        for it in bad[:3]:
            value = f" (value `{it['value']}`)" if it["value"] else ""
            lines.append(f"- {m.key}: asked `{it['asked']}`{value}: `{it['reply']}`")
    return "\n".join(lines) + "\n"


# ---- the run's record ------------------------------------------------------------------
def command_line(
    out: Path,
    model_dir: Path | None,
    users: int,
    seed: int,
    max_tokens: int,
    concurrency: int,
    baseline: bool,
    postgres: bool,
    weights: str = "auto",
    chatter: bool = False,
    query_adapter: str = "bundled",
    note_contrast: float | None = None,
    note_check: bool = True,
) -> str:
    """The command that reproduces a run (database URLs elided)."""
    cmd = f"memsvc bench memory --out {out} --users {users} --seed {seed}"
    cmd += f" --max-tokens {max_tokens} --concurrency {concurrency}"
    cmd += f" --model-dir {model_dir}" if model_dir else ""
    cmd += "" if baseline else " --no-baseline"
    cmd += "" if weights == "auto" else f" --weights {weights}"
    cmd += " --chatter" if chatter else ""
    cmd += "" if query_adapter == "bundled" else f" --query-adapter {query_adapter}"
    cmd += "" if note_contrast is None else f" --note-contrast {note_contrast:g}"
    cmd += "" if note_check else " --no-note-check"
    return cmd + (" --database-url URL --redis-url URL" if postgres else "")


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (results stay portable)."""
    from memsvc.bench._live import REPO_ROOT

    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def plan_json(plan: Any) -> dict[str, Any]:
    """A :class:`~memsvc.bench.memory_data.UserPlan` as JSON (what the user said)."""
    return {
        "user": plan.index,
        "facts": [{"kind": f.kind, "value": f.value, "tell": f.tell} for f in plan.facts],
        "never": plan.never,
        "update": {"fact": plan.update, "value": plan.new_value, "said": plan.update_text},
        "forget": {"fact": plan.forget, "said": plan.forget_text},
    }
