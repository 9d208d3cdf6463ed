"""A tiny random-weight checkpoint that always answers with visible text.

Client-facing suites (langchain-tests, the openai client) assert that a reply is not
empty. A random model may emit ``<|end|>`` first, so this one's output head is edited:
control tokens and non-ASCII byte pieces get a zero logit, and every other token is
paired with its negation, so for any hidden state some printable token scores above
zero (and, scaled up, far above the control tokens). Replies therefore run to
``max_tokens`` and always contain printable ASCII.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from server_util import Server
from tiny_model import CORPUS

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
    model.save_pretrained(directory, tokenizer=tok)
    return directory


@contextmanager
def talkative_server(backend, tmp_path_factory, **env: str) -> Iterator[Server]:
    """A live server on ``backend``'s databases running the talkative checkpoint.

    It shares the backend's database and Redis with the suite's other servers (tests
    isolate by tenant); ``env`` overrides settings (e.g. limits).
    """
    ckpt = make_talkative_checkpoint(tmp_path_factory.mktemp("talkative"))
    settings = {**backend.env, "MEMSVC_MODEL_DIR": str(ckpt), **env}
    with Server(settings, tmp_path_factory.mktemp("talkative-srv")) as srv:
        yield srv
