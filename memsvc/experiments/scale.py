"""scale: read latency and answer accuracy as the bank grows to 1M slots (OQ 3).

A SlotModel (names of 3 tokens of 100: 1M names) is trained on banks of ≤ 256 items,
then banks of N = 1k … 1M items are bulk-written and 256 stored names are asked:

- exact:  softmax over every slot (brute force, O(N·d_k) per query);
- top-k:  ``storage.vector_index.VectorIndex`` (FAISS HNSW, inner product) returns the
          k = 32 (or 1) best keys, the layer attends to those only.

Latency is per query (batches of 16 and of 1); hnsw_build_s is the index build time.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import typer

from memsvc.experiments import harness
from memsvc.experiments.models import SlotModel
from memsvc.experiments.sanity import train_slot_model

NAME = "scale"
N_NAME, PARTS, N_VALUE, TOP_KS = 100, 3, 32, (32, 1)
TRAIN_ITEMS = 256  # largest bank in training


class ArrayBank:
    """A read-only SlotStore over dense arrays (ids = row numbers), optionally indexed.

    keys (N, d_k), values (N, d_v); ``index`` a VectorIndex for search (else brute force).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, index=None) -> None:
        self.keys, self.values, self.index = keys, values, index
        self.d_key, self.d_value, self.capacity = keys.shape[1], values.shape[1], None

    def __len__(self) -> int:
        return self.keys.shape[0]

    def search(self, queries: torch.Tensor, k: int):
        if self.index is not None:
            s, i = self.index.search(queries.detach().numpy(), k)
            return torch.from_numpy(s), torch.from_numpy(i)
        s, i = (queries @ self.keys.T).topk(min(k, len(self)), dim=1)
        return s, i

    def fetch(self, ids: torch.Tensor):
        return self.keys[ids], self.values[ids]

    def all(self):
        return torch.arange(len(self)), self.keys, self.values

    def touch(self, ids: torch.Tensor) -> None:  # reads are not counted here
        pass


def draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """names (n, PARTS) distinct, values (n, 1)."""
    ids = torch.randperm(N_NAME**PARTS, generator=g)[:n]
    names = torch.stack([ids // N_NAME**2, (ids // N_NAME) % N_NAME, ids % N_NAME], -1)
    return names, torch.randint(N_VALUE, (n, 1), generator=g)


@torch.no_grad()
def encode_items(model: SlotModel, names, values, chunk: int = 8192):
    """Bulk write path: each item is its own span [name, value] -> keys (N, d_k), values."""
    keys, vals = [], []
    for i in range(0, names.shape[0], chunk):
        n, v = names[i : i + chunk].unsqueeze(1), values[i : i + chunk].unsqueeze(1)
        h, _ = model.spans(n, v)  # (c, 2, d)
        mask = torch.ones(h.shape[0], 1, h.shape[1], dtype=torch.bool)
        k, val, _ = model.memory.encode(h, mask)
        keys.append(k[:, 0])
        vals.append(val[:, 0])
    return torch.cat(keys), torch.cat(vals)


@torch.no_grad()
def time_reads(model: SlotModel, bank: ArrayBank, q_names, q_values, k: int = 0) -> dict:
    """Accuracy over all queries (batches of 16), and per-query latency at batch 16 and 1.
    k = 0: exact read over every slot; k > 0: top-k through ``bank.search``."""
    model.memory.cfg = replace(model.memory.cfg, top_k=k)
    hits = 0.0
    with harness.timer() as t16:
        for i in range(0, q_names.shape[0], 16):
            pred = model.answer(q_names[i : i + 16].unsqueeze(0), bank).argmax(-1)[0]
            hits += (pred == q_values[i : i + 16]).float().sum().item()
    with harness.timer() as t1:
        for i in range(8):
            model.answer(q_names[i : i + 1].unsqueeze(0), bank)
    return {
        "accuracy": hits / q_names.shape[0],
        "ms_per_query_b16": 1000 * t16["s"] / q_names.shape[0],
        "ms_per_query_b1": 1000 * t1["s"] / 8,
    }


def run(out_dir: Path = harness.DEFAULT_OUT, full: bool = False, seed: int = 0) -> dict:
    from storage.vector_index import IndexParams, VectorIndex

    harness.default_threads()
    g = harness.seed_everything(seed)
    model = SlotModel(N_NAME, PARTS, N_VALUE, width=1)
    with harness.timer() as t:
        curve = train_slot_model(
            model, harness.budget(1500 if full else 600), g, TRAIN_ITEMS, draw=draw_train
        )
    sizes = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= harness.budget(1_000_000)]
    hnsw_max = 1_000_000 if full else 100_000
    names, values = draw(sizes[-1], torch.Generator().manual_seed(seed + 1))
    keys, vals = encode_items(model, names, values)
    rows = []
    for n in sizes:
        q = torch.randperm(n, generator=torch.Generator().manual_seed(n))[:256]
        exact = ArrayBank(keys[:n], vals[:n])
        rows.append({"slots": n, "read": "exact", **time_reads(model, exact, names[q], values[q])})
        print(rows[-1])
        if n <= hnsw_max:
            index = VectorIndex(keys.shape[1], IndexParams(kind="hnsw"))
            with harness.timer() as tb:
                index.upsert(np.arange(n), keys[:n].numpy())
            approx = ArrayBank(keys[:n], vals[:n], index)
            with torch.no_grad():
                queries = model.memory.q_proj(model.name_vec(names[q]))
            for k in TOP_KS:
                _, found = approx.search(queries, k)
                rows.append(
                    {
                        "slots": n,
                        "read": f"hnsw top-{k}",
                        **time_reads(model, approx, names[q], values[q], k),
                        "hnsw_build_s": tb["s"],
                        "true_slot_in_topk": (found == q.unsqueeze(1)).any(1).float().mean().item(),
                    }
                )
                print(rows[-1])

    def plot(fig):
        ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for kind in ("exact", *(f"hnsw top-{k}" for k in TOP_KS)):
            pts = [r for r in rows if r["read"] == kind]
            ax.plot(
                [r["slots"] for r in pts],
                [r["ms_per_query_b1"] for r in pts],
                marker="o",
                label=kind,
            )
            ax2.plot(
                [r["slots"] for r in pts], [r["accuracy"] for r in pts], marker="o", label=kind
            )
        for a in (ax, ax2):
            a.set_xscale("log")
            a.set_xlabel("slots")
        ax.set_yscale("log")
        ax.set_ylabel("ms per query (batch 1)")
        ax2.set_ylabel("answer accuracy")
        ax2.set_ylim(0, 1.02)
        ax.legend(fontsize=7)

    summary = (
        f"SlotModel d=64, d_key=64, trained on banks ≤ {TRAIN_ITEMS} ({t['s']:.0f} s); "
        f"256 queries per size; HNSW M=32, efSearch=96 via storage.vector_index."
    )
    return harness.save(NAME, out_dir, {"curve": curve}, rows, plot, summary, full, seed)


def draw_train(batch: int, n: int, g: torch.Generator, width: int = 1, n_value: int = N_VALUE):
    """Training items from the 1M-name space (with replacement: collisions are ~n²/2M)."""
    ids = torch.randint(N_NAME**PARTS, (batch, n), generator=g)
    names = torch.stack([ids // N_NAME**2, (ids // N_NAME) % N_NAME, ids % N_NAME], -1)
    return names, torch.randint(n_value, (batch, n, width), generator=g)


def cli(
    out_dir: Path = typer.Option(harness.DEFAULT_OUT, help="where results go"),
    full: bool = typer.Option(False, help="HNSW up to 1M slots too"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Read latency and accuracy as slots grow to 1M: exact vs FAISS top-k."""
    res = run(out_dir, full, seed)
    typer.echo(harness.markdown_table(res["rows"]))


if __name__ == "__main__":
    typer.run(cli)
