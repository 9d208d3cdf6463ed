"""What the note check adds before a checked turn's own prefill, in the engine.

A checked turn first waits for its checks: one generate request per checked line
(:func:`memsvc.services.turn_prompt.check_request`), fed by the scheduler in one batched
prefill (with their contrast rows) and decoded together for up to 8 tokens. This times
that wait with the served model (int8, ``--threads``), for 1 and 2 checked lines, on
the checked lines of a ``scripts/note_check.py`` replay, against the noted turn's own
first token (its prefill and contrast row, as served), interleaved, median of
``--reps``.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_check_cost.py \\
        --model-dir <assembled smollm2-hybrid> \\
        --replay docs/bench/note-check/seed21/note-check.json --out docs/bench/note-check
"""

from __future__ import annotations

import json
import queue
import statistics
import time
from pathlib import Path

from memsvc.engine.requests import DoneEvent, GenerateRequest, PrefillRequest, Segment
from memsvc.engine.scheduler import Scheduler
from memsvc.metrics import Metrics
from memsvc.services.turn_prompt import check_request
from retnet_core.memory_note import note_text
from scripts.note_chatter import model_arguments, served_runtime

WEIGHT = 1.0


class Sink:
    """A thread-safe event list for a request run outside the service."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()

    def put(self, event: object) -> None:
        self.events.put(event)

    def wait(self) -> None:
        while not isinstance(self.events.get(timeout=120), DoneEvent):
            pass


def timed(scheduler: Scheduler, requests: list[GenerateRequest], sinks: list[Sink]) -> float:
    """ms from submitting ``requests`` together to the last one's end."""
    t0 = time.perf_counter()
    for r in requests:
        scheduler.submit(r)
    for s in sinks:
        s.wait()
    return 1000 * (time.perf_counter() - t0)


def first_token_request(runtime, lines: list[str], asked: str, sink: Sink) -> GenerateRequest:
    """The noted turn itself, one token: its prefill and contrast row, as served."""
    tok = runtime.tokenizer
    user = tok.render_turn({"role": "user", "content": asked}) + tok.generation_prompt()
    noted = tok.render_turn({"role": "system", "content": note_text(lines)}) + user
    return GenerateRequest(
        prefill=PrefillRequest([Segment(noted)], None),
        params=runtime.sampling.with_overrides(temperature=0.0),
        max_new=1,
        sink=sink,
        contrast=user,
        contrast_weight=WEIGHT,
    )


def main() -> None:
    ap = model_arguments(__doc__)
    ap.add_argument("--replay", type=Path, required=True, help="a note_check.py JSON")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--turns", type=int, default=20)
    args = ap.parse_args()
    runtime = served_runtime(args)
    replay = json.loads(args.replay.read_text())
    turns = [r for r in replay["checked"] if len(r["lines"]) >= 3][: args.turns // 2]
    turns += [r for r in replay["checked"] if len(r["lines"]) == 2][: args.turns - len(turns)]
    scheduler = Scheduler(runtime, Metrics())
    scheduler.start()
    times: dict[str, list[float]] = {"first token": [], "1 check": [], "2 checks": []}
    try:
        for _ in range(args.reps):
            for r in turns:
                sink = Sink()
                req = first_token_request(runtime, r["lines"], r["asked"], sink)
                times["first token"].append(timed(scheduler, [req], [sink]))
                for n, label in ((1, "1 check"), (2, "2 checks")):
                    sinks = [Sink() for _ in range(n)]
                    lines = (r["lines"] * 2)[1 : 1 + n]  # the checked lines, as many as asked
                    reqs = [
                        check_request(runtime, None, line, r["asked"], WEIGHT, s)
                        for line, s in zip(lines, sinks, strict=True)
                    ]
                    times[label].append(timed(scheduler, reqs, sinks))
    finally:
        scheduler.stop()
    out = {k: round(statistics.median(v), 1) for k, v in times.items()}
    record = {"replay": str(args.replay), "turns": len(turns), "reps": args.reps, "ms": out}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "note-check-cost.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
