"""A tiny random-weight checkpoint that always answers with visible text.

Client-facing suites (langchain-tests, the openai client) assert that a reply is not
empty. A random model may emit ``<|end|>`` first, so this one's output head is edited:
control tokens and non-ASCII byte pieces get a zero logit, and every other token is
paired with its negation, so for any hidden state some printable token scores above
zero (and, scaled up, far above the control tokens). Replies therefore run to
``max_tokens`` and always contain printable ASCII.

:func:`talkative_server` starts it through the real CLI (``memsvc serve``), once per
backend for all the integration modules (OpenAI client, LangChain, CLI).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from server_util import Server
from tiny_model import CORPUS

from retnet_core.checkpoint import save_pretrained
from retnet_core.config import RetNetConfig
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer


def _printable(tok: ChatTokenizer, token_id: int) -> bool:
    text = tok.decode([token_id], skip_special=True)
    return bool(text.strip()) and text.isascii() and text.isprintable()


def make_talkative_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Write a 2-layer checkpoint (memory at layer 1) whose replies are never empty."""
    torch.manual_seed(seed)
    tok = ChatTokenizer.train(CORPUS, vocab_size=400, min_frequency=2)
    cfg = RetNetConfig(
        vocab_size=tok.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=2,
        ffn_dim=64,
        chunk_size=16,
        memory_layers=[1],
        memory_d_key=16,
        memory_d_value=16,
        memory_write_threshold=0.0,
    )
    model = RetNetLM(cfg)
    with torch.no_grad():
        w = model.head.weight
        good = [i for i in range(tok.vocab_size) if _printable(tok, i)]
        w.zero_()
        for a, b in zip(good[0::2], good[1::2], strict=False):
            w[a] = torch.randn(cfg.d_model) * 4.0
            w[b] = -w[a]
        if len(good) % 2:
            w[good[-1]] = w[good[0]]
    save_pretrained(model, directory, tokenizer=tok)
    return directory


def cli_server(env: dict[str, str], workdir: Path) -> Server:
    """A live server started the way users start it: ``memsvc serve`` (the CLI command)."""
    return Server(env, workdir, module_args=("-m", "memsvc.cli.main", "serve"))


_SERVERS: dict[str, Server] = {}


def talkative_server(backend, tmp_path_factory, config: pytest.Config) -> Server:
    """One ``memsvc serve`` per backend for every module that asks, stopped at session end.

    It runs the talkative checkpoint on ``backend``'s databases, which it shares with
    the suite's other servers (tests isolate by tenant).
    """
    srv = _SERVERS.get(backend.name)
    if srv is None or srv.proc is None or srv.proc.poll() is not None:
        ckpt = make_talkative_checkpoint(tmp_path_factory.mktemp("talkative"))
        env = {**backend.env, "MEMSVC_MODEL_DIR": str(ckpt)}
        srv = cli_server(env, tmp_path_factory.mktemp("talkative-srv")).start()
        config.add_cleanup(srv.stop)
        _SERVERS[backend.name] = srv
    return srv
