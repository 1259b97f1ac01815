"""Hypothesis strategies for hostile input: text that has broken parsers and encoders before,
extreme numbers, and any protobuf message built field by field from its descriptor (so a new
field or RPC is fuzzed without touching these tests)."""

from __future__ import annotations

import math
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

# Each has broken a service at least once (issue 15) or is a classic: NUL, the whitespace that
# Python's str.split sees but tantivy's query parser does not, line and paragraph separators,
# right-to-left marks and overrides, a BOM, query-parser syntax, emoji, combining marks.
HOSTILE_TEXTS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u00a0",
    "foo\u00a0bar",
    "\x0b",
    "\x0c",
    "\x85",
    "\u2028",
    "\u2029",
    "\u3000",
    "\u200b",
    "\u200f",
    "\u202e",
    "\ufeff",
    "\t\r\n",
    "🦙🧪",
    "e\u0301\u0301\u0301",
    '"',
    "title:(x OR",
    "AND OR NOT",
    "*",
    "\\",
    "a:b",
    '+-&&||!(){}[]^"~*?:\\/',
    "../../etc/passwd",
    "http://127.0.0.1/",
    "%00",
    "${jndi:x}",
    "9" * 400,
)

_LONG = st.sampled_from(("x" * 100_001, "word " * 20_000, "\u00a0" * 5_000))

# Every code point but surrogates (protobuf strings must be valid UTF-8).
_ANY_CHAR = st.characters(exclude_categories=["Cs"])


def hostile_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Mostly known troublemakers, alone or glued to ordinary words; sometimes arbitrary text,
    rarely over 100,000 characters."""
    known = st.sampled_from(HOSTILE_TEXTS)
    return st.one_of(
        known,
        st.builds(lambda a, b, c: f"{a}{b}{c}", st.sampled_from(("", "what ", "q ")), known, known),
        st.text(_ANY_CHAR, max_size=max_size),
        _LONG,
    )


INT32 = (0, 1, -1, 2**31 - 1, -(2**31))
INT64 = (*INT32, 2**63 - 1, -(2**63))
UINT32 = (0, 1, 2**32 - 1)
UINT64 = (0, 1, 2**64 - 1)
DOUBLES = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324)


def _ints(lo: int, hi: int, known: tuple[int, ...]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(known), st.integers(lo, hi))


_T = FieldDescriptor
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    _T.TYPE_INT32: _ints(-(2**31), 2**31 - 1, INT32),
    _T.TYPE_SINT32: _ints(-(2**31), 2**31 - 1, INT32),
    _T.TYPE_SFIXED32: _ints(-(2**31), 2**31 - 1, INT32),
    _T.TYPE_INT64: _ints(-(2**63), 2**63 - 1, INT64),
    _T.TYPE_SINT64: _ints(-(2**63), 2**63 - 1, INT64),
    _T.TYPE_SFIXED64: _ints(-(2**63), 2**63 - 1, INT64),
    _T.TYPE_UINT32: _ints(0, 2**32 - 1, UINT32),
    _T.TYPE_FIXED32: _ints(0, 2**32 - 1, UINT32),
    _T.TYPE_UINT64: _ints(0, 2**64 - 1, UINT64),
    _T.TYPE_FIXED64: _ints(0, 2**64 - 1, UINT64),
    _T.TYPE_DOUBLE: st.one_of(st.sampled_from(DOUBLES), st.floats()),
    _T.TYPE_FLOAT: st.one_of(st.sampled_from(DOUBLES[:8]), st.floats(width=32)),
    _T.TYPE_BOOL: st.booleans(),
    _T.TYPE_STRING: hostile_text(),
    _T.TYPE_BYTES: st.binary(max_size=64),
}


def _enum(field: FieldDescriptor) -> st.SearchStrategy[int]:
    """A declared value, or any int32 (proto3 enums are open: unknown values arrive as is)."""
    assert field.enum_type is not None
    declared = [v.number for v in field.enum_type.values]
    return st.one_of(st.sampled_from(declared), st.sampled_from(INT32), st.integers(-5, 100))


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return messages(field.message_type, depth + 1)
    if field.type == _T.TYPE_ENUM:
        return _enum(field)
    return _SCALARS[field.type]


def _repeated(element: st.SearchStrategy[Any], huge: Any) -> st.SearchStrategy[list[Any]]:
    """Usually a few elements; sometimes thousands (over every documented limit)."""
    return st.one_of(
        st.lists(element, max_size=4),
        st.builds(lambda n: [huge] * n, st.sampled_from((1_001, 5_000))),
    )


_HUGE_ELEMENT: dict[int, Any] = {
    _T.TYPE_STRING: "x",
    _T.TYPE_BYTES: b"x",
    _T.TYPE_BOOL: True,
    _T.TYPE_DOUBLE: 0.5,
    _T.TYPE_FLOAT: 0.5,
}


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type ``descriptor``, each field set (or left unset) independently; nesting
    stops after three levels."""
    cls = GetMessageClass(descriptor)
    fields = [] if depth > 3 else list(descriptor.fields)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in fields:
            if not draw(st.booleans()):
                continue
            _set(draw, message, field, depth)
        return message

    return build()


def _set(draw: st.DrawFn, message: Message, field: FieldDescriptor, depth: int) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        entries = draw(
            st.dictionaries(_value(key_field, depth), _value(value_field, depth), max_size=4)
        )
        for key, value in entries.items():
            if value_field.type == _T.TYPE_MESSAGE:
                target[key].CopyFrom(value)
            else:
                target[key] = value
        return
    if field.is_repeated:
        huge = (field.message_type and GetMessageClass(field.message_type)()) or _HUGE_ELEMENT.get(
            field.type, 1
        )
        values = draw(_repeated(_value(field, depth), huge))
        target.extend(values)
        return
    value = draw(_value(field, depth))
    if field.type == _T.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


Path = tuple[tuple[str, int | None], ...]
"""From a message down to a field's parent: field names, with the element index in a repeated
message field."""


def _field_paths(message: Message, prefix: Path = ()) -> list[tuple[Path, FieldDescriptor]]:
    """Every field of ``message`` and of the messages set in it (the fields that mutating
    changes)."""
    paths: list[tuple[Path, FieldDescriptor]] = []
    fields = cast(list[FieldDescriptor], list(message.DESCRIPTOR.fields))
    for field in fields:
        paths.append((prefix, field))
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        if field.is_repeated:
            for index, element in enumerate(getattr(message, field.name)):
                paths.extend(_field_paths(element, (*prefix, (field.name, index))))
        elif message.HasField(field.name):
            paths.extend(_field_paths(getattr(message, field.name), (*prefix, (field.name, None))))
    return paths


def _resolve(message: Message, path: Path) -> Message:
    for name, index in path:
        value = getattr(message, name)
        message = value if index is None else value[index]
    return message


def mutated(base: Message) -> st.SearchStrategy[Message]:
    """``base`` (a valid request) with one to three fields replaced by hostile values: a
    string gets a troublemaker spliced into it or replaces it, any other field gets what
    ``messages`` would draw. These reach the code behind validation, which random messages
    rarely do."""
    paths = _field_paths(base)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = type(base)()
        message.CopyFrom(base)
        chosen = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
        # Deepest first: replacing a repeated field may remove the element a deeper path is in.
        for path, field in sorted(chosen, key=lambda c: -len(c[0])):
            parent = _resolve(message, path)
            current = getattr(parent, field.name)
            if field.type == _T.TYPE_STRING and not field.is_repeated and current:
                at = draw(st.integers(0, len(current)))
                bad = draw(st.sampled_from(HOSTILE_TEXTS))
                setattr(parent, field.name, current[:at] + bad + current[at:])
                continue
            parent.ClearField(field.name)
            _set(draw, parent, field, depth=len(path))
        return message

    return build()
