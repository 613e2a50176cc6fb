"""Free TCP ports for tests that must name a port before a server binds it.

Ports come from below the kernel's ephemeral range (``ip_local_port_range``, 32768-60999
by default on Linux), so the outgoing connections of a busy suite, which take ephemeral
ports, cannot grab one between the probe and the bind; a run of consecutive ports is
probed whole (``--serve`` puts replica ``i`` on ``base + i``).
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20_000, 32_000  # below the ephemeral range


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def consecutive_free_ports(count: int) -> int:
    """A base port such that base..base+count-1 are all free right now."""
    high = min(HIGH, _ephemeral_low()) - count
    chooser = random.Random()
    for _ in range(500):
        base = chooser.randrange(LOW, high)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError("no run of free ports found below the ephemeral range")
