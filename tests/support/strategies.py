"""Hypothesis strategies for our protobuf requests, read from their descriptors: every field
may be set to any value its type can hold (out-of-range times, enum numbers the enum does not
have, huge strings, NaN), and the encoded bytes may then be mutated (truncated, flipped, a
string made invalid UTF-8)."""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
#: Values that sit on edges the code may get wrong.
_EDGES = (0, 1, -1, 2**31 - 1, -(2**31), 253_402_300_799, 253_402_300_800, -62_135_596_801)
_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)))
MAX_DEPTH = 4
#: Field name -> values that name real records.
Known = dict[str, list[str]]


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in _EDGES if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from(["", "acme", "u-1", " ", "\u0000", "é" * 300, "x" * 5000]),
        _TEXT.filter(lambda s: len(s) < 300),
    )


def _scalar(field: FieldDescriptor, known: Known) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_STRING and known.get(field.name):
        # Ids of records that exist, so calls get past "not found" into the code behind it.
        return st.one_of(st.sampled_from(known[field.name]), _strings())
    return _typed(field)


def _typed(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _integers(-(2**31), 2**31 - 1))
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if kind == F.TYPE_FLOAT else 64
        )
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_STRING:
        return _strings()
    if kind == F.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=64), st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"])
        )
    raise AssertionError(f"unhandled field type {kind}")


def message_of(
    descriptor: Descriptor, known: Known | None = None, depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type with any subset of fields set to any value; a string
    field named in ``known`` often takes one of its values."""
    known = known or {}
    cls = message_factory.GetMessageClass(descriptor)
    if not descriptor.fields:
        return st.just(cls())

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in descriptor.fields:
            if not draw(st.booleans()):
                continue
            _set(draw, message, field, known, depth)
        return message

    return build()


def _set(
    draw: st.DrawFn, message: Message, field: FieldDescriptor, known: Known, depth: int
) -> None:
    is_message = field.type == F.TYPE_MESSAGE
    if is_message and depth >= MAX_DEPTH:
        return
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(message, field.name)
        for _ in range(draw(st.integers(0, 3))):
            key = draw(_scalar(key_field, known))
            if value_field.type == F.TYPE_MESSAGE:
                target[key].CopyFrom(draw(message_of(value_field.message_type, known, depth + 1)))
            else:
                target[key] = draw(_scalar(value_field, known))
        return
    if field.is_repeated:
        target = getattr(message, field.name)
        for _ in range(draw(st.integers(0, 3))):
            if is_message:
                target.add().CopyFrom(draw(message_of(field.message_type, known, depth + 1)))
            else:
                target.append(draw(_scalar(field, known)))
        return
    if is_message:
        getattr(message, field.name).CopyFrom(
            draw(message_of(field.message_type, known, depth + 1))
        )
    else:
        setattr(message, field.name, draw(_scalar(field, known)))


@st.composite
def mutated(draw: st.DrawFn, descriptor: Descriptor, known: Known | None = None) -> bytes:
    """The encoding of a drawn message, damaged the ways a broken client damages it."""
    data = bytearray(draw(message_of(descriptor, known)).SerializeToString())
    how = draw(st.sampled_from(["truncate", "flip", "insert", "invalid-utf8", "random"]))
    if how == "random":
        return draw(st.binary(max_size=256))
    if how == "invalid-utf8":
        return _with_invalid_utf8(draw, descriptor)
    if not data:
        return b"\xff"
    at = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        return bytes(data[:at])
    if how == "flip":
        data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    return bytes(data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:])


def _with_invalid_utf8(draw: st.DrawFn, descriptor: Descriptor) -> bytes:
    """A message whose first string field holds bytes that are not UTF-8."""
    strings = [f for f in descriptor.fields if f.type == F.TYPE_STRING and not f.is_repeated]
    if not strings:
        return b"\x0a\x02\xff\xfe"
    field = draw(st.sampled_from(strings))
    marker = "\u0001\u0002\u0003\u0004"
    message = message_factory.GetMessageClass(descriptor)()
    setattr(message, field.name, marker)
    return message.SerializeToString().replace(marker.encode(), b"\xff\xfe\xc3\x28")
