"""A system prompt's state is computed once per (tenant, model, prompt) and shared.

In process (the real app over ASGI, the embedded SQLite store): the second session
that starts with the same system prompt feeds no token of it, and its first reply
token comes from bit-identical logits. Another tenant's session computes its own.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import torch

from memsvc.app import create_app
from memsvc.config import Settings
from memsvc.services.container import Services

PROMPT = "You are a terse assistant who answers in one line."


def _spy(services: Services) -> list[tuple[list[list[int]], list[torch.Tensor]]]:
    """Record every batched prefill's rows and logits."""
    calls: list[tuple[list[list[int]], list[torch.Tensor]]] = []
    rt = services.runtime
    real = rt.prefill_rows

    def prefill_rows(rows, states):
        outs = real(rows, states)
        calls.append(([list(r) for r in rows], [o.logits.clone() for o in outs]))
        return outs

    rt.prefill_rows = prefill_rows  # type: ignore[method-assign]
    return calls


async def _turn(app, key: str, system_prompt: str) -> None:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        body = {"system_prompt": system_prompt, "memory_scope": "none"}
        r = await client.post("/v1/sessions", json=body, headers=headers)
        r.raise_for_status()
        sid = r.json()["id"]
        body = {"content": "hello there", "max_tokens": 1, "use_documents": False}
        r = await client.post(f"/v1/sessions/{sid}/messages", json=body, headers=headers)
        r.raise_for_status()


def test_second_session_reuses_the_system_prompt_state(checkpoint: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, model_dir=checkpoint, device="cpu", rag_enabled=False)
    services = Services.build(settings)
    services.start()
    try:
        calls = _spy(services)
        tok = services.runtime.tokenizer
        head = tok.render_turn({"role": "system", "content": PROMPT})
        prompt = tok.render_turn({"role": "user", "content": "hello there"})
        prompt += tok.generation_prompt()
        _, key = services.store.create_tenant(f"sys-{uuid.uuid4().hex[:6]}")
        _, other = services.store.create_tenant(f"sys-{uuid.uuid4().hex[:6]}")
        app = create_app(settings, services)

        def fed(rows: list[int]) -> list[torch.Tensor]:
            return [lg for rs, lgs in calls for r, lg in zip(rs, lgs, strict=True) if r == rows]

        asyncio.run(_turn(app, key, PROMPT))
        assert len(fed(head)) == 1 and len(fed(prompt)) == 1
        asyncio.run(_turn(app, key, PROMPT))
        assert len(fed(head)) == 1, "the second session prefilled the system prompt again"
        first, second = fed(prompt)
        assert torch.equal(first, second)
        assert services.turns.system_prompts.prefills == 1
        asyncio.run(_turn(app, other, PROMPT))  # tenants never share an entry
        assert len(fed(head)) == 2 and services.turns.system_prompts.prefills == 2
    finally:
        services.stop()
