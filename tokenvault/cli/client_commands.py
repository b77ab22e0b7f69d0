"""The client commands that send one request and print its answer: tokenize, detokenize,
rotate, epoch and ring.

Rules:
- A raw request body (--json, --file) must be valid JSON; it is checked before anything is sent
  and sent as given, byte for byte. A bad one, or an unreadable file, is exit code 2. Fields the
  answer's `fields_left` names (the owner has not configured them) are named on stderr.
- `tokenize VALUE... --field F` never leaves a value in clear without saying so: with --dir it
  refuses a field that the key's owner lacks in cluster.toml (exit code 2, naming the owner's
  fields; nothing is sent); otherwise, when the answer's `fields_left` names F, it prints no
  answer and exits with code 2.
- The answer is printed as api_calls.call prints it; an error answer ends the command with
  exit code 1.
- `rotate` without --expected-epoch is sent to another peer only when the first could not be
  reached at all (it might rotate twice); with it, it is retried like any request.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

from tokenvault.cli.api_calls import call, print_answer, send
from tokenvault.cli.exits import EXIT_OK, EXIT_USAGE, CliError, print_error
from tokenvault.cli.target import Target, target_of
from tokenvault.client import BadAnswer, Tokenized, calls
from tokenvault.client.results import decode_answer


def tokenize_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    target = target_of(args)
    if args.json is not None or args.file is not None:
        data = str(args.json).encode() if args.json is not None else _read_body_file(args.file)
        body = _raw_body(data, "--json" if args.json is not None else str(args.file))
        answer = send(target, calls.tokenize_body_call(body), transport)
        print_answer(answer)
        left = answer.get("fields_left") if isinstance(answer, dict) else None
        if isinstance(left, list) and left:
            named = ", ".join(map(str, left))
            print_error(f"fields left as given (not configured for this owner): {named}")
        return EXIT_OK
    field: str = args.field
    _refuse_a_field_the_owner_lacks(target, field)
    records = [{field: value} for value in args.values]
    answer = send(target, calls.tokenize_call(records), transport)
    if field in _tokenized(answer, target).fields_left:
        raise CliError(
            f"field {field!r} is not configured for this key's owner: the peer left the values"
            " as given (nothing was tokenized)",
            EXIT_USAGE,
        )
    print_answer(answer)
    return EXIT_OK


def detokenize_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    return call(target_of(args), calls.detokenize_call(list(args.tokens)), transport)


def rotate_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    return call(target_of(args), calls.rotate_call(args.expected_epoch), transport)


def epoch_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    return call(target_of(args), calls.epoch_call(), transport)


def ring_command(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    request = calls.ring_call() if args.owner is None else calls.ring_owner_call(args.owner)
    return call(target_of(args), request, transport)


def _refuse_a_field_the_owner_lacks(target: Target, field: str) -> None:
    owner = target.owner()
    if owner is None or field in owner.fields:
        return
    assert target.config is not None
    raise CliError(
        f"owner {owner.id} has no field {field!r} (its fields in {target.config.path}:"
        f" {', '.join(sorted(owner.fields))}); nothing was sent",
        EXIT_USAGE,
    )


def _tokenized(answer: object, target: Target) -> Tokenized:
    try:
        return decode_answer(answer, target.url, Tokenized)
    except BadAnswer as error:
        raise CliError(str(error)) from None


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
