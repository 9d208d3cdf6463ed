"""fla import: a converted flash-linear-attention RetNet computes fla's function.

The source is a tiny random-weight model in fla's exact layout (``tiny_fla``); the
reference is an independent float64 forward written from fla's documented semantics
(fla itself needs triton and is never imported here). Logits must match in all three of
memsvc's forms: parallel, chunkwise (prefill with boundaries, continued from a state)
and recurrent (step by step).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_fla import reference_logits, write_fla_dir

from retnet_core.checkpoint import load_pretrained
from retnet_core.convert_fla import SourceError, cli, convert_fla, load_fla
from retnet_core.tokenizer import ChatTokenizer, Message

TEXT = (
    "Hello world! The quick brown fox jumps over the lazy dog, 42 times. "
    "My name is Ada and I like tea."
)
ATOL = 2e-4  # float32 model vs float64 reference, logits of magnitude ~5

VARIANTS = {
    # fla's defaults at a small size: H = 4, D_k = 16, D_v = 32, gate, shared g-norm weight
    "default": {},
    # grouped kv heads, D_k ≠ hidden/H, value factor 1, no output gate (g_norm alone),
    # tied head, explicit FFN width, fla < 0.2's fused gate_proj, bf16 file
    "gqa_untied_gate_off": {
        "num_kv_heads": 2,
        "expand_k": 0.5,
        "expand_v": 1.0,
        "use_output_gate": False,
        "tie_word_embeddings": True,
        "intermediate_size": 96,
        "fused_mlp": True,
        "dtype": torch.bfloat16,
    },
    "no_affine": {"elementwise_affine": False, "num_kv_heads": 1, "norm_eps": 1e-5},
}


@pytest.fixture(params=sorted(VARIANTS))
def fla_source(request, tmp_path) -> tuple[Path, dict, dict]:
    return write_fla_dir(tmp_path / request.param, seed=3, **VARIANTS[request.param])


def _ids(tok: ChatTokenizer) -> list[int]:
    ids = tok.encode(TEXT)
    assert len(ids) >= 24, ids
    return ids


def test_three_forms_match_the_reference(fla_source) -> None:
    src, cfg, weights = fla_source
    model, tok = load_fla(src)
    ids = _ids(tok)
    ref = reference_logits(cfg, weights, ids)
    tokens = torch.tensor([ids])
    with torch.no_grad():
        parallel = model(tokens)[0]
        first, state = model.prefill(tokens[:, :11], chunk_size=4, boundaries=[5])
        rest, _ = model.prefill(tokens[:, 11:], state, chunk_size=6)
        chunkwise = torch.cat([first, rest], dim=1)[0]
        st = model.init_state(1)
        steps = []
        for t in ids:
            logits, st = model.step(torch.tensor([t]), st)
            steps.append(logits[0])
        recurrent = torch.stack(steps)
    assert ref.abs().max() > 1.0  # a signal big enough for the tolerance to mean something
    for name, got in (("parallel", parallel), ("chunkwise", chunkwise), ("recurrent", recurrent)):
        err = (got.double() - ref).abs().max().item()
        assert err < ATOL, f"{name}: max |Δlogit| {err:.2e}"


def test_config_is_a_base_model_with_fla_settings(fla_source) -> None:
    src, cfg, _ = fla_source
    model, _ = load_fla(src)
    c = model.config
    heads = cfg["num_heads"]
    assert c.memory_layers == [], "a converted fla model has no Retention Layer"
    assert (c.rotary, c.retention_norm, c.head_norm, c.decay) == ("neox", "none", "rms", "fixed")
    assert c.qk_scale is None and c.embed_scale == 1.0
    assert c.key_dim == int(cfg["hidden_size"] * cfg["expand_k"]) // heads
    assert c.head_value_dim == int(cfg["hidden_size"] * cfg["expand_v"]) // heads
    assert c.kv_heads == (cfg["num_kv_heads"] or heads)
    assert c.out_gate == cfg["use_output_gate"]
    assert c.tie_embeddings == cfg["tie_word_embeddings"]


def test_checkpoint_round_trips_and_keeps_the_function(tmp_path: Path) -> None:
    src, cfg, weights = write_fla_dir(tmp_path / "src", seed=1)
    dst = convert_fla(src, tmp_path / "dst")
    names = {p.name for p in dst.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_format.json"} <= names
    assert json.loads((dst / "generation_config.json").read_text())["max_new_tokens"] > 0
    model = load_pretrained(dst)
    tok = ChatTokenizer.load(dst)
    ids = _ids(tok)
    with torch.no_grad():
        got = model(torch.tensor([ids]))[0].double()
    assert (got - reference_logits(cfg, weights, ids)).abs().max() < ATOL


def test_tokenizer_round_trips_and_has_a_base_chat_format(tmp_path: Path) -> None:
    src, _, _ = write_fla_dir(tmp_path / "src")
    _, tok = load_fla(src)
    for text in (TEXT, "User: Hello there, how are you today?"):
        assert tok.decode(tok.encode(text)) == text
    assert tok.chat_format.name == "plain"
    assert tok.token_text(tok.end_id) == "</s>" and tok.pad_id == 0  # <unk> pads
    turns = [Message("user", "Hello there"), Message("assistant", "I am fine")]
    assert tok.parse(tok.render(turns).ids) == turns


def _cli_error(src: Path, tmp_path: Path, capsys) -> str:
    assert cli([str(src), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "model.safetensors").exists()
    return capsys.readouterr().err


def test_missing_config_field_is_a_clear_error(tmp_path: Path, capsys) -> None:
    src, cfg, _ = write_fla_dir(tmp_path / "src")
    del cfg["num_heads"]
    (src / "config.json").write_text(json.dumps(cfg))
    err = _cli_error(src, tmp_path, capsys)
    assert "lacks required fla RetNetConfig fields ['num_heads']" in err


def test_shape_mismatch_is_a_clear_error(tmp_path: Path, capsys) -> None:
    src, cfg, _ = write_fla_dir(tmp_path / "src")
    cfg["expand_v"] = 1.0  # the file's v/g/o projections are for expand_v 2
    (src / "config.json").write_text(json.dumps(cfg))
    err = _cli_error(src, tmp_path, capsys)
    assert "model.layers.0.attn.v_proj.weight has shape (128, 64), expected (64, 64)" in err


def test_missing_and_unknown_weights_are_clear_errors(tmp_path: Path, capsys) -> None:
    src, _, _ = write_fla_dir(tmp_path / "src")
    w = load_file(str(src / "model.safetensors"))
    save_file(
        {k: v for k, v in w.items() if "layers.1.mlp.down" not in k}, str(src / "model.safetensors")
    )
    assert "lacks weight model.layers.1.mlp.down_proj.weight" in _cli_error(src, tmp_path, capsys)
    w["model.layers.0.attn.q_conv1d.weight"] = torch.zeros(4, 1, 4)
    save_file(w, str(src / "model.safetensors"))
    assert "q_conv1d" in _cli_error(src, tmp_path, capsys)


@pytest.mark.parametrize(
    ("field", "value"),
    [("use_short_conv", True), ("feature_map", "relu"), ("hidden_act", "gelu"),
     ("model_type", "gla"), ("attn", {"layers": [1], "num_heads": 4})],
)  # fmt: skip
def test_unsupported_settings_are_refused(tmp_path: Path, field: str, value) -> None:
    src, cfg, _ = write_fla_dir(tmp_path / "src", **{field: value})
    with pytest.raises(SourceError, match=field):
        load_fla(src)


def test_sentencepiece_model_without_tokenizer_json_says_what_to_do(tmp_path: Path) -> None:
    src, _, _ = write_fla_dir(tmp_path / "src")
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(SourceError, match="tokenizer.model but no tokenizer.json"):
        load_fla(src)


def test_memsvc_convert_fla_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from memsvc.cli.main import app

    src, _, _ = write_fla_dir(tmp_path / "src")
    result = CliRunner().invoke(app, ["convert", "fla", str(src), str(tmp_path / "dst")])
    assert result.exit_code == 0, result.output
    assert "memory features are off" in result.output
    assert load_pretrained(tmp_path / "dst").config.memory_layers == []
