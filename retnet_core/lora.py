"""Low-rank adapters (LoRA) and trained deltas: what distillation trains on a frozen base.

A :class:`LoRALinear` wraps a frozen ``nn.Linear`` (weight W (out, in), bias b) with a
trainable low-rank update (Hu et al. 2021):

    W' = W + s · B A,    A (r, in),  B (out, r),  s = alpha / r,    y = x W'ᵀ + b

B starts at zero, so a freshly wrapped model computes exactly what the base did. The
module forms W' first and then runs one linear, so :func:`merge_lora` (which stores that
same W' in a plain ``nn.Linear``) gives a model whose outputs are bit-identical to the
wrapped one's: the assembled checkpoint *is* the trained student, not an approximation.

A *delta* is the set of tensors a distillation run trains: the adapters' A and B and any
parameters the base lacks or that were unfrozen (feature maps, learned decays, the
hybrid's α, norms), keyed by their names in the wrapped model. Base weights never enter
it, which keeps it small enough to commit.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LoRALinear",
    "added_targets",
    "adapter_parameter_names",
    "attach_lora",
    "delta_state",
    "load_delta",
    "lora_modules",
    "merge_lora",
    "merged_weight",
    "new_parameter_names",
    "set_trainable",
]

ADAPTER_NAMES = ("lora_a", "lora_b")


def merged_weight(weight: Tensor, a: Tensor, b: Tensor, scale: float) -> Tensor:
    """W + s · B A (out, in): the one formula both the wrapped and the merged model use."""
    return weight + (b @ a) * scale


class LoRALinear(nn.Module):
    """A frozen linear plus a trainable rank-r update (see the module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        out_features, in_features = base.weight.shape
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **kw))
        # A as nn.Linear's default init (uniform, fan-in), B zero: the update starts at 0
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank

    @property
    def weight(self) -> Tensor:
        """The effective weight W' (out, in)."""
        return merged_weight(self.base.weight, self.lora_a, self.lora_b, self.scale)

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.base.bias)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's adapters by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def attach_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str]) -> list[str]:
    """Wrap every ``nn.Linear`` whose name ends with one of ``targets`` (e.g.
    ``"retention.in_proj"``) in a :class:`LoRALinear`; returns the wrapped names.

    Wrapping changes nothing the model computes (B = 0). Raises when nothing matched, so
    a typo in a config never trains a model without adapters.
    """
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)
    ]
    if not names:
        raise ValueError(f"no nn.Linear matches the LoRA targets {list(targets)}")
    for name in names:
        _set_child(model, name, LoRALinear(model.get_submodule(name), rank, alpha))
    _forget_weight_cache(model)
    return names


def added_targets(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The LoRA targets ``new`` adds to a delta trained with ``old`` (``{rank, alpha,
    targets}``; empty: no adapters), in ``new``'s order.

    A run may grow a committed delta's adapters, e.g. onto the MLPs, for more capacity:
    the old adapters load as trained and the added ones start at B = 0, so the grown model
    first computes exactly what the delta did. Rank and alpha must stay, and no target may
    go (its trained tensors would be dropped): anything else raises ``ValueError``.
    """
    old_targets = list(old.get("targets", [])) if old else []
    new_targets = list(new.get("targets", [])) if new else []
    if old_targets and (
        int(old["rank"]) != int(new.get("rank", 0)) or float(old["alpha"]) != float(new["alpha"])
    ):
        raise ValueError(f"another LoRA rank or alpha: {dict(old)} -> {dict(new)}")
    dropped = [t for t in old_targets if t not in new_targets]
    if dropped:
        raise ValueError(f"the new LoRA setup drops trained targets: {dropped}")
    return [t for t in new_targets if t not in old_targets]


def adapter_parameter_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """The A and B parameter names of the model's adapters on ``targets``."""
    return [
        f"{name}.{p}"
        for name in lora_modules(model)
        if any(name == t or name.endswith("." + t) for t in targets)
        for p in ADAPTER_NAMES
    ]


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every adapter by a plain ``nn.Linear`` holding W' (in place; returns model).

    The merged model's outputs equal the wrapped model's bit for bit (same W', same op).
    """
    for name, module in lora_modules(model).items():
        with torch.no_grad():
            w = module.weight.detach().clone()
        base = module.base
        lin = nn.Linear(w.shape[1], w.shape[0], bias=base.bias is not None, device=w.device)
        lin.weight = nn.Parameter(w, requires_grad=False)
        if base.bias is not None:
            lin.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        _set_child(model, name, lin)
    _forget_weight_cache(model)
    return model


def _forget_weight_cache(model: nn.Module) -> None:
    """RetNetLM caches its weight list for the fingerprint: modules changed, re-read it."""
    if hasattr(model, "_weights"):
        model._weights = None


def set_trainable(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """requires_grad on the parameters whose name matches a glob pattern, off elsewhere.

    Returns the trainable names; a pattern that matches nothing is an error (typos).
    """
    patterns = list(patterns)
    names = []
    used = set()
    for name, p in model.named_parameters():
        hits = [pat for pat in patterns if fnmatch.fnmatchcase(name, pat)]
        p.requires_grad_(bool(hits))
        used.update(hits)
        if hits:
            names.append(name)
    unused = [p for p in patterns if p not in used]
    if unused:
        raise ValueError(f"trainable patterns match no parameter: {unused}")
    return names


def delta_state(model: nn.Module, base_names: Iterable[str], extra: Iterable[str] = ()) -> dict:
    """The delta of ``model`` (see the module docstring): every parameter not among the
    base's names (adapters, feature maps, learned decays, α), plus the base parameters
    named in ``extra`` (e.g. norms a run unfroze). Detached CPU copies, sorted by name."""
    base, keep = set(base_names), set(extra)
    out = {}
    for name, p in model.named_parameters():
        plain = name.replace(".base.", ".")  # an adapter's frozen W keeps its base name
        if (plain not in base and ".base." not in name) or plain in keep:
            out[name] = p.detach().to("cpu", copy=True).contiguous()
    return dict(sorted(out.items()))


def load_delta(
    model: nn.Module,
    delta: dict[str, Tensor],
    base_names: Iterable[str] | None = None,
    fresh: Iterable[str] = (),
) -> None:
    """Copy a delta's tensors into ``model`` (which has the same adapters attached).

    Every delta name must exist with the same shape. With ``base_names``, every parameter
    the base lacks must be in the delta, except those named in ``fresh`` (adapters a run
    adds on top of a committed delta: :func:`added_targets`): loading never leaves a
    trained tensor at its initial value by accident.
    """
    params = dict(model.named_parameters())
    unknown = sorted(set(delta) - set(params))
    if unknown:
        raise ValueError(f"delta names unknown to the model: {unknown[:5]}")
    if base_names is not None:
        expected = set(new_parameter_names(model, base_names)) - set(fresh)
        missing = sorted(expected - set(delta))
        if missing:
            raise ValueError(f"delta lacks trained parameters: {missing[:5]}")
    bad = [n for n, t in delta.items() if tuple(t.shape) != tuple(params[n].shape)]
    if bad:
        raise ValueError(f"delta shapes differ from the model's: {bad[:5]}")
    with torch.no_grad():
        for name, tensor in delta.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    _forget_weight_cache(model)


def new_parameter_names(model: nn.Module, base_names: Iterable[str]) -> list[str]:
    """Parameters the base lacks (adapters and the student's own): a delta must hold them."""
    base = set(base_names)
    return [n for n, _ in model.named_parameters() if ".base." not in n and n not in base]
