"""supervisor (the part of `tokenvault up` that keeps peers running), without processes: the
restart delays, how a peer's place is read, and how an ended process is described."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from tokenvault.cli.peer_processes import describe_exit, error_line_suffix
from tokenvault.cli.supervisor import (
    RESTART_DELAY_FIRST_S,
    RESTART_DELAY_MAX_S,
    RESTART_RESET_AFTER_S,
    RestartBackoff,
    cannot_listen_text,
    find_place,
)
from tokenvault.config import PeerConfig
from tokenvault.pid_lock import acquire_pid_lock, peer_pid_path


def test_restart_delays_double_up_to_the_maximum_and_reset_after_a_long_run() -> None:
    backoff = RestartBackoff()
    quick = [backoff.delay_s(ran_for_s=1.0) for _ in range(9)]
    assert quick == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert quick[0] == RESTART_DELAY_FIRST_S and max(quick) == RESTART_DELAY_MAX_S
    assert backoff.delay_s(ran_for_s=RESTART_RESET_AFTER_S) == RESTART_DELAY_FIRST_S
    assert backoff.delay_s(ran_for_s=0.0) == 2 * RESTART_DELAY_FIRST_S


def test_a_peer_place_is_free_held_or_taken(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    peer = PeerConfig(id="n1", host="127.0.0.1", port=port, data_dir=tmp_path)
    assert (find_place(peer).holder, find_place(peer).listen_errno) == (None, None)
    with socket.create_server(("127.0.0.1", port)):
        taken = find_place(peer)
        assert (taken.holder, taken.listen_errno) == (None, errno.EADDRINUSE)
        assert cannot_listen_text(peer, errno.EADDRINUSE) == (
            f"peer n1: cannot listen on 127.0.0.1:{port}: Address already in use; the program"
            f" there is not this cluster's n1 (no process holds {tmp_path})"
        )
        lock = acquire_pid_lock(peer_pid_path(tmp_path))  # held: the port does not matter
        try:
            held = find_place(peer)
            assert held.holder is not None and held.listen_errno is None
        finally:
            lock.release()
    elsewhere = PeerConfig(id="n2", host="192.0.2.1", port=port, data_dir=tmp_path / "n2")
    assert find_place(elsewhere).listen_errno == errno.EADDRNOTAVAIL  # not a local address
    assert cannot_listen_text(elsewhere, errno.EADDRNOTAVAIL) == (
        f"peer n2: cannot listen on 192.0.2.1:{port}: Cannot assign requested address"
    )


def test_an_ended_process_is_described_by_code_signal_and_its_last_error_line(
    tmp_path: Path,
) -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "signal SIGKILL"
    log = tmp_path / "n1.log"
    log.write_text('{"event":"peer_start"}\ntokenvault: peer n1: cannot listen on x: y\n\n')
    assert error_line_suffix(log) == ": tokenvault: peer n1: cannot listen on x: y"
    log.write_text('{"event":"peer_stop"}\n')
    assert error_line_suffix(log) == ""
    assert error_line_suffix(tmp_path / "missing.log") == ""
