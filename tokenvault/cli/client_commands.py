"""The client commands that send one request and print its answer: tokenize, detokenize,
rotate, epoch and ring.

Rules:
- A raw request body (--json, --file) must be valid JSON; it is checked before anything is sent
  and sent as given, byte for byte. A bad one, or an unreadable file, is exit code 2.
- The answer is printed as api_calls.call prints it; an error answer ends the command with
  exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path

import httpx

from tokenvault.cli.api_calls import call
from tokenvault.cli.exits import EXIT_USAGE, CliError
from tokenvault.cli.target import target_of


def tokenize_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    if args.json is not None:
        body = _raw_body(str(args.json).encode(), "--json")
    elif args.file is not None:
        body = _raw_body(_read_body_file(args.file), str(args.file))
    else:
        records = [{args.field: value} for value in args.values]
        body = json.dumps({"records": records}).encode()
    return call(target_of(args), "POST", "/v1/tokenize", body, transport)


def detokenize_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    body = json.dumps({"tokens": list(args.tokens)}).encode()
    return call(target_of(args), "POST", "/v1/detokenize", body, transport)


def rotate_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    expected: int | None = args.expected_epoch
    body = None if expected is None else json.dumps({"expected_epoch": expected}).encode()
    return call(target_of(args), "POST", "/v1/epoch/rotate", body, transport)


def epoch_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    return call(target_of(args), "GET", "/v1/epoch", None, transport)


def ring_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    path = "/v1/ring"
    if args.owner is not None:
        path = f"/v1/ring/owners/{urllib.parse.quote(args.owner, safe='')}"
    return call(target_of(args), "GET", path, None, transport)


def _raw_body(data: bytes, source: str) -> bytes:
    try:
        json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CliError(f"{source} is not valid JSON: {error}", EXIT_USAGE) from error
    return data


def _read_body_file(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}", EXIT_USAGE) from error
