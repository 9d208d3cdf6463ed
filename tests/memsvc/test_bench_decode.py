"""The decode benchmark's interleaved measurement and target table, on fake runners."""

from __future__ import annotations

import torch

from memsvc.bench.decode import Measurement, all_targets, markdown, measure
from memsvc.bench.decode_models import Shape


class FakeRunner:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.shape, self.log, self.state = name, Shape(vocab=11), log, None

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        self.log.append(f"prefill {self.name}")
        self.state = prompt.shape[1]
        return torch.zeros(1, self.shape.vocab)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.log.append(f"step {self.name}")
        self.state += 1
        return torch.zeros(1, self.shape.vocab)

    def state_bytes(self) -> int:
        return 4 * self.state

    def reset(self) -> None:
        self.state = None

    def weight_bytes_per_token(self) -> int:
        return 0


def test_measure_interleaves_steps_round_robin() -> None:
    log: list[str] = []
    runners = [FakeRunner("ours", log), FakeRunner("yar", log)]
    found, errors = measure(runners, length=8, n_decode=5, n_warmup=2)
    assert not errors
    steps = [e for e in log if e.startswith("step")]
    assert steps == ["step ours", "step yar"] * 7  # one step of each per round
    assert log.count("prefill ours") == 3  # short prompts: prefill repeated, median kept
    by = {m.model: m for m in found}
    assert len(by["ours"].decode_ms_all) == 5 and by["ours"].state_bytes == 4 * (8 + 7)
    assert by["ours"].decode_p10_ms <= by["ours"].decode_ms


def test_targets_per_row_with_gap() -> None:
    def m(model: str, length: int, ms: float, pre: float = 1.0) -> Measurement:
        return Measurement(model=model, length=length, prefill_s=pre, decode_ms=ms)

    results = [
        m("ours-vf1", 128, 50), m("ours-vf1", 8192, 52, 2.0),
        m("ours", 128, 60), m("ours", 8192, 60, 2.0),
        m("yar", 128, 50), m("yar", 8192, 50, 1.0),
        m("llama", 8192, 200),
    ]  # fmt: skip
    goals = all_targets(results)
    rows = [g["row"] for g in goals]
    assert rows[0] == "ours-vf1" and "ours" in rows  # fairest same-shape row first
    vf1 = {g["name"]: g for g in goals if g["row"] == "ours-vf1"}
    assert abs(vf1["decode / yar (worst length)"]["gap"] - 0.14) < 1e-9
    assert vf1["llama / decode at 8192"]["met"] and vf1["llama / decode at 8192"]["gap"] == 0
    meta = {
        "n_warmup": 1, "n_decode": 2, "weights_read_per_token": {}, "compile_s": None,
        "prefill_slice": 4096, "prefill_chunk": 512, "yar_prefill_slice": 512,
        "machine": "x", "torch": "t", "threads": 2, "loadavg_1_5_15_before": [0],
        "loadavg_1_5_15_after": [0], "utc": "now", "command": "c",
    }  # fmt: skip
    text = markdown(results, goals, meta)
    assert "| ours-vf1 | decode / yar (worst length) | 1.040 | <= 0.90 | NO | 0.140 |" in text
