"""Copy a device run of ``scripts/gpu_bench.sh`` into the repo.

    python scripts/gpu_bench_report.py FILES_AT [--docs docs/bench] [--cache out/gpu_bench]

FILES_AT is the folder the device tool's reply names (``files_at``), holding gpu.json,
gpu.md, log.txt and triton_cache.tgz. gpu.json and gpu.md go to ``--docs`` (gpu.json,
gpu.md, and the log as gpu_log.txt), to be committed; the Triton cache goes to ``--cache``
(git-ignored), which the next device call carries so a fresh machine skips compilation.
Refuses a gpu.json without the headline keys or rows (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REQUIRED = ("throughput_ratio_8k", "memory_saving_b32", "rows", "plan", "env")


def check(report: dict) -> list[str]:
    """What a gpu.json lacks (empty when it is usable)."""
    missing = [k for k in REQUIRED if k not in report]
    if not missing and not report["rows"]:
        missing.append("rows (none measured)")
    return missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="the device reply's files_at folder")
    p.add_argument("--docs", type=Path, default=Path("docs/bench"))
    p.add_argument("--cache", type=Path, default=Path("out/gpu_bench"))
    args = p.parse_args(argv)
    try:
        report = json.loads((args.src / "gpu.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"no usable gpu.json in {args.src}: {exc}", file=sys.stderr)
        return 1
    missing = check(report)
    if missing:
        print(f"{args.src / 'gpu.json'} lacks {', '.join(missing)}", file=sys.stderr)
        return 1
    args.docs.mkdir(parents=True, exist_ok=True)
    copies = [("gpu.json", args.docs), ("gpu.md", args.docs), ("log.txt", args.docs)]
    copies.append(("triton_cache.tgz", args.cache))
    for name, dest in copies:
        src = args.src / name
        if not src.is_file():
            print(f"(no {name} in {args.src})")
            continue
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / ("gpu_log.txt" if name == "log.txt" else name)
        shutil.copyfile(src, target)
        print(f"{src} -> {target}")
    t, m = report["throughput_ratio_8k"], report["memory_saving_b32"]
    print(f"throughput_ratio_8k={t} memory_saving_b32={m} complete={report.get('complete')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
