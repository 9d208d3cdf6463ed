"""RecurrentState: everything a session needs to continue decoding, in a few hundred KB.

Per layer l: S_l (B, H, D_φ, D_v) and, for ``retention_norm="torchscale"`` models, the
decayed key sum z_l (B, H, D_φ); the absolute position of the next token of each
sequence (B,) int64 (it drives the rotation); and the fingerprint of the model that
produced it (weights, config and every setting the state depends on).

Mixers other than retention keep named ``extra`` tensors per layer (see
``retnet_core.attention``): the hybrid's window ring ``win_k``/``win_v`` (B, H_kv, w, D)
and sinks ``sink_k``/``sink_v`` (B, H_kv, s, D), fixed size; the softmax teacher's KV
cache ``kv_k``/``kv_v`` (B, H_kv, P, D), which grows with the position P (its S is empty).

Bytes: a safetensors blob (tensors ``S.{l}``, ``z.{l}``, ``{extra}.{l}``, ``position``)
whose metadata holds the format version, the fingerprint and a BLAKE2b checksum of
everything else, so a truncated or damaged blob is refused as corrupt and a foreign one
as a mismatch. A state without extras writes exactly the bytes it wrote before they existed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import torch
import xxhash
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

__all__ = ["STATE_FORMAT_VERSION", "RecurrentState", "StateCorruptError", "StateError",
           "StateMismatchError"]  # fmt: skip

STATE_FORMAT_VERSION = 1


class StateError(ValueError):
    """A recurrent state that cannot be used."""


class StateMismatchError(StateError):
    """The state belongs to another model (its fingerprint differs)."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(f"recurrent state was made by model {found}, not by this model {expected}")
        self.found, self.expected = found, expected


class StateCorruptError(StateError):
    """The bytes are truncated or damaged (unreadable, or their checksum fails)."""


#: the integrity hash of new blobs; blobs without ``checksum_alg`` used BLAKE2b-128
CHECKSUM_ALG = "xxh3-128"


def _checksum(tensors: dict[str, Tensor], meta: dict[str, str]) -> str:
    """Hash of the metadata and every tensor's name, dtype, shape and bytes.

    XXH3-128 (``meta["checksum_alg"]``) for new blobs: a 1.3B RetNet's state is 96 MiB,
    and BLAKE2b over it cost about 200 ms of a save; XXH3 runs at memory speed. Blobs
    written before carry no ``checksum_alg`` and are checked with BLAKE2b-128.
    """
    if meta.get("checksum_alg") == CHECKSUM_ALG:
        h = xxhash.xxh3_128()
    else:
        h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


class RecurrentState:
    """Decoding state of a batch of B sequences (see the module docstring).

    ``fingerprint`` may be given as a zero-argument callable: it is then resolved on
    first use, so training (a fresh state per step, never kept) never pays for hashing
    weights that change every step.
    """

    def __init__(
        self,
        S: list[Tensor],
        z: list[Tensor] | None,
        position: Tensor,
        fingerprint: str | Callable[[], str],
        extra: dict[str, list[Tensor]] | None = None,
    ) -> None:
        self.S, self.z, self.position = S, z, position
        self.extra: dict[str, list[Tensor]] = dict(extra or {})
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str:
        if callable(self._fingerprint):
            self._fingerprint = self._fingerprint()
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"RecurrentState(batch={self.batch_size}, layers={self.n_layers}, "
            f"position={self.position.tolist()}, fingerprint={self.fingerprint})"
        )

    # ---- facts --------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.position.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.S)

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (S, z and positions)."""
        tensors = [*self.S, *(self.z or []), *_flat(self.extra), self.position]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def device(self) -> torch.device:
        return self.position.device

    def layer(self, i: int) -> dict[str, Tensor]:
        """Layer i's tensors by name: ``S``, ``z`` (when kept) and the extras."""
        out = {"S": self.S[i], **{name: ts[i] for name, ts in self.extra.items()}}
        if self.z is not None:
            out["z"] = self.z[i]
        return out

    # ---- copies ---------------------------------------------------------------------------
    def _map(self, fn) -> RecurrentState:
        z = None if self.z is None else [fn(t) for t in self.z]
        extra = {name: [fn(t) for t in ts] for name, ts in self.extra.items()}
        return RecurrentState(
            [fn(t) for t in self.S], z, fn(self.position), self.fingerprint, extra
        )

    def to(self, device: torch.device | str) -> RecurrentState:
        """The same state on ``device``."""
        return self._map(lambda t: t.to(device))

    def clone(self) -> RecurrentState:
        """A deep copy."""
        return self._map(lambda t: t.clone())

    # ---- batching -------------------------------------------------------------------------
    def select(self, index: Sequence[int] | Tensor) -> RecurrentState:
        """The sequences at ``index`` (in that order), as a new batch."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device).reshape(-1)
        return self._map(lambda t: t.index_select(0, idx))

    def split(self, sizes: Sequence[int]) -> list[RecurrentState]:
        """Consecutive sub-batches of the given sizes (they must add up to B)."""
        if sum(sizes) != self.batch_size:
            raise ValueError(f"sizes {list(sizes)} do not add up to {self.batch_size}")
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [self.select(range(s, s + n)) for s, n in zip(starts, sizes, strict=True)]

    def unbind(self) -> list[RecurrentState]:
        """One batch-of-one state per sequence."""
        return [self.select([i]) for i in range(self.batch_size)]

    @classmethod
    def stack(cls, states: Sequence[RecurrentState]) -> RecurrentState:
        """Concatenate batches of states of the same model into one batch."""
        if not states:
            raise ValueError("stack needs at least one state")
        first = states[0]
        for s in states[1:]:
            if s.fingerprint != first.fingerprint:
                raise StateMismatchError(s.fingerprint, first.fingerprint)
            same = s.n_layers == first.n_layers and set(s.extra) == set(first.extra)
            if not same or (s.z is None) != (first.z is None):
                raise StateError("cannot stack states of different layouts")
        z = None
        if first.z is not None:
            z = [torch.cat([s.z[i] for s in states]) for i in range(first.n_layers)]
        extra = {
            name: [_cat_padded([s.extra[name][i] for s in states]) for i in range(first.n_layers)]
            for name in first.extra
        }
        return cls(
            S=[torch.cat([s.S[i] for s in states]) for i in range(first.n_layers)],
            z=z,
            position=torch.cat([s.position for s in states]),
            fingerprint=first.fingerprint,
            extra=extra,
        )

    # ---- bytes ----------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """Named CPU tensors: ``S.{l}``, ``z.{l}`` and ``position``."""
        out = {f"S.{i}": s for i, s in enumerate(self.S)}
        for i, z in enumerate(self.z or []):
            out[f"z.{i}"] = z
        for name, ts in self.extra.items():
            out.update({f"{name}.{i}": t for i, t in enumerate(ts)})
        out["position"] = self.position
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def to_bytes(self, dtype: torch.dtype | None = None) -> bytes:
        """Serialise to a self-checking safetensors blob.

        ``dtype`` (e.g. ``torch.bfloat16``): store the floating tensors (S, z, extras) in
        it, rounded here and checked as stored, half the bytes of fp32; the decode state
        itself stays in the model's dtype (:meth:`from_bytes` casts back).
        """
        tensors = self.tensors()
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        meta = {
            "format_version": str(STATE_FORMAT_VERSION),
            "fingerprint": self.fingerprint,
            "n_layers": str(self.n_layers),
            "has_z": str(self.z is not None),
            "checksum_alg": CHECKSUM_ALG,
        }
        if self.extra:  # absent otherwise: retention states keep their old bytes
            meta["extra"] = ",".join(sorted(self.extra))
        return st_save(tensors, metadata={**meta, "checksum": _checksum(tensors, meta)})

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        fingerprint: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> RecurrentState:
        """Inverse of :meth:`to_bytes`; ``dtype``: cast floating tensors to it (the
        model's state dtype, for a blob stored in bf16).

        Raises :class:`StateCorruptError` for truncated/damaged bytes and
        :class:`StateMismatchError` when ``fingerprint`` is given and differs.
        """
        tensors, meta = _read_blob(data)
        if meta.get("format_version") != str(STATE_FORMAT_VERSION):
            raise StateCorruptError(
                f"unknown state format version {meta.get('format_version')!r}; "
                f"this code reads version {STATE_FORMAT_VERSION}"
            )
        found = meta["fingerprint"]
        if fingerprint is not None and found != fingerprint:
            raise StateMismatchError(found, fingerprint)
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        n = int(meta["n_layers"])
        z = [tensors[f"z.{i}"] for i in range(n)] if meta["has_z"] == "True" else None
        extra = {name: [tensors[f"{name}.{i}"] for i in range(n)] for name in _extras(meta)}
        state = cls([tensors[f"S.{i}"] for i in range(n)], z, tensors["position"], found, extra)
        return state.to(device)


def _read_blob(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Parse and verify a blob: (tensors, metadata) or StateCorruptError."""
    try:
        tensors = st_load(bytes(data))
        header_len = int.from_bytes(bytes(data[:8]), "little")
        meta = json.loads(bytes(data[8 : 8 + header_len]))["__metadata__"]
        stored = meta.pop("checksum")
        _ = (meta["fingerprint"], meta["n_layers"], meta["has_z"])
    except Exception as exc:  # any parse failure means the bytes are damaged
        raise StateCorruptError(f"recurrent state bytes are truncated or corrupt: {exc}") from exc
    if _checksum(tensors, meta) != stored:
        raise StateCorruptError("recurrent state bytes are corrupt: checksum mismatch")
    try:
        n = int(meta["n_layers"])
        _ = [tensors[f"S.{i}"] for i in range(n)], tensors["position"]
        _ = [tensors[f"{name}.{i}"] for name in _extras(meta) for i in range(n)]
    except KeyError as exc:
        raise StateCorruptError(f"recurrent state bytes lack tensor {exc}") from exc
    return tensors, meta


def _extras(meta: dict[str, str]) -> list[str]:
    """Names of the extra per-layer tensors recorded in a blob's metadata."""
    return [name for name in meta.get("extra", "").split(",") if name]


def _flat(extra: dict[str, list[Tensor]]) -> list[Tensor]:
    return [t for ts in extra.values() for t in ts]


def _cat_padded(parts: list[Tensor]) -> Tensor:
    """Concatenate along the batch, zero-padding dim 2 (a KV cache's time) to the longest."""
    longest = max(p.shape[2] for p in parts) if parts[0].dim() > 2 else None
    if longest is not None:
        parts = [
            torch.nn.functional.pad(p, (0, 0, 0, longest - p.shape[2])) if p.shape[2] < longest
            else p
            for p in parts
        ]  # fmt: skip
    return torch.cat(parts)
