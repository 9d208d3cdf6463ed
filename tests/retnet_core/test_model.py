"""Model level: forward (parallel) == prefill (chunkwise, any chunking) == step (recurrent)."""

from __future__ import annotations

import random

import pytest
import torch
from retnet_factory import tiny_config, tiny_model

from retnet_core.config import ConfigError, RetNetConfig
from retnet_core.layers import EMBEDS, TOKENS
from retnet_core.model import RetNetLM
from retnet_core.state import StateError, StateMismatchError

ATOL = 1e-10


def _steps(model, tokens, state=None):
    state = model.init_state(tokens.shape[0]) if state is None else state
    out = []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        out.append(logits)
    return torch.stack(out, dim=1), state


def test_forward_prefill_step_agree(model, tokens):
    with torch.no_grad():
        ref = model(tokens)
        rng = random.Random(0)
        chunkings = [dict(), dict(chunk_size=1), dict(chunk_size=100),
                     dict(boundaries=sorted(rng.sample(range(1, 21), 5))),
                     dict(boundaries=[1, 2, 3, 19, 20], chunk_size=6)]  # fmt: skip
        states = []
        for kw in chunkings:
            logits, st = model.prefill(tokens, **kw)
            torch.testing.assert_close(logits, ref, rtol=0, atol=ATOL)
            states.append(st)
        stepped, st_step = _steps(model, tokens)
        torch.testing.assert_close(stepped, ref, rtol=0, atol=ATOL)
    for st in states:
        assert st.position.tolist() == [21, 21, 21]
        for a, b in zip(st.S, st_step.S, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_prefill_continues_a_state(model, tokens):
    with torch.no_grad():
        ref = model(tokens)
        first, st = model.prefill(tokens[:, :8])
        second, st = model.prefill(tokens[:, 8:15], st, boundaries=[3])
        third, st = _steps(model, tokens[:, 15:], st)
    torch.testing.assert_close(torch.cat([first, second, third], 1), ref, rtol=0, atol=ATOL)


def test_mixed_lengths_batch_equals_each_alone(model):
    gen = torch.Generator().manual_seed(1)
    lengths = [11, 4, 1, 7]
    seqs = [torch.randint(0, 50, (n,), generator=gen) for n in lengths]
    nxt = torch.randint(0, 50, (4, 3), generator=gen)
    batch = torch.full((4, max(lengths)), 0)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    lens = torch.tensor(lengths)
    with torch.no_grad():
        full, st = model.prefill(batch, lengths=lens)
        last, _ = model.prefill(batch, lengths=lens, last_only=True)
        steps, _ = _steps(model, nxt, st)
        fwd = model(batch, lengths=lens)
        for i, s in enumerate(seqs):
            alone, st_i = model.prefill(s[None])
            torch.testing.assert_close(full[i, : len(s)], alone[0], rtol=0, atol=ATOL)
            torch.testing.assert_close(fwd[i, : len(s)], alone[0], rtol=0, atol=ATOL)
            torch.testing.assert_close(last[i], alone[0, -1], rtol=0, atol=ATOL)
            alone_steps, _ = _steps(model, nxt[i : i + 1], st_i)
            torch.testing.assert_close(steps[i], alone_steps[0], rtol=0, atol=ATOL)


def test_batched_steps_at_different_positions(model):
    """A server batches sessions at different positions: stack == each alone."""
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 50, (1, 9), generator=gen), torch.randint(0, 50, (1, 3), generator=gen)
    with torch.no_grad():
        _, sa = model.prefill(a)
        _, sb = model.prefill(b)
        from retnet_core.state import RecurrentState

        both = RecurrentState.stack([sa, sb])
        nxt = torch.tensor([5, 6])
        logits, st = model.step(nxt, both)
        la, _ = model.step(nxt[:1], sa)
        lb, _ = model.step(nxt[1:], sb)
    torch.testing.assert_close(logits, torch.cat([la, lb]), rtol=0, atol=ATOL)
    assert st.position.tolist() == [10, 4]


def test_float32_forms_agree():
    model = tiny_model(dtype=torch.float32)
    tok = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(tok)
        pre, st = model.prefill(tok, chunk_size=7)
        stepped, _ = _steps(model, tok)
    assert st.S[0].dtype == torch.float32
    torch.testing.assert_close(pre, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(stepped, ref, rtol=0, atol=1e-5)


def test_gradients_flow_through_forward():
    model = tiny_model(dtype=torch.float32).train()
    tok = torch.randint(0, 50, (2, 10))
    loss = torch.nn.functional.cross_entropy(model(tok)[:, :-1].flatten(0, 1), tok[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fingerprint_tracks_weights_and_config():
    m1, m2 = tiny_model(seed=0), tiny_model(seed=0)
    assert m1.fingerprint() == m2.fingerprint() and len(m1.fingerprint()) == 32
    assert tiny_model(seed=1).fingerprint() != m1.fingerprint()
    assert tiny_model(seed=0, retention_norm="none").fingerprint() != m1.fingerprint()
    before = m1.fingerprint()
    with torch.no_grad():
        m1.blocks[0].ffn.w_out.weight[0, 0] += 1.0
    assert m1.fingerprint() != before
    assert m2.to(torch.float32).fingerprint() != m1.fingerprint()  # the state dtype changed
    m3 = tiny_model(seed=0)
    m3.load_state_dict(m1.state_dict(), assign=True)
    assert m3.fingerprint() == m1.fingerprint()


def test_step_refuses_foreign_state():
    m1, m2 = tiny_model(seed=0), tiny_model(seed=1)
    st = m1.init_state(1)
    with pytest.raises(StateMismatchError) as err:
        m2.step(torch.tensor([1]), st)
    assert m1.fingerprint() in str(err.value) and m2.fingerprint() in str(err.value)
    with pytest.raises(StateError):
        m1.step(torch.tensor([1, 2]), st)


def test_config_json_round_trip_and_errors():
    cfg = tiny_config(memory_layers=[1], value_factor=1.5, tie_embeddings=True)
    assert RetNetConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown RetNetConfig keys"):
        RetNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="unknown checkpoint format"):
        RetNetConfig.from_dict({**cfg.to_dict(), "format_version": 99})
    with pytest.raises(ConfigError):
        tiny_config(n_heads=3)
    with pytest.raises(ConfigError, match="memory_pool"):
        tiny_config(memory_layers=[0], memory_pool="max")
    assert tiny_config(memory_pool="mean").memory_pool == "mean"


def test_value_factor_and_tied_head():
    model = RetNetLM(tiny_config(value_factor=2.0, tie_embeddings=True))
    msr = model.blocks[0].retention
    assert msr.head_value_dim == 2 * msr.key_dim
    assert model.head.weight is model.embed.weight


def test_memory_hook_reads_the_bank_in_every_form():
    model = tiny_model(memory_layers=[1], memory_d_key=8, memory_d_value=8)
    from retnet_core.slots import ExactSlotStore

    gen = torch.Generator().manual_seed(5)
    bank = ExactSlotStore(8, 8)
    keys = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    bank.add(keys, torch.randn(6, 8, generator=gen), torch.ones(6))
    memory = {1: bank}
    tok = torch.randint(0, 50, (2, 9), generator=gen)
    captured: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        ref = model(tok, memory=memory, capture=captured)
        without = model(tok)
        pre, st = model.prefill(tok, memory=memory, boundaries=[2, 3])
        st0 = model.init_state(2)
        stepped = []
        for t in range(9):
            logits, st0 = model.step(tok[:, t], st0, memory=memory)
            stepped.append(logits)
    # each memory layer's input, and the embedded tokens (token slots' values)
    assert sorted(captured) == [TOKENS, EMBEDS, 1] and captured[1].shape == (2, 9, 16)
    torch.testing.assert_close(captured[EMBEDS], model.embed(tok))
    assert torch.equal(captured[TOKENS], tok)
    assert (ref - without).abs().max() > 1e-6  # the bank changes the output
    torch.testing.assert_close(pre, ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(torch.stack(stepped, 1), ref, rtol=0, atol=ATOL)


def test_zero_length_row_keeps_its_state(model):
    tok = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        _, st = model.prefill(tok[:1, :2])
        both = st.select([0, 0])
        logits, new = model.prefill(tok, both, lengths=torch.tensor([5, 0]), last_only=True)
    assert new.position.tolist() == [7, 2]
    assert torch.count_nonzero(logits[1]) == 0
    for a, b in zip(new.S, st.S, strict=True):
        torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)


def test_model_built_under_inference_mode_steps():
    with torch.inference_mode():
        model = tiny_model(dtype=torch.float32)
        logits, st = model.prefill(torch.tensor([[1, 2, 3]]))
        nxt, st = model.step(torch.tensor([4]), st)
    assert st.fingerprint == model.fingerprint() and nxt.shape == (1, 50)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"retention_norm": "none"}, {"head_norm": "layer", "bias": True},
     {"value_factor": 1.0, "embed_norm": True, "tie_embeddings": True},
     {"memory_layers": [1], "memory_d_key": 8, "memory_d_value": 8}],
)  # fmt: skip
def test_fast_step_equals_generic_step(overrides):
    """The fused decode path (RetNetLM._fast_step) and the per-module path agree."""
    model = tiny_model(**overrides)
    generic = tiny_model(**overrides)
    generic._fast_ok = lambda: False
    tok = torch.randint(0, 50, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert model._fast_ok()
        fast, st_f = _steps(model, tok)
        slow, st_s = _steps(generic, tok)
        ref = model(tok)
    torch.testing.assert_close(fast, slow, rtol=0, atol=ATOL)
    torch.testing.assert_close(fast, ref, rtol=0, atol=ATOL)
    for a, b in zip(st_f.S, st_s.S, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    assert st_f.z is None and torch.equal(st_f.position, st_s.position)


def test_compiled_step_equals_eager_step():
    """compile_step() (inductor) computes the same step as the eager fast path."""
    model = tiny_model()
    tok = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager, st_e = _steps(model, tok)
        model.compile_step()
        compiled, st_c = _steps(model, tok)
        model.compile_step(False)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=ATOL)
    for a, b in zip(st_c.S, st_e.S, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
