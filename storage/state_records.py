"""How a state looks outside SQL: the stored record, its hot-tier encoding, local copies.

- :class:`StoredState`: a state as stored or loaded (decoded blob, checksum, metadata).
- :func:`encode_hot` / :func:`decode_parts`: the hot-tier record, a list of byte parts: a
  head (``MST2``, u32 header length, JSON header with the checksum and codec) and the
  stored frames. Values written before (``MST1``: header, then the raw blob, SHA-256)
  are still read.
- :class:`LocalStates`: the in-process copies in front of Redis, bounded by blob bytes.
"""

from __future__ import annotations

import json
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from storage.cache import split_inline
from storage.state_codec import RAW_CODEC, Encoded, decode, describe, verify

_MAGIC_V1, _MAGIC = b"MST1", b"MST2"


@dataclass(frozen=True)
class StoredState:
    """A session's state as stored: ``blob`` is the decoded state (what save was given,
    or its bf16 rounding when stored in bf16), ``checksum`` is over the stored frames."""

    session_id: str
    version: int
    blob: bytes
    checksum: str
    fingerprint: str
    position: int
    tier: str = ""  # which tier answered a load: local | redis | lru | sql ("" when saved)
    codec: str = "raw"  # raw | zstd | zstd+bf16 | bf16
    stored_size: int = 0  # bytes of the stored frames
    encoded: Encoded | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class StateMeta:
    """A stored state's metadata, read without its blob."""

    session_id: str
    version: int
    fingerprint: str
    position: int
    size: int
    updated_at: datetime
    stored_size: int = 0
    codec: str = "raw"


def encoded_of(state: StoredState) -> Encoded:
    """The state's stored frames (one raw frame when it carries none)."""
    if state.encoded is not None:
        return state.encoded
    blob = state.blob
    return Encoded([blob], dict(RAW_CODEC, n=len(blob)), state.checksum, blob)


def encode_hot(state: StoredState) -> list[bytes]:
    """Hot-tier record: a head (magic, header length, JSON header) and the stored frames."""
    enc = encoded_of(state)
    head = json.dumps(
        {
            "s": state.session_id,
            "v": state.version,
            "c": enc.checksum,
            "f": state.fingerprint,
            "p": state.position,
            "k": enc.codec,
        }
    ).encode()
    return [_MAGIC + struct.pack(">I", len(head)) + head, *enc.frames]


def decode_parts(parts: list[bytes], threads: int = 2) -> StoredState:
    """Inverse of :func:`encode_hot` (also reads a one-part ``MST1`` record written before).

    Raises ValueError when the record is malformed or its frames fail their checksum.
    """
    first = parts[0]
    if first[:4] not in (_MAGIC, _MAGIC_V1):
        raise ValueError("bad magic")
    (n,) = struct.unpack(">I", first[4:8])
    head = json.loads(first[8 : 8 + n])
    if first[:4] == _MAGIC_V1:  # blob inline after the header, SHA-256 over it
        frames, codec = [first[8 + n :]], None
    else:
        frames, codec = parts[1:], head["k"]
    if not verify(frames, head["c"]):
        raise ValueError("checksum mismatch")
    blob = decode(frames, codec, threads)
    enc = Encoded(list(frames), codec or dict(RAW_CODEC, n=len(blob)), head["c"], blob)
    return StoredState(
        head["s"],
        head["v"],
        blob,
        head["c"],
        head["f"],
        head["p"],
        codec=describe(codec),
        stored_size=enc.stored_size,
        encoded=enc,
    )


def decode_hot(data: bytes) -> StoredState:
    """A state from one Redis value: an inline record, or an ``MST1`` value written before."""
    parts = [data] if data[:4] == _MAGIC_V1 else split_inline(data)
    return decode_parts(parts)


class LocalStates:
    """In-process LRU of verified :class:`StoredState` objects, bounded by blob bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredState] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> StoredState | None:
        with self._lock:
            state = self._items.get(key)
            if state is not None:
                self._items.move_to_end(key)
            return state

    def put(self, key: str, state: StoredState) -> None:
        if len(state.blob) > self.max_bytes:
            return
        with self._lock:
            old = self._items.get(key)
            if old is not None and old.version > state.version:
                return
            self._drop(key)
            self._items[key] = state
            self._bytes += len(state.blob)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def drop(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old.blob)
