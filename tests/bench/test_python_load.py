"""The fallback load generator, without wrk: the requests it builds (those of the wrk scripts),
the answers it reads (Content-Length and chunked), and a short run against a fake server whose
wrong answers it counts."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from tokenvault.cli.bench.figures import Figure
from tokenvault.cli.bench.python_load import Requests, _read_answer, drive
from tokenvault.cli.bench.workloads import Shape


def test_tokenize_bodies_hold_fresh_values() -> None:
    requests = Requests(Shape.TOKENVAULT_TOKENIZE, {"BATCH": "3", "RUN": "abc"})
    first, second = (json.loads(requests.body()) for _ in range(2))
    values = [r["ssn"] for r in first["records"] + second["records"]]
    assert len(set(values)) == 6 and all(value.startswith("abc-") for value in values)
    assert first["records"][0]["note"] == "bench"


def test_detokenize_takes_the_tokens_in_turn(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"tok_{i}\n" for i in range(5)))
    requests = Requests(Shape.TOKENVAULT_DETOKENIZE, {"BATCH": "2", "TOKENS": str(tokens)})
    asked = [t for _ in range(5) for t in json.loads(requests.body())["tokens"]]
    assert sorted(asked) == sorted(f"tok_{i}" for i in range(5) for _ in range(2))


def test_etcd_bodies_are_put_if_absent_and_ranges_of_preloaded_keys() -> None:
    txn = json.loads(Requests(Shape.ETCD_PUT_IF_ABSENT, {"BATCH": "2", "RUN": "r"}).body())
    keys = [base64.b64decode(c["key"]).decode() for c in txn["compare"]]
    assert keys == ["tok/r/1/000000000001", "tok/r/1/000000000002"]
    assert all(c["target"] == "CREATE" and c["create_revision"] == "0" for c in txn["compare"])
    assert [p["request_put"]["key"] for p in txn["success"]] == [c["key"] for c in txn["compare"]]
    one = json.loads(Requests(Shape.ETCD_RANGE, {"N": "10"}).body())
    assert base64.b64decode(one["key"]).decode().startswith("pre/0000")
    batch = json.loads(Requests(Shape.ETCD_RANGE, {"N": "10", "BATCH": "3"}).body())
    assert len(batch["success"]) == 3


def test_answers_with_a_length_or_in_chunks_are_read_whole() -> None:
    async def read(raw: bytes) -> tuple[int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await _read_answer(reader)

    plain = b'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{"a"'
    chunked = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    assert asyncio.run(read(plain)) == (200, b'{"a"')
    assert asyncio.run(read(chunked)) == (503, b"abcde")


async def _fake_peer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answered: list[int]
) -> None:
    """Answers tokenize requests on a keep-alive connection; every third one with a 503."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            break
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        answered.append(length)
        status = b"503 Service Unavailable" if len(answered) % 3 == 0 else b"200 OK"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
    writer.close()


def test_a_short_run_counts_good_and_wrong_answers() -> None:
    answered: list[int] = []

    async def run() -> Figure:
        server = await asyncio.start_server(lambda r, w: _fake_peer(r, w, answered), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await drive(
                Shape.TOKENVAULT_TOKENIZE,
                f"http://127.0.0.1:{port}/v1/tokenize",
                connections=4,
                seconds=0.3,
                environment={"BATCH": "2", "KEY": "k", "RUN": "t"},
            )

    figure = asyncio.run(run())
    assert figure.requests == len(answered) > 10
    assert figure.not_ok == figure.non2xx == len(answered) // 3
    assert figure.ok == figure.requests - figure.not_ok
    assert figure.errors == 0 and figure.flagged
    assert figure.batch == 2 and 0 < figure.p50_ms <= figure.p99_ms <= figure.max_ms
