"""Storage grows linearly with a message (issue 14 §5): slots reference their memory and
span and never copy the text. One 12,000-character message written as token slots of the
shipped model grows the database by ≤ 4 MB, and by ≤ 6× a 3,000-character message."""

from __future__ import annotations

import pytest

from memsvc.bench.storage_growth import DEFAULT_MODEL, growth, model_shape, sentence_text
from retnet_core.tokenizer import ChatTokenizer
from storage import Storage

MB = 2**20


@pytest.fixture(params=["postgres", "sqlite"])
def empty_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


def test_one_long_message_grows_the_database_linearly(empty_url: str) -> None:
    tok, shape = ChatTokenizer.load(DEFAULT_MODEL), model_shape()
    short, long = sentence_text(3000), sentence_text(12000)
    grown_short, n_short = growth(empty_url, short, shape, tok.char_spans(short))
    grown_long, n_long = growth(empty_url, long, shape, tok.char_spans(long))
    assert n_long > 3 * n_short > 0  # one slot per token and memory layer
    assert grown_long <= 4 * MB, f"{grown_long / MB:.2f} MB"
    assert grown_long <= 6 * grown_short, (grown_long, grown_short)
    st = Storage.from_urls(empty_url)
    try:  # the text is held once, by the message; slots show their own piece of it
        tenant = st.tenants.list()[0].id
        slots = st.slots.list(tenant, limit=5)
        assert len(slots) == 5 and all(s.text == short[s.span[0] : s.span[1]] for s in slots)
        assert [s.span[0] for s in slots] == sorted(s.span[0] for s in slots)
        assert len({s.span for s in slots}) == 5  # each slot its own token's span
    finally:
        st.close()
