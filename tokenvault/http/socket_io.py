"""Direct socket I/O beneath trio's SocketStream, for the two hot steps of an HTTP exchange.

Rules kept here:
- only a plain trio.SocketStream whose trio socket carries its non-blocking stdlib socket
  (trio's ``_sock``) has a raw socket; anything else (TLS, in-memory streams, a trio without
  that attribute) gets None from raw_socket, and callers use the stream's own methods;
- send_nowait writes what the socket takes at once, never waits and never raises
  BlockingIOError: a caller sends the rest through the stream, under its deadline. A send
  that the socket takes whole thus costs one syscall, no deadline and no scheduling round;
- receive_when_readable waits for the socket to be readable before its one read (when data
  is not there yet, a read first costs a failed syscall and an exception). The wait is a trio
  checkpoint, cancellable like any; a spurious wakeup waits again;
- errors are the socket's OSErrors (a reset, a broken pipe), not trio's stream errors: callers
  treat any OSError as the peer going away, as they do for the stream's.
"""

from __future__ import annotations

import socket

import trio

__all__ = ["raw_socket", "receive_when_readable", "send_nowait"]


def raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking socket beneath a plain SocketStream; None for any other stream."""
    if type(stream) is not trio.SocketStream:
        return None
    raw = getattr(stream.socket, "_sock", None)
    if isinstance(raw, socket.socket) and raw.gettimeout() == 0.0:
        return raw
    return None


def send_nowait(raw: socket.socket, data: bytes) -> int:
    """Send what the socket takes now; how many bytes (0 if none)."""
    try:
        return raw.send(data)
    except BlockingIOError:
        return 0


async def receive_when_readable(raw: socket.socket, bytes_max: int) -> bytes:
    """Wait until ``raw`` is readable, then read at most ``bytes_max`` (b"" at EOF)."""
    while True:
        await trio.lowlevel.wait_readable(raw)
        try:
            return raw.recv(bytes_max)
        except BlockingIOError:
            continue  # a spurious wakeup
