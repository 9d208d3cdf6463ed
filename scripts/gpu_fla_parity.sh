#!/usr/bin/env bash
# GPU parity of `memsvc convert fla` against fla's own RetNetForCausalLM (docs/bench/gpu.md):
#   device tool: run(command="bash scripts/gpu_fla_parity.sh", carry=[".whl"], timeout_s=420)
# Before that, once, HERE (the device machine reaches no registry; this one reaches PyPI):
#   bash scripts/gpu_fla_parity.sh prepare   # fla-core, flash-linear-attention, transformers
#                                            # wheels into .whl/ (git-ignored, carried)
# On the device: installs what is not importable from .whl/, then runs
# scripts/gpu_fla_parity.py, leaving fla_parity.json and log.txt in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
FLA_VERSION=0.6.0
WHEELS=("fla-core==$FLA_VERSION" "flash-linear-attention==$FLA_VERSION" "transformers>=5,<6"
  "huggingface_hub>=1,<2" "tokenizers" "safetensors" "einops")

if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
  ls -l .whl
  exit 0
fi

ARGS=("$@")  # the loop below reuses "$@"
OUT=${OUT:-out/gpu_fla_parity}
mkdir -p "$OUT"
site=/tmp/gpu_fla_site
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
importable() { "$PY" -c "import $1" >/dev/null 2>&1; }
# module  wheel-file-prefix
for pair in "einops einops" "safetensors safetensors" "tokenizers tokenizers" \
  "huggingface_hub huggingface_hub" "transformers transformers" \
  "fla.ops.simple_gla fla_core" "fla.models.retnet flash_linear_attention"; do
  # shellcheck disable=SC2086  # split "module prefix"
  set -- $pair
  importable "$1" && continue
  wheels=$(ls .whl/"$2"-*.whl 2>/dev/null)
  if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086  # one or more wheel paths
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" $wheels
  fi
  importable "$1" && echo "== installed $2" || echo "== $2 NOT importable"
done

timeout -s INT -k 20 360 env PYTHONUNBUFFERED=1 "$PY" scripts/gpu_fla_parity.py --out "$OUT" "${ARGS[@]}" \
  2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
echo "== gpu_fla_parity.py exit status $rc"
exit "$rc"
