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


def test_bf16_blob_is_checked_as_stored_and_resumes_in_fp32() -> None:
    """to_bytes(bfloat16): half the bytes of the floats, its own checksum (a flipped byte
    is caught), and from_bytes(dtype=float32) gives the rounded values back in fp32."""
    import pytest

    from retnet_core.state import RecurrentState, StateCorruptError

    g = torch.Generator().manual_seed(0)
    S = [torch.randn(1, 4, 64, 64, generator=g) for _ in range(3)]
    state = RecurrentState(S, None, torch.tensor([17]), "fp")
    full, half = state.to_bytes(), state.to_bytes(torch.bfloat16)
    assert len(half) < 0.55 * len(full)
    back = RecurrentState.from_bytes(half, fingerprint="fp", dtype=torch.float32)
    assert all(b.dtype == torch.float32 for b in back.S) and int(back.position) == 17
    for a, b in zip(S, back.S, strict=True):
        assert torch.equal(b, a.bfloat16().float())
    damaged = bytearray(half)
    damaged[-5] ^= 0x40
    with pytest.raises(StateCorruptError):
        RecurrentState.from_bytes(bytes(damaged))


def test_blobs_written_before_xxh3_still_load() -> None:
    """A blob without ``checksum_alg`` (BLAKE2b-128, as stored before) is read and checked."""
    from safetensors.torch import save

    from retnet_core.state import RecurrentState, StateCorruptError, _checksum

    tensors = {"S.0": torch.randn(1, 2, 4, 4), "position": torch.tensor([3])}
    meta = {"format_version": "1", "fingerprint": "fp", "n_layers": "1", "has_z": "False"}
    from retnet_core.state import STATE_FORMAT_VERSION

    meta["format_version"] = str(STATE_FORMAT_VERSION)
    old = save(tensors, metadata={**meta, "checksum": _checksum(tensors, meta)})
    back = RecurrentState.from_bytes(old, fingerprint="fp")
    assert torch.equal(back.S[0], tensors["S.0"])
    forged = save(tensors, metadata={**meta, "checksum": "0" * 32})
    with pytest.raises(StateCorruptError):
        RecurrentState.from_bytes(forged)
