"""A tiny random-weight checkpoint that answers with visible text, then ``<|end|>``.

Client-facing suites (langchain-tests, the openai client) assert that a reply is not
empty. A random model may emit ``<|end|>`` first, so this one's output head is edited:
control tokens and non-ASCII byte pieces get a zero logit, and every other token is
paired with its negation, so for any hidden state some printable token scores above
zero (and, scaled up, far above the control tokens).

On top of that, a reply is a fixed chain: ``<|assistant|>`` → :data:`REPLY_TOKENS`
distinct printable tokens → ``<|end|>``. Each chain token's embedding is a large
multiple of its own basis vector, so the final hidden state at it is (almost exactly)
that basis direction whatever the history, memory or passages add; the head row of the
token that follows it points along the same direction and wins by a wide margin, also
when sampling. A reply therefore stops (``finish_reason`` ``"stop"``) after
:data:`REPLY_TOKENS` tokens, and ``max_tokens`` below that ends it with ``"length"``.

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


REPLY_TOKENS = 10  # tokens of every reply before <|end|> (d_model must exceed it)
CHAIN_EMBED = 100.0  # a chain token's embedding norm; sublayer outputs are O(1)
CHAIN_LOGIT = 50.0  # head weight along the current chain token's direction


def _is_word(text: str) -> bool:
    return text.startswith(" ") and text[1:].isalpha()


def _chain(tok: ChatTokenizer, good: list[int]) -> list[int]:
    """The reply's tokens: distinct printable word pieces (" the", " city", ...)."""
    words = [i for i in good if _is_word(tok.decode([i], skip_special=True))]
    return words[:REPLY_TOKENS]


def _end_with_a_chain(model: RetNetLM, tok: ChatTokenizer, good: list[int]) -> None:
    """``<|assistant|>`` → chain → ``<|end|>``: the next token depends on the current one.

    Token ``x_j`` (j = 0 the generation prompt) gets embedding ``E·e_j``; the final norm
    turns the residual ``E·e_j + O(1)`` into ``≈ √d·e_j``, so a head row ``L·e_j`` scores
    ``≈ L·√d`` (about 350) against random printable rows of a few tens.
    """
    chain = _chain(tok, good)
    assert len(chain) == REPLY_TOKENS
    path = [*tok.generation_prompt(), *chain]
    nexts = [*chain, tok.end_id]
    emb, head = model.embed.weight, model.head.weight
    for j, (cur, nxt) in enumerate(zip(path, nexts, strict=True)):
        basis = torch.zeros(emb.shape[1])
        basis[j] = 1.0
        emb[cur] = CHAIN_EMBED * basis
        head[nxt] = CHAIN_LOGIT * basis


def make_talkative_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Write a 2-layer checkpoint (memory at layer 1) whose replies are never empty and
    end with ``<|end|>`` after :data:`REPLY_TOKENS` tokens."""
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
        _end_with_a_chain(model, tok, good)
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
