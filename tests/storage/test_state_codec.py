"""storage.state_codec: frames round-trip, bf16 rounding and its drift, checksums (no servers)."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch

from retnet_core.state import RecurrentState
from storage.state_codec import (
    CodecConfig,
    checksum,
    decode,
    encode,
    parse_safetensors,
    to_bf16_bits,
    verify,
)

ZSTD = CodecConfig(min_bytes=0, frame_bytes=16 * 1024)
BF16 = CodecConfig(min_bytes=0, frame_bytes=16 * 1024, precision="bf16")


def state(layers: int = 3, heads: int = 2, dk: int = 64, dv: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    S = [torch.randn(1, heads, dk, dv, generator=g) * 10 ** (i - 1) for i in range(layers)]
    return RecurrentState(S, None, torch.tensor([1234]), "codec-test-fp")


def max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(
        ((x - y).abs() / y.abs().clamp_min(1e-30)).max().item() for x, y in zip(a, b, strict=True)
    )


def test_small_blobs_are_stored_as_they_are() -> None:
    blob = os.urandom(5000)
    enc = encode(blob, CodecConfig())  # under min_bytes
    assert enc.frames == [blob] and enc.blob == blob
    assert enc.codec["z"] == "none" and enc.checksum.startswith("xxh3_128:")
    assert decode(enc.frames, enc.codec) == blob


def test_fp32_state_round_trips_exactly_over_many_frames() -> None:
    blob = state().to_bytes()
    enc = encode(blob, ZSTD)
    assert len(enc.frames) > 4 and enc.blob == blob
    kinds = {f[0] for f in enc.codec["fr"]}
    assert kinds == {"r", "f"}  # header and position raw, the S matrices as byte planes
    assert decode(enc.frames, enc.codec) == blob
    assert decode(enc.frames, enc.codec, threads=1) == blob


def test_opaque_bytes_compress_losslessly_even_when_bf16_is_asked() -> None:
    blob = bytes(range(256)) * 400
    enc = encode(blob, BF16)
    assert enc.codec["p"] == "fp32" and enc.stored_size < len(blob) // 10
    assert decode(enc.frames, enc.codec) == blob


def test_bf16_state_is_a_valid_state_within_half_an_ulp() -> None:
    st = state()
    enc = encode(st.to_bytes(), BF16)
    assert enc.codec["p"] == "bf16" and {f[0] for f in enc.codec["fr"]} == {"r", "b"}
    assert enc.stored_size < 0.55 * len(st.to_bytes())
    got = RecurrentState.from_bytes(decode(enc.frames, enc.codec), "codec-test-fp")  # resealed
    err = max_rel(got.S, st.S)
    assert 0 < err <= 2.0**-8  # rounded (not exact), by at most half a bf16 ulp
    assert torch.equal(got.position, st.position)
    again = encode(enc.blob, BF16)  # already bf16: lossless, same frames, no re-seal
    assert again.blob == enc.blob and again.frames == enc.frames


def safetensors_blob(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    dt = {np.float32: "F32", np.int64: "I64"}
    head: dict = {"__metadata__": meta}
    data, off = b"", 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        head[name] = {
            "dtype": dt[arr.dtype.type],
            "shape": list(arr.shape),
            "data_offsets": [off, off + len(raw)],
        }
        data, off = data + raw, off + len(raw)
    text = json.dumps(head).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def test_bf16_rounds_plain_safetensors_in_place_and_keeps_other_tensors() -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "a": rng.standard_normal(5000).astype(np.float32),
        "ids": np.arange(7, dtype=np.int64),
        "b": rng.standard_normal(3000).astype(np.float32),
    }
    blob = safetensors_blob(tensors, {"note": "no self-check"})
    enc = encode(blob, BF16)
    out = decode(enc.frames, enc.codec)
    assert out == enc.blob and len(out) == len(blob)
    layout = parse_safetensors(out)
    assert layout is not None
    _, _, b, e = layout.tensors["ids"]
    assert np.array_equal(np.frombuffer(out[b:e], np.int64), tensors["ids"])
    _, _, b, e = layout.tensors["a"]
    a = np.frombuffer(out[b:e], np.float32)
    assert np.all(np.abs(a - tensors["a"]) <= np.abs(tensors["a"]) * 2.0**-8)


def test_an_unknown_self_checking_blob_is_kept_exact() -> None:
    blob = safetensors_blob({"w": np.ones(9000, np.float32) / 3}, {"checksum": "abc"})
    enc = encode(blob, BF16)
    assert enc.codec["p"] == "fp32" and decode(enc.frames, enc.codec) == blob


@pytest.mark.parametrize(
    "value",
    [0.0, -0.0, 1.0, 1.00390625, 1.0039063, 3.4e38, float("inf"), -float("inf"), 1e-40, -2.5],
)
def test_bf16_bits_match_torch_rounding(value: float) -> None:
    x = np.array([value], np.float32)
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert to_bf16_bits(x)[0] == want[0]


def test_bf16_bits_keep_nan_a_nan() -> None:
    x = np.array([0x7F800001, 0xFFFFFFFF, 0x7FC00000], np.uint32).view(np.float32)
    wide = (to_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(wide).all()
    rng = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    want = torch.from_numpy(rng).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(to_bf16_bits(rng), want)


def test_checksums_new_and_legacy() -> None:
    frames = [b"abc", b"defg"]
    assert verify(frames, checksum(frames)) and checksum(frames) == checksum(b"abcdefg")
    assert verify(frames, hashlib.sha256(b"abcdefg").hexdigest())  # rows written before
    assert not verify([b"abc", b"defh"], checksum(frames))
    assert not verify(frames, hashlib.sha256(b"abcdefh").hexdigest())


def test_damaged_frames_are_refused() -> None:
    enc = encode(state().to_bytes(), ZSTD)
    bad = list(enc.frames)
    bad[3] = bad[3][:-5]
    assert not verify(bad, enc.checksum)
    with pytest.raises(ValueError):
        decode(bad, enc.codec)
    with pytest.raises(ValueError):
        decode(enc.frames[:-1], enc.codec)


def test_bf16_storage_drift_over_1000_steps_is_bounded() -> None:
    """Decode 1000 tokens twice: state kept in fp32, and state stored in bf16 every 2
    tokens (a turn of 2 tokens: far more round trips than real turns make). The logits'
    gap stays small and does not grow: retention's decay forgets old rounding errors."""
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: 2 OpenMP threads only wait on each other
    torch.manual_seed(0)
    cfg = RetNetConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, ffn_dim=64, chunk_size=8)
    model = RetNetLM(cfg).eval()
    fp = str(model.fingerprint())
    tokens = torch.randint(0, 64, (1, 1016))
    gaps = []
    with torch.inference_mode():
        try:
            _, exact = model.prefill(tokens[:, :16])
            stored = exact
            for t in range(16, 1016):
                logits, exact = model.step(tokens[:, t], exact)
                got, stored = model.step(tokens[:, t], stored)
                if t % 2:
                    enc = encode(stored.to_bytes(), BF16)
                    stored = RecurrentState.from_bytes(decode(enc.frames, enc.codec), fp)
                gaps.append(((got - logits).abs().max() / logits.abs().max()).item())
        finally:
            torch.set_num_threads(threads)
    assert gaps[0] == 0 and gaps[2] > 0  # the same start; then bf16 really was applied
    assert max(gaps) < 0.05, max(gaps)  # measured: 0.019 (relative to the largest logit)
    assert max(gaps[900:]) < 3 * max(gaps[:100]), (max(gaps[:100]), max(gaps[900:]))
