"""Listening ports for the servers the tests start.

Ports are taken below the kernel's ephemeral range (32768-60999 on Linux): a port the kernel
hands out for ``bind(0)`` can be handed out again, before the server binds it, as the source
port of any outgoing connection. Ports below that range are only taken by explicit binds.
Each call returns a port not returned before in this process.
"""

from __future__ import annotations

import itertools
import os
import socket

_FIRST = 20_000
_SPAN = 12_000
_next = itertools.count((os.getpid() * 997 + 6_000) % _SPAN)


def free_port() -> int:
    for _ in range(_SPAN):
        port = _FIRST + next(_next) % _SPAN
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_FIRST}..{_FIRST + _SPAN}")
