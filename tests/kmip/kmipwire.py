"""A minimal KMIP TTLV codec and client, for requests PyKMIP 0.11 cannot build.

PyKMIP has no Add Attribute payload and registers symmetric keys only in the Raw key
format; this module encodes such requests by hand (KMIP 1.4, section 9.1) and decodes the
server's response generically, so the tests can check result statuses, reasons and
payloads field by field.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any

from kmip.core import enums

# Item types (KMIP 1.4, 9.1.1.2).
STRUCTURE = 0x01
INTEGER = 0x02
LONG_INTEGER = 0x03
BIG_INTEGER = 0x04
ENUMERATION = 0x05
BOOLEAN = 0x06
TEXT_STRING = 0x07
BYTE_STRING = 0x08
DATE_TIME = 0x09
INTERVAL = 0x0A

T = enums.Tags  # tag numbers, e.g. T.UNIQUE_IDENTIFIER.value == 0x420094


@dataclass
class Item:
    """One TTLV item. `value` is a list of Items for a structure."""

    tag: int
    type: int
    value: Any

    def child(self, tag: enums.Tags) -> Item | None:
        for c in self.children(tag):
            return c
        return None

    def children(self, tag: enums.Tags) -> list[Item]:
        assert self.type == STRUCTURE, f"tag {self.tag:#x} is not a structure"
        return [c for c in self.value if c.tag == tag.value]


def struct_(tag: enums.Tags, *children: Item) -> Item:
    return Item(tag.value, STRUCTURE, list(children))


def integer(tag: enums.Tags, v: int) -> Item:
    return Item(tag.value, INTEGER, v)


def enum(tag: enums.Tags, v: int) -> Item:
    return Item(tag.value, ENUMERATION, int(getattr(v, "value", v)))


def text(tag: enums.Tags, v: str) -> Item:
    return Item(tag.value, TEXT_STRING, v)


def bytes_(tag: enums.Tags, v: bytes) -> Item:
    return Item(tag.value, BYTE_STRING, v)


def attribute(name: str, value: Item, index: int | None = None) -> Item:
    """An Attribute structure; `value` is re-tagged as the Attribute Value."""
    parts = [text(T.ATTRIBUTE_NAME, name)]
    if index is not None:
        parts.append(integer(T.ATTRIBUTE_INDEX, index))
    parts.append(Item(T.ATTRIBUTE_VALUE.value, value.type, value.value))
    return struct_(T.ATTRIBUTE, *parts)


def _pad(n: int) -> int:
    return (8 - n % 8) % 8


def encode(item: Item) -> bytes:
    t = item.type
    if t == STRUCTURE:
        body = b"".join(encode(c) for c in item.value)
    elif t in (INTEGER, ENUMERATION):
        body = struct.pack(">i" if t == INTEGER else ">I", item.value)
    elif t in (LONG_INTEGER, DATE_TIME):
        body = struct.pack(">q", item.value)
    elif t == INTERVAL:
        body = struct.pack(">I", item.value)
    elif t == BOOLEAN:
        body = struct.pack(">Q", 1 if item.value else 0)
    elif t == TEXT_STRING:
        body = item.value.encode("utf-8")
    elif t == BYTE_STRING:
        body = bytes(item.value)
    else:
        raise ValueError(f"cannot encode item type {t:#x}")
    header = item.tag.to_bytes(3, "big") + bytes([t]) + struct.pack(">I", len(body))
    return header + body + b"\0" * _pad(len(body))


def decode(data: bytes) -> Item:
    item, end = _decode_at(data, 0)
    assert end == len(data), f"{len(data) - end} bytes after the message"
    return item


def _decode_at(data: bytes, at: int) -> tuple[Item, int]:
    tag = int.from_bytes(data[at : at + 3], "big")
    t = data[at + 3]
    (n,) = struct.unpack(">I", data[at + 4 : at + 8])
    body = data[at + 8 : at + 8 + n]
    assert len(body) == n, "truncated item"
    end = at + 8 + n + _pad(n)
    if t == STRUCTURE:
        children, pos = [], 0
        while pos < n:
            c, pos = _decode_at(body, pos)
            children.append(c)
        return Item(tag, t, children), end
    if t == INTEGER:
        return Item(tag, t, struct.unpack(">i", body)[0]), end
    if t in (ENUMERATION, INTERVAL):
        return Item(tag, t, struct.unpack(">I", body)[0]), end
    if t in (LONG_INTEGER, DATE_TIME):
        return Item(tag, t, struct.unpack(">q", body)[0]), end
    if t == BOOLEAN:
        return Item(tag, t, struct.unpack(">Q", body)[0] != 0), end
    if t == TEXT_STRING:
        return Item(tag, t, body.decode("utf-8")), end
    if t in (BYTE_STRING, BIG_INTEGER):
        return Item(tag, t, bytes(body)), end
    raise ValueError(f"unknown item type {t:#x} at byte {at}")


@dataclass
class Result:
    """One response batch item."""

    operation: enums.Operation | None
    status: enums.ResultStatus
    reason: enums.ResultReason | None
    message: str | None
    payload: Item | None = field(repr=False)


@dataclass
class Response:
    version: tuple[int, int]
    items: list[Result]


def request(operation: enums.Operation, payload: Item, version: tuple[int, int] = (1, 2)) -> bytes:
    """A one-item Request Message."""
    header = struct_(
        T.REQUEST_HEADER,
        struct_(T.PROTOCOL_VERSION, integer(T.PROTOCOL_VERSION_MAJOR, version[0]),
                integer(T.PROTOCOL_VERSION_MINOR, version[1])),
        integer(T.BATCH_COUNT, 1),
    )
    item = struct_(T.BATCH_ITEM, enum(T.OPERATION, operation), payload)
    return encode(struct_(T.REQUEST_MESSAGE, header, item))


def parse_response(message: Item) -> Response:
    assert message.tag == T.RESPONSE_MESSAGE.value, f"not a Response Message: tag {message.tag:#x}"
    pv = message.child(T.RESPONSE_HEADER).child(T.PROTOCOL_VERSION)
    version = (pv.child(T.PROTOCOL_VERSION_MAJOR).value, pv.child(T.PROTOCOL_VERSION_MINOR).value)
    items = []
    for bi in message.children(T.BATCH_ITEM):
        op = bi.child(T.OPERATION)
        reason = bi.child(T.RESULT_REASON)
        msg = bi.child(T.RESULT_MESSAGE)
        items.append(Result(
            operation=enums.Operation(op.value) if op else None,
            status=enums.ResultStatus(bi.child(T.RESULT_STATUS).value),
            reason=enums.ResultReason(reason.value) if reason else None,
            message=msg.value if msg else None,
            payload=bi.child(T.RESPONSE_PAYLOAD),
        ))
    return Response(version, items)


class RawClient:
    """A mutual-TLS KMIP connection that sends hand-built messages."""

    def __init__(self, host: str, port: int, ca: str, cert: str, key: str, timeout: float = 10.0):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError(f"connection closed after {len(out)} of {n} bytes")
            out += chunk
        return out

    def roundtrip(self, message: bytes) -> Response:
        self.sock.sendall(message)
        header = self._recv_exact(8)
        (n,) = struct.unpack(">I", header[4:8])
        return parse_response(decode(header + self._recv_exact(n)))

    def call(self, operation: enums.Operation, payload: Item, version: tuple[int, int] = (1, 2)) -> Result:
        response = self.roundtrip(request(operation, payload, version))
        assert len(response.items) == 1, f"expected one batch item, got {len(response.items)}"
        return response.items[0]
