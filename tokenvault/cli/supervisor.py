"""What `tokenvault up` does for each peer while its cluster runs: restart the ones that die,
and watch the ones another process runs.

Rules:
- A peer is in one of three states: `running` (a process up started), `adopted` (another
  process holds the peer's data directory, pid_lock.py: up watches it, never signals it) or
  `waiting` (to be started at `restart_at`).
- Before a peer starts (at start, and at every restart) its place is looked at: held by another
  process → adopted; else its address can be listened on → started; else (its port taken by a
  program that is not this peer, or not a local address): at start, up refuses in one line
  before it starts anything; later, it says so and tries again after the next delay.
- A process of up's that exits, whatever its exit code or signal, is restarted after a delay:
  RESTART_DELAY_FIRST_S, doubled after each exit up to RESTART_DELAY_MAX_S, and back to the
  first once a process ran RESTART_RESET_AFTER_S. Each exit is one line on stderr (code or
  signal, how long it ran, the delay, the log, the process's own error line); each restart and
  the readiness after it one line on stdout.
- An adopted peer whose process ends (its lock is let go) is started by up after the first
  delay (unless another process took it meanwhile), and is up's from then on.
- On the way out up stops the processes it started (peer_processes.stop_peers) and names the
  adopted ones it leaves running, with their pids.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tokenvault.cli.exits import EXIT_OK, CliError, print_error
from tokenvault.cli.peer_processes import (
    PeerChild,
    StopSignals,
    answers_ready,
    describe_exit,
    error_line_suffix,
    health_client,
    peer_url,
    start_peer,
    stop_peers,
)
from tokenvault.config import PeerConfig
from tokenvault.pid_lock import LockHolder, lock_holder, peer_pid_path

RESTART_DELAY_FIRST_S = 0.5
RESTART_DELAY_MAX_S = 30.0
RESTART_RESET_AFTER_S = 30.0  # a process that ran this long is restarted after the first delay
SUPERVISE_INTERVAL_S = 0.25


@dataclass(slots=True)
class RestartBackoff:
    """The delays between restarts of one peer: doubled after each exit, reset after a long run."""

    next_s: float = RESTART_DELAY_FIRST_S

    def delay_s(self, ran_for_s: float) -> float:
        """The delay before the next start, after a process that ran `ran_for_s` (0: none)."""
        if ran_for_s >= RESTART_RESET_AFTER_S:
            self.next_s = RESTART_DELAY_FIRST_S
        delay = self.next_s
        self.next_s = min(self.next_s * 2, RESTART_DELAY_MAX_S)
        return delay


@dataclass(frozen=True, slots=True)
class PeerPlace:
    """Where a peer would run: another process runs it (`holder`), or its address cannot be
    listened on (`listen_errno`: taken by something else, not a local address), or neither
    (it can be started)."""

    holder: LockHolder | None
    listen_errno: int | None


def find_place(peer: PeerConfig) -> PeerPlace:
    holder = lock_holder(peer_pid_path(peer.data_dir))
    if holder is not None:
        return PeerPlace(holder, None)
    host = peer.host.removeprefix("[").removesuffix("]")
    try:
        with socket.create_server((host, peer.port)):
            return PeerPlace(None, None)
    except OSError as error:
        return PeerPlace(None, error.errno or errno.EINVAL)


def cannot_listen_text(peer: PeerConfig, listen_errno: int) -> str:
    """One line: why the peer cannot be started on its address."""
    text = f"peer {peer.id}: cannot listen on {peer.address}: {os.strerror(listen_errno)}"
    if listen_errno == errno.EADDRINUSE:
        text += (
            f"; the program there is not this cluster's {peer.id}"
            f" (no process holds {peer.data_dir})"
        )
    return text


@dataclass(slots=True, kw_only=True)
class SupervisedPeer:
    peer: PeerConfig
    child: PeerChild | None = None  # running: the process up started
    adopted_pid: int | None = None
    adopted: bool = False
    restart_at_s: float | None = None  # waiting: when to start it
    restarts: int = 0
    ready_reported: bool = True
    backoff: RestartBackoff = field(default_factory=RestartBackoff)

    @property
    def pid(self) -> int | None:
        return self.child.process.pid if self.child is not None else self.adopted_pid


class Supervisor:
    """Every peer of one cluster as `up` runs them: place, start, restart, watch, stop."""

    def __init__(
        self,
        peers: tuple[PeerConfig, ...] | list[PeerConfig],
        config_path: Path,
        logs_dir: Path,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.peers = [SupervisedPeer(peer=peer) for peer in peers]
        self._config_path = config_path
        self._logs_dir = logs_dir
        self._tls_context = tls_context

    @property
    def children(self) -> list[PeerChild]:
        """The processes up started that are (or were, until seen to exit) running."""
        return [entry.child for entry in self.peers if entry.child is not None]

    @property
    def adopted(self) -> list[SupervisedPeer]:
        return [entry for entry in self.peers if entry.adopted]

    def start(self) -> None:
        """Adopt the peers another process runs and start the others; raises CliError, before
        starting anything, when a peer's port is taken by something that is not that peer."""
        places = [(entry, find_place(entry.peer)) for entry in self.peers]
        for entry, place in places:
            if place.holder is None and place.listen_errno is not None:
                raise CliError(cannot_listen_text(entry.peer, place.listen_errno))
        for entry, place in places:
            if place.holder is not None:
                entry.adopted, entry.adopted_pid = True, place.holder.pid
            else:
                self._start(entry)

    def run(self, stop: StopSignals) -> int:
        """Supervise until a stop signal; then exit code 0."""
        with health_client(self._tls_context) as client:
            while not stop.count:
                now = time.monotonic()
                for entry in self.peers:
                    self._step(entry, now, client)
                time.sleep(SUPERVISE_INTERVAL_S)
        return EXIT_OK

    def stop(self, stop: StopSignals) -> None:
        """Stop every process up started; name the adopted peers it leaves running."""
        adopted = self.adopted
        stopped = "every peer up started" if adopted else "every peer"
        stop_peers(self.children, stop, stopped=stopped)
        for entry in adopted:
            pid = "" if entry.adopted_pid is None else f" (pid {entry.adopted_pid})"
            print(
                f"left running: peer {entry.peer.id}{pid}, which up did not start;"
                f" stop it with {'kill ' + str(entry.adopted_pid) if pid else 'its own command'}",
                flush=True,
            )

    def _step(self, entry: SupervisedPeer, now: float, client: httpx.Client) -> None:
        if entry.child is not None:
            self._watch_child(entry, entry.child, now, client)
        elif entry.adopted:
            self._watch_adopted(entry, now)
        elif entry.restart_at_s is not None and now >= entry.restart_at_s:
            self._restart(entry, now)

    def _watch_child(
        self, entry: SupervisedPeer, child: PeerChild, now: float, client: httpx.Client
    ) -> None:
        code = child.process.poll()
        if code is None:
            if not entry.ready_reported and self._ready(child, client):
                entry.ready_reported = True
                print(
                    f"peer {entry.peer.id} is ready again,"
                    f" {now - child.started_at_s:.1f} s after restart {entry.restarts}",
                    flush=True,
                )
            return
        ran_for_s = now - child.started_at_s
        delay_s = entry.backoff.delay_s(ran_for_s)
        entry.child, entry.restart_at_s = None, now + delay_s
        print_error(
            f"peer {entry.peer.id} (pid {child.process.pid}) ended after {ran_for_s:.1f} s"
            f" ({describe_exit(code)}); up restarts it in {delay_s:.1f} s; see"
            f" {child.log_path}{error_line_suffix(child.log_path)}"
        )

    def _ready(self, child: PeerChild, client: httpx.Client) -> bool:
        """This very process serves the peer (holds its data directory) and is ready."""
        holder = lock_holder(peer_pid_path(child.peer.data_dir))
        if holder is None or holder.pid != child.process.pid:
            return False
        return answers_ready(client, peer_url(child.peer, self._tls_context))

    def _watch_adopted(self, entry: SupervisedPeer, now: float) -> None:
        if lock_holder(peer_pid_path(entry.peer.data_dir)) is not None:
            return
        delay_s = entry.backoff.delay_s(0.0)
        entry.adopted, entry.restart_at_s = False, now + delay_s
        pid = "" if entry.adopted_pid is None else f" (pid {entry.adopted_pid})"
        print_error(
            f"peer {entry.peer.id}{pid}, run by another process, has stopped;"
            f" up starts it in {delay_s:.1f} s"
        )

    def _restart(self, entry: SupervisedPeer, now: float) -> None:
        place = find_place(entry.peer)
        if place.holder is not None:
            entry.adopted, entry.adopted_pid, entry.restart_at_s = True, place.holder.pid, None
            pid = "" if place.holder.pid is None else f" (pid {place.holder.pid})"
            print(
                f"peer {entry.peer.id} runs in another process{pid}: up watches it, starts it"
                " again if it ends, and leaves it running at Ctrl-C",
                flush=True,
            )
            return
        if place.listen_errno is not None:
            delay_s = entry.backoff.delay_s(0.0)
            entry.restart_at_s = now + delay_s
            print_error(
                f"{cannot_listen_text(entry.peer, place.listen_errno)}; up tries again in"
                f" {delay_s:.1f} s"
            )
            return
        entry.restarts += 1
        self._start(entry)
        entry.ready_reported = False
        assert entry.child is not None
        print(
            f"peer {entry.peer.id} restarted (restart {entry.restarts}):"
            f" pid {entry.child.process.pid}",
            flush=True,
        )

    def _start(self, entry: SupervisedPeer) -> None:
        entry.child = start_peer(entry.peer, self._config_path, self._logs_dir)
        entry.restart_at_s = None
