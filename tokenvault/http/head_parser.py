"""Strict parsers for the common HTTP/1.1 request and response heads, so that most skip h11.

Rules kept here:
- it recognises only the plainest heads: a complete head already in the buffer (ended by
  CRLF CRLF, no longer than the caller's limit), the request line ``METHOD SP target SP
  HTTP/1.1`` with an RFC 9110 token method and a target of visible ASCII, and header lines
  ``name: value`` ended by CRLF, with token names and values of visible ASCII, obs-text,
  spaces and tabs, no name twice, a Host, a Content-Length (if any) of at most
  CONTENT_LENGTH_DIGITS_MAX digits, and no Transfer-Encoding and no Expect;
- anything else (an incomplete or too large head, bare LF, obs-fold, a control byte, another
  version, a repeated header, a listed Content-Length, chunked framing, 100-continue, ...) is
  not an error here: parse_request_head returns None and the caller hands the same bytes to
  h11, whose path answers it as before;
- so the heads it accepts are a subset of those h11 accepts, with the same meaning: the same
  method, target, lower-cased names, values without their surrounding whitespace, and the
  same body framing (its Content-Length, else none). A framing that differed from h11's
  would let a request hide in another's body. tests/http/test_head_parser.py holds it to
  h11 on generated heads;
- the same for a response (parse_response_head, for client.py): HTTP/1.1, a final status
  with a body, a Content-Length, the same header lines; the same status, framing and
  keep-alive as h11's client side;
- no I/O; the head's bytes are decoded once (latin-1), as the server's h11 path does.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = [
    "CONTENT_LENGTH_DIGITS_MAX",
    "ParsedHead",
    "ParsedResponseHead",
    "comma_tokens",
    "parse_request_head",
    "parse_response_head",
]

CONTENT_LENGTH_DIGITS_MAX = 18  # h11 accepts 20; 18 digits always fit a C long

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.1\r\n")
# A final status with a body (no 1xx, 204, 304), an optional reason of visible characters.
_STATUS_LINE_RE = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [\x20-\x7e\x80-\xff\t]*)?\r\n")
# Header lines: a token, a colon, visible ASCII, obs-text, spaces and tabs. Such a value is
# h11's "OWS field-value OWS" (its words of visible characters, the whitespace around them
# stripped), so stripping spaces and tabs gives the value h11 gives.
_HEADER_LINES_RE = re.compile(rb"(?:" + _TOKEN + rb":[\x21-\x7e\x80-\xff \t]*\r\n)*")
_CONTENT_LENGTH_RE = re.compile(f"[0-9]{{1,{CONTENT_LENGTH_DIGITS_MAX}}}")


class ParsedHead(NamedTuple):
    method: bytes
    target: bytes
    headers: dict[str, str]  # lower-cased names, latin-1; no name repeats
    content_length: int  # 0 without a Content-Length
    end: int  # the offset of the first byte after the head (its body's first)


class ParsedResponseHead(NamedTuple):
    status: int
    content_length: int
    keep_alive: bool  # False: the server closes the connection after this response
    end: int  # the offset of the first byte after the head (its body's first)


def parse_request_head(data: bytes, head_bytes_max: int) -> ParsedHead | None:
    """The head at the start of ``data`` if it is of the plain kind; None: let h11 parse it.

    ``head_bytes_max`` bounds the head's length, and what server.py counts of it (its target
    and each header's name and value, plus 4 bytes a header): a head over either is h11's to
    parse and the server's to refuse.
    """
    first = _first_line(data, head_bytes_max, _REQUEST_LINE_RE)
    if first is None:
        return None
    request_line, end = first
    target: bytes = request_line[2]
    fields = _header_fields(data, request_line.end(), end, len(target), head_bytes_max)
    if (
        fields is None
        or "host" not in fields
        or "transfer-encoding" in fields
        or "expect" in fields
    ):
        return None
    size = _content_length(fields)
    if size is None:
        return None
    return ParsedHead(request_line[1], target, fields, size, end + 4)


def parse_response_head(data: bytes, head_bytes_max: int) -> ParsedResponseHead | None:
    """The head of a response to a request other than HEAD at the start of ``data``, if it is
    of the plain kind: HTTP/1.1, a final status with a body, a Content-Length, no
    Transfer-Encoding, the header lines of a plain request head. None: let h11 parse it."""
    first = _first_line(data, head_bytes_max, _STATUS_LINE_RE)
    if first is None:
        return None
    status_line, end = first
    status = int(status_line[1])
    fields = _header_fields(data, status_line.end(), end, 0, head_bytes_max)
    if (
        fields is None
        or status == 204
        or status == 304
        or "content-length" not in fields
        or "transfer-encoding" in fields
    ):
        return None
    size = _content_length(fields)
    if size is None:
        return None
    connection = fields.get("connection")
    keep_alive = connection is None or "close" not in comma_tokens(connection)
    return ParsedResponseHead(status, size, keep_alive, end + 4)


def comma_tokens(value: str) -> list[str]:
    """The lower-cased items of a comma-separated header value (Connection, ...)."""
    return [token.strip().lower() for token in value.split(",")]


def _first_line(
    data: bytes, head_bytes_max: int, line_re: re.Pattern[bytes]
) -> tuple[re.Match[bytes], int] | None:
    """The first line's match of a head whole in ``data`` and within ``head_bytes_max``, and
    where its blank line begins; None if there is no such head or the line does not match."""
    end = data.find(b"\r\n\r\n", 0, head_bytes_max + 1)
    if end < 0 or end + 4 > head_bytes_max:
        return None
    line = line_re.match(data)
    return None if line is None else (line, end)


def _header_fields(
    data: bytes, lines_at: int, end: int, head_bytes: int, head_bytes_max: int
) -> dict[str, str] | None:
    """The header lines from ``lines_at`` to the blank line at ``end``, if all are plain and
    no name repeats, and ``head_bytes`` plus what server.py counts of them is within
    ``head_bytes_max``: lower-cased names, values stripped."""
    if _HEADER_LINES_RE.fullmatch(data, lines_at, end + 2) is None:
        return None
    fields: dict[str, str] = {}
    if lines_at < end:
        for line in data[lines_at:end].decode("latin-1").split("\r\n"):
            raw_name, _, raw_value = line.partition(":")
            name = raw_name.lower()
            if name in fields:
                return None  # h11 joins repeats (and merges equal Content-Lengths)
            value = fields[name] = raw_value.strip(" \t")
            head_bytes += len(name) + len(value) + 4
    return None if head_bytes > head_bytes_max else fields


def _content_length(fields: dict[str, str]) -> int | None:
    """The Content-Length (0 without one); None if it is not of the plain kind."""
    content_length = fields.get("content-length")
    if content_length is None:
        return 0
    if _CONTENT_LENGTH_RE.fullmatch(content_length) is None:
        return None
    return int(content_length)
