"""Byte-level BPE tokenizer and the one chat template.

Special tokens (ids fixed in this order, so every tokenizer trained here agrees on them):

- 0 ``<|pad|>``: padding; never predicted, never rendered by the template
- 1 ``<|system|>``, 2 ``<|user|>``, 3 ``<|assistant|>``, 4 ``<|passage|>``: open a turn
  (a passage turn holds a document fed for retrieval-augmented answers)
- 5 ``<|end|>``: closes any turn

The chat template (the only one; everything else calls :func:`ChatTokenizer.render`)::

    <|role|> content-bytes <|end|>      for each message, concatenated, nothing between

A turn always ends on ``<|end|>`` and the rendering of a conversation is exactly the
concatenation of the renderings of its turns. So a session's recurrent state after
turn *n* is the same whether the turns were fed one at a time (carrying the state) or
all at once, and every turn end is a chunk boundary. To generate a reply, feed
:meth:`ChatTokenizer.generation_prompt` (``<|assistant|>``) and decode until
``<|end|>``; the ``<|end|>`` is fed back too so the state lands on a boundary again.

Message content is encoded with special-token matching switched off: a user who types
``<|end|>`` gets the bytes of that string, never the control token.

Other chat formats (a converted model keeps its source's): a :class:`ChatFormat` gives
each role's opening text, the closing token and the padding token, and lives in
``chat_format.json`` beside ``tokenizer.json`` (absent: the memsvc format above). ChatML
(SmolLM2, Qwen, ...) is rendered as::

    \n<|im_start|>role\n content <|im_end|>

The source's template puts the newline after ``<|im_end|>``; here it opens the next turn,
so that a turn still ends on its closing token (the engine feeds back just that one token
after a reply) and a conversation is still the concatenation of its turns. The only
difference from the source's rendering is one newline before the very first turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
PASSAGE = "<|passage|>"
END = "<|end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, SYSTEM, USER, ASSISTANT, PASSAGE, END)
ROLES: dict[str, str] = {
    "system": SYSTEM,
    "user": USER,
    "assistant": ASSISTANT,
    "passage": PASSAGE,
}
TOKENIZER_FILE = "tokenizer.json"
CHAT_FORMAT_FILE = "chat_format.json"


@dataclass(frozen=True)
class ChatFormat:
    """How turns are rendered: ``openings[role] + content + end``.

    ``openings``: role -> the text that opens its turn (special tokens in it are matched);
    ``end``: the special token that closes every turn (generation stops on it); ``pad``:
    a token used only for padding (never sampled); ``template``: the source's Jinja chat
    template, kept for the record.
    """

    openings: dict[str, str]
    end: str
    pad: str
    name: str = "custom"
    template: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def chatml(
        cls, pad: str = "<|endoftext|>", passage_role: str = "passage", template: str | None = None
    ) -> ChatFormat:
        """ChatML (see the module docstring); ``passage`` turns use ``passage_role``."""
        names = {"system": "system", "user": "user", "assistant": "assistant"}
        names["passage"] = passage_role
        openings = {role: f"\n<|im_start|>{name}\n" for role, name in names.items()}
        return cls(openings, "<|im_end|>", pad, "chatml", template)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ChatFormat:
        return cls(**json.loads(text))


MEMSVC_FORMAT = ChatFormat(openings=dict(ROLES), end=END, pad=PAD, name="memsvc")


@dataclass(frozen=True)
class Message:
    """One chat turn: ``role`` is one of system, user, assistant, passage."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {sorted(ROLES)}")


@dataclass(frozen=True)
class Rendered:
    """Token ids of a rendered conversation.

    ``boundaries`` are the exclusive end offsets of each turn (the last equals
    ``len(ids)``); ``targets`` marks, per token, whether it belongs to a turn whose
    role is trained on (the role token itself excluded: it is given, not predicted).
    """

    ids: list[int]
    boundaries: list[int]
    targets: list[bool]


def _new_bpe() -> Tokenizer:
    """An untrained byte-level BPE with no normaliser, so decoding is exact."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: "Hi" must encode the same at the start of a turn and alone.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on ``texts``; special tokens take ids 0..5 in fixed order."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError("vocab_size must cover the special tokens and the 256 bytes")
    tok = _new_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


class ChatTokenizer:
    """A trained :class:`tokenizers.Tokenizer` plus the chat template (its :class:`ChatFormat`)."""

    def __init__(self, tokenizer: Tokenizer, chat_format: ChatFormat | None = None) -> None:
        fmt = chat_format or MEMSVC_FORMAT
        if fmt.name == "memsvc":
            for i, name in enumerate(SPECIAL_TOKENS):
                if tokenizer.token_to_id(name) != i:
                    raise ValueError(f"special token {name} must have id {i}")
        self._tok = tokenizer
        self.chat_format = fmt
        tokenizer.encode_special_tokens = False  # openings are markup: match their tokens
        self._openings = {
            role: tokenizer.encode(text, add_special_tokens=False).ids
            for role, text in fmt.openings.items()
        }
        # Content is plain text: a literal "<|end|>" typed by a user stays bytes.
        self._tok.encode_special_tokens = True
        ids = {name: tokenizer.token_to_id(name) for name in (fmt.end, fmt.pad)}
        missing = [name for name, i in ids.items() if i is None]
        if missing or sorted(ROLES) != sorted(self._openings):
            raise ValueError(f"chat format {fmt.name}: tokens {missing} unknown or roles missing")
        self.end_id, self.pad_id = ids[fmt.end], ids[fmt.pad]
        # the id that opens (first id of) each role's turn; single ids in the memsvc format
        self._role_ids = {role: opening[0] for role, opening in self._openings.items()}
        self.system_id, self.user_id = self._role_ids["system"], self._role_ids["user"]
        self.assistant_id = self._role_ids["assistant"]
        self.passage_id = self._role_ids["passage"]

    # ---------------------------------------------------------------- construction
    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
    ) -> ChatTokenizer:
        """Train a new tokenizer on ``texts`` (see :func:`train_bpe`)."""
        return cls(train_bpe(texts, vocab_size=vocab_size, min_frequency=min_frequency))

    @classmethod
    def load(cls, path: str | Path) -> ChatTokenizer:
        """Load from a ``tokenizer.json`` file or a checkpoint directory holding one (and
        ``chat_format.json`` beside it, when the model has its own chat format)."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        fmt_path = path.with_name(CHAT_FORMAT_FILE)
        fmt = ChatFormat.from_json(fmt_path.read_text()) if fmt_path.is_file() else None
        return cls(Tokenizer.from_file(str(path)), fmt)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (into ``path`` if it is a directory), and
        ``chat_format.json`` beside it unless the format is memsvc's; returns the file."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path = path / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        if self.chat_format.name != "memsvc":
            path.with_name(CHAT_FORMAT_FILE).write_text(self.chat_format.to_json() + "\n")
        return path

    def to_json(self) -> str:
        """The tokenizer as the JSON string ``tokenizers`` reads back."""
        return self._tok.to_str()

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    # ---------------------------------------------------------------- plain text
    def encode(self, text: str) -> list[int]:
        """Text → ids; special-token strings in ``text`` are encoded as ordinary bytes."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def char_spans(self, text: str) -> list[tuple[int, int]]:
        """Per token of :meth:`encode` (``text``): its [start, end) character span."""
        return [
            (int(a), int(b)) for a, b in self._tok.encode(text, add_special_tokens=False).offsets
        ]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Batched :meth:`encode` (parallel inside ``tokenizers``)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Ids → text. Control tokens print as their names unless ``skip_special``."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str:
        """The surface text of one id (``<|end|>`` for a control token)."""
        return self.decode([token_id])

    # ---------------------------------------------------------------- chat template
    def role_id(self, role: str) -> int:
        """The (first) id that opens a turn of ``role``."""
        try:
            return self._role_ids[role]
        except KeyError:
            raise ValueError(f"unknown role {role!r}") from None

    def opening(self, role: str) -> list[int]:
        """The ids that open a turn of ``role`` (one id in the memsvc format)."""
        try:
            return list(self._openings[role])
        except KeyError:
            raise ValueError(f"unknown role {role!r}") from None

    def render_turn(self, message: Message | dict) -> list[int]:
        """One turn: ``<|role|> content <|end|>``. Accepts a Message or {role, content}."""
        msg = _as_message(message)
        return [*self.opening(msg.role), *self.encode(msg.content), self.end_id]

    def render(
        self,
        messages: Sequence[Message | dict],
        train_roles: Iterable[str] = ("system", "user", "assistant", "passage"),
    ) -> Rendered:
        """A conversation: the concatenation of :meth:`render_turn` over ``messages``.

        ``targets`` is True on the content and ``<|end|>`` tokens of turns whose role is
        in ``train_roles`` (e.g. only ``assistant`` for supervised memory answers).
        """
        train = set(train_roles)
        ids: list[int] = []
        boundaries: list[int] = []
        targets: list[bool] = []
        for message in messages:
            msg = _as_message(message)
            turn = self.render_turn(msg)
            ids.extend(turn)
            boundaries.append(len(ids))
            on = msg.role in train
            given = len(self._openings[msg.role])
            targets.extend([False] * given + [on] * (len(turn) - given))
        return Rendered(ids=ids, boundaries=boundaries, targets=targets)

    def render_ids(self, messages: Sequence[Message | dict]) -> list[int]:
        """Just the ids of :meth:`render`."""
        return self.render(messages).ids

    def generation_prompt(self, role: str = "assistant") -> list[int]:
        """What to feed before generating a reply: the role's opening alone."""
        return self.opening(role)

    def parse(self, ids: Sequence[int]) -> list[Message]:
        """Inverse of :meth:`render` for complete turns; an unterminated tail is dropped."""
        ids = [int(t) for t in ids]
        out: list[Message] = []
        i = 0
        while i < len(ids):
            role = next((r for r, o in self._openings.items() if ids[i : i + len(o)] == o), None)
            if role is None:
                raise ValueError(f"expected a turn opening, got id {ids[i]}")
            start = i + len(self._openings[role])
            try:
                end = ids.index(self.end_id, start)
            except ValueError:
                break
            out.append(Message(role, self.decode(ids[start:end])))
            i = end + 1
        return out


def _as_message(message: Message | dict) -> Message:
    """Accept both :class:`Message` and OpenAI-style ``{"role", "content"}`` dicts."""
    if isinstance(message, Message):
        return message
    return Message(role=message["role"], content=message["content"])


def special_tokens_json() -> str:
    """The special-token table as JSON (for model cards and debugging)."""
    return json.dumps({t: i for i, t in enumerate(SPECIAL_TOKENS)})
