"""One guest connection to the package cache: QEMU's `guestfwd=...-cmd:` runs this per connection.

QEMU hands the guest's TCP connection over as fds 0, 1 and 2 (all one socket), so nothing may ever
be written to stderr: it would reach the guest. Standard library only; run with `python3 -I -S`.
"""

import contextlib
import selectors
import socket
import sys

IDLE_TIMEOUT_S = 300
CHUNK = 1 << 16


def relay(port: int) -> None:
    guest = socket.socket(fileno=0)
    upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
    upstream.settimeout(None)
    peers = {guest: upstream, upstream: guest}
    open_reads = {guest, upstream}
    selector = selectors.DefaultSelector()
    for side in open_reads:
        selector.register(side, selectors.EVENT_READ)
    while open_reads:
        ready = selector.select(timeout=IDLE_TIMEOUT_S)
        if not ready:
            return
        for key, _ in ready:
            side = guest if key.fileobj is guest else upstream
            data = side.recv(CHUNK)
            if data:
                peers[side].sendall(data)
                continue
            # One side finished sending: pass the half-close on and keep the other direction open.
            selector.unregister(side)
            open_reads.discard(side)
            with contextlib.suppress(OSError):
                peers[side].shutdown(socket.SHUT_WR)


if __name__ == "__main__":
    with contextlib.suppress(Exception):
        relay(int(sys.argv[1]))
