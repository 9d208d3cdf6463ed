"""GPU parity: memsvc's converted model against fla's own ``RetNetForCausalLM``.

    python scripts/gpu_fla_parity.py [--out DIR] [--layers 4] [--tokens 512]

Run on the device machine through ``scripts/gpu_fla_parity.sh`` (docs/bench/gpu.md).
Needs CUDA, ``flash-linear-attention`` 0.6.0 (``fla``, with ``fla-core``) and
``transformers`` 5.x: a test-only dependency, never on the CPU path.

Builds fla's RetNet at the fla-hub 1.3B widths (hidden 2048, 8 heads, D_k 256, D_v 512,
GatedMLP 2816, vocab 32000; ``--layers`` of the 24) with random weights (norm weights
away from 1, so the g-norm fold is exercised), saves it with ``save_pretrained``, converts
the directory with ``retnet_core.convert_fla`` (a small tokenizer beside it), and
compares next-token logits on random ids:

- fp32: fla's chunk kernel (prefill) vs our parallel, chunkwise and recurrent forms;
- bf16: both models cast to bf16, fla vs our chunkwise prefill.

Reports max |Δ| and max |Δ| / max |logit| per form, and the argmax agreement, to
``OUT/fla_parity.json``; exits 1 when fp32 relative error exceeds 5e-3 (fla's fp32
kernels may use TF32 dots) or bf16's 5e-2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FP32_REL, BF16_REL = 5e-3, 5e-2  # fla's fp32 kernels may use TF32 dots


def _tokenizer():
    spec = importlib.util.spec_from_file_location(
        "tiny_fla", ROOT / "tests" / "retnet_core" / "tiny_fla.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_sp_tokenizer()


def build_fla(directory: Path, layers: int) -> torch.nn.Module:
    """fla's RetNetForCausalLM with random O(1)-scale weights, saved to ``directory``."""
    from fla.models.retnet import RetNetConfig, RetNetForCausalLM

    config = RetNetConfig(hidden_size=2048, num_hidden_layers=layers, num_heads=8, vocab_size=32000)
    torch.manual_seed(0)
    model = RetNetForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights, the shared g-norm weight included
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5 if "embeddings" not in name else 1.0)
    model.save_pretrained(directory, safe_serialization=True)
    _tokenizer().save(str(directory / "tokenizer.json"))
    return model


def compare(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    diff = (got.float() - ref.float()).abs().max().item()
    return {
        "max_abs": diff,
        "rel": diff / ref.float().abs().max().item(),
        "argmax_agree": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
    }


@torch.no_grad()
def run(layers: int, tokens: int) -> dict:
    from retnet_core.convert_fla import load_fla

    dev = torch.device("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        fla_model = build_fla(Path(tmp), layers).to(dev).eval()
        ours, _ = load_fla(tmp)
    ours = ours.to(dev)
    ids = torch.randint(3, 32000, (1, tokens), device=dev)
    out: dict = {"layers": layers, "tokens": tokens, "device": torch.cuda.get_device_name()}
    ref = fla_model(ids).logits[0]
    out["fp32_parallel"] = compare(ours(ids)[0], ref)
    out["fp32_chunkwise"] = compare(ours.prefill(ids, chunk_size=64)[0][0], ref)
    state, steps = ours.init_state(1), []
    for t in ids[0, :64]:
        logits, state = ours.step(t[None], state)
        steps.append(logits[0])
    out["fp32_recurrent_64"] = compare(torch.stack(steps), ref[:64])
    fla_model, ours = fla_model.to(torch.bfloat16), ours.to(torch.bfloat16)
    out["bf16_chunkwise"] = compare(
        ours.prefill(ids, chunk_size=64)[0][0], fla_model(ids).logits[0]
    )
    fp32 = [v["rel"] for k, v in out.items() if k.startswith("fp32")]
    out["ok"] = max(fp32) <= FP32_REL and out["bf16_chunkwise"]["rel"] <= BF16_REL
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/gpu_fla_parity"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_fla_parity: no CUDA device", file=sys.stderr)
        return 2
    result = run(args.layers, args.tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fla_parity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
