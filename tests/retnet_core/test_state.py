"""RecurrentState: bytes round trip, refusal of foreign and damaged states, batching."""

from __future__ import annotations

import pytest
import torch
from retnet_factory import tiny_model

from retnet_core.state import RecurrentState, StateCorruptError, StateMismatchError


def _prefilled(model, batch: int = 2, length: int = 12, seed: int = 0):
    tok = torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        _, st = model.prefill(tok)
    return st


def test_bytes_round_trip_gives_bit_identical_next_logits(model):
    st = _prefilled(model)
    data = st.to_bytes()
    back = RecurrentState.from_bytes(data, fingerprint=model.fingerprint())
    assert back.position.tolist() == st.position.tolist()
    assert back.fingerprint == st.fingerprint
    nxt = torch.tensor([3, 4])
    with torch.no_grad():
        a, _ = model.step(nxt, st)
        b, _ = model.step(nxt, back)
    assert torch.equal(a, b)


def test_float32_state_bytes_and_nbytes():
    model = tiny_model(dtype=torch.float32)
    st = _prefilled(model, batch=1)
    assert st.S[0].dtype == torch.float32
    # 2 layers × 2 heads × D_k 8 × D_v 16 float32, plus one int64 position
    assert st.nbytes == 2 * 2 * 8 * 16 * 4 + 8
    assert len(st.to_bytes()) < st.nbytes + 1024


def test_foreign_state_is_refused_naming_both_fingerprints():
    mine, other = tiny_model(seed=0), tiny_model(seed=1)
    data = _prefilled(other).to_bytes()
    with pytest.raises(StateMismatchError) as err:
        RecurrentState.from_bytes(data, fingerprint=mine.fingerprint())
    assert other.fingerprint() in str(err.value) and mine.fingerprint() in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_header", "empty", "garbage"])
def test_damaged_bytes_are_refused_as_corrupt(damage):
    model = tiny_model()
    data = bytearray(_prefilled(model).to_bytes())
    if damage == "truncate":
        data = data[: len(data) - 10]
    elif damage == "flip_data":
        data[-5] ^= 0x01
    elif damage == "flip_header":
        start = data.index(b'"fingerprint":"') + len('"fingerprint":"')
        data[start] = ord("0") if data[start] != ord("0") else ord("1")
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x10\x00\x00\x00\x00\x00\x00\x00not a state at all")
    with pytest.raises(StateCorruptError, match="corrupt"):
        RecurrentState.from_bytes(bytes(data), fingerprint=model.fingerprint())


def test_stack_unbind_select_round_trip(model):
    a, b = _prefilled(model, batch=2, seed=1), _prefilled(model, batch=1, length=5, seed=2)
    both = RecurrentState.stack([a, b])
    assert both.batch_size == 3 and both.position.tolist() == [12, 12, 5]
    parts = both.unbind()
    assert len(parts) == 3
    for i, part in enumerate(parts):
        src, j = (a, i) if i < 2 else (b, 0)
        for x, y in zip(part.S, src.S, strict=True):
            assert torch.equal(x[0], y[j])
        if model.config.retention_norm == "torchscale":
            assert torch.equal(part.z[0][0], src.z[0][j])
    first, second = both.split([2, 1])
    assert first.position.tolist() == [12, 12] and second.position.tolist() == [5]
    assert torch.equal(second.S[1], b.S[1])
    with pytest.raises(ValueError):
        both.split([1, 1])
    picked = both.select([2, 0])
    assert picked.position.tolist() == [5, 12]
    with pytest.raises(StateMismatchError):
        RecurrentState.stack([a, _prefilled(tiny_model(seed=3))])


def test_state_is_not_modified_by_step(model):
    st = _prefilled(model)
    before = st.clone()
    with torch.no_grad():
        model.step(torch.tensor([1, 2]), st)
    assert all(torch.equal(x, y) for x, y in zip(st.S, before.S, strict=True))
    assert torch.equal(st.position, before.position)
