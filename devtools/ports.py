"""Loopback ports for the servers the tests start."""

import socket


def free_port() -> int:
    """A loopback port nobody listens on right now (a race is possible but harmless on a test machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
