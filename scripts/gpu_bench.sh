#!/usr/bin/env bash
# The GPU benchmark's one command on the device machine (docs/bench/gpu.md):
#   device tool: run(command="bash scripts/gpu_bench.sh", carry=[".whl", "out/gpu_bench"], timeout_s=540)
# Before that, once, HERE (the device machine reaches no registry; this one reaches PyPI):
#   bash scripts/gpu_bench.sh prepare      # fla-core wheel into .whl/ (git-ignored, carried)
# After it, here:  python scripts/gpu_bench_report.py <files_at>   (docs/bench + Triton cache)
#
# On the device: installs fla-core from .whl/ when it is not importable (then from the
# registry, where one is reachable), restores the Triton cache from out/gpu_bench/ when the
# machine is fresh, runs scripts/gpu_bench.py under a hard time limit, and leaves in $OUT:
# gpu.json, gpu.md, log.txt and triton_cache.tgz (the next call's out/gpu_bench/).
# Extra arguments go to gpu_bench.py; with --smoke nothing is installed (the CI test).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
FLA_VERSION=0.6.0

if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p .whl out/gpu_bench
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
  done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "fla-core==$FLA_VERSION"
  ls -l .whl
  exit 0
fi

OUT=${OUT:-out/gpu_bench/local}
CACHE_TGZ=${GPU_BENCH_CACHE_TGZ:-out/gpu_bench/triton_cache.tgz}
HARD_S=${GPU_BENCH_HARD_S:-460}  # python is interrupted here (its own budget is 420 s)
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/gpu_bench_triton}
# big KV caches come and go (and some run out of memory): let the allocator grow segments
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
mkdir -p "$OUT" "$TRITON_CACHE_DIR"
echo "== gpu_bench.sh: OUT=$OUT TRITON_CACHE_DIR=$TRITON_CACHE_DIR"

# A warm machine still has its cache in /tmp; a fresh one gets the last run's back.
if [ -n "$(ls -A "$TRITON_CACHE_DIR")" ]; then
  export GPU_BENCH_CACHE_RESTORED="yes (left on this machine)"
elif [ -f "$CACHE_TGZ" ] && tar -xzf "$CACHE_TGZ" -C "$TRITON_CACHE_DIR"; then
  export GPU_BENCH_CACHE_RESTORED="yes (from $CACHE_TGZ)"
else
  export GPU_BENCH_CACHE_RESTORED=no
fi
echo "== Triton cache restored: $GPU_BENCH_CACHE_RESTORED"

importable() { "$PY" -c "import $1" >/dev/null 2>&1; }

# install NAME DIST: from a carried wheel, else the registry (where one can be reached)
install() {
  local site=/tmp/gpu_bench_site wheels
  wheels=$(ls .whl/"$2"-*.whl 2>/dev/null)
  if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086  # one or more wheel paths
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" $wheels
  else
    "$PY" -m pip install -q --no-cache-dir --timeout 10 --retries 0 --target "$site" "$3"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  importable "$1" && echo "== installed $3" || echo "== $3 NOT importable: its rows are skipped"
}

case " $* " in
  *" --smoke "*) ;;  # CPU smoke: no fla, transformers optional
  *)
    importable einops || install einops einops "einops"
    # fla's top level imports lazily: its kernels' module is the real test
    importable fla.ops.simple_gla || install fla.ops.simple_gla fla_core "fla-core==$FLA_VERSION"
    importable transformers || install transformers transformers "transformers>=5,<6"
    ;;
esac

set -o pipefail
timeout -s INT -k 20 "$HARD_S" env PYTHONUNBUFFERED=1 "$PY" scripts/gpu_bench.py --out "$OUT" "$@" \
  2>&1 | tee "$OUT/log.txt"
rc=${PIPESTATUS[0]}
echo "== gpu_bench.py exit status $rc"

# The compiled kernels and autotune choices, for a fresh machine's next call.
if tar -czf "$OUT/triton_cache.tgz" -C "$TRITON_CACHE_DIR" .; then
  size=$(stat -c %s "$OUT/triton_cache.tgz")
  if [ "$size" -gt $((15 * 1024 * 1024)) ]; then
    echo "== Triton cache $size bytes: over the 16 MiB a returned file may have; dropped"
    rm -f "$OUT/triton_cache.tgz"
  else
    echo "== Triton cache saved: $size bytes"
  fi
fi
exit "$rc"
