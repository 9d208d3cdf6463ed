"""Model variants (grouped heads, NeoX rotary, no gate, no head norm, learned decay,
feature map, softmax teacher, hybrid window): the three forms agree in float64, states
continue exactly across calls and chunk boundaries, padding never leaks, and a state of
another variant is refused."""

from __future__ import annotations

import math
import random

import pytest
import torch
from retnet_factory import tiny_model

from retnet_core import attention
from retnet_core.attention import expand_heads
from retnet_core.config import ConfigError, RetNetConfig
from retnet_core.layers import hedgehog
from retnet_core.model import RetNetLM
from retnet_core.state import RecurrentState, StateMismatchError

ATOL = 1e-10

LLAMA = dict(n_heads=4, n_kv_heads=2, rotary="neox", out_gate=False, head_norm="none")
VARIANTS = {
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "head_dim": dict(n_heads=2, head_dim=6, value_factor=1.0),
    "neox": dict(rotary="neox", rotary_base=100.0),
    "no_gate": dict(out_gate=False),
    "head_norm_none": dict(head_norm="none", retention_norm="decay"),
    "qk_scale": dict(qk_scale=0.3),
    "learned_decay": dict(decay="learned", retention_norm="decay"),
    "gammas": dict(decay_gammas=[0.5, 0.9]),
    "hedgehog": dict(feature_map="hedgehog", retention_norm="torchscale", head_norm="none"),
    "llama_retention": dict(LLAMA, retention_norm="torchscale"),
    "softmax": dict(LLAMA, mixer="softmax"),
    "hybrid": dict(LLAMA, mixer="hybrid", window=3, sinks=2, retention_norm="decay"),
    "hybrid_no_sinks": dict(mixer="hybrid", window=5, sinks=0),
    "hybrid_hedgehog": dict(
        LLAMA, mixer="hybrid", window=4, sinks=1, feature_map="hedgehog",
        retention_norm="torchscale", decay="learned",
    ),
}  # fmt: skip


def variant(name: str, seed: int = 0, **extra) -> RetNetLM:
    """A tiny float64 model of the variant, every variant parameter off its init."""
    model = tiny_model(seed, **{**VARIANTS[name], **extra})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            r = block.retention
            if r.mix is not None:  # the retention path must count in the hybrid tests
                r.mix.copy_(torch.rand(r.mix.shape, generator=gen, dtype=r.mix.dtype) + 0.5)
            if r.decay_logit is not None:
                r.decay_logit.add_(torch.randn(r.decay_logit.shape, generator=gen).double())
            for p in (r.feature_q, r.feature_k):
                if p is not None:
                    p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _steps(model, tokens, state=None):
    state = model.init_state(tokens.shape[0]) if state is None else state
    out = []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        out.append(logits)
    return torch.stack(out, dim=1), state


def _same_state(a: RecurrentState, b: RecurrentState) -> None:
    assert a.position.tolist() == b.position.tolist()
    ta, tb = a.tensors(), b.tensors()
    assert set(ta) == set(tb)
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], rtol=0, atol=ATOL, msg=name)


# the continuation and ragged-batch tests run on the variants that change the state
STATEFUL = ["gqa", "head_dim", "neox", "learned_decay", "hedgehog", "llama_retention",
            "softmax", "hybrid", "hybrid_no_sinks", "hybrid_hedgehog"]  # fmt: skip
TOKENS = torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forms_agree_float64(name):
    model = variant(name)
    rng = random.Random(0)
    with torch.no_grad():
        ref = model(TOKENS)
        chunkings = [dict(), dict(chunk_size=1), dict(chunk_size=100),
                     dict(boundaries=sorted(rng.sample(range(1, 21), 5))),
                     dict(boundaries=[1, 2, 3, 19, 20], chunk_size=6)]  # fmt: skip
        states = []
        for kw in chunkings:
            logits, st = model.prefill(TOKENS, **kw)
            torch.testing.assert_close(logits, ref, rtol=0, atol=ATOL)
            states.append(st)
        stepped, st_step = _steps(model, TOKENS)
        torch.testing.assert_close(stepped, ref, rtol=0, atol=ATOL)
    for st in states:
        _same_state(st, st_step)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_continues_across_calls_and_boundaries(name):
    """Cuts at 5 and 7 fall inside and across hybrid windows of 3-5 tokens."""
    model = variant(name)
    with torch.no_grad():
        ref = model(TOKENS)
        a, st = model.prefill(TOKENS[:, :5], boundaries=[2])
        b, st = model.prefill(TOKENS[:, 5:7], st)
        c, st = _steps(model, TOKENS[:, 7:10], st)
        d, st = model.prefill(TOKENS[:, 10:], st, chunk_size=4, boundaries=[3])
        blob = st.to_bytes()  # the snapshot survives bytes exactly
        again = RecurrentState.from_bytes(blob, fingerprint=model.fingerprint())
        _same_state(again, st)
    torch.testing.assert_close(torch.cat([a, b, c, d], 1), ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", STATEFUL)
def test_ragged_batch_equals_each_alone(name):
    model = variant(name)
    gen = torch.Generator().manual_seed(1)
    lengths = [11, 4, 1, 0, 7]
    seqs = [torch.randint(0, 50, (n,), generator=gen) for n in lengths]
    padded = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    with torch.no_grad():
        ref = model(padded, lengths=torch.tensor(lengths))
        out, st = model.prefill(padded, lengths=torch.tensor(lengths), boundaries=[3])
        nxt = torch.tensor([5, 6, 7, 8, 9])
        stepped, st2 = model.step(nxt, st)
        for i, s in enumerate(seqs):
            if len(s) == 0:
                continue
            alone, st_alone = model.prefill(s[None])
            n = len(s)
            torch.testing.assert_close(out[i, :n], alone[0], rtol=0, atol=ATOL)
            torch.testing.assert_close(ref[i, :n], alone[0], rtol=0, atol=ATOL)
            one, _ = model.step(nxt[i : i + 1], st_alone)
            torch.testing.assert_close(stepped[i], one[0], rtol=0, atol=ATOL)
        # the stacked batch of separate states is the batch's state (KV caches padded)
        alone_states = [model.prefill(s[None])[1] if len(s) else model.init_state(1) for s in seqs]
        stacked = RecurrentState.stack(alone_states)
        again, _ = model.step(nxt, stacked)
        torch.testing.assert_close(again, stepped, rtol=0, atol=ATOL)
    assert st2.position.tolist() == [n + 1 for n in lengths]


@pytest.mark.parametrize("name", ["softmax", "hybrid", "hybrid_no_sinks"])
def test_query_blocks_never_change_the_result(name, monkeypatch):
    """Attention runs in query blocks (memory O(block · keys)); blocks of 4 < T agree."""
    model = variant(name)
    with torch.no_grad():
        ref = model(TOKENS)
        _, st = model.prefill(TOKENS[:, :6])
        ref_next, _ = model.prefill(TOKENS[:, 6:], st)
        monkeypatch.setattr(attention, "QUERY_BLOCK", 4)
        first, st = model.prefill(TOKENS[:, :6])
        nxt, _ = model.prefill(TOKENS[:, 6:], st)
        torch.testing.assert_close(model(TOKENS), ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(first, ref[:, :6], rtol=0, atol=ATOL)
    torch.testing.assert_close(nxt, ref_next, rtol=0, atol=ATOL)
    torch.testing.assert_close(nxt, ref[:, 6:], rtol=0, atol=ATOL)


def test_softmax_state_is_a_kv_cache_and_hybrid_state_is_fixed():
    soft, hyb = variant("softmax"), variant("hybrid")
    with torch.no_grad():
        sizes = {}
        for name, m in (("softmax", soft), ("hybrid", hyb)):
            sizes[name] = [m.prefill(TOKENS[:, :n])[1].nbytes for n in (4, 12, 20)]
    assert sizes["softmax"][0] < sizes["softmax"][1] < sizes["softmax"][2]  # O(T)
    assert len(set(sizes["hybrid"])) == 1  # fixed size, whatever the position


def test_hybrid_layer_matches_its_definition():
    """o_n = softmax over {n−w<m≤n} ∪ {m<s} + α_h Σ_{s≤m≤n−w} γ^{n−m} φ(q)·φ(k) v_m."""
    w, s = 3, 2
    model = variant("hybrid_hedgehog", window=w, sinks=s, retention_norm="none")
    layer = model.blocks[0].retention
    b, t = 2, 13
    positions = torch.arange(t).expand(b, t)
    ctx = model._context(positions, "parallel")
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(b, layer.n_heads, t, layer.key_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(b, layer.kv_heads, t, layer.key_dim, generator=gen, dtype=torch.float64)
    v = torch.randn(b, layer.kv_heads, t, layer.head_value_dim, generator=gen).double()
    with torch.no_grad():
        got, _ = layer._hybrid(q, k, v, None, ctx)
        gamma = torch.exp(layer.log_decay(ctx))
        qf = hedgehog(q, layer.feature_q)
        kf = expand_heads(hedgehog(k, layer.feature_k), layer.groups)
        ke, ve = expand_heads(k, layer.groups), expand_heads(v, layer.groups)
        want = torch.zeros_like(got)
        for n in range(t):
            soft = [m for m in range(n + 1) if m > n - w or m < s]
            scores = q[:, :, n, None, :] @ ke[:, :, soft].transpose(-1, -2)  # (B, H, 1, |A|)
            want[:, :, n] = (torch.softmax(scores, -1) @ ve[:, :, soft])[:, :, 0]
            for m in range(s, n - w + 1):
                weight = gamma[:, None] ** (n - m) * (qf[:, :, n] * kf[:, :, m]).sum(-1).T
                want[:, :, n] += (layer.mix[:, None] * weight).T[..., None] * ve[:, :, m]
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


def test_hybrid_with_retention_off_is_the_windowed_teacher():
    """α = 0: the hybrid equals softmax attention restricted to the window and sinks."""
    hyb = variant("hybrid", window=4, sinks=1)
    soft = tiny_model(0, **{**LLAMA, "mixer": "softmax"})
    soft.load_state_dict(
        {k: v for k, v in hyb.state_dict().items() if not k.endswith("mix")}, strict=True
    )
    short = TOKENS[:, :4]  # within the window, nothing has left it yet
    with torch.no_grad():
        torch.testing.assert_close(hyb(short), soft(short), rtol=0, atol=ATOL)
        for block in hyb.blocks:
            block.retention.mix.zero_()
        far = hyb(TOKENS)
        hyb.blocks[0].retention.mix.fill_(1.0)
        assert (hyb(TOKENS) - far).abs().max() > 1e-3  # the retention path counts


def test_fingerprint_covers_every_variant_setting():
    prints = {}
    for name in VARIANTS:
        m = tiny_model(0, **VARIANTS[name])
        prints[m.fingerprint()] = name
    assert len(prints) == len(VARIANTS)
    a, b = variant("hybrid"), variant("hybrid", window=4)
    with torch.no_grad():
        _, st = a.prefill(TOKENS)
        with pytest.raises(StateMismatchError):
            b.step(TOKENS[:, 0], st)


def test_defaults_leave_config_json_as_before():
    data = RetNetConfig().to_dict()
    for field in ("n_kv_heads", "head_dim", "rotary", "mixer", "window", "feature_map"):
        assert field not in data
    cfg = RetNetConfig(mixer="hybrid", window=32, sinks=4, n_heads=8, n_kv_heads=2)
    assert RetNetConfig.from_json(cfg.to_json()) == cfg
    assert '"window": 32' in cfg.to_json()


@pytest.mark.parametrize(
    "bad",
    [dict(n_heads=4, n_kv_heads=3), dict(rotary="alibi"), dict(mixer="mamba"),
     dict(head_dim=5), dict(decay_gammas=[0.5]), dict(decay_gammas=[0.5, 1.0]),
     dict(window=0), dict(feature_map="relu"), dict(head_norm="group")],
)  # fmt: skip
def test_bad_variant_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        RetNetConfig(**{"d_model": 16, "n_heads": 2, **bad})


def test_learned_decay_starts_at_the_schedule_and_gets_gradients():
    model = tiny_model(0, decay="learned", n_heads=4)
    layer = model.blocks[0].retention
    expected = [math.log1p(-(2.0 ** (-5 - h))) for h in range(4)]
    got = torch.nn.functional.logsigmoid(layer.decay_logit).tolist()
    assert got == pytest.approx(expected, rel=1e-6)  # a float32 parameter
    model(TOKENS).sum().backward()
    assert layer.decay_logit.grad is not None and layer.decay_logit.grad.abs().sum() > 0


def test_fast_step_only_for_the_classic_layout():
    assert tiny_model(0)._fast_ok()
    for name in VARIANTS:
        assert not variant(name)._fast_ok() or name == "gammas"
