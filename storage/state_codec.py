"""How a state blob is stored: integrity checksums, bf16 narrowing, byte planes, zstd frames.

A blob (the model's ``RecurrentState.to_bytes()``, a safetensors file, or any bytes) is
stored as a list of *frames*. Each frame is one independent zstd frame (or raw bytes when
compression is off) that decodes to one contiguous range of the decoded blob, so frames
are the unit of chunked storage (one SQL row, one Redis key) and decode in parallel.

The ``codec`` dict (JSON, stored beside the frames) says how to rebuild the blob::

    {"v": 1, "z": "zstd" | "none", "p": "fp32" | "bf16", "n": len(blob),
     "fr": [[kind, offset, count], ...]}        # one entry per frame

with kind ``r`` (raw bytes: ``count`` bytes at ``offset``), ``f`` (``count`` float32
values at ``offset``, stored as 4 byte planes: all byte 0s, then all byte 1s, ...) or
``b`` (``count`` float32 values stored as bfloat16 in 2 byte planes; decoding widens
them back to float32 exactly: bf16 bits << 16). Byte planes put the sign/exponent bytes
of neighbouring floats together, which is what makes float data compress at all.

Precision ``bf16`` rounds every F32 tensor of a safetensors blob to the nearest bfloat16
(round half to even): relative error ≤ 2^-8 per value. The decoded blob carries those
rounded values as float32. A blob that checks itself (the model's state: a ``checksum``
entry in the safetensors metadata) is re-sealed through :mod:`retnet_core.state` after
rounding, so ``decode(encode(blob))`` is a valid state; a self-checking blob this module
cannot re-seal is stored in fp32 instead (never a blob the model would refuse).

Blobs under ``min_bytes`` (the small models' states) are stored as they are: one raw
frame, byte-identical to the blob, as before this module existed.

Integrity: :func:`checksum` is XXH3-128 (``xxh3_128:<hex>``), about 20 GB/s, taken over
the stored frames. :func:`verify` also accepts the bare SHA-256 hex digests of rows
written before (``0001`` schema), so old rows stay readable without a rewrite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xxhash
import zstandard

log = logging.getLogger(__name__)

RAW_CODEC: dict[str, Any] = {"v": 1, "z": "none", "p": "fp32"}  # one raw frame, the blob


@dataclass(frozen=True)
class CodecConfig:
    """How blobs are stored.

    - ``compression``: ``zstd`` or ``none``; ``level``: the zstd level (1: fast, about the
      same ratio as 3 on float planes).
    - ``precision``: ``fp32`` (lossless) or ``bf16`` (F32 tensors rounded to bfloat16).
    - ``min_bytes``: smaller blobs are stored raw, in one frame (the small-state path).
    - ``frame_bytes``: decoded bytes per frame (the chunk size of SQL rows and Redis keys).
    - ``threads``: worker threads to (de)compress frames; 1 keeps it on the caller.
    """

    compression: Literal["zstd", "none"] = "zstd"
    level: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    min_bytes: int = 4 * 2**20
    frame_bytes: int = 2**20
    threads: int = 2


@dataclass(frozen=True)
class Encoded:
    """A blob as stored: frames, how to decode them, their checksum, the decoded blob.

    ``blob`` is what :func:`decode` returns: the input itself, or (precision bf16) the
    rounded and re-sealed blob. Tiers that cache decoded blobs must cache this one.
    """

    frames: list[bytes]
    codec: dict[str, Any]
    checksum: str
    blob: bytes

    @property
    def stored_size(self) -> int:
        return sum(len(f) for f in self.frames)


# ---- integrity -------------------------------------------------------------------------
def checksum(frames: bytes | Sequence[bytes]) -> str:
    """``xxh3_128:<32 hex>`` of the bytes (frames are hashed as their concatenation)."""
    h = xxhash.xxh3_128()
    for f in [frames] if isinstance(frames, bytes | bytearray | memoryview) else frames:
        h.update(f)
    return "xxh3_128:" + h.hexdigest()


def verify(frames: bytes | Sequence[bytes], expected: str) -> bool:
    """True when ``expected`` is the frames' checksum: XXH3-128, or a legacy SHA-256 hex."""
    if expected.startswith("xxh3_128:"):
        return checksum(frames) == expected
    h = hashlib.sha256()
    for f in [frames] if isinstance(frames, bytes | bytearray | memoryview) else frames:
        h.update(f)
    return h.hexdigest() == expected


def describe(codec: dict[str, Any] | None) -> str:
    """A short label: ``raw``, ``zstd``, ``zstd+bf16``, ``bf16``."""
    if not codec:
        return "raw"
    parts = [p for p in (codec.get("z"), codec.get("p")) if p not in (None, "none", "fp32")]
    return "+".join(parts) or "raw"


# ---- safetensors layout ----------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """A parsed safetensors blob: header end, tensors and the F32 runs (absolute offsets)."""

    data_start: int
    tensors: dict[str, tuple[str, list[int], int, int]]  # name -> dtype, shape, begin, end
    meta: dict[str, str]
    float_runs: list[tuple[int, int]]  # merged [begin, end) byte ranges of F32 tensors


def parse_safetensors(blob: bytes) -> Layout | None:
    """The layout of a safetensors blob, or None when ``blob`` is not one."""
    if len(blob) < 8:
        return None
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8 or n > 100 * 2**20:
        return None
    try:
        head = json.loads(blob[8 : 8 + n])
        meta = head.pop("__metadata__", None) or {}
        start = 8 + n
        tensors = {}
        for name, t in head.items():
            b, e = (start + int(x) for x in t["data_offsets"])
            if not start <= b <= e <= len(blob):
                return None
            tensors[name] = (str(t["dtype"]), list(t["shape"]), b, e)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    runs: list[tuple[int, int]] = []
    for dtype, _, b, e in sorted(tensors.values(), key=lambda t: t[2]):
        if dtype != "F32" or e == b or (e - b) % 4:
            continue
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], e)
        else:
            runs.append((b, e))
    return Layout(start, tensors, dict(meta), runs)


# ---- bf16 --------------------------------------------------------------------------------
def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 (n,) -> the nearest bfloat16 bit patterns uint16 (n,), half to even; NaN stays NaN.

    bits = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 on the float's uint32 pattern u.
    """
    u = x.view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # the rounding carry could turn a NaN payload into an infinity
        r[nan] = ((u[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return r


def from_bf16_bits(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bit patterns uint16 (n,) -> float32 bit patterns uint32 (n,): bits << 16."""
    wide = bits.astype(np.uint32)
    return np.left_shift(wide, 16, out=out)


# ---- encode --------------------------------------------------------------------------------
Plan = list[tuple[str, int, int]]  # (kind, offset, count) per frame


@dataclass(frozen=True)
class FramePlan:
    """What :func:`frames` will compress: the (possibly rounded) blob and one piece per frame."""

    blob: bytes
    pieces: Plan
    codec: dict[str, Any]  # the codec dict :func:`decode` needs

    @property
    def raw(self) -> bool:
        """One raw frame: the blob itself (nothing to compute)."""
        return self.codec["z"] == "none" and len(self.pieces) == 1 and self.pieces[0][0] == "r"


def plan(blob: bytes, cfg: CodecConfig) -> FramePlan:
    """Decide the frames of ``blob``: rounds (and re-seals) it first for bf16.

    Cheap unless rounding is needed; the compression happens in :func:`frames`.
    """
    blob = bytes(blob)
    if len(blob) < cfg.min_bytes or (cfg.compression == "none" and cfg.precision == "fp32"):
        return FramePlan(blob, [("r", 0, len(blob))], dict(RAW_CODEC, n=len(blob)))
    layout = parse_safetensors(blob)
    runs = layout.float_runs if layout is not None else []
    compress = cfg.compression == "zstd"
    precision = "bf16" if cfg.precision == "bf16" and runs else "fp32"
    if precision == "bf16" and not _bf16_exact(blob, runs, cfg):
        assert layout is not None
        sealed = _round_and_reseal(blob, layout, cfg)
        if sealed is None:  # a self-checking blob we cannot re-seal: keep it exact
            precision = "fp32"
        else:
            blob, layout = sealed, parse_safetensors(sealed)
            assert layout is not None and len(layout.float_runs) == len(runs)
            runs = layout.float_runs
    kind = "b" if precision == "bf16" else "f" if compress else "r"
    pieces = _plan(len(blob), runs, kind, cfg.frame_bytes)
    codec = {
        "v": 1,
        "z": cfg.compression,
        "p": precision,
        "n": len(blob),
        "fr": [list(p) for p in pieces],
    }
    return FramePlan(blob, pieces, codec)


def frames(fp: FramePlan, cfg: CodecConfig) -> Iterator[bytes]:
    """The frames of ``fp`` in order, computed ahead on ``cfg.threads`` threads.

    A caller that writes each frame as it comes (SQL rows) overlaps that I/O with the
    compression of the next frames.
    """
    if fp.raw:
        yield fp.blob
        return
    compress = fp.codec["z"] == "zstd"

    def build(piece: tuple[str, int, int]) -> bytes:
        data = _frame_data(fp.blob, *piece)
        return zstandard.ZstdCompressor(level=cfg.level).compress(data) if compress else data

    if cfg.threads <= 1 or len(fp.pieces) < 4:
        yield from map(build, fp.pieces)
    else:
        yield from _pool(cfg.threads).map(build, fp.pieces)


def finish(fp: FramePlan, frames: list[bytes]) -> Encoded:
    """The :class:`Encoded` of a plan once its frames are all there."""
    return Encoded(frames, fp.codec, checksum(frames), fp.blob)


def encode(blob: bytes, cfg: CodecConfig) -> Encoded:
    """Frames of ``blob`` under ``cfg`` (see the module docstring): plan, then compress.

    Work is done per frame (a few MB at a time, on ``cfg.threads`` threads), so no
    temporary the size of the blob is made besides the rounded copy for bf16.
    """
    fp = plan(blob, cfg)
    return finish(fp, list(frames(fp, cfg)))


def _plan(n: int, runs: list[tuple[int, int]], kind: str, frame_bytes: int) -> Plan:
    """Frames covering ``n`` bytes in order: float runs as ``kind``, the rest raw."""
    if kind == "r":
        runs = []
    plan: Plan = []

    def raw(b: int, e: int) -> None:
        plan.extend(("r", s, min(e, s + frame_bytes) - s) for s in range(b, e, frame_bytes))

    pos, per = 0, max(1, frame_bytes // 4)  # float32 values per frame
    for b, e in runs:
        raw(pos, b)
        count = (e - b) // 4
        plan.extend((kind, b + 4 * s, min(count, s + per) - s) for s in range(0, count, per))
        pos = e
    raw(pos, n)
    return plan or [("r", 0, 0)]


def _frame_data(blob: bytes, kind: str, off: int, count: int) -> bytes:
    """What one frame stores: raw bytes, 4 byte planes (f), or 2 bf16 byte planes (b).

    For ``b`` the values are already bf16-exact, so the bf16 bits are each float's high
    half: bytes 2 and 3 (little-endian).
    """
    if kind == "r":
        return blob[off : off + count]
    vals = np.frombuffer(blob, np.uint8, 4 * count, off).reshape(count, 4)
    planes = vals[:, 2:4].T if kind == "b" else vals.T
    return np.ascontiguousarray(planes).tobytes()


def _bf16_exact(blob: bytes, runs: list[tuple[int, int]], cfg: CodecConfig) -> bool:
    """Whether every F32 value is a bfloat16 already (its low 16 bits are zero)."""
    plan = _plan(len(blob), runs, "b", cfg.frame_bytes)
    low = [(off, count) for kind, off, count in plan if kind == "b"]
    hits = _map(
        lambda p: bool(np.frombuffer(blob, np.uint16, 2 * p[1], p[0])[0::2].any()), low, cfg.threads
    )
    return not any(hits)


def _round_and_reseal(blob: bytes, layout: Layout, cfg: CodecConfig) -> bytes | None:
    """The blob with every F32 value rounded to bf16, re-sealed by its owner.

    A blob without a ``checksum`` metadata entry needs no seal: the rounded values are
    written in place. A model state (``retnet_core.state``: tensors ``S.{l}``, ``z.{l}``,
    ``position``; metadata ``fingerprint``, ``n_layers``, ``has_z``) is rebuilt through
    ``RecurrentState(...).to_bytes()``, which computes its checksum again. Anything else
    that checks itself returns None.
    """
    meta = layout.meta
    known = {"fingerprint", "n_layers", "has_z", "format_version"} <= meta.keys()
    if "checksum" in meta and not known:
        log.warning("a self-checking blob of unknown kind: stored in fp32, not bf16")
        return None
    out = bytearray(blob)
    plan = _plan(len(blob), layout.float_runs, "b", cfg.frame_bytes)

    def round_block(piece: tuple[str, int, int]) -> None:
        _, off, count = piece
        vals = np.frombuffer(out, np.float32, count, off)
        from_bf16_bits(to_bf16_bits(vals), out=vals.view(np.uint32))

    _map(round_block, [p for p in plan if p[0] == "b"], cfg.threads)
    if "checksum" not in meta:
        return bytes(out)
    import torch

    from retnet_core.state import RecurrentState

    dtypes = {
        "F32": torch.float32,
        "I64": torch.int64,
        "BF16": torch.bfloat16,
        "F16": torch.float16,
        "I32": torch.int32,
    }
    tensors = {}
    for name, (dtype, shape, b, e) in layout.tensors.items():
        if dtype not in dtypes:
            return None
        t = torch.frombuffer(out, dtype=dtypes[dtype], count=(e - b) // _size(dtype), offset=b)
        tensors[name] = t.view(shape)
    n = int(meta["n_layers"])
    z = [tensors[f"z.{i}"] for i in range(n)] if meta["has_z"] == "True" else None
    state = RecurrentState(
        [tensors[f"S.{i}"] for i in range(n)], z, tensors["position"], meta["fingerprint"]
    )
    return state.to_bytes()


def _size(dtype: str) -> int:
    return {"F32": 4, "I64": 8, "BF16": 2, "F16": 2, "I32": 4}[dtype]


# ---- decode --------------------------------------------------------------------------------
def decode(frames: Sequence[bytes], codec: dict[str, Any] | None, threads: int = 2) -> bytes:
    """The blob the frames encode; ValueError when they do not fit the codec.

    ``codec`` None (rows written before this module) means one raw frame: the blob.
    """
    if not codec or "fr" not in codec:
        if len(frames) != 1:
            raise ValueError(f"a raw blob has one frame, not {len(frames)}")
        return bytes(frames[0])
    table = codec["fr"]
    if len(table) != len(frames):
        raise ValueError(f"codec lists {len(table)} frames, got {len(frames)}")
    n = int(codec["n"])
    out = np.empty(n, np.uint8)
    compressed = codec.get("z") == "zstd"

    def one(i: int) -> None:
        kind, off, cnt = table[i]
        data = frames[i]
        if compressed:
            data = zstandard.ZstdDecompressor().decompress(data)
        size = {"r": 1, "f": 4, "b": 2}[kind] * cnt
        if len(data) != size or off + (size if kind == "r" else 4 * cnt) > n:
            raise ValueError(f"frame {i} decodes to {len(data)} bytes, not {size}")
        src = np.frombuffer(data, np.uint8)
        if kind == "r":
            out[off : off + cnt] = src
        elif kind == "f":  # OR the 4 planes together: 3x faster than a strided byte copy
            planes = src.reshape(4, cnt)
            word = out[off : off + 4 * cnt].view(np.uint32)
            np.copyto(word, planes[0], casting="unsafe")
            for i in (1, 2, 3):
                word |= planes[i].astype(np.uint32) << np.uint32(8 * i)
        else:
            planes = src.reshape(2, cnt)
            bits = planes[0].astype(np.uint16) | (planes[1].astype(np.uint16) << 8)
            from_bf16_bits(bits, out=out[off : off + 4 * cnt].view(np.uint32))

    try:
        _map(one, range(len(frames)), threads)
    except zstandard.ZstdError as exc:
        raise ValueError(f"a frame does not decompress: {exc}") from exc
    return out.tobytes()


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` worker threads (one per size asked for)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="codec")
        return pool


def _map(fn, items, threads: int) -> list:  # type: ignore[no-untyped-def]
    """``[fn(x) for x in items]``, on a shared pool of ``threads`` threads for 4+ items.

    zstd and numpy release the GIL on large buffers, so frames really run in parallel.
    """
    items = list(items)
    if threads <= 1 or len(items) < 4:
        return [fn(x) for x in items]
    return list(_pool(threads).map(fn, items))
