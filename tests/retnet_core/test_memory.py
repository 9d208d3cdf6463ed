"""Tests of the Retention Layer (retnet_core.memory) and its eviction policies."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retnet_core.eviction import select_victims, utility_scores
from retnet_core.memory import (
    Feedback,
    MemoryConfig,
    MemoryLayer,
    TensorBank,
    copy_mix,
    token_span_mask,
    token_spans,
)
from retnet_core.slots import ExactSlotStore, SlotStats

D, DK = 16, 8


def _layer(**kw) -> MemoryLayer:
    torch.manual_seed(0)
    return MemoryLayer(MemoryConfig(d_model=D, d_key=DK, d_value=DK, **kw)).eval()


def _filled_bank(layer: MemoryLayer, n: int) -> ExactSlotStore:
    bank = ExactSlotStore(DK, DK)
    h = torch.randn(1, 4 * n, D)
    layer.write(bank, h, [(4 * i, 4 * i + 4) for i in range(n)], [Feedback(remember=True)] * n)
    assert len(bank) == n
    return bank


def _stats(**cols) -> SlotStats:
    n = len(cols["ids"])
    as_t = {k: torch.tensor(v) for k, v in cols.items()}
    as_t.setdefault("gate", torch.ones(n))
    return SlotStats(**as_t)


# ---- read ----------------------------------------------------------------------------
def test_exact_read_equals_topk_read_when_k_covers_every_slot():
    layer = _layer()
    bank = _filled_bank(layer, 7)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        exact = layer.read_exact(x, bank)
        topk = layer.read_topk(x, bank, 7)
        wider = layer.read_topk(x, bank, 12)  # padded with id -1
        narrow = layer.read_topk(x, bank, 2)
    torch.testing.assert_close(topk, exact, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(wider, exact, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(narrow, exact, atol=1e-6)  # and it is not trivially equal


def test_forward_uses_topk_only_when_bank_is_larger_than_k():
    layer = _layer(top_k=3)
    x = torch.randn(1, 4, D)
    with torch.no_grad():
        small = _filled_bank(layer, 3)  # k covers the bank: the exact read
        torch.testing.assert_close(layer(x, small), layer.read_exact(x, small))
        large = _filled_bank(layer, 9)  # more slots than k: forward takes the top-k branch
        got = layer(x, large)
        torch.testing.assert_close(got, layer.read_topk(x, large, 3), atol=0, rtol=0)
        assert not torch.allclose(got, layer.read_exact(x, large), atol=1e-6)


def test_no_slot_entry_gives_exactly_zero_on_empty_or_missing_bank():
    layer = _layer()
    with torch.no_grad():
        layer.null_key.normal_()  # whatever it learned, its value is zero
    x = torch.randn(2, 3, D)
    assert torch.equal(layer(x, None), torch.zeros_like(x))
    assert torch.equal(layer(x, ExactSlotStore(DK, DK)), torch.zeros_like(x))
    assert torch.equal(layer(x, TensorBank.empty(2, DK, DK)), torch.zeros_like(x))
    padded = TensorBank.empty(2, DK, DK)
    padded.append(
        torch.randn(2, 3, DK),
        torch.randn(2, 3, DK),
        torch.zeros(2, 3),
        torch.zeros(2, 3, dtype=torch.bool),
    )
    assert torch.equal(layer.read_tensors(x, padded), torch.zeros_like(x))


def test_reads_touch_attended_slots_but_not_in_training():
    layer = _layer(touch_threshold=0.0)
    bank = _filled_bank(layer, 3)
    with torch.no_grad():
        layer(torch.randn(1, 2, D), bank)
    assert bank.stats().reads.tolist() == [1, 1, 1]
    layer.train()
    layer(torch.randn(1, 2, D), bank)
    assert bank.stats().reads.tolist() == [1, 1, 1]


# ---- eviction ------------------------------------------------------------------------
def test_lru_evicts_least_recently_used():
    s = _stats(ids=[10, 11, 12], reads=[5, 0, 1], last_read=[9, -1, 4], created=[1, 6, 2])
    # last used: 9, 6 (never read: its write), 4 -> slot 12 goes
    assert select_victims("lru", s, 1).tolist() == [12]
    assert select_victims("lru", s, 2).tolist() == [12, 11]


def test_lfu_evicts_least_frequently_used_breaking_ties_by_recency():
    s = _stats(
        ids=[10, 11, 12, 13], reads=[3, 1, 1, 7], last_read=[2, 8, 5, 1], created=[1, 2, 3, 0]
    )
    assert select_victims("lfu", s, 1).tolist() == [12]  # 1 read, used at 5 < 8


def test_utility_evicts_lowest_gate_reads_recency():
    s = _stats(
        ids=[1, 2, 3],
        gate=[0.9, 0.2, 0.9],
        reads=[0, 0, 0],
        last_read=[-1, -1, -1],
        created=[1, 2, 3],
    )
    assert select_victims("utility", s, 1).tolist() == [2]  # low gate
    s = _stats(
        ids=[1, 2, 3],
        gate=[0.9, 0.9, 0.9],
        reads=[4, 0, 0],
        last_read=[3, -1, -1],
        created=[1, 2, 500],
    )
    assert select_victims("utility", s, 1).tolist() == [2]  # unread and stale
    u = utility_scores(s)
    assert u[2] > u[1]


def test_full_bank_append_evicts_by_policy():
    layer = _layer(capacity=3, eviction="lru", touch_threshold=0.0)
    bank = ExactSlotStore(DK, DK, capacity=3)
    recs = layer.write(
        bank, torch.randn(1, 12, D), [(0, 4), (4, 8), (8, 12)], [Feedback(remember=True)] * 3
    )
    first = recs[0].slot_ids[0]
    bank.touch(torch.tensor([first]))  # slot 0 is now the most recently used
    rec = layer.write(bank, torch.randn(1, 4, D), [(0, 4)], [Feedback(remember=True)])[0]
    assert len(bank) == 3
    assert rec.evicted == recs[1].slot_ids
    assert rec.op == "append" and rec.slot_ids[0] in bank.stats().ids.tolist()


# ---- write ---------------------------------------------------------------------------
def test_blend_merges_near_duplicates_and_append_keeps_distinct_items():
    h = torch.randn(1, 8, D)
    same = torch.cat([h, h + 1e-3 * torch.randn_like(h)], dim=1)  # a near-duplicate span
    distinct = torch.cat([h, torch.randn_like(h)], dim=1)
    spans, fb = [(0, 8), (8, 16)], [Feedback(remember=True)] * 2
    blend = _layer(write_mode="blend", blend_threshold=0.95)

    bank = ExactSlotStore(DK, DK)
    recs = blend.write(bank, same, spans, fb)
    assert [r.op for r in recs] == ["append", "blend"] and len(bank) == 1
    assert recs[1].slot_ids == recs[0].slot_ids

    bank = ExactSlotStore(DK, DK)
    assert [r.op for r in blend.write(bank, distinct, spans, fb)] == ["append", "append"]
    assert len(bank) == 2

    append = _layer(write_mode="append")
    bank = ExactSlotStore(DK, DK)
    assert [r.op for r in append.write(bank, same, spans, fb)] == ["append", "append"]
    assert len(bank) == 2


def test_blend_moves_slot_towards_new_value():
    layer = _layer(write_mode="blend", blend_threshold=0.5)
    bank = ExactSlotStore(DK, DK)
    h = torch.randn(1, 8, D)
    layer.write(bank, h, [(0, 8)], [Feedback(remember=True)])
    _, _, v0 = bank.all()
    h2 = h.clone()
    h2[0, -1] += 3.0  # same topic, something new said
    rec = layer.write(bank, h2, [(0, 8)], [Feedback(remember=True)])[0]
    _, _, v1 = bank.all()
    _, v_new, _ = layer.encode(h2, torch.ones(1, 1, 8, dtype=torch.bool))
    assert rec.op == "blend" and 0.99 < rec.weights[0] <= 1.0
    assert (v1 - v_new[0]).norm() < (v0 - v_new[0]).norm()


def test_gate_zero_writes_nothing():
    layer = _layer()
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(-1e4)  # σ = 0
    bank = ExactSlotStore(DK, DK)
    recs = layer.write(bank, torch.randn(1, 8, D), [(0, 4), (4, 8)])
    assert len(bank) == 0 and [r.op for r in recs] == ["skip", "skip"]
    assert all(r.gate == 0.0 and not r.slot_ids for r in recs)
    # feedback overrides: remember forces, rating scales, forget vetoes
    fb = [Feedback(remember=True), Feedback(forget=True, remember=True)]
    assert [r.op for r in layer.write(bank, torch.randn(1, 8, D), [(0, 4), (4, 8)], fb)] == [
        "append",
        "skip",
    ]
    with torch.no_grad():
        layer.gate.bias.fill_(0.0)  # σ = 0.5, at the threshold
    recs = layer.write(
        bank, torch.randn(1, 8, D), [(0, 4), (4, 8)], [Feedback(rating=0.5), Feedback(rating=2.0)]
    )
    assert [r.op for r in recs] == ["skip", "append"] and recs[1].gate == 1.0


def test_training_gate_zero_hides_slot_from_read():
    layer = _layer().train()
    bank = TensorBank.empty(1, DK, DK)
    bank.append(
        F.normalize(torch.randn(1, 2, DK), dim=-1),
        torch.randn(1, 2, DK),
        torch.full((1, 2), -1e9),
        torch.ones(1, 2, dtype=torch.bool),
    )
    x = torch.randn(1, 3, D)
    assert layer(x, bank).abs().max() < 1e-6


def test_forget_removes_the_slots_of_a_span():
    layer = _layer(write_mode="blend", blend_threshold=0.95)
    bank = ExactSlotStore(DK, DK)
    h = torch.randn(1, 12, D)
    h[0, 8:12] = h[0, 0:4]  # span 3 repeats span 1: blended into the same slot
    fb = [Feedback(remember=True)] * 3
    recs = layer.write(bank, h, [(0, 4), (4, 8), (8, 12)], fb, offset=100)
    assert [r.span for r in recs] == [(100, 104), (104, 108), (108, 112)]
    removed = layer.forget(bank, recs, (109, 110))
    assert removed.tolist() == list(recs[0].slot_ids)
    assert bank.stats().ids.tolist() == list(recs[1].slot_ids)
    assert layer.forget(bank, recs, (0, 50)).numel() == 0  # nothing from there


def test_provenance_returned_for_every_write():
    layer = _layer(write_mode="blend", blend_threshold=0.99)
    bank = ExactSlotStore(DK, DK)
    spans = [(0, 3), (3, 9), (9, 10)]
    recs = layer.write(bank, torch.randn(12, D), spans)
    assert [r.span for r in recs] == spans
    for r in recs:
        assert r.op in ("append", "blend", "skip") and 0.0 <= r.gate <= 1.0
        assert (len(r.slot_ids) > 0) == (r.op != "skip")
    live = set(bank.stats().ids.tolist())
    assert {i for r in recs for i in r.slot_ids} == live


# ---- training: information crosses a session boundary ---------------------------------
def _tiny_retnet(vocab: int):
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    cfg = RetNetConfig(
        vocab_size=vocab,
        d_model=32,
        n_layers=1,
        n_heads=2,
        ffn_dim=64,
        memory_layers=[0],
        memory_d_key=16,
        memory_d_value=16,
    )
    return RetNetLM(cfg)


def _cross_session_batch(b: int, n_facts: int, n_names: int, n_vals: int, g: torch.Generator):
    """Session A: n_facts pairs (name, value); session B: one name -> its value."""
    names = torch.stack([torch.randperm(n_names, generator=g)[:n_facts] for _ in range(b)])
    vals = torch.randint(n_vals, (b, n_facts), generator=g) + n_names
    a = torch.stack([names, vals], dim=2).reshape(b, 2 * n_facts)
    spans = torch.zeros(b, n_facts, 2 * n_facts, dtype=torch.bool)
    for i in range(n_facts):
        spans[:, i, 2 * i : 2 * i + 2] = True
    ask = torch.randint(n_facts, (b,), generator=g)
    rows = torch.arange(b)
    return a, spans, names[rows, ask].unsqueeze(1), vals[rows, ask]


def _session_b_logits(model, batch, use_memory: bool):
    """Session A writes into a TensorBank (its recurrent state is dropped); session B
    starts from an empty state and reads the bank (or nothing)."""
    a, spans, query, _ = batch
    bank = TensorBank.empty(a.shape[0], 16, 16)
    if not use_memory:
        return model(query)[:, -1]
    bank.write_spans = spans
    model(a, memory={0: bank})
    bank.write_spans = None
    return model(query, memory={0: bank})[:, -1]


def test_tiny_cross_session_run_learns_above_chance():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n_names, n_vals, n_facts = 24, 8, 4
    model = _tiny_retnet(n_names + n_vals)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(250):
        batch = _cross_session_batch(32, n_facts, n_names, n_vals, g)
        loss = F.cross_entropy(_session_b_logits(model, batch, True), batch[3])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        test = _cross_session_batch(512, n_facts, n_names, n_vals, g)
        with_mem = (_session_b_logits(model, test, True).argmax(-1) == test[3]).float().mean()
        without = (_session_b_logits(model, test, False).argmax(-1) == test[3]).float().mean()
    chance = 1.0 / n_vals
    assert with_mem > 3 * chance, (with_mem, without)
    assert without < 2 * chance, (with_mem, without)


# ---- token slots ------------------------------------------------------------------------
def test_token_spans_split_every_span_into_positions():
    assert token_spans([(1, 4), (6, 7)]) == [(1, 2), (2, 3), (3, 4), (6, 7)]
    spans = torch.zeros(2, 2, 8, dtype=torch.bool)
    spans[0, 0, 1:3] = True
    spans[0, 1, 5:8] = True
    spans[1, 1, 2:4] = True  # row 1: its first span is empty
    masks, owner = token_span_mask(spans)
    assert masks.shape == (2, 5, 8) and (masks.sum(-1) <= 1).all()
    assert owner.tolist() == [[0, 0, 1, 1, 1], [1, 1, -1, -1, -1]]
    assert masks[0].nonzero()[:, 1].tolist() == [1, 2, 5, 6, 7]


def test_token_slot_keys_its_context_and_holds_the_next_token():
    """Slot t: key from h_t, value from h_{t+1}, in training and inference alike."""
    layer = _layer(unit="token")
    h = torch.randn(1, 6, D)
    spans = torch.zeros(1, 1, 6, dtype=torch.bool)
    spans[0, 0, 2:5] = True
    masks, _ = token_span_mask(spans)
    keys, values, _ = layer.encode(h, masks)
    assert keys.shape == (1, 3, DK)
    for i, t in enumerate((2, 3, 4)):
        torch.testing.assert_close(keys[0, i], F.normalize(layer.k_proj(h[0, t]), dim=-1))
        torch.testing.assert_close(values[0, i], layer.v_proj(h[0, t + 1]))
    bank = ExactSlotStore(DK, DK)
    recs = layer.write(bank, h, [(2, 5)])
    assert [r.span for r in recs] == [(2, 3), (3, 4), (4, 5)] and len(bank) == 3
    _, stored_keys, stored_values = bank.all()
    torch.testing.assert_close(stored_keys, keys[0])
    torch.testing.assert_close(stored_values, values[0])


def test_token_write_needs_the_token_after_the_span():
    layer = _layer(unit="token")
    try:
        layer.write(ExactSlotStore(DK, DK), torch.randn(1, 5, D), [(1, 5)])
    except ValueError as exc:
        assert "token after" in str(exc)
    else:
        raise AssertionError("a span ending at the last position was accepted")


def test_token_slots_copy_a_stored_sequence_across_sessions():
    """Session A holds random 3-token strings keyed by a name token; session B gives the
    name and must emit the string token by token, reading only the bank."""
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n_names, n_vals, facts, b = 8, 24, 3, 32
    cfg = RetNetConfig(
        vocab_size=n_names + n_vals + 1,
        d_model=32,
        n_layers=1,
        n_heads=2,
        ffn_dim=64,
        memory_layers=[0],
        memory_d_key=16,
        memory_d_value=16,
        memory_unit="token",
        memory_gate=False,
    )
    model = RetNetLM(cfg)
    end = n_names + n_vals

    def batch(n: int):
        names = torch.stack([torch.randperm(n_names, generator=g)[:facts] for _ in range(n)])
        vals = torch.randint(n_vals, (n, facts, 3), generator=g) + n_names
        a = torch.cat([names.unsqueeze(-1), vals, torch.full((n, facts, 1), end)], -1)
        spans = torch.zeros(n, facts, 5 * facts, dtype=torch.bool)
        for i in range(facts):
            spans[:, i, 5 * i : 5 * i + 4] = True  # name and value; the end token follows
        ask = torch.randint(facts, (n,), generator=g)
        rows = torch.arange(n)
        target = vals[rows, ask]  # (n, 3)
        query = torch.cat([names[rows, ask].unsqueeze(1), target[:, :2]], 1)
        return a.reshape(n, -1), spans, query, target

    def logits(data, memory: bool):
        a, spans, query, _ = data
        if not memory:
            return model(query)
        write, _ = token_span_mask(spans)
        bank = TensorBank.empty(a.shape[0], 16, 16)
        bank.write_spans = write
        model(a, memory={0: bank})
        bank.write_spans = None
        return model(query, memory={0: bank})

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        data = batch(b)
        out = logits(data, True)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), data[3].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        test = batch(256)
        exact = (logits(test, True).argmax(-1) == test[3]).all(-1).float().mean()
        without = (logits(test, False).argmax(-1) == test[3]).all(-1).float().mean()
    assert exact > 0.5, exact  # chance: 1 / 24**3
    assert without < 0.01, without


def test_read_scale_makes_logits_a_scaled_cosine():
    """read_scale s: the read logit of slot k is s · cos(q, k), whatever |W_Q h| is."""
    layer = _layer(unit="token", read_scale=16.0)
    h = torch.randn(1, 3, D)
    keys = F.normalize(torch.randn(5, DK), dim=-1)
    probs = layer.read_probs(h[0], keys)
    q = F.normalize(layer.q_proj(h[0]), dim=-1)
    logits = 16.0 * torch.cat([q @ layer.null_key.unsqueeze(1), q @ keys.T], dim=-1)
    torch.testing.assert_close(probs, torch.softmax(logits, -1)[:, 1:])
    with torch.no_grad():
        layer.q_proj.weight.mul_(50.0)  # a larger query changes nothing
    torch.testing.assert_close(layer.read_probs(h[0], keys), probs)


def test_embedding_valued_token_slots_hold_the_next_token_embedding():
    layer = _layer(unit="token", value="embedding")
    h, e = torch.randn(1, 6, D), torch.randn(1, 6, D)
    bank = ExactSlotStore(DK, DK)
    layer.write(bank, h, [(1, 4)], embeds=e)
    _, keys, values = bank.all()
    for i, t in enumerate((1, 2, 3)):
        torch.testing.assert_close(keys[i], F.normalize(layer.k_proj(h[0, t]), dim=-1))
        torch.testing.assert_close(values[i], layer.v_proj(e[0, t + 1]))
    try:
        layer.write(bank, h, [(1, 4)])
    except ValueError as exc:
        assert "embedded tokens" in str(exc)
    else:
        raise AssertionError("an embedding-valued write without embeddings was accepted")


def test_copy_mix_is_a_distribution_that_moves_mass_to_read_tokens():
    logits = torch.randn(2, 3, 10)
    probs = torch.tensor([[0.5, 0.3], [0.0, 0.0], [0.9, 0.05]]).expand(2, 3, 2)
    ids = torch.tensor([4, 7]).expand(2, 3, 2)
    lam = torch.full((2, 3, 1), 0.8)
    out = copy_mix(logits, probs, ids, lam).exp()
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3))
    lm = torch.softmax(logits, -1)
    torch.testing.assert_close(out[:, 1], lm[:, 1])  # nothing read: the LM alone
    expect = lm[:, 0, 4] * (1 - 0.8 * 0.8) + 0.8 * 0.5
    torch.testing.assert_close(out[:, 0, 4], expect)


def test_copying_slots_store_the_next_id_and_the_head_copies_it():
    """A copying model emits the token a read slot stores, in every form alike."""
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    torch.manual_seed(0)
    cfg = RetNetConfig(
        vocab_size=40,
        d_model=16,
        n_layers=2,
        n_heads=2,
        ffn_dim=32,
        memory_layers=[1],
        memory_d_key=8,
        memory_d_value=8,
        memory_unit="token",
        memory_copy=True,
        memory_read_scale=16.0,
        memory_gate=False,
    )
    model = RetNetLM(cfg).eval()
    mem = model.blocks[1].memory
    with torch.no_grad():
        mem.copy_gate.bias.fill_(10.0)  # λ ≈ 1: the output is the copy
        mem.q_proj.weight.copy_(mem.k_proj.weight)  # the query of context t is slot t's key
    a = torch.tensor([[5, 9, 13, 21, 2]])
    capture: dict = {}
    with torch.no_grad():
        model(a, capture=capture)
    bank = ExactSlotStore(8, 9)
    mem.write(bank, capture[1], [(0, 4)], embeds=capture[-1], tokens=capture[-2])
    _, keys, values = bank.all()
    assert values[:, -1].tolist() == [9.0, 13.0, 21.0, 2.0]  # each slot: the next id
    with torch.no_grad():
        out = model(a[:, :4], memory={1: bank})
        pre, _ = model.prefill(a[:, :4], memory={1: bank})
        state, stepped = model.init_state(1), []
        for t in range(4):
            logits, state = model.step(a[:, t], state, memory={1: bank})
            stepped.append(logits)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(1, 4))
    torch.testing.assert_close(pre, out, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(stepped, 1), out, rtol=0, atol=1e-5)
    # the same context as slot t: its read is sharp and copies the id slot t stores
    assert out.argmax(-1).tolist() == [[9, 13, 21, 2]]


def test_read_through_reads_both_banks_and_touches_only_the_persistent_one():
    """A turn's passage slots beside the user's bank: the same read as one bank holding
    both, top-k included; reads count only on the persistent bank; writes are refused."""
    from retnet_core.slots import ReadThrough

    layer = _layer()
    primary, extra, both = (ExactSlotStore(DK, DK) for _ in range(3))
    keys = F.normalize(torch.randn(7, DK), dim=-1)
    values = torch.randn(7, DK)
    primary.add(keys[:4], values[:4], torch.ones(4))
    extra.add(keys[4:], values[4:], torch.ones(3))
    both.add(keys, values, torch.ones(7))
    view = ReadThrough(primary, extra)
    h = torch.randn(2, 3, D)
    assert len(view) == 7
    torch.testing.assert_close(layer.read_exact(h, view), layer.read_exact(h, both))
    torch.testing.assert_close(layer.read_topk(h, view, 7), layer.read_exact(h, both))
    torch.testing.assert_close(layer.read_topk(h, view, 3), layer.read_topk(h, both, 3))
    assert int(primary.stats().reads.sum()) > 0 and int(extra.stats().reads.sum()) == 0
    only_extra = ReadThrough(None, extra)
    torch.testing.assert_close(
        layer.read_exact(h, only_extra), layer.read_exact(h, extra), rtol=0, atol=0
    )
    try:
        view.add(keys[:1], values[:1], torch.ones(1))
    except TypeError:
        pass
    else:
        raise AssertionError("a write into the read-through view was accepted")
