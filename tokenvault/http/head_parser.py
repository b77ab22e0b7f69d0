"""A strict parser for the common HTTP/1.1 request head, so that most requests skip h11.

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
- no I/O; the head's bytes are decoded once (latin-1), as the server's h11 path does.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["CONTENT_LENGTH_DIGITS_MAX", "ParsedHead", "parse_request_head"]

CONTENT_LENGTH_DIGITS_MAX = 18  # h11 accepts 20; 18 digits always fit a C long

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.1\r\n")
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


def parse_request_head(data: bytes, head_bytes_max: int) -> ParsedHead | None:
    """The head at the start of ``data`` if it is of the plain kind; None: let h11 parse it.

    ``head_bytes_max`` bounds the head's length, and what server.py counts of it (its target
    and each header's name and value, plus 4 bytes a header): a head over either is h11's to
    parse and the server's to refuse.
    """
    end = data.find(b"\r\n\r\n", 0, head_bytes_max + 1)
    if end < 0 or end + 4 > head_bytes_max:
        return None
    request_line = _REQUEST_LINE_RE.match(data)
    if request_line is None:
        return None
    lines_at = request_line.end()
    if _HEADER_LINES_RE.fullmatch(data, lines_at, end + 2) is None:
        return None
    target: bytes = request_line[2]
    head_bytes = len(target)
    headers: dict[str, str] = {}
    if lines_at < end:
        for line in data[lines_at:end].decode("latin-1").split("\r\n"):
            raw_name, _, raw_value = line.partition(":")
            name = raw_name.lower()
            if name in headers:
                return None  # h11 joins repeats (and merges equal Content-Lengths)
            value = headers[name] = raw_value.strip(" \t")
            head_bytes += len(name) + len(value) + 4
    if (
        head_bytes > head_bytes_max
        or "host" not in headers
        or "transfer-encoding" in headers
        or "expect" in headers
    ):
        return None
    content_length = headers.get("content-length")
    if content_length is None:
        size = 0
    elif _CONTENT_LENGTH_RE.fullmatch(content_length) is not None:
        size = int(content_length)
    else:
        return None
    return ParsedHead(request_line[1], target, headers, size, end + 4)
