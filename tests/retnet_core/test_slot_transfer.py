"""Memory slots on a pretrained backbone (issue 13 §4): a hybrid backbone gets a memory
layer without changing what it computes, the frozen variant trains only that layer, the
adapter variant also its LoRA, training lowers the cross-session loss, and the exact-reply
rate reads slots or a note as the service serves it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from retnet_core.config import RetNetConfig
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer
from retnet_core.training.dialogues import DialogueGenerator
from retnet_core.training.memory_train import cross_session, cross_session_eval
from retnet_core.training.slot_transfer import (
    _exact,
    answered,
    note_session,
    prepare_variant,
    reader_rates,
    save_servable,
    train_slots,
    with_memory_layer,
)


def _hybrid(tok: ChatTokenizer) -> RetNetLM:
    torch.manual_seed(0)
    cfg = RetNetConfig(
        vocab_size=tok.vocab_size, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
        ffn_dim=64, mixer="hybrid", window=8, sinks=2, decay="learned",
        feature_map="hedgehog", retention_norm="torchscale", head_norm="none",
    )  # fmt: skip
    return RetNetLM(cfg).eval()


def test_the_memory_layer_joins_without_changing_the_backbone(tok) -> None:
    base = _hybrid(tok)
    model = with_memory_layer(base, 1).eval()
    assert model.config.memory_layers == [1] and not base.config.memory_layers
    x = torch.randint(4, tok.vocab_size, (2, 20))
    with torch.no_grad():  # no bank: the memory layer adds nothing
        assert torch.equal(model(x), base(x))


@pytest.mark.parametrize("variant", ["frozen", "lora"])
def test_variants_train_what_they_say(tok, pools, variant) -> None:
    model = with_memory_layer(_hybrid(tok), 1)
    names = prepare_variant(model, variant)
    assert any(".memory." in n for n in names)
    assert all(".memory" in n or ".lora_" in n for n in names)
    assert any(".lora_" in n for n in names) == (variant == "lora")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_slots(model, tok, DialogueGenerator(pools, "train", seed=1), 3, batch=4)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(names)


def test_training_lowers_the_cross_session_loss(tok, pools) -> None:
    """On one fixed batch (a clean signal) the frozen variant's memory layer learns."""
    torch.set_num_threads(1)
    model = with_memory_layer(_hybrid(tok), 1)
    prepare_variant(model, "frozen")
    batch = DialogueGenerator(pools, "train", seed=2).sample(4, ["recall"])

    class Fixed(DialogueGenerator):
        def sample(self, n, kinds=()):  # type: ignore[override]
            return batch

    losses = train_slots(model, tok, Fixed(pools, "train"), 25, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], losses


def test_note_session_serves_what_the_service_keeps(pools) -> None:
    gen = DialogueGenerator(pools, "heldout", seed=3)
    forget = gen.example("forget")
    note, *last = note_session(forget)
    assert note.role == "system" and forget.forgotten not in note.content
    assert "forget" not in note.content.lower() and tuple(last) == forget.sessions[-1]
    recall = gen.example("recall")
    assert recall.answer in note_session(recall)[0].content
    doc = gen.example("document")
    assert doc.answer in note_session(doc)[0].content


def test_reader_rates_read_slots_or_note(tok, pools) -> None:
    """The slots reader agrees with the training loop's own evaluation of the same
    metric; an exact reply needs every scored token right."""
    model = with_memory_layer(_hybrid(tok), 1)
    prepare_variant(model, "frozen")
    train_slots(model, tok, DialogueGenerator(pools, "train", seed=5), 4, batch=4, lr=1e-2)
    exs = {"recall": DialogueGenerator(pools, "heldout", seed=4).sample(6, ["recall"])}
    rates = reader_rates(model, tok, exs, "slots", batch=4, seq_len=256)
    own = cross_session_eval(model, tok, exs, "cpu", 256)["memory_recall"]
    assert rates["recall_exact"] == own and rates["recall"] >= own
    assert set(reader_rates(model, tok, exs, "note", batch=4)) == {"recall", "recall_exact"}
    ex = exs["recall"][0]
    assert answered(f"It is {ex.answer.upper()}.", ex) and not answered("No idea.", ex)
    refuse = replace(ex, answer="")
    assert answered("I don't know your name.", refuse) and not answered("It's Bo.", refuse)
    labels = torch.tensor([[-100, 2, 3], [-100, 2, 3], [-100, -100, -100]])
    logits = torch.nn.functional.one_hot(torch.tensor([[0, 2, 3], [0, 2, 1], [0, 0, 0]]), 5)
    assert _exact(logits.float(), labels) == [True, False, False]
    with pytest.raises(ValueError, match="reader"):
        reader_rates(model, tok, exs, "attention")
    with pytest.raises(ValueError, match="variant"):
        prepare_variant(model, "full")


def test_a_trained_variant_saves_as_a_servable_checkpoint(tok, pools, tmp_path) -> None:
    """The adapter variant's LoRA is merged into the saved weights: the checkpoint loads
    as a plain model with the memory layer and computes what the trained model did."""
    from retnet_core.checkpoint import load_pretrained
    from retnet_core.lora import lora_modules

    model = with_memory_layer(_hybrid(tok), 1)
    prepare_variant(model, "lora")
    train_slots(model, tok, DialogueGenerator(pools, "train", seed=6), 2, batch=4, lr=1e-2)
    exs = DialogueGenerator(pools, "heldout", seed=6).sample(3, ["recall"])
    before = cross_session(model, tok, exs, "cpu").logits
    source = tmp_path / "source"
    tok.save(source)
    out = save_servable(model, source, tmp_path / "lora")
    loaded = load_pretrained(out).eval()
    assert not lora_modules(loaded) and loaded.config.memory_layers == [1]
    assert (out / "tokenizer.json").is_file()
    with torch.no_grad():
        after = cross_session(loaded, tok, exs, "cpu").logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
