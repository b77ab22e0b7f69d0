"""Benchmark: requests/s of tokenvault.http.server with a trivial handler (not a test).

Starts serve_http on 127.0.0.1 (free port) and drives it with N concurrent keep-alive
HttpConnection clients for a few seconds, then prints requests/s. By default the clients
run in one separate process so that server and clients each get a core (the target is
>5,000 requests/s on a 2-core machine); ``--client-processes 0`` runs them in the server's
own process and trio loop instead (a lower bound: one core does both sides). With client
processes, it prints the CPU time (user + system) each side spent per request: the figure
to compare on a shared machine, where requests/s moves with the other load.

``--shape`` picks the request: ``tiny`` (a 7-byte body, no headers of note), ``tokenize``
(the head and body of a 1-record POST /v1/tokenize: a bearer key, a content type, ~60
bytes), ``peer`` (a peer batch: the signature headers of http/peer_auth.py and a 2 KiB body).

    python bench/http_server_bench.py [--clients 16] [--duration-s 3] [--client-processes 1]
        [--shape tiny|tokenize|peer]
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import trio

from tokenvault.http.client import HttpConnection
from tokenvault.http.server import Request, Response, ServerLimits, serve_http

_BODY = b'{"ok":true}'
# The requests of each --shape: (path, headers, body).
_SHAPES: dict[str, tuple[str, tuple[tuple[str, str], ...], bytes]] = {
    "tiny": ("/v1/bench", (), b'{"x":1}'),
    "tokenize": (
        "/v1/tokenize",
        (("content-type", "application/json"), ("authorization", "Bearer " + "k" * 43)),
        b'{"records":[{"ssn":"0123abcd-1-000000000042","note":"bench"}]}',
    ),
    "peer": (
        "/internal/v1/messages",
        (
            ("content-type", "application/json"),
            ("tokenvault-cluster-fingerprint", "f" * 64),
            (
                "authorization",
                "TokenvaultPeer sender=peer-1, incarnation=1700000000000, sequence=12345, "
                f"timestamp_ms=1700000000123, body_sha256={'a' * 64}, signature={'b' * 64}",
            ),
        ),
        b'{"source":"peer-1","messages":['
        + b",".join([b'{"type":"x","v":"' + b"y" * 90 + b'"}'] * 20)
        + b"]}",
    ),
}


async def _trivial_handler(request: Request) -> Response:
    return Response(status=200, body=_BODY)


async def _drive(port: int, clients: int, duration_s: float, shape: str) -> int:
    """Run ``clients`` keep-alive loops for ``duration_s``; return requests completed."""
    done = 0
    path, headers, body = _SHAPES[shape]

    async def one_client() -> None:
        nonlocal done
        connection = HttpConnection("127.0.0.1", port)
        try:
            while True:
                status, _ = await connection.request(
                    "POST", path, headers=headers, body=body, timeout_s=5.0
                )
                if status != 200:
                    raise RuntimeError(f"unexpected status {status}")
                done += 1
        finally:
            await connection.aclose()

    with trio.move_on_after(duration_s):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(one_client)
    return done


async def _client_main(port: int, clients: int, duration_s: float, shape: str) -> None:
    cpu_started_s = _cpu_s()
    done = await _drive(port, clients, duration_s, shape)
    print(done, _cpu_s() - cpu_started_s)


async def _main(clients: int, duration_s: float, client_processes: int, shape: str) -> None:
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(
            serve_http, _trivial_handler, "127.0.0.1", 0, ServerLimits()
        )
        started = trio.current_time()
        cpu_started_s = _cpu_s()
        if client_processes == 0:
            total = await _drive(port, clients, duration_s, shape)
        else:
            per_process = max(1, clients // client_processes)
            command = [
                sys.executable, __file__, "--client-of-port", str(port),
                "--clients", str(per_process), "--duration-s", str(duration_s),
                "--shape", shape,
            ]  # fmt: skip
            results: list[int] = []
            client_cpu_s: list[float] = []

            async def run_one() -> None:
                done = await trio.run_process(command, capture_stdout=True)
                count, cpu_s = done.stdout.decode().split()
                results.append(int(count))
                client_cpu_s.append(float(cpu_s))

            async with trio.open_nursery() as clients_nursery:
                for _ in range(client_processes):
                    clients_nursery.start_soon(run_one)
            total = sum(results)
        elapsed_s = trio.current_time() - started
        cpu_used_s = _cpu_s() - cpu_started_s
        nursery.cancel_scope.cancel()
    mode = "in-process" if client_processes == 0 else f"{client_processes} client process(es)"
    print(
        f"{shape}: {total} requests in {duration_s:.1f}s with {clients} clients ({mode}): "
        f"{total / duration_s:,.0f} requests/s (wall {elapsed_s:.1f}s incl. startup)"
    )
    if client_processes and total:
        # CPU the server process spent per request: robust to a noisy, shared machine.
        per_request_us = cpu_used_s / total * 1e6
        print(
            f"server process CPU: {cpu_used_s:.2f}s = {per_request_us:.0f} us/request "
            f"(~{1e6 / per_request_us:,.0f} requests/s per fully used core)"
        )
        print(f"client processes CPU: {sum(client_cpu_s) / total * 1e6:.0f} us/request")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--shape", choices=sorted(_SHAPES), default="tiny")
    parser.add_argument("--client-of-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_of_port:
        trio.run(_client_main, args.client_of_port, args.clients, args.duration_s, args.shape)
    else:
        trio.run(_main, args.clients, args.duration_s, args.client_processes, args.shape)


if __name__ == "__main__":
    main()
