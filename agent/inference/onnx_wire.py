"""The protobuf wire format, as much of it as reading and patching an ONNX file needs.

The `onnx` package is not a dependency of the agent (it must install lean on a Jetson),
so the two places that look inside a model file walk the wire format directly:
`tensorrt.onnx_facts` (what an engine build needs to know) and `onnx_shapes` (making
the input size dynamic for rectangular inference). A message is a run of fields, each
a varint key (field number << 3 | wire type) and a value: a varint, 8 or 4 fixed bytes,
or a length-delimited payload (strings, bytes, nested messages, packed arrays).
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, I64, LEN, I32 = 0, 1, 2, 5

Field = tuple[int, int, "int | memoryview"]
"""(field number, wire type, the varint / fixed value as an int, or the LEN payload)."""


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("varint runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise WireError("varint too long")


def spans(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview, int, int]]:
    """Each field of one message: number, wire type, value, and where it starts and ends."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if pos + size > end:
                raise WireError("fixed field runs past the end")
            value = int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        elif wire == LEN:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise WireError(f"field {number} runs past the end of its message")
            value = buf[pos : pos + size]
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value, start, pos


def fields(buf: memoryview) -> Iterator[Field]:
    """(field number, wire type, int or sub-buffer) for each field of one message."""
    for number, wire, value, _start, _end in spans(buf):
        yield number, wire, value


def sub(buf: memoryview, number: int) -> Iterator[memoryview]:
    """The payloads of every length-delimited field `number` (repeated fields in order)."""
    for num, wire, value in fields(buf):
        if num == number and wire == LEN and isinstance(value, memoryview):
            yield value


def int_field(buf: memoryview, number: int, default: int = 0) -> int:
    """The last varint field `number` (protobuf's rule for a repeated scalar), or default."""
    found = default
    for num, wire, value in fields(buf):
        if num == number and wire == VARINT and isinstance(value, int):
            found = value
    return found


def text_field(buf: memoryview, number: int) -> str:
    """The first string field `number`, or ""."""
    return next((bytes(v).decode("utf-8", "replace") for v in sub(buf, number)), "")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def len_field(number: int, payload: bytes) -> bytes:
    """One encoded length-delimited field."""
    return encode_varint(number << 3 | LEN) + encode_varint(len(payload)) + payload


__all__ = [
    "I32",
    "I64",
    "LEN",
    "VARINT",
    "Field",
    "WireError",
    "encode_varint",
    "fields",
    "int_field",
    "len_field",
    "read_varint",
    "spans",
    "sub",
    "text_field",
]
