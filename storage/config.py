"""Storage's own settings for states and snapshots (the service maps its settings onto them).

Sizes are bytes. Defaults keep the small-state path as it was: states under
``codec.min_bytes`` (4 MiB) are stored raw, in one frame, inline in their SQL row and in
one Redis value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.state_codec import CodecConfig


@dataclass(frozen=True)
class StateConfig:
    """How session states and passage snapshots are stored and cached.

    - ``codec``: compression, stored precision (fp32 | bf16), frame size, threads;
    - ``ttl_s``: lifetime of a hot copy in Redis (or the in-process LRU);
    - ``hot_max_bytes``: Redis byte budget for state records (least recently used evicted
      first; 0: none); ``hot_inline_bytes``: larger records take one Redis key per frame;
    - ``local_bytes``: verified in-process copies in front of Redis (0: none); a state
      larger than this is never held there;
    - ``lru_bytes``: the in-process hot tier used when no Redis is configured;
    - ``snapshot_max_bytes``: stored bytes of snapshots kept per tenant in SQL (least
      recently used pruned on write; 0: no bound).
    """

    codec: CodecConfig = field(default_factory=CodecConfig)
    ttl_s: float = 3600.0
    hot_max_bytes: int = 2**30
    hot_inline_bytes: int = 4 * 2**20
    local_bytes: int = 64 * 2**20
    lru_bytes: int = 256 * 2**20
    snapshot_max_bytes: int = 2**30
