"""README's curl walkthrough, run as written: README and reality cannot drift apart.

The ``bash`` block under "A conversation with curl, across a restart" is taken from
README.md and run by bash, the way a newcomer pastes it: from a folder with
``.venv/bin/memsvc`` (here a wrapper around this interpreter and this checkout), the
shipped default model, a fresh data folder. Only the port is overridden (a free one, so
parallel runs cannot collide); the block must wait for readiness itself, and any
failure makes bash exit non-zero.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from server_util import free_port

REPO = Path(__file__).resolve().parents[2]
HEADING = "## A conversation with curl, across a restart"


def walkthrough() -> str:
    """The first ```bash block after the walkthrough's heading."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(HEADING) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README walkthrough has no bash block"
    return match.group(1)


def test_readme_curl_walkthrough_runs_as_pasted(tmp_path: Path) -> None:
    for tool in ("bash", "curl", "jq"):
        assert shutil.which(tool), f"{tool} is needed by the README walkthrough"
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    memsvc = venv_bin / "memsvc"
    memsvc.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m memsvc.cli.main "$@"\n')
    memsvc.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MEMSVC_")},
        "PYTHONPATH": str(REPO),
        "MEMSVC_PORT": str(free_port()),
        "MEMSVC_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", "-c", walkthrough()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    replies = [json.loads(m) for m in re.findall(r"^\{\n.*?^\}$", done.stdout, re.S | re.M)]
    assert len(replies) == 2, done.stdout
    first, second = (r["usage"] for r in replies)
    # the second turn, after the restart, came from the saved state: nothing replayed
    assert first["cached_tokens"] == 0
    assert second["cached_tokens"] == first["prompt_tokens"] + first["completion_tokens"] + 1
