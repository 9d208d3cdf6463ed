"""Llama import: the converted softmax teacher's logits equal Hugging Face transformers'
``LlamaForCausalLM`` on the same random weights (float32), from a HF directory and from a
GGUF file written here in llama.cpp's layout (q/k rows permuted); the tokenizer rebuilt
from GGUF fields encodes like the source's, and chats render like its ChatML template."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from retnet_core.checkpoint import load_pretrained
from retnet_core.convert_llama import cli, convert_llama, load_llama
from retnet_core.llama_source import SourceError, read_gguf
from retnet_core.tokenizer import ChatTokenizer, Message

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "Hello there! How are you doing today? I am fine, thanks.",
    "My phone number is 555 1234 and I live at 42 Elm Street.",
    "Café crème, naïve façade: unicode text 日本語 😀.",
    "The quick brown fox jumps over the lazy dog 1999 times.",
] * 30
TEXTS = [
    "Hello there, 12345 foxes!",
    "  spaces  and\nnewlines\t",
    "Café 日本 😀",
    "<|im_end|> typed",
]


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _hf_model(tied: bool, vocab: int):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=tied, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    model.config._attn_implementation = "eager"
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def source(request, tmp_path_factory):
    """(HF dir, GGUF file, HF model) of one tiny random Llama with a ChatML tokenizer."""
    tied = request.param
    root = tmp_path_factory.mktemp("llama")
    tok = _tokenizer()
    hf = _hf_model(tied, tok.get_vocab_size())
    hf_dir = root / "hf"
    hf.save_pretrained(hf_dir, safe_serialization=True)
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"})
    )
    gguf_path = root / "tiny.gguf"
    _write_gguf(hf, tok, gguf_path)
    return hf_dir, gguf_path, hf


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's layout: per head, half-split row i + j·D/2 becomes row 2i + j."""
    d = w.shape[0] // heads
    out = np.empty_like(w)
    for h in range(heads):
        block = w[h * d : (h + 1) * d]
        out[h * d : (h + 1) * d : 2] = block[: d // 2]
        out[h * d + 1 : (h + 1) * d : 2] = block[d // 2 :]
    return out


def _write_gguf(hf, tok: Tokenizer, path: Path) -> None:
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(256)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    spec = json.loads(tok.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in SPECIALS else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHATML)
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], kv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            w.add_tensor(f"blk.{i}.ffn_{ours}.weight", sd[p + f"mlp.{theirs}.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TOKENS = torch.randint(3, 259, (2, 19), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_teacher_logits_equal_transformers(source, kind, tmp_path):
    hf_dir, gguf_path, hf = source
    dst = convert_llama(hf_dir if kind == "hf" else gguf_path, tmp_path / "ck", mixer="softmax")
    assert {p.name for p in dst.iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "chat_format.json",
        "generation_config.json",
    }  # fmt: skip
    model = load_pretrained(dst)
    assert model.config.tie_embeddings == hf.config.tie_word_embeddings
    with torch.no_grad():
        want = hf(TOKENS).logits
        got = model(TOKENS)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        # the teacher's KV-cache prefill and step continue it exactly
        first, st = model.prefill(TOKENS[:, :11], boundaries=[4])
        nxt, st = model.step(TOKENS[:, 11], st)
    torch.testing.assert_close(first, want[:, :11], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nxt, want[:, 11], rtol=1e-4, atol=1e-4)


def test_gguf_and_hf_give_the_same_checkpoint(source):
    hf_dir, gguf_path, _ = source
    a, _ = load_llama(hf_dir, "softmax")
    b, _ = load_llama(gguf_path, "softmax")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_tokenizer_rebuilt_from_gguf_matches_the_source(source, tmp_path):
    hf_dir, gguf_path, _ = source
    ref = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tok = read_gguf(gguf_path).tokenizer
    for text in TEXTS:
        want = ref.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=False).ids == want
        assert tok.decode(want, skip_special_tokens=False) == text
    # the chat tokenizer: ChatML turns, content never matches control tokens
    dst = convert_llama(gguf_path, tmp_path / "ck", mixer="softmax")
    chat = ChatTokenizer.load(dst)
    assert chat.end_id == ref.token_to_id("<|im_end|>")
    assert chat.pad_id == ref.token_to_id("<|endoftext|>")
    for text in TEXTS:
        assert chat.decode(chat.encode(text)) == text
    assert chat.encode("<|im_end|>") != [chat.end_id]
    msgs = [Message("system", "Be brief."), Message("user", "Hello there, 12345 foxes!")]
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(hf_dir / "tokenizer.json"), chat_template=CHATML
    )
    text = hf_tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in msgs],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = chat.render_ids(msgs) + chat.generation_prompt()
    assert ids == ref.encode("\n" + text, add_special_tokens=False).ids  # one leading newline
    assert chat.parse(chat.render_ids(msgs)) == msgs
    rendered = chat.render(msgs, train_roles=("user",))
    opening = len(chat.opening("user"))
    start = rendered.boundaries[0]
    assert rendered.targets[start : start + opening] == [False] * opening
    assert rendered.targets[-1] is True and rendered.ids[-1] == chat.end_id


def test_students_load_from_the_same_weights(source):
    hf_dir, _, hf = source
    teacher, _ = load_llama(hf_dir, "softmax")
    hybrid, _ = load_llama(hf_dir, "hybrid", window=8, sinks=2)
    student, _ = load_llama(hf_dir, "retention", decay="learned", feature_map="hedgehog")
    assert hybrid.config.window == 8 and student.config.retention_norm == "torchscale"
    short = TOKENS[:, :8]  # inside the window and α = 0: the hybrid is the teacher
    with torch.no_grad():
        torch.testing.assert_close(hybrid(short), teacher(short), rtol=1e-5, atol=1e-5)
        assert torch.isfinite(student(TOKENS)).all()
        for name, w in teacher.state_dict().items():
            torch.testing.assert_close(student.state_dict()[name], w, rtol=0, atol=0)


def test_cli_writes_a_checkpoint_and_refuses_non_llama(source, tmp_path, capsys):
    hf_dir, gguf_path, _ = source
    dst = tmp_path / "student"
    assert cli([str(gguf_path), str(dst), "--mixer", "hybrid", "--window", "16"]) == 0
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["mixer"] == "hybrid" and cfg["window"] == 16 and cfg["sinks"] == 4
    assert cli([str(gguf_path), str(tmp_path / "x"), "--set", "decay=learned"]) == 0
    assert json.loads((tmp_path / "x" / "config.json").read_text())["decay"] == "learned"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert cli([str(bad), str(tmp_path / "y")]) == 2
    assert "not a LlamaForCausalLM" in capsys.readouterr().err
    with pytest.raises(SourceError):
        load_llama(bad)


def test_memsvc_convert_llama_command(source, tmp_path):
    """`memsvc convert llama SRC DST --mixer softmax` writes the teacher checkpoint."""
    from typer.testing import CliRunner

    from memsvc.cli.main import app

    hf_dir, _, _ = source
    dst = tmp_path / "teacher"
    result = CliRunner().invoke(
        app, ["convert", "llama", str(hf_dir), str(dst), "--mixer", "softmax"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((dst / "config.json").read_text())["mixer"] == "softmax"
    assert (dst / "generation_config.json").is_file() and (dst / "tokenizer.json").is_file()
    bad = CliRunner().invoke(app, ["convert", "llama", str(tmp_path / "nope"), str(tmp_path / "z")])
    assert bad.exit_code == 2
