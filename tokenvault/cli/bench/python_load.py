"""The fallback load generator of `tokenvault bench`, for machines without wrk: keep-alive
HTTP/1.1 connections in one asyncio loop of its own process, sending the requests the wrk
scripts (lua/*.lua) send and printing the same RESULT line.

    BATCH=1 KEY=... RUN=... python -m tokenvault.cli.bench.python_load --shape tv_tokenize \
        --connections 64 --seconds 10 http://127.0.0.1:7401/v1/tokenize

Rules:
- The request shapes are the Lua scripts', name for name: fresh values from RUN, a per-process
  counter, tokens taken in turn from TOKENS, etcd keys base64-encoded. So are the good answers.
- Each connection sends its next request when the last answer has come (closed loop, like wrk);
  a socket error is counted, and the connection is made again.
- Latencies are measured per request from the first byte written to the last byte read.
- Not wrk: one Python process can be slower than the server it drives, which the report says.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokenvault.cli.bench.figures import Figure
from tokenvault.cli.bench.workloads import Shape

REQUEST_TIMEOUT_S = 10.0
HEAD_BYTES_MAX = 64 * 1024
_TOKEN_START_STRIDE = 7919  # where the first connection starts in the tokens, as in the Lua


@dataclass(slots=True)
class Counts:
    requests: int = 0
    ok: int = 0
    not_ok: int = 0
    errors: int = 0
    non2xx: int = 0
    latencies_s: list[float] = field(default_factory=list)


class Requests:
    """The bodies of one shape, in the order the wrk script makes them."""

    def __init__(self, shape: Shape, environment: dict[str, str]) -> None:
        self.batch = int(environment.get("BATCH", "1"))
        self.run = environment.get("RUN", "run")
        self._counter = 0
        self._shape = shape
        self._tokens: list[str] = []
        self._key_count = int(environment.get("N", "20000"))
        if shape is Shape.TOKENVAULT_DETOKENIZE:
            with open(environment["TOKENS"], encoding="ascii") as tokens:
                self._tokens = [line.strip() for line in tokens if line.strip()]
        self._next_index = _TOKEN_START_STRIDE % max(len(self._tokens) or self._key_count, 1)
        self.is_good: Callable[[int, bytes], bool] = _GOOD_ANSWERS[shape]

    def body(self) -> bytes:
        if self._shape is Shape.TOKENVAULT_TOKENIZE:
            records = ",".join(
                f'{{"ssn":"{self.run}-1-{self._fresh():012d}","note":"bench"}}'
                for _ in range(self.batch)
            )
            return f'{{"records":[{records}]}}'.encode()
        if self._shape is Shape.TOKENVAULT_DETOKENIZE:
            chosen = ",".join(
                f'"{self._tokens[self._turn(len(self._tokens))]}"' for _ in range(self.batch)
            )
            return f'{{"tokens":[{chosen}]}}'.encode()
        if self._shape is Shape.ETCD_PUT_IF_ABSENT:
            keys = [_b64(f"tok/{self.run}/1/{self._fresh():012d}") for _ in range(self.batch)]
            value = _b64("4111111111111111")
            compares = ",".join(
                f'{{"target":"CREATE","key":"{key}","create_revision":"0"}}' for key in keys
            )
            puts = ",".join(f'{{"request_put":{{"key":"{k}","value":"{value}"}}}}' for k in keys)
            return f'{{"compare":[{compares}],"success":[{puts}]}}'.encode()
        keys = [_b64(f"pre/{self._turn(self._key_count):06d}") for _ in range(self.batch)]
        if self.batch == 1:
            return f'{{"key":"{keys[0]}"}}'.encode()
        ranges = ",".join(f'{{"request_range":{{"key":"{key}"}}}}' for key in keys)
        return f'{{"success":[{ranges}]}}'.encode()

    def _fresh(self) -> int:
        self._counter += 1
        return self._counter

    def _turn(self, count: int) -> int:
        """The next index of `count` stored items, in turn (0-based)."""
        index = self._next_index % count
        self._next_index = index + 1
        return index


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


_GOOD_ANSWERS: dict[Shape, Callable[[int, bytes], bool]] = {
    Shape.TOKENVAULT_TOKENIZE: lambda status, body: status == 200,
    Shape.TOKENVAULT_DETOKENIZE: lambda status, body: (
        status == 200 and b'"found":true' in body and b'"found":false' not in body
    ),
    Shape.ETCD_PUT_IF_ABSENT: lambda status, body: status == 200 and b'"succeeded":true' in body,
    Shape.ETCD_RANGE: lambda status, body: status == 200 and b'"kvs"' in body,
}


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 answer (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEAD_BYTES_MAX:
        raise ValueError("answer head too long")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(chunks)
            chunks.append(chunk[:-2])
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


async def _connection(
    url: urllib.parse.SplitResult,
    head: bytes,
    requests: Requests,
    counts: Counts,
    deadline: float,
    tls: ssl.SSLContext | None,
) -> None:
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while time.monotonic() < deadline:
        body = requests.body()
        try:
            if streams is None:
                streams = await asyncio.wait_for(
                    asyncio.open_connection(url.hostname, url.port, ssl=tls), REQUEST_TIMEOUT_S
                )
            reader, writer = streams
            started = time.perf_counter()
            writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status, answer = await asyncio.wait_for(_read_answer(reader), REQUEST_TIMEOUT_S)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            counts.errors += 1
            if streams is not None:
                streams[1].close()
            streams = None
            continue
        counts.latencies_s.append(time.perf_counter() - started)
        counts.requests += 1
        if requests.is_good(status, answer):
            counts.ok += 1
        else:
            counts.not_ok += 1
            counts.non2xx += not 200 <= status < 300
    if streams is not None:
        streams[1].close()


def _percentile_ms(sorted_latencies_s: Sequence[float], percent: float) -> float:
    if not sorted_latencies_s:
        return 0.0
    index = min(int(len(sorted_latencies_s) * percent / 100), len(sorted_latencies_s) - 1)
    return sorted_latencies_s[index] * 1000


async def drive(
    shape: Shape, target: str, connections: int, seconds: float, environment: dict[str, str]
) -> Figure:
    """Runs the load for `seconds` over `connections` connections and returns its figure."""
    url = urllib.parse.urlsplit(target)
    # BENCH_CACERT: the cluster CA to trust over https (wrk checks no certificate at all).
    tls = None
    if url.scheme == "https":
        tls = ssl.create_default_context(cafile=environment.get("BENCH_CACERT"))
    headers = [
        f"POST {url.path or '/'} HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: application/json",
    ]
    if "KEY" in environment:
        headers.append(f"Authorization: Bearer {environment['KEY']}")
    head = ("\r\n".join(headers) + "\r\n").encode()
    requests, counts = Requests(shape, environment), Counts()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(
        *(_connection(url, head, requests, counts, deadline, tls) for _ in range(connections))
    )
    latencies = sorted(counts.latencies_s)
    return Figure(
        batch=requests.batch,
        requests=counts.requests,
        ok=counts.ok,
        not_ok=counts.not_ok,
        errors=counts.errors,
        non2xx=counts.non2xx,
        duration_s=time.monotonic() - started,
        p50_ms=_percentile_ms(latencies, 50),
        p99_ms=_percentile_ms(latencies, 99),
        max_ms=latencies[-1] * 1000 if latencies else 0.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenvault.cli.bench.python_load")
    parser.add_argument("--shape", required=True, choices=[shape.value for shape in Shape])
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("url", help="the full URL requests are posted to")
    args = parser.parse_args(argv)
    figure = asyncio.run(
        drive(Shape(args.shape), args.url, args.connections, args.seconds, dict(os.environ))
    )
    print(figure.result_line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
