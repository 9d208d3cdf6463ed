"""Small models the experiments train in minutes on one CPU thread.

- :class:`SlotModel`: the Retention Layer alone (sanity, write-modes, scale).
- :class:`RecurrentMemLM`: a recurrent LM (GRU core, reset per session) with a memory
  layer between its blocks, wired as a RetNet block wires it:
  x ← x + core(norm(x)); x ← x + memory(norm(x), bank); x ← x + FFN(norm(x)).
- :class:`CausalTransformer`: same width and depth, facts in its context (reference).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from retnet_core.memory import MemoryConfig, MemoryLayer, TensorBank
from retnet_core.slots import SlotStore


class SlotModel(nn.Module):
    """An item is a name (``parts`` tokens of ``n_name`` each) and ``width`` value tokens.

    Its span is [e_name, β(e_val_1 + p_1), …, β(e_val_C + p_C)] (C = width, β an MLP),
    e_name = Σ_p E_p[n_p]; the query is e_name alone; logits = MLP(LN(e_name + r)) reshaped
    to (B, Q, C, n_value). The gate is off by default (every item is worth keeping).
    """

    def __init__(self, n_name: int, parts: int, n_value: int, width: int, d: int = 64, **mem):
        super().__init__()
        self.name_emb = nn.ModuleList(nn.Embedding(n_name, d) for _ in range(parts))
        self.value_emb = nn.Embedding(n_value, d)
        self.value_pos = nn.Parameter(torch.randn(width, d) * 0.02)
        # binds each value token to its position nonlinearly: a pooled sum of e(v)+p would
        # be a bag of tokens (Σe(v_t) + Σp_t) and lose which token sits where
        self.bind = nn.Sequential(
            nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d), nn.LayerNorm(d)
        )  # LayerNorm: value features on the scale of the name embedding
        mem.setdefault("d_key", 64)
        mem.setdefault("d_value", 64)
        mem.setdefault("use_gate", False)  # no noise here; the gate is studied in `drift`
        self.memory = MemoryLayer(MemoryConfig(d_model=d, **mem))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, n_value * width))
        self.width, self.n_value = width, n_value

    def name_vec(self, names: Tensor) -> Tensor:
        """names (..., parts) -> (..., d)."""
        return sum(emb(names[..., p]) for p, emb in enumerate(self.name_emb))

    def spans(self, names: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """names (B, N, parts), values (B, N, C) -> h (B, N(1+C), d), span mask (B, N, N(1+C))."""
        b, n, _ = names.shape
        vals = self.bind(self.value_emb(values) + self.value_pos)
        items = torch.cat([self.name_vec(names).unsqueeze(2), vals], dim=2)  # (B, N, 1+C, d)
        h = items.reshape(b, n * (1 + self.width), -1)
        mask = torch.eye(n, dtype=torch.bool, device=h.device)
        mask = mask.repeat_interleave(1 + self.width, dim=1).unsqueeze(0).expand(b, -1, -1)
        return h, mask

    def answer(self, names: Tensor, bank: TensorBank | SlotStore | None) -> Tensor:
        """names (B, Q, parts) -> logits (B, Q, C, n_value)."""
        q = self.name_vec(names)
        logits = self.head(self.norm(q + self.memory(q, bank)))
        return logits.reshape(*names.shape[:2], self.width, self.n_value)

    def tensor_bank(self, names: Tensor, values: Tensor) -> TensorBank:
        """Differentiable bank holding one slot per item (training path)."""
        h, mask = self.spans(names, values)
        c = self.memory.cfg
        bank = TensorBank.empty(names.shape[0], c.d_key, c.d_value, device=h.device)
        self.memory.write_tensors(bank, h, mask)
        return bank


class RecurrentMemLM(nn.Module):
    """Token LM: embedding, ``n_layers`` GRU blocks, memory after block ``mem_after``."""

    def __init__(self, vocab: int, d: int = 64, n_layers: int = 2, mem_after: int = 0, **mem):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.cores = nn.ModuleList(nn.GRU(d, d, batch_first=True) for _ in range(n_layers))
        self.core_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_layers))
        self.ffns = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            for _ in range(n_layers)
        )
        mem.setdefault("d_key", 32)
        mem.setdefault("d_value", 32)
        self.memory = MemoryLayer(MemoryConfig(d_model=d, **mem))
        self.memory_norm = nn.LayerNorm(d)
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.mem_after = mem_after

    def _run(self, tokens: Tensor, bank, stop_at_memory: bool = False) -> Tensor:
        x = self.emb(tokens)
        for i, (core, norm, ffn) in enumerate(
            zip(self.cores, self.core_norms, self.ffns, strict=True)
        ):
            x = x + core(norm(x))[0]  # recurrent state starts at zero: a fresh session
            if i == self.mem_after:
                h = self.memory_norm(x)
                if stop_at_memory:
                    return h
                x = x + self.memory(h, bank)
            x = x + ffn(x)
        return self.head(self.final_norm(x))

    def forward(self, tokens: Tensor, bank: TensorBank | SlotStore | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, vocab)."""
        return self._run(tokens, bank)

    def memory_input(self, tokens: Tensor) -> Tensor:
        """The memory layer's input h (B, T, d) for ``tokens``: what inference writes encode."""
        return self._run(tokens, None, stop_at_memory=True)

    def write_session(self, tokens: Tensor, spans: Tensor) -> TensorBank:
        """Training path: run session A, one differentiable slot per span (B, S, T)."""
        c = self.memory.cfg
        bank = TensorBank.empty(tokens.shape[0], c.d_key, c.d_value, device=tokens.device)
        h = self.memory_input(tokens)
        self.memory.write_tensors(bank, h, spans)
        return bank


class RetNetMemLM(nn.Module):
    """retnet_core's RetNetLM (parallel form, fresh state per call) with one memory layer
    at block ``mem_after``; the same interface as :class:`RecurrentMemLM`."""

    def __init__(self, vocab: int, d: int = 64, n_layers: int = 2, mem_after: int = 0, **mem):
        super().__init__()
        from retnet_core.config import RetNetConfig
        from retnet_core.model import RetNetLM

        cfg = RetNetConfig(
            vocab_size=vocab,
            d_model=d,
            n_layers=n_layers,
            n_heads=2,
            ffn_dim=4 * d,
            memory_layers=[mem_after],
            memory_d_key=mem.get("d_key", 32),
            memory_d_value=mem.get("d_value", 32),
            memory_gate=mem.get("use_gate", True),
        )
        self.lm = RetNetLM(cfg)
        self.layer = mem_after
        self.memory: MemoryLayer = self.lm.blocks[mem_after].memory

    def forward(self, tokens: Tensor, bank: TensorBank | SlotStore | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, vocab); the recurrent state starts empty."""
        return self.lm(tokens, memory=None if bank is None else {self.layer: bank})

    def memory_input(self, tokens: Tensor) -> Tensor:
        captured: dict[int, Tensor] = {}
        self.lm(tokens, capture=captured)
        return captured[self.layer]

    def write_session(self, tokens: Tensor, spans: Tensor) -> TensorBank:
        c = self.memory.cfg
        bank = TensorBank.empty(tokens.shape[0], c.d_key, c.d_value, device=tokens.device)
        bank.write_spans = spans
        self.lm(tokens, memory={self.layer: bank})
        bank.write_spans = None
        return bank


BACKBONES = {"retnet": RetNetMemLM, "gru": RecurrentMemLM}


class CausalTransformer(nn.Module):
    """Pre-norm causal Transformer encoder with learned positions; tokens (B, T) -> logits."""

    def __init__(self, vocab: int, d: int = 64, n_layers: int = 2, heads: int = 4, max_len=512):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        x = self.encoder(self.emb(tokens) + self.pos[:t], mask=mask, is_causal=True)
        return self.head(self.norm(x))


def n_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
