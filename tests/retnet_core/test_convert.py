"""torchscale 0.3.0 import: our converted model computes torchscale's parallel forward.

torchscale is a test dependency installed with ``--no-deps`` (its timm pin drags in a
torchvision that breaks torch 2.13 CPU). It imports only ``drop_path`` from timm, so a
stub module provides that one function before torchscale is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import Tensor

from retnet_core.checkpoint import load_pretrained
from retnet_core.convert import ConvertError, convert_torchscale, main
from retnet_core.model import RetNetLM


def _stub_timm() -> None:
    """timm.models.layers.drop_path, the only timm name torchscale imports."""
    if "timm" in sys.modules:
        return
    names = ("timm", "timm.models", "timm.models.layers")
    timm, models, layers = (types.ModuleType(n) for n in names)

    def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
        if drop_prob == 0.0 or not training:
            return x
        raise NotImplementedError("stub drop_path: only inference is needed here")

    layers.drop_path = drop_path
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


_stub_timm()
from torchscale.architecture.config import RetNetConfig as TorchscaleConfig  # noqa: E402
from torchscale.architecture.retnet import RetNetDecoder  # noqa: E402

VOCAB = 101
# A: swish GLU, √d embedding scale, embedding norm, value factor 2, default eps.
# B: gelu GLU, tied head, value factor 1.5, eps 1e-2 and large q/k weights, so that the
#    per-row normalisation of the parallel form is active and visible through eps.
CASES = {
    "swish-scaled-embnorm": (
        dict(decoder_embed_dim=48, decoder_value_embed_dim=96, decoder_retention_heads=3,
             decoder_ffn_embed_dim=80, decoder_layers=2, activation_fn="swish",
             no_scale_embedding=False, layernorm_embedding=True),
        1.0,
    ),
    "gelu-tied-clamped": (
        dict(decoder_embed_dim=32, decoder_value_embed_dim=48, decoder_retention_heads=4,
             decoder_ffn_embed_dim=64, decoder_layers=2, layernorm_eps=1e-2,
             share_decoder_input_output_embed=True),
        8.0,
    ),
}  # fmt: skip


def build_torchscale(fields: dict, qk_gain: float, seed: int = 0) -> RetNetDecoder:
    """A random torchscale RetNetDecoder LM with non-trivial norm weights."""
    torch.manual_seed(seed)
    fields = {**fields, "vocab_size": VOCAB}
    embed = torch.nn.Embedding(VOCAB, fields["decoder_embed_dim"])
    model = RetNetDecoder(TorchscaleConfig(**fields), embed_tokens=embed).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.uniform_(0.5, 1.5)  # a mapping that drops a norm weight cannot hide
            if "q_proj" in name or "k_proj" in name:
                p.mul_(qk_gain)
    return model


def rel_err(got: Tensor, ref: Tensor) -> float:
    return ((got - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> tuple[dict, RetNetDecoder, Path]:
    fields, gain = CASES[request.param]
    ts = build_torchscale(fields, gain)
    src = tmp_path_factory.mktemp(request.param) / "retnet.pt"
    torch.save(ts.state_dict(), src)
    return fields, ts, src


@pytest.fixture(scope="module")
def tokens() -> Tensor:
    return torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))


def test_parallel_prefill_and_step_match_torchscale(case, tokens, tmp_path) -> None:
    fields, ts, src = case
    ours = convert_torchscale(src, tmp_path / "ck", fields)
    with torch.no_grad():
        ref = ts(tokens)[0]
        assert rel_err(ours(tokens), ref) <= 1e-4
        logits, state = ours.prefill(tokens[:, :25], chunk_size=7, boundaries=[3, 4, 20])
        assert rel_err(logits, ref[:, :25]) <= 1e-4
        for t in range(25, 40):
            step_logits, state = ours.step(tokens[:, t], state)
            assert rel_err(step_logits, ref[:, t]) <= 1e-4


def test_checkpoint_on_disk_matches(case, tokens, tmp_path) -> None:
    fields, ts, src = case
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(fields))
    assert main(["torchscale", str(src), str(tmp_path / "ck"), "--config", str(cfg)]) == 0
    loaded = load_pretrained(tmp_path / "ck")
    assert loaded.config.retention_norm == "torchscale"
    with torch.no_grad():
        assert rel_err(loaded(tokens), ts(tokens)[0]) <= 1e-4


def test_torchscale_normalisation_is_needed(tokens, tmp_path) -> None:
    """With the clamp active and a large eps, the other normalisations miss by > 1e-3:
    parity above is not an accident of per-row scalars cancelling."""
    fields, gain = CASES["gelu-tied-clamped"]
    ts = build_torchscale(fields, gain)
    torch.save(ts.state_dict(), tmp_path / "ts.pt")
    ours = convert_torchscale(tmp_path / "ts.pt", tmp_path / "ck", fields)
    with torch.no_grad():
        ref = ts(tokens)[0]
        for mode in ("decay", "none"):
            other = RetNetLM(dataclasses.replace(ours.config, retention_norm=mode)).eval()
            other.load_state_dict(ours.state_dict())
            assert rel_err(other(tokens), ref) > 1e-3, mode


@pytest.mark.parametrize("cfg_style", ["dict", "namespace"])
def test_fairseq_style_checkpoint(cfg_style, tokens, tmp_path) -> None:
    fields, gain = CASES["swish-scaled-embnorm"]
    ts = build_torchscale(fields, gain)
    model = {f"decoder.{k}": v for k, v in ts.state_dict().items()}
    saved = {**fields, "vocab_size": VOCAB, "dropout": 0.1}
    if cfg_style == "dict":
        blob = {"model": model, "cfg": {"model": saved}, "extra_state": {"epoch": 3}}
    else:
        blob = {"model": model, "args": argparse.Namespace(**saved)}
    torch.save(blob, tmp_path / "checkpoint_last.pt")
    ours = convert_torchscale(tmp_path / "checkpoint_last.pt", tmp_path / "ck")
    assert ours.config.dropout == 0.1
    with torch.no_grad():
        assert rel_err(ours.eval()(tokens), ts(tokens)[0]) <= 1e-4


def test_refusals(tmp_path) -> None:
    fields, gain = CASES["swish-scaled-embnorm"]
    sd = build_torchscale(fields, gain).state_dict()
    torch.save(sd, tmp_path / "ts.pt")
    with pytest.raises(ConvertError, match="--config"):
        convert_torchscale(tmp_path / "ts.pt", tmp_path / "a")
    with pytest.raises(ConvertError, match="deepnorm"):
        convert_torchscale(tmp_path / "ts.pt", tmp_path / "b", {**fields, "deepnorm": True})
    with pytest.raises(ConvertError, match="not understood"):
        convert_torchscale(tmp_path / "ts.pt", tmp_path / "c", {**fields, "decoder_layers": 1})
    bad = dict(sd)
    bad["retnet_rel_pos.decay"] = bad["retnet_rel_pos.decay"] * 2
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConvertError, match="decay"):
        convert_torchscale(tmp_path / "bad.pt", tmp_path / "d", fields)
    assert main(["torchscale", str(tmp_path / "ts.pt"), str(tmp_path / "e")]) == 2
