"""Twenty sample conversations on topics the training data never covers, verbatim.

`memsvc bench topics --out DIR` starts ``memsvc serve`` with ``MEMSVC_MODEL`` (default
``smollm2-hybrid``, int8 weights, SQLite) and holds one two-turn conversation per topic
below through the REST API, greedy. Each topic has a **key word** that occurs in no
conversation of the chit-chat train split (the distillation's only conversational data;
the script checks this and prints the counts, and a topic whose word does occur is
reported as such, not hidden). Writes ``topics.md`` and ``topics.json``. Nothing is
cherry-picked: the questions are fixed here and every reply is printed.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import ADMIN_KEY, LiveServer, exit_on_sigterm, machine_info, work_root
from memsvc.bench._live import new_tenant_key as _new_tenant_key

# (key word absent from the training conversations, first question, follow-up)
TOPICS: tuple[tuple[str, str, str], ...] = (
    ("photosynthesis", "Can you explain photosynthesis simply?", "What does chlorophyll do in it?"),
    ("thermodynamics", "What is the first law of thermodynamics?", "Give an everyday example."),
    ("kombucha", "How is kombucha made?", "Is it safe to brew at home?"),
    ("tectonic", "What are tectonic plates?", "How do they make mountains?"),
    ("sonnet", "Write a short sonnet about the sea.", "Now one about a city at night."),
    ("carburetor", "What does a carburetor do in an engine?", "Why do new cars not use one?"),
    ("limerick", "Write a limerick about a cat who loves cheese.", "Now one about a dog."),
    ("sundial", "How does a sundial tell the time?", "Does it work in winter?"),
    ("abacus", "How do you add numbers on an abacus?", "Who used the abacus first?"),
    ("barometer", "What does a barometer measure?", "How does it help forecast weather?"),
    ("papyrus", "How did ancient Egyptians make papyrus?", "What did they write on it?"),
    ("aqueduct", "How did Roman aqueducts carry water?", "Are any still standing?"),
    ("nebula", "What is a nebula?", "How are stars born in one?"),
    ("fjord", "How are fjords formed?", "Which country is famous for them?"),
    ("tsunami", "What causes a tsunami?", "What should people near the coast do?"),
    ("geyser", "Why does a geyser erupt?", "Where is the most famous one?"),
    ("semiconductor", "What is a semiconductor?", "Why do computers need them?"),
    ("pythagoras", "Explain the Pythagoras theorem with an example.", "Where is it used?"),
    ("espresso", "How do I make a good espresso at home?", "How is a latte different?"),
    ("risotto", "How do I cook a creamy risotto?", "Can I make it without wine?"),
)


def training_counts(words: list[str]) -> dict[str, int]:
    """How many chit-chat *train* conversations mention each word (whole word, any case)."""
    from retnet_core.training.data import load_chitchat, split_conversations

    texts = [c.text().lower() for c in split_conversations(load_chitchat())["train"]]
    out = {}
    for w in words:
        pat = re.compile(rf"(?<![a-z]){re.escape(w.lower())}s?(?![a-z])")
        out[w] = sum(1 for t in texts if pat.search(t))
    return out


async def _converse(url: str, key: str, max_tokens: int) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers) as client:
        for word, first, follow in TOPICS:
            r = await client.post("/v1/sessions", json={})
            r.raise_for_status()
            sid = r.json()["id"]
            turns = []
            for text in (first, follow):
                body = {"content": text, "max_tokens": max_tokens, "temperature": 0}
                r = await client.post(f"/v1/sessions/{sid}/messages", json=body)
                r.raise_for_status()
                turns.append({"user": text, "assistant": r.json()["message"]["content"]})
            out.append({"topic": word, "turns": turns})
    return out


def report(result: dict[str, Any]) -> str:
    lines = [
        f"# Twenty conversations with `{result['model']}` on topics outside its training data",
        "",
        f"Command: `{result['command']}` (REST API, greedy, `MEMSVC_WEIGHTS="
        f"{result['weights']}`, {result['max_tokens']} tokens per reply at most). "
        f"{result['machine']['time_utc']}.",
        "",
        "Each topic's key word and how many chit-chat *train* conversations mention it "
        "(0: the topic is absent from the conversational data the model was distilled on; "
        "the teacher, SmolLM2-135M-Instruct, was pretrained on far more).",
        "",
    ]
    for conv in result["conversations"]:
        n = result["train_mentions"][conv["topic"]]
        lines += [f"## {conv['topic']} (train conversations mentioning it: {n})", ""]
        for t in conv["turns"]:
            reply = "\n".join(f"> {x}" if x else ">" for x in t["assistant"].split("\n"))
            lines += [f"> **user:** {t['user']}", ">", "> **assistant:**", reply, ""]
    return "\n".join(lines)


def cli(
    out: Annotated[Path, typer.Option(help="folder for topics.md and topics.json")],
    model: Annotated[str, typer.Option(help="MEMSVC_MODEL to serve")] = "smollm2-hybrid",
    weights: Annotated[str, typer.Option(help="MEMSVC_WEIGHTS")] = "int8",
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens per reply")] = 80,
) -> None:
    """Twenty two-turn conversations on topics absent from the training conversations."""
    exit_on_sigterm()
    work = work_root() / f"topics-{time.monotonic_ns()}"
    env = {
        "MEMSVC_MODEL": model,
        "MEMSVC_WEIGHTS": weights,
        "MEMSVC_DATA_DIR": str(work / "data"),
        "MEMSVC_ADMIN_KEY": ADMIN_KEY,
        "MEMSVC_DEVICE": "cpu",
    }
    try:
        with LiveServer(env, work, module_args=("-m", "memsvc.cli.main", "serve")) as server:
            model_dir = work / "data" / "models" / model if model != "tiny" else None
            key = _new_tenant_key({**env, "MEMSVC_MODEL_DIR": str(model_dir or work)})
            convs = asyncio.run(_converse(server.url, key, max_tokens))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": f"memsvc bench topics --out {out} --model {model} --weights {weights} "
        f"--max-tokens {max_tokens}",
        "model": model,
        "weights": weights,
        "max_tokens": max_tokens,
        "machine": machine_info(),
        "train_mentions": training_counts([t[0] for t in TOPICS]),
        "conversations": convs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "topics.json").write_text(json.dumps(result, indent=2))
    (out / "topics.md").write_text(report(result))
    typer.echo((out / "topics.md").read_text())
