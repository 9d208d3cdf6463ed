"""Unit tests of the service's pure parts: settings, splitting, sampling, the scheduler."""

from __future__ import annotations

import dataclasses
import queue
import time
from pathlib import Path

import pytest
import torch

from memsvc.config import Settings
from memsvc.engine.requests import (
    DoneEvent,
    GenerateRequest,
    PrefillRequest,
    PrefillResult,
    Segment,
    TokenEvent,
)
from memsvc.engine.runtime import ModelRuntime
from memsvc.engine.scheduler import Scheduler
from memsvc.metrics import Metrics
from memsvc.rag.feed import split_passages
from memsvc.services.forget import ForgetRequest, confirmation, parse_forget
from retnet_core.sampling import SamplingParams


def words(text: str) -> int:
    return len(text.split())


def test_settings_embedded_default_and_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("MEMSVC_DATABASE_URL", "MEMSVC_REDIS_URL", "MEMSVC_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url() == f"sqlite:///{tmp_path / 'memsvc.db'}"
    assert s.redis_url is None and (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.resolved_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    (tmp_path / ".env").write_text("MEMSVC_REDIS_URL=\nMEMSVC_PORT=9100\nMEMSVC_ADMIN_KEY=k\n")
    s = Settings()
    assert s.redis_url is None and s.port == 9100 and s.admin_key_value() == "k"
    monkeypatch.setenv("MEMSVC_DATABASE_URL", "postgresql://u@h/db")
    assert Settings().resolved_database_url() == "postgresql://u@h/db"


def test_passages_respect_paragraphs_sentences_and_budget() -> None:
    text = (
        "One two three. Four five six seven. Eight nine.\n\n"
        "A new paragraph starts here. It is short.\n\n" + " ".join(["long"] * 25) + "."
    )
    passages = split_passages(text, budget=8, count=words)
    assert all(words(p) <= 8 for p in passages)
    assert passages[0] == "One two three. Four five six seven."  # whole sentences
    assert "Eight nine." in passages[1] and "paragraph" not in passages[1]
    assert " ".join(passages).split() == text.split()  # nothing lost, order kept
    md = split_passages("# A\ntext a\n# B\ntext b", budget=50, count=words, markdown=True)
    assert md == ["# A\ntext a", "# B\ntext b"]


@pytest.fixture(scope="module")
def runtime(checkpoint: Path) -> ModelRuntime:
    return ModelRuntime.load(checkpoint, "cpu")


def test_threads_setting_applied_at_model_load(checkpoint: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEMSVC_THREADS", "")
    assert Settings().threads is None  # blank: torch's default
    monkeypatch.setenv("MEMSVC_THREADS", "2")
    s = Settings()
    assert s.threads == 2
    before = torch.get_num_threads()
    want = 3 if before == 2 else 2
    try:
        ModelRuntime.load(checkpoint, "cpu", threads=want)
        assert torch.get_num_threads() == want
        ModelRuntime.load(checkpoint, "cpu", threads=None)
        assert torch.get_num_threads() == want  # None leaves the setting alone
    finally:
        torch.set_num_threads(before)


def _decode(sched: Scheduler, rt: ModelRuntime, prompts: list[str], **kw) -> list[DoneEvent]:
    """Submit all prompts at once (they share decode steps); wait for every DoneEvent."""
    sinks = [queue.Queue() for _ in prompts]

    def request(text: str, sink: queue.Queue) -> GenerateRequest:
        ids = rt.tokenizer.render_turn({"role": "user", "content": text}) + [
            rt.tokenizer.assistant_id
        ]
        prefill = PrefillRequest([Segment(ids, (len(ids) - 1,))])
        return GenerateRequest(
            prefill, SamplingParams(), kw.get("max_new", 12), sink, kw.get("stops", [])
        )

    futures = [sched.submit(request(t, s)) for t, s in zip(prompts, sinks, strict=True)]
    done: dict[int, DoneEvent] = {}
    texts: dict[int, str] = {i: "" for i in range(len(prompts))}
    while len(done) < len(prompts):
        for i, sink in enumerate(sinks):
            while i not in done and not sink.empty():
                e = sink.get_nowait()
                if isinstance(e, TokenEvent):
                    texts[i] += e.text
                elif isinstance(e, DoneEvent):
                    done[i] = e
        time.sleep(0.005)
    assert all(f.done() for f in futures)
    for i, e in done.items():
        assert texts[i] == e.text  # streamed pieces add up to the final text
    return [done[i] for i in range(len(prompts))]


def test_batched_decode_equals_one_at_a_time(runtime: ModelRuntime) -> None:
    metrics = Metrics()
    sched = Scheduler(runtime, metrics)
    sched.start()
    try:
        prompts = ["Hello there", "I like tea and long walks", "Cats"]
        alone = [_decode(sched, runtime, [p])[0] for p in prompts]
        together = _decode(sched, runtime, prompts)
    finally:
        sched.stop()
    for a, b in zip(alone, together, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert torch.allclose(a.state.S[0], b.state.S[0], atol=1e-5)
    assert metrics.value("memsvc_decode_batch_size_count") > 0
    assert metrics.registry.get_sample_value("memsvc_decode_batch_size_bucket", {"le": "2.0"}) < (
        metrics.value("memsvc_decode_batch_size_count")
    )  # some steps ran with three sessions at once


def _prompts(rt: ModelRuntime) -> tuple[list[list[int]], list]:
    """Prompts of different lengths after new (None) and existing states."""
    tok = rt.tokenizer
    texts = ["Hi", "I like tea and long walks on the beach " * 3, "Cats", "x " * 40, "Dogs bark"]
    gen = tok.generation_prompt()
    rows = [tok.render_turn({"role": "user", "content": t}) + gen for t in texts]
    old = rt.prefill(tok.render_turn({"role": "user", "content": "old stuff here"}), None, [])
    sys_ = rt.prefill(tok.render_turn({"role": "system", "content": "Be brief."}), None, [])
    return rows, [None, old.state, None, sys_.state, old.state]


def assert_rounding_equal(x: torch.Tensor, y: torch.Tensor) -> None:
    """Equal up to float32 rounding of a different GEMM blocking (measured ~1e-6)."""
    torch.testing.assert_close(x.float(), y.float(), rtol=0, atol=1e-5)


def _greedy(rt: ModelRuntime, logits, state, n: int = 8) -> tuple[list[int], list]:
    """Decode alone (batch of one) from a prefill: reply ids and the final state."""
    ids: list[int] = []
    for _ in range(n):
        ids.append(int(logits.argmax()))
        out, state = rt.step([ids[-1]], state)
        logits = out[0]
    out, state = rt.step([rt.tokenizer.end_id], state)
    return ids, [state.position, *state.S, *(state.z or [])]


def test_batched_prompt_prefill_equals_alone(runtime: ModelRuntime) -> None:
    rows, states = _prompts(runtime)
    assert len({len(r) for r in rows}) == len(rows)  # every row padded differently
    batched = runtime.prefill_rows(rows, states)
    for row, st, b in zip(rows, states, batched, strict=True):
        (alone,) = runtime.prefill_rows([row], [st])
        # not torch.equal: the BLAS may pick another GEMM kernel for another batch size
        assert_rounding_equal(alone.logits, b.logits)
        assert torch.equal(alone.state.position, b.state.position)
        assert int(b.state.position) == len(row) + (0 if st is None else int(st.position))
        ours, theirs = alone.state, b.state
        for x, y in zip(ours.S + (ours.z or []), theirs.S + (theirs.z or []), strict=True):
            assert_rounding_equal(x, y)
        # the reply and the saved state after decoding agree too
        ids, final = _greedy(runtime, alone.logits, alone.state)
        ids_b, final_b = _greedy(runtime, b.logits, b.state)
        assert ids == ids_b
        for x, y in zip(final, final_b, strict=True):
            assert_rounding_equal(x, y)
        # and the same numbers as the per-turn path (other chunk cuts: not the same bits)
        ref = runtime.prefill(row, st, [len(row) - 1])
        assert torch.allclose(ref.logits, b.logits, atol=1e-4)
        assert torch.allclose(ref.state.S[-1], b.state.S[-1], atol=1e-4)


def test_scheduler_prefills_ready_prompts_as_one_batch(runtime: ModelRuntime, monkeypatch) -> None:
    rows, states = _prompts(runtime)
    step_times: list[float] = []
    real_step = runtime.step

    def timed_step(*args, **kw):
        step_times.append(time.perf_counter())
        return real_step(*args, **kw)

    monkeypatch.setattr(runtime, "step", timed_step)

    def run(indices: list[int]) -> dict[int, tuple]:
        sched = Scheduler(runtime, Metrics())
        sinks = {i: queue.Queue() for i in indices}
        requests = {
            i: GenerateRequest(
                PrefillRequest([Segment(rows[i])], states[i]), SamplingParams(), 6, sinks[i]
            )
            for i in indices
        }
        # all queued before the loop starts: one scheduling round
        futures = {i: sched.submit(r) for i, r in requests.items()}
        step_times.clear()
        sched.start()
        done: dict[int, DoneEvent] = {}
        try:
            for i in indices:
                while i not in done:
                    e = sinks[i].get(timeout=60)
                    if isinstance(e, DoneEvent):
                        done[i] = e
        finally:
            sched.stop()
        assert all(isinstance(f.result(), PrefillResult) for f in futures.values())
        # every first token was sampled from the prefill logits, before any decode step
        first_at = [requests[i].started + done[i].ttft_s for i in indices]
        assert max(first_at) < min(step_times)
        assert sched.prefill_batches == [len(indices)]
        return {i: (futures[i].result(), done[i]) for i in indices}

    together = run(list(range(len(rows))))
    for i in range(len(rows)):
        (alone_out, alone_done), (out, done) = run([i])[i], together[i]
        assert_rounding_equal(alone_out.logits, out.logits)
        for x, y in zip(alone_out.state.S, out.state.S, strict=True):
            assert_rounding_equal(x, y)
        assert alone_done.token_ids == done.token_ids and done.token_ids
        assert torch.allclose(alone_done.state.S[0], done.state.S[0], atol=1e-5)


def test_stop_sequence_cuts_and_is_never_streamed(runtime: ModelRuntime) -> None:
    sched = Scheduler(runtime, Metrics())
    sched.start()
    try:
        free = _decode(sched, runtime, ["Hello there"], max_new=16)[0]
        if len(free.text) < 3:
            pytest.fail(f"the tiny model produced too little text to test stops: {free.text!r}")
        stop = free.text[1:3]
        cut = _decode(sched, runtime, ["Hello there"], max_new=16, stops=[stop])[0]
    finally:
        sched.stop()
    assert cut.finish_reason == "stop_sequence"
    assert cut.text == free.text[: free.text.index(stop)]


@pytest.mark.parametrize(
    ("text", "scope", "topic"),
    [
        ("Please forget my dog's name.", "topic", "my dog's name"),
        ("Can you forget where I live?", "topic", "where I live"),
        ("forget about my sister", "topic", "my sister"),
        ("Forget that!", "last", ""),
        ("Please forget what I just said.", "last", ""),
        ("Erase it", "last", ""),
        ("Forget everything.", "all", ""),
        ("Could you forget everything about me?", "all", ""),
    ],
)
def test_forget_requests_are_recognised(text: str, scope: str, topic: str) -> None:
    assert parse_forget(text) == ForgetRequest(scope, topic)


@pytest.mark.parametrize(
    "text",
    ["Don't forget my dog's name.", "I never forget a face.", "Hello there", "I forgot my keys"],
)
def test_non_requests_are_not_forget_requests(text: str) -> None:
    assert parse_forget(text) is None


def test_forget_confirmation_quotes_what_went_in_the_users_words() -> None:
    topic = ForgetRequest("topic", "my dog's name")
    assert confirmation(topic, ["My dog is called Rex."]) == (
        'Done, I have forgotten it. Removed from my memory: "My dog is called Rex."'
    )
    many = confirmation(topic, ["Rex.", "Actually, he's Max now.", "C.", "D.", "E."])
    assert many.startswith("Done, I have forgotten it. Removed from my memory (5): ")
    assert '"Rex."; "Actually, he\'s Max now."; "C." and 2 more' in many and "D." not in many
    long = confirmation(topic, ["x" * 200])
    assert long.endswith('..."') and len(long) < 140  # quoted, cut
    assert confirmation(ForgetRequest("topic", "where I live and what I'm allergic to"), []) == (
        "I have nothing stored about where you live and what you're allergic to,"
        " so there was nothing to forget."
    )
    assert confirmation(ForgetRequest("all"), ["A."]) == (
        "Done, I have forgotten everything you told me (1 memory)."
    )
    assert "nothing to forget" in confirmation(ForgetRequest("last"), [])


def _done(sink: queue.Queue) -> DoneEvent:
    while not isinstance(event := sink.get(timeout=60), DoneEvent):
        pass
    return event


def test_a_forced_reply_is_said_as_written_and_ends_in_the_state_it_would(runtime) -> None:
    """A reply the service writes (a forget's confirmation) goes through the decode steps
    token by token, whatever the sampling: the turn says exactly it, and its final state
    equals one prefill of the prompt, the reply and ``<|end|>``; ``max_new`` still cuts."""
    tok = runtime.tokenizer
    user = {"role": "user", "content": "Please forget my dog."}
    prompt = tok.render_turn(user) + tok.generation_prompt()
    reply = "Done, I have forgotten it."
    forced = tuple(tok.encode(reply))
    sampled = SamplingParams(temperature=1.0, seed=3)
    whole, short = queue.Queue(), queue.Queue()
    sched = Scheduler(runtime, Metrics())
    sched.start()
    try:
        sched.submit(
            GenerateRequest(PrefillRequest([Segment(prompt)]), sampled, 64, whole, forced=forced)
        )
        sched.submit(
            GenerateRequest(PrefillRequest([Segment(prompt)]), sampled, 2, short, forced=forced)
        )
        said, cut = _done(whole), _done(short)
    finally:
        sched.stop()
    assert said.text == reply and said.token_ids == list(forced) and said.finish_reason == "stop"
    fed = runtime.prefill([*prompt, *forced, tok.end_id], None, [])
    assert int(said.state.position.reshape(-1)[0]) == int(fed.state.position.reshape(-1)[0])
    assert torch.allclose(said.state.S[0], fed.state.S[0], atol=1e-4)
    assert cut.token_ids == list(forced[:2]) and cut.finish_reason == "length"


def test_scheduler_works_from_plain_data_only(runtime: ModelRuntime) -> None:
    """The queue takes requests that are data (ids, states, views, parameters), never a
    function; a prefill request answers with logits, the state, kept states and the
    captured memory-layer inputs, equal to the runtime's own prefill."""
    sched = Scheduler(runtime, Metrics())
    with pytest.raises(TypeError):
        sched.submit(lambda: None)  # type: ignore[arg-type]
    tok = runtime.tokenizer
    first = tok.render_turn({"role": "user", "content": "I like tea"})
    second = tok.render_turn({"role": "user", "content": "and cats"}) + tok.generation_prompt()
    request = PrefillRequest([Segment(first, keep=True), Segment(second, capture=True)])
    sink: queue.Queue = queue.Queue()
    generate = GenerateRequest(PrefillRequest([Segment(second)]), SamplingParams(), 4, sink)
    for r in (request, generate):  # nothing callable inside: plain data all the way down
        for f in dataclasses.fields(r):
            assert not callable(getattr(r, f.name)), f.name
    futures = [sched.submit(request), sched.submit(generate)]
    sched.start()
    try:
        got = futures[0].result(timeout=60)
        while not isinstance(event := sink.get(timeout=60), DoneEvent):
            pass
    finally:
        sched.stop()
    a = runtime.prefill(first, None, [])
    capture: dict = {}
    b = runtime.prefill(second, a.state, [], capture=capture)
    assert torch.equal(got.logits, b.logits)
    assert torch.equal(got.kept[0].S[0], a.state.S[0]) and len(got.kept) == 1
    assert set(got.capture) == set(capture)
    assert event.finish_reason in ("stop", "length")
    assert isinstance(futures[1].result(), PrefillResult)


def test_forget_match_takes_the_fact_told_twice_and_nothing_else() -> None:
    from memsvc.services.forget_match import MIN_SCORE, Candidate, chosen, read_shares

    dog, dog_again = Candidate("a", "dog Rex", 0.60, 0.0), Candidate("b", "dog Max", 0.73, 0.9)
    city = Candidate("c", "Lyon", 0.12, 0.1)
    assert [c.memory_id for c in chosen([dog, dog_again, city])] == ["b", "a"]
    # the read favours one telling, but the other is the same fact by its text
    assert {c.memory_id for c in chosen([Candidate("a", "", 0.58, 0.0), dog_again])} == {"a", "b"}
    # nothing close enough: nothing removed; a weak text match lifted by the read: removed
    assert chosen([city, Candidate("d", "teal", 0.2, 0.0)]) == []
    weak = Candidate("e", "my address", MIN_SCORE - 0.05, 0.4)
    assert chosen([weak, city]) == [weak]
    assert chosen([]) == []
    assert read_shares(["a", None, "a", "b"], [0.2, 0.5, 0.1, 0.2]) == pytest.approx(
        {"a": 0.3, "b": 0.2}
    )


def test_snapshot_cache_has_a_byte_budget() -> None:
    from memsvc.rag.feed import SnapshotCache

    cache = SnapshotCache(capacity=100, max_bytes=1000)
    for i in range(5):
        cache.put("t", "fp", "start", [f"p{i}"], bytes(300), position=i)
    assert len(cache) == 3 and cache.nbytes == 900  # the two oldest went, by bytes
    assert cache.get("t", "fp", "start", ["p0"]) is None
    assert cache.get("t", "fp", "start", ["p4"]) == bytes(300)
    cache.put("t", "fp", "start", ["big"], bytes(1001), position=9)  # over the budget alone
    assert cache.get("t", "fp", "start", ["big"]) is None and cache.nbytes == 900
    cache.put("t", "fp", "start", ["p4"], bytes(100), position=4)  # replaced, not added
    assert len(cache) == 3 and cache.nbytes == 700
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_forget_match_skips_questions() -> None:
    import numpy as np

    from memsvc.services.forget_match import candidates, chosen

    texts = {"q": "What instrument am I learning?", "s": "I've been learning the cello."}
    vectors = np.array([[1.0, 0.0], [0.8, 0.6]])  # the question is closer to the topic
    got = chosen(candidates(texts, np.array([1.0, 0.0]), vectors, {}))
    assert [c.memory_id for c in got] == ["s"]


def test_weights_auto_is_int8_only_for_the_distilled_model_on_cpu(tmp_path) -> None:
    from memsvc.config import Settings

    base = dict(data_dir=tmp_path, device="cpu")
    assert Settings(**base, model="smollm2-hybrid").resolved_weights() == "int8"
    assert Settings(**base, model="tiny").resolved_weights() == "fp32"
    assert Settings(**base, model="smollm2-hybrid", weights="fp32").resolved_weights() == "fp32"
    own = Settings(**base, model="smollm2-hybrid", model_dir=tmp_path)  # a user's checkpoint
    assert own.resolved_weights() == "fp32"
    gpu = Settings(data_dir=tmp_path, device="cuda", model="smollm2-hybrid")
    assert gpu.resolved_weights() == "fp32"  # int8 weights run on CPU only


def test_the_default_is_the_distilled_model_assembled_under_the_data_dir(
    tmp_path, monkeypatch
) -> None:
    from memsvc.config import DEFAULT_MODEL_DIR, Settings

    monkeypatch.delenv("MEMSVC_MODEL", raising=False)
    monkeypatch.delenv("MEMSVC_MODEL_DIR", raising=False)
    s = Settings(data_dir=tmp_path, device="cpu")
    assert s.model == "smollm2-hybrid" and s.resolved_weights() == "int8"
    assert s.resolved_model_dir().is_relative_to(tmp_path)  # assembled there on first start
    tiny = Settings(data_dir=tmp_path, device="cpu", model="tiny")
    assert tiny.resolved_model_dir() == DEFAULT_MODEL_DIR
