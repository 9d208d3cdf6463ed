"""Checkpoint directories: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``,
and ``chat_format.json`` when the model keeps its source's chat format).

config.json is :meth:`RetNetConfig.to_json` (it carries ``format`` and ``format_version``;
an unknown one is refused with :class:`CheckpointError`). model.safetensors holds the
state dict; a tied head is stored once (as ``embed.weight``) and re-tied on load.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from retnet_core.config import ConfigError, RetNetConfig
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import CHAT_FORMAT_FILE

__all__ = [
    "CONFIG_NAME",
    "CheckpointError",
    "TOKENIZER_NAME",
    "WEIGHTS_NAME",
    "load_pretrained",
    "save_pretrained",
    "tokenizer_path",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.json"
_TIED = "head.weight"


class CheckpointError(ValueError):
    """A directory that is not a checkpoint this code can read."""


def save_pretrained(model: RetNetLM, directory: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` (and ``tokenizer``) into ``directory``; returns the directory.

    ``tokenizer``: an object with ``save(path)`` (e.g. ``tokenizers.Tokenizer``) or the
    path of a tokenizer.json to copy.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save(out / CONFIG_NAME)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        weights.pop(_TIED)
    save_file(weights, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        target = out / TOKENIZER_NAME
        if isinstance(tokenizer, str | Path):
            if Path(tokenizer).resolve() != target.resolve():
                shutil.copyfile(tokenizer, target)
                fmt = Path(tokenizer).with_name(CHAT_FORMAT_FILE)
                if fmt.is_file():  # the model's own chat format travels with its tokenizer
                    shutil.copyfile(fmt, out / CHAT_FORMAT_FILE)
        else:
            tokenizer.save(str(target))
    return out


def load_pretrained(
    directory: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> RetNetLM:
    """Build the model of ``directory`` on ``device``; refuses unknown formats clearly."""
    src = Path(directory)
    cfg_path, w_path = src / CONFIG_NAME, src / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{src} is not a checkpoint: needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = RetNetConfig.load(cfg_path)
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from exc
    try:
        weights = load_file(str(w_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{w_path}: unreadable weights: {exc}") from exc
    with torch.device("meta"):
        model = RetNetLM(config)
    expected = set(model.state_dict()) - ({_TIED} if config.tie_embeddings else set())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{w_path}: missing {missing}, unexpected {unexpected}")
    if config.tie_embeddings:
        weights[_TIED] = weights["embed.weight"]
    model.load_state_dict(weights, strict=True, assign=True)
    if config.tie_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.head.weight = model.embed.weight
    model._weights = None  # parameters were replaced: the fingerprint re-reads them
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return model.eval()


def tokenizer_path(directory: str | Path) -> Path | None:
    """The checkpoint's tokenizer.json, or None when it has none."""
    path = Path(directory) / TOKENIZER_NAME
    return path if path.is_file() else None
