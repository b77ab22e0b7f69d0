"""Tests of tokenvault.http.head_parser: the fast path accepts the plain heads clients send,
and on generated heads (valid and near-valid) it either defers to h11 or means exactly what
the server's h11 path makes of the same bytes: the same RequestHead, body presence,
keep-alive, and the same body framing (the same bytes are the body, the same bytes are left
for the next request). The same for responses, against h11's client side (status, body,
whether the connection can carry another request)."""

from __future__ import annotations

from typing import TypeVar

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tokenvault.http.head_parser import (
    ParsedHead,
    ParsedResponseHead,
    parse_request_head,
    parse_response_head,
)
from tokenvault.http.server import _head_of, _head_of_event, _Reject

T = TypeVar("T")
HEAD_BYTES_MAX = 16 * 1024
NEXT_REQUEST = b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n"

TOKENIZE_HEAD = (
    b"POST /v1/tokenize HTTP/1.1\r\nHost: 127.0.0.1:7401\r\nContent-Length: 62\r\n"
    b"Content-Type: application/json\r\nAuthorization: Bearer kkkkkkkkkkkkkkkkkkkkkkkkk\r\n\r\n"
)
PEER_HEAD = (
    b"POST /internal/v1/messages HTTP/1.1\r\nhost: 127.0.0.1:7302\r\ncontent-length: 2048\r\n"
    b"content-type: application/json\r\ntokenvault-cluster-fingerprint: ffff\r\n"
    b"authorization: TokenvaultPeer sender=peer-1, incarnation=1, sequence=2, "
    b"timestamp_ms=3, body_sha256=aaaa, signature=bbbb\r\n\r\n"
)


def test_the_plain_heads_clients_send_take_the_fast_path() -> None:
    for head, size in ((TOKENIZE_HEAD, 62), (PEER_HEAD, 2048)):
        parsed = parse_request_head(head + b"x" * 10, HEAD_BYTES_MAX)
        assert parsed is not None
        assert parsed.content_length == size and parsed.end == len(head)
    get = b"GET /healthz?full=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    parsed = parse_request_head(get, HEAD_BYTES_MAX)
    assert parsed == ParsedHead(
        b"GET", b"/healthz?full=1", {"host": "a", "connection": "close"}, 0, len(get)
    )


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n",  # incomplete
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # a stray line before it
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_anything_but_a_plain_head_is_left_to_h11(head: bytes) -> None:
    assert parse_request_head(head, HEAD_BYTES_MAX) is None


def test_a_head_over_the_limit_is_left_to_h11() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 100 + b"\r\n\r\n"
    assert parse_request_head(head, len(head)) is not None
    assert parse_request_head(head, len(head) - 1) is None
    # What the server counts of a head (name + value + 4 a header) can exceed its length.
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x%d:\r\n" % i for i in range(40))
    many += b"\r\n"
    counted = len(b"/") + sum(len(b"x%d" % i) + 4 for i in range(40)) + len(b"host") + 1 + 4
    assert parse_request_head(many, counted) is not None
    assert parse_request_head(many, counted - 1) is None


# -- the fast path against h11, on generated heads -------------------------------------------

_VALID_NAMES = [
    "Host", "host", "Content-Length", "content-length", "Connection", "Content-Type",
    "Authorization", "X-A", "x-a", "!#$%&'*+.^_`|~",
]  # fmt: skip
_ODD_NAMES = [
    "HOST", "Transfer-Encoding", "Expect", "Bad Name", "", "a:b", "\x80", " Host", "Host ",
    "Host\t", "@", "Content-Length ",
]  # fmt: skip
_VALID_VALUE_PIECES = [
    "a", "Z", "0", "5", "12", " ", "\t", ",", ", ", ":", "close", "Close", "keep-alive", "=",
    "\x80", "\xff", "\u00b2", '"',
]  # fmt: skip
_ODD_VALUE_PIECES = [
    "100-continue", "chunked", "-1", "+5", "5, 5", "99999999999999999999999", "\x00", "\x01",
    "\x7f", "\r", "\n", "\r\n", "\r\n ", "\x0b", "\x0c", "0x5", " 5 ",
]  # fmt: skip
_VALID_TARGET_PIECES = ["/", "a", "?", "=", "%", "%41", "%ff", "*", "#", "~"]
_ODD_TARGET_PIECES = [" ", "\t", "\x7f", "\x80", "\r", "\n"]


def _mostly(valid: st.SearchStrategy[T], odd: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``valid`` about nine times in ten, else ``odd``."""
    return st.integers(0, 9).flatmap(lambda n: odd if n == 0 else valid)


_value_pieces = _mostly(st.sampled_from(_VALID_VALUE_PIECES), st.sampled_from(_ODD_VALUE_PIECES))
_values = st.lists(_value_pieces, max_size=5).map("".join) | st.integers(0, 10**22).map(str)
_headers = st.lists(
    st.tuples(
        _mostly(
            st.sampled_from(_VALID_NAMES) | st.text("abcXYZ-_!~.09", min_size=1, max_size=6),
            st.sampled_from(_ODD_NAMES),
        ),
        _mostly(st.sampled_from([":", ": ", ":\t", ":  "]), st.just(" :")),
        _values,
        _mostly(st.sampled_from(["", " ", "\t"]), st.sampled_from(["\x00", "\x0b"])),
        _mostly(st.just("\r\n"), st.sampled_from(["\n", "\r", "\r\n ", "\r\n\t"])),
    ),
    max_size=4,
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    prefix = draw(_mostly(st.just(""), st.sampled_from(["\r\n", "\n", " "])))
    method = draw(
        _mostly(
            st.sampled_from(["GET", "POST", "HEAD", "PUT"]), st.sampled_from(["P@ST", "", "G T"])
        )
    )
    separator = draw(_mostly(st.just(" "), st.sampled_from(["  ", "\t"])))
    target_pieces = _mostly(
        st.sampled_from(_VALID_TARGET_PIECES), st.sampled_from(_ODD_TARGET_PIECES)
    )
    target = "".join(draw(st.lists(target_pieces, min_size=1, max_size=6)))
    version = draw(
        _mostly(st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "http/1.1", "HTTP/1.1 "]))
    )
    lines = [f"{prefix}{method}{separator}{target} {version}\r\n"]
    if draw(_mostly(st.just(True), st.just(False))):
        lines.append("Host: 127.0.0.1:7401\r\n")
    for name, colon, value, trailing, end in draw(_headers):
        lines.append(f"{name}{colon}{value}{trailing}{end}")
    if draw(st.booleans()):
        size = draw(_mostly(st.integers(0, 60).map(str), _values))
        lines.insert(draw(st.integers(1, len(lines))), f"Content-Length: {size}\r\n")
    lines.append(draw(_mostly(st.just("\r\n"), st.sampled_from(["\n", "", "\r\n\r\n"]))))
    return "".join(lines).encode("latin-1")


def _h11_path(data: bytes, head_bytes_max: int) -> tuple[object, bytes, bytes | None]:
    """What the server's h11 path makes of ``data``: ``(head, has_body, keep_alive)`` (or the
    _Reject), the body bytes it frames, and what is left for the next request (None: the
    body is still incomplete)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=head_bytes_max)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request), "the fast path took a head h11 refuses"
    try:
        result: object = _head_of_event(event, "client", None, head_bytes_max)
    except _Reject as reject:
        result = reject.response
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return result, body, None
        if isinstance(event, h11.Data):
            body += event.data
            continue
        assert isinstance(event, h11.EndOfMessage)
        rest, closed = conn.trailing_data
        assert not closed
        return result, body, bytes(rest)


def _fast_path(parsed: ParsedHead, data: bytes) -> tuple[object, bytes, bytes | None]:
    try:
        result: object = _head_of(
            parsed.method, parsed.target, b"1.1", parsed.headers, "client", None
        )
    except _Reject as reject:
        result = reject.response
    end = parsed.end + parsed.content_length
    body = data[parsed.end : end]
    return result, body, (data[end:] if len(data) >= end else None)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    head=heads(),
    body_bytes=st.integers(0, 40),
    head_bytes_max=st.sampled_from([48, 128, HEAD_BYTES_MAX]),
)
@example(head=TOKENIZE_HEAD, body_bytes=62, head_bytes_max=HEAD_BYTES_MAX)
@example(head=PEER_HEAD, body_bytes=10, head_bytes_max=HEAD_BYTES_MAX)
def test_the_fast_path_defers_or_agrees_with_h11(
    head: bytes, body_bytes: int, head_bytes_max: int
) -> None:
    data = head + b"b" * body_bytes + NEXT_REQUEST
    parsed = parse_request_head(data, head_bytes_max)
    if parsed is None:
        return  # h11's to parse: the server's h11 path, unchanged
    assert _fast_path(parsed, data) == _h11_path(data, head_bytes_max)


@st.composite
def plain_heads(draw: st.DrawFn) -> bytes:
    """Heads of the plain kind only (with their Content-Length, if any, in any place)."""
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "X-Y"]))
    target = "".join(draw(st.lists(st.sampled_from(_VALID_TARGET_PIECES), min_size=1)))
    names = draw(
        st.lists(
            st.text("abcXYZ-_!~.09", min_size=1, max_size=8).filter(
                lambda name: name.lower() not in {"host", "content-length"}
            ),
            unique_by=str.lower,
            max_size=5,
        )
    )
    lines = [
        f"{name}:{draw(st.sampled_from(['', ' ', chr(9)]))}{draw(_plain_values)}\r\n"
        for name in names
    ]
    lines.insert(draw(st.integers(0, len(lines))), f"Host: {draw(_plain_values)}\r\n")
    if draw(st.booleans()):
        size = draw(st.integers(0, 60))
        lines.insert(draw(st.integers(0, len(lines))), f"content-LENGTH: {size}\r\n")
    return f"{method} {target} HTTP/1.1\r\n{''.join(lines)}\r\n".encode("latin-1")


_plain_values = st.lists(st.sampled_from(_VALID_VALUE_PIECES), max_size=5).map("".join)


@settings(max_examples=500, deadline=None)
@given(head=plain_heads(), body_bytes=st.integers(0, 70))
def test_the_fast_path_takes_every_plain_head_as_h11_does(head: bytes, body_bytes: int) -> None:
    data = head + b"b" * body_bytes + NEXT_REQUEST
    parsed = parse_request_head(data, HEAD_BYTES_MAX)
    assert parsed is not None
    assert _fast_path(parsed, data) == _h11_path(data, HEAD_BYTES_MAX)


# -- responses (client.py): the fast path against h11's client side --------------------------


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    version = draw(_mostly(st.just("HTTP/1.1"), st.sampled_from(["HTTP/1.0", "HTTP/1.1 "])))
    status = draw(
        _mostly(
            st.sampled_from(["200", "202", "400", "413", "503"]),
            st.sampled_from(["100", "101", "204", "304", "600", "20", "2000"]),
        )
    )
    reason = draw(
        _mostly(
            st.sampled_from(["", " OK", " Bad Request", " ", " \x80"]),
            st.sampled_from(["\x00", " \r", "\t"]),
        )
    )
    lines = [f"{version} {status}{reason}\r\n"]
    for name, colon, value, trailing, end in draw(_headers):
        lines.append(f"{name}{colon}{value}{trailing}{end}")
    if draw(_mostly(st.just(True), st.just(False))):
        size = draw(_mostly(st.integers(0, 60).map(str), _values))
        lines.insert(draw(st.integers(1, len(lines))), f"content-length: {size}\r\n")
    if draw(st.booleans()):
        connection = draw(st.sampled_from(["close", "Close", "keep-alive, close", " close ", "x"]))
        lines.insert(draw(st.integers(1, len(lines))), f"Connection: {connection}\r\n")
    lines.append(draw(_mostly(st.just("\r\n"), st.sampled_from(["\n", "", "\r\n\r\n"]))))
    return "".join(lines).encode("latin-1")


def _h11_client_path(data: bytes, method: str) -> tuple[int, bytes, bool | None]:
    """What h11's client side makes of ``data`` answering ``method``: status, body, and
    whether the connection can carry another request (None: the body is incomplete)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Response), "the fast path took a response h11 refuses"
    body = b""
    while True:
        part = conn.next_event()
        if part is h11.NEED_DATA:
            return event.status_code, body, None
        if isinstance(part, h11.Data):
            body += part.data
            continue
        assert isinstance(part, h11.EndOfMessage)
        trailing, _ = conn.trailing_data
        assert bytes(trailing) == NEXT_RESPONSE
        return event.status_code, body, conn.their_state is h11.DONE


NEXT_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=response_heads(), body_bytes=st.integers(0, 70))
@example(head=b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n", body_bytes=5)
def test_the_response_fast_path_defers_or_agrees_with_h11(head: bytes, body_bytes: int) -> None:
    data = head + b"b" * body_bytes
    parsed = parse_response_head(data + NEXT_RESPONSE, HEAD_BYTES_MAX)
    if parsed is None:
        return
    end = parsed.end + parsed.content_length
    complete = len(data) >= end
    data = data[:end] + NEXT_RESPONSE if complete else data  # what follows is the next's
    fast = (parsed.status, data[parsed.end : end], parsed.keep_alive if complete else None)
    assert fast == _h11_client_path(data, "POST")


def test_the_plain_response_of_our_server_takes_the_fast_path() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
    assert parse_response_head(head + b'{"ok":true}', HEAD_BYTES_MAX) == ParsedResponseHead(
        200, 11, True, len(head)
    )
    closing = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    assert parse_response_head(closing, HEAD_BYTES_MAX) == ParsedResponseHead(
        503, 0, False, len(closing)
    )
    for deferred in (
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",  # no Content-Length: read to the close
        b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
    ):
        assert parse_response_head(deferred, HEAD_BYTES_MAX) is None
