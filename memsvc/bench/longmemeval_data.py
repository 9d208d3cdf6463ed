"""LongMemEval's JSON format: parse and validate it, shape it for memsvc, make a synthetic set.

The published files (``longmemeval_oracle.json``, ``longmemeval_s.json``, ``_m``) are one
JSON list of instances::

    {"question_id": str,            # ends in "_abs" for abstention questions
     "question_type": str,          # single-session-user, knowledge-update, multi-session, ...
     "question": str, "answer": str | number, "question_date": "2023/05/20 (Sat) 02:21",
     "haystack_session_ids": [str, ...], "haystack_dates": [str, ...],
     "haystack_sessions": [[{"role": "user"|"assistant", "content": str,
                             "has_answer": bool (optional)}, ...], ...],
     "answer_session_ids": [str, ...]}

``haystack_*`` are parallel lists (one entry per session). :func:`load_instances` checks
all of it and names the instance and field of the first problem (:class:`DataError`).

:func:`generate` writes a deterministic synthetic set in the same format: each user's
facts (held-out invented values of :mod:`retnet_core.training.dialogues`) sit in evidence
sessions among chit-chat filler sessions, whose number grows from the first instance to
the last (histories of increasing length).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAX_CONTENT = 16_000  # characters per transcript turn the API accepts
MAX_TURNS = 200  # turns per transcript request the API accepts
PLACEHOLDER_REPLY = "Okay."  # stands in for a missing assistant reply (a pair needs one)
_DATE = re.compile(r"^(\d{4})/(\d{2})/(\d{2})(?: \([A-Za-z]{3}\))? (\d{2}):(\d{2})$")
REQUIRED = {
    "question_id": str,
    "question_type": str,
    "question": str,
    "question_date": str,
    "haystack_session_ids": list,
    "haystack_dates": list,
    "haystack_sessions": list,
    "answer_session_ids": list,
}


class DataError(ValueError):
    """A file that is not LongMemEval's format; the message names where."""


@dataclass(frozen=True)
class Session:
    id: str
    date: datetime
    turns: tuple[tuple[str, str], ...]  # (role, content) as in the file


@dataclass(frozen=True)
class Instance:
    question_id: str
    question_type: str
    question: str
    answer: str
    question_date: datetime
    sessions: tuple[Session, ...]
    answer_session_ids: tuple[str, ...]

    @property
    def abstention(self) -> bool:
        """LongMemEval marks questions whose right answer is to decline with ``_abs``."""
        return self.question_id.endswith("_abs")


def parse_date(text: str) -> datetime:
    """``"2023/05/20 (Sat) 02:21"`` (the weekday optional) → an aware UTC datetime."""
    m = _DATE.match(text.strip())
    if m is None:
        raise ValueError(f"date {text!r} is not like '2023/05/20 (Sat) 02:21'")
    y, mo, d, h, mi = (int(g) for g in m.groups())
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def format_date(when: datetime) -> str:
    """The inverse of :func:`parse_date`: ``2023/05/20 (Sat) 02:21``."""
    return when.strftime("%Y/%m/%d (%a) %H:%M")


def _session(where: str, sid: Any, date: Any, turns: Any) -> Session:
    if not isinstance(sid, str):
        raise DataError(f"{where}: session id must be a string, got {type(sid).__name__}")
    if not isinstance(date, str):
        raise DataError(f"{where}: date must be a string, got {type(date).__name__}")
    try:
        when = parse_date(date)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    if not isinstance(turns, list):
        raise DataError(f"{where}: a session must be a list of turns")
    out = []
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("role") not in ("user", "assistant"):
            raise DataError(f"{where}, turn {j}: needs role 'user' or 'assistant'")
        if not isinstance(t.get("content"), str):
            raise DataError(f"{where}, turn {j}: content must be a string")
        out.append((t["role"], t["content"]))
    return Session(sid, when, tuple(out))


def parse_instance(i: int, raw: Any) -> Instance:
    """One instance checked field by field (``i`` is its index, for messages)."""
    if not isinstance(raw, dict):
        raise DataError(f"instance {i}: must be an object, got {type(raw).__name__}")
    where = f"instance {i} ({raw.get('question_id', '?')!s})"
    for name, kind in REQUIRED.items():
        if name not in raw:
            raise DataError(f"{where}: missing field {name!r}")
        if not isinstance(raw[name], kind):
            raise DataError(f"{where}: field {name!r} must be a {kind.__name__}")
    answer = raw.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise DataError(f"{where}: field 'answer' must be a string or a number")
    ids, dates, sessions = (raw[k] for k in REQUIRED if k.startswith("haystack_"))
    if not len(ids) == len(dates) == len(sessions):
        raise DataError(
            f"{where}: haystack_session_ids, haystack_dates and haystack_sessions differ in "
            f"length ({len(ids)}, {len(dates)}, {len(sessions)})"
        )
    if not all(isinstance(s, str) for s in raw["answer_session_ids"]):
        raise DataError(f"{where}: answer_session_ids must be strings")
    try:
        qdate = parse_date(raw["question_date"])
    except ValueError as exc:
        raise DataError(f"{where}, question_date: {exc}") from None
    return Instance(
        question_id=raw["question_id"],
        question_type=raw["question_type"],
        question=raw["question"],
        answer=str(answer),
        question_date=qdate,
        sessions=tuple(
            _session(f"{where}, session {k}", *z)
            for k, z in enumerate(zip(ids, dates, sessions, strict=True))
        ),
        answer_session_ids=tuple(raw["answer_session_ids"]),
    )


def load_instances(path: Path) -> list[Instance]:
    """Read and validate a LongMemEval JSON file (a list of instances)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: must hold a JSON list of instances, got {type(raw).__name__}")
    if not raw:
        raise DataError(f"{path}: holds no instances")
    instances = [parse_instance(i, r) for i, r in enumerate(raw)]
    seen: set[str] = set()
    for inst in instances:
        if inst.question_id in seen:
            raise DataError(f"{path}: question_id {inst.question_id!r} occurs twice")
        seen.add(inst.question_id)
    return instances


def select_sessions(inst: Instance, variant: str) -> tuple[Session, ...]:
    """``oracle``: the evidence sessions only (ids in answer_session_ids); ``full``: all."""
    if variant == "full":
        return inst.sessions
    if variant != "oracle":
        raise ValueError(f"variant must be 'oracle' or 'full', not {variant!r}")
    keep = set(inst.answer_session_ids)
    return tuple(s for s in inst.sessions if s.id in keep)


def transcript_pairs(turns: tuple[tuple[str, str], ...]) -> tuple[list[tuple[str, str]], int]:
    """A session's turns as the transcript route takes them, and how many were changed.

    The route takes user/assistant pairs, user first, each 1..16,000 characters without
    NUL. Empty turns are dropped, consecutive turns of one role are joined, a leading
    assistant turn is dropped, a trailing user turn gets :data:`PLACEHOLDER_REPLY`, and
    longer turns are cut. Returns (turns, changes).
    """
    changes = 0
    merged: list[list[str]] = []
    for role, content in turns:
        text = content.replace("\x00", "").strip()
        if not text:
            changes += 1
        elif merged and merged[-1][0] == role:
            merged[-1][1] += "\n" + text
            changes += 1
        else:
            merged.append([role, text])
    if merged and merged[0][0] == "assistant":
        merged.pop(0)
        changes += 1
    if merged and merged[-1][0] == "user":
        merged.append(["assistant", PLACEHOLDER_REPLY])
        changes += 1
    out = []
    for role, text in merged:
        if len(text) > MAX_CONTENT:
            text, changes = text[:MAX_CONTENT], changes + 1
        out.append((role, text))
    return out, changes


def chunks(turns: list[tuple[str, str]], size: int = MAX_TURNS) -> list[list[tuple[str, str]]]:
    """Requests of at most ``size`` turns (``size`` even, so pairs stay whole)."""
    return [turns[i : i + size] for i in range(0, len(turns), size)]
