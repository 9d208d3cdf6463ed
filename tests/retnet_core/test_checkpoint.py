"""Checkpoint directories round trip to identical logits; unknown formats are refused."""

from __future__ import annotations

import json

import pytest
import torch
from retnet_factory import tiny_model

from retnet_core.checkpoint import CheckpointError, load_pretrained, save_pretrained, tokenizer_path


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_gives_identical_logits(tmp_path, tied):
    model = tiny_model(tie_embeddings=tied, memory_layers=[0], memory_d_key=8)
    tok = torch.randint(0, 50, (2, 10))
    (tmp_path / "src.json").write_text('{"model": {"type": "BPE"}}')
    save_pretrained(model, tmp_path / "ckpt", tokenizer=tmp_path / "src.json")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json"]  # fmt: skip
    back = load_pretrained(tmp_path / "ckpt", device="cpu")
    assert back.config == model.config
    assert back.fingerprint() == model.fingerprint()
    assert (back.head.weight is back.embed.weight) == tied
    with torch.no_grad():
        assert torch.equal(back(tok), model(tok))
    assert tokenizer_path(tmp_path / "ckpt") == tmp_path / "ckpt" / "tokenizer.json"


def test_load_casts_dtype(tmp_path):
    save_pretrained(tiny_model(), tmp_path)
    assert tokenizer_path(tmp_path) is None
    assert load_pretrained(tmp_path, dtype=torch.float32).embed.weight.dtype == torch.float32


def test_unknown_format_is_a_clear_error(tmp_path):
    save_pretrained(tiny_model(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "format_version": 7}))
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_pretrained(tmp_path)


def test_missing_weights_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    save_pretrained(tiny_model(), tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights.pop("norm.weight")
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="norm.weight"):
        load_pretrained(tmp_path)
