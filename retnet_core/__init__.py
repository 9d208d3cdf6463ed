"""retnet_core: the RetNet language model with memory slots. Pure PyTorch, CPU or CUDA.

Never imports ``storage`` or ``memsvc``; the CPU path never imports triton.
Submodules (``retention``, ``layers``, ``model``, ``state``, ``checkpoint``, ``generate``)
hold the details; the names below are the public face.
"""

from retnet_core.checkpoint import CheckpointError, load_pretrained, save_pretrained
from retnet_core.config import ConfigError, RetNetConfig
from retnet_core.generate import Generation, SamplingParams, generate, sample
from retnet_core.model import RetNetLM
from retnet_core.retention import (
    retention_chunkwise,
    retention_denominator,
    retention_parallel,
    retention_recurrent,
)
from retnet_core.slots import ExactSlotStore, SlotStore
from retnet_core.state import (
    RecurrentState,
    StateCorruptError,
    StateError,
    StateMismatchError,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ExactSlotStore",
    "Generation",
    "RecurrentState",
    "RetNetConfig",
    "RetNetLM",
    "SamplingParams",
    "SlotStore",
    "StateCorruptError",
    "StateError",
    "StateMismatchError",
    "generate",
    "load_pretrained",
    "retention_chunkwise",
    "retention_denominator",
    "retention_parallel",
    "retention_recurrent",
    "sample",
    "save_pretrained",
]
