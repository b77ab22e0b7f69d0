"""`tokenvault bench`: tokenvault and etcd side by side, with one external load generator, in one
sitting, as issue 12 measures them.

Rules:
- Each round measures tokenvault, then etcd (when installed and not --no-etcd), each on a fresh
  cluster of its own that is stopped before the other starts: the two never share the machine.
- --url/--key or --dir measure a running tokenvault cluster instead of a fresh one (the etcd
  side still gets its own fresh cluster); its tokens for detokenize are made once.
- Reads need stored keys: tokens are made (through the API) and etcd keys written before the
  first read workload of a cluster, outside any figure.
- Progress goes to stderr; stdout carries the report alone (a table, or JSON with --json).
- Exit code 0, or 1 when any figure had failures (the table shows which) or the run failed;
  every process the bench started is stopped by PID on every way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import httpx

from tokenvault.cli.bench.etcd_side import (
    ETCD_MEMBERS,
    ETCD_PRELOADED_KEYS,
    EtcdCluster,
    etcd_version,
    fresh_etcd,
    preload_keys,
)
from tokenvault.cli.bench.load import Generator, Load, choose_generator, run_load, wrk_version
from tokenvault.cli.bench.processes import cpu_seconds
from tokenvault.cli.bench.progress import Progress
from tokenvault.cli.bench.report import (
    ETCD,
    TOKENVAULT,
    Measurement,
    Report,
    Settings,
    render_json,
    render_table,
)
from tokenvault.cli.bench.tokenvault_side import (
    DETOKENIZE_TOKEN_COUNT,
    FRESH_CLUSTER_PEERS,
    TokenvaultCluster,
    fresh_cluster,
    make_tokens,
    running_cluster,
)
from tokenvault.cli.bench.workloads import Workload
from tokenvault.cli.exits import EXIT_FAILURE, EXIT_OK, print_error
from tokenvault.cli.peer_processes import StopSignals

ETCD_INSTALL_HINT = "apt-get install etcd-server"


class Servers(Protocol):
    @property
    def urls(self) -> list[str]: ...
    @property
    def server_pids(self) -> list[int]: ...
    def environment(self) -> dict[str, str]: ...


def bench_command(args: argparse.Namespace, _: httpx.BaseTransport | None) -> int:
    workloads: tuple[Workload, ...] = args.workloads
    generator = choose_generator(args.load_generator)
    etcd = None if args.no_etcd else etcd_version()
    if not args.no_etcd and etcd is None:
        print_error(f"etcd is not installed ({ETCD_INSTALL_HINT}): tokenvault alone, no ratio")
    running = running_cluster(args) if args.url is not None or args.dir is not None else None
    settings = _settings(args, generator, etcd, running)
    systems = 2 if etcd is not None else 1
    progress = Progress(len(workloads) * systems * args.rounds)
    progress.note(f"load generator: {generator.label}")
    measurements: list[Measurement] = []
    with StopSignals() as stop, _work_directory(args.work_dir) as work_dir:
        for round_number in range(1, args.rounds + 1):
            bench = _Bench(args, workloads, generator, progress, stop, work_dir, round_number)
            measurements += bench.tokenvault(running)
            if etcd is not None:
                measurements += bench.etcd()
    report = Report(settings=settings, workloads=workloads, measurements=tuple(measurements))
    print(render_json(report) if args.json else render_table(report), flush=True)
    if report.flagged:
        print_error("some figures had failures (wrong answers or socket errors): see the report")
        return EXIT_FAILURE
    return EXIT_OK


class _Bench:
    """One round: each side's cluster, its figures, and what reads need first."""

    def __init__(
        self,
        args: argparse.Namespace,
        workloads: Sequence[Workload],
        generator: Generator,
        progress: Progress,
        stop: StopSignals,
        work_dir: Path,
        round_number: int,
    ) -> None:
        self._args = args
        self._workloads = workloads
        self._generator = generator
        self._progress = progress
        self._stop = stop
        self._work_dir = work_dir
        self._round = round_number

    def tokenvault(self, running: TokenvaultCluster | None) -> list[Measurement]:
        if running is not None:
            return self._measure(TOKENVAULT, running, lambda: self._make_tokens(running))
        self._progress.note(f"round {self._round}: starting a fresh 3-peer tokenvault cluster")
        directory = self._work_dir / f"tokenvault-round-{self._round}"
        with fresh_cluster(directory, self._stop) as cluster:
            return self._measure(TOKENVAULT, cluster, lambda: self._make_tokens(cluster))

    def etcd(self) -> list[Measurement]:
        self._progress.note(f"round {self._round}: starting a fresh {ETCD_MEMBERS}-member etcd")
        directory = self._work_dir / f"etcd-round-{self._round}"
        with fresh_etcd(directory, self._stop) as cluster:
            return self._measure(ETCD, cluster, lambda: self._preload_keys(cluster))

    def _make_tokens(self, cluster: TokenvaultCluster) -> None:
        if cluster.tokens_path is None:
            self._progress.note(f"making {DETOKENIZE_TOKEN_COUNT:,} tokens for detokenize")
            make_tokens(cluster, self._work_dir / f"tokens-{self._round}.txt", self._stop)

    def _preload_keys(self, cluster: EtcdCluster) -> None:
        self._progress.note(f"writing {ETCD_PRELOADED_KEYS:,} etcd keys for range reads")
        preload_keys(cluster, self._stop)

    def _measure(
        self, system: str, servers: Servers, prepare_reads: Callable[[], None]
    ) -> list[Measurement]:
        measurements = []
        prepared = False
        for workload in self._workloads:
            if workload.needs_stored_keys and not prepared:
                prepare_reads()
                prepared = True
            measurements.append(self._figure(system, servers, workload))
        return measurements

    def _figure(self, system: str, servers: Servers, workload: Workload) -> Measurement:
        etcd_side = system == ETCD
        shape = workload.etcd_shape if etcd_side else workload.tokenvault_shape
        name = f"etcd {workload.etcd_operation}" if etcd_side else f"tokenvault {workload.name}"
        spread = f", spread over {len(servers.urls)}" if workload.spread else ""
        self._progress.start(f"round {self._round} {name}{spread}", self._args.seconds)
        load = Load(
            shape=shape,
            batch=workload.batch,
            urls=servers.urls if workload.spread else servers.urls[:1],
            connections=self._args.connections,
            seconds=self._args.seconds,
            environment=servers.environment(),
        )
        cpu_before = cpu_seconds(servers.server_pids) if servers.server_pids else None
        figure = run_load(load, self._generator, self._stop, self._work_dir)
        cpu_after = cpu_seconds(servers.server_pids) if servers.server_pids else None
        self._progress.finish(figure)
        used = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return Measurement(
            system=system,
            workload=workload,
            round_number=self._round,
            figure=figure,
            server_cpu_s=used,
        )


@contextlib.contextmanager
def _work_directory(asked: Path | None) -> Iterator[Path]:
    """--work-dir, kept; else a temporary directory, deleted with its logs and data."""
    if asked is not None:
        asked.mkdir(parents=True, exist_ok=True)
        yield asked.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="tokenvault-bench-") as directory:
        yield Path(directory)


def _settings(
    args: argparse.Namespace,
    generator: Generator,
    etcd: str | None,
    running: TokenvaultCluster | None,
) -> Settings:
    versions = {"tokenvault": _tokenvault_version(), "python": platform.python_version()}
    if generator is Generator.WRK:
        versions["wrk"] = wrk_version() or "unknown"
    if etcd is not None:
        versions["etcd"] = etcd
    if running is None:
        tokenvault = f"a fresh {FRESH_CLUSTER_PEERS}-peer cluster per round (N=3, W=2, R=2)"
    else:
        tokenvault = f"the running cluster at {running.urls[0]} ({len(running.urls)} members)"
    if etcd is not None:
        etcd_cluster = f"a fresh {ETCD_MEMBERS}-member cluster per round"
    elif args.no_etcd:
        etcd_cluster = "not measured (--no-etcd): no ratio"
    else:
        etcd_cluster = f"not installed ({ETCD_INSTALL_HINT}): no ratio"
    return Settings(
        machine=_machine(),
        versions=versions,
        load_generator=generator.label,
        tokenvault_cluster=tokenvault,
        etcd_cluster=etcd_cluster,
        connections=args.connections,
        seconds=args.seconds,
        rounds=args.rounds,
    )


def _tokenvault_version() -> str:
    try:
        return importlib.metadata.version("tokenvault")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = f", {line.partition(':')[2].strip()}"
                break
    return f"{cores} cores{model}, {platform.system()} {platform.release()} {platform.machine()}"
