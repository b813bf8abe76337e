"""The port check that `ethml devnet` and `ethml serve` run before starting anything."""

from __future__ import annotations

import socket

import pytest

from ethml.devnet import check_port_free
from ethml.errors import ChainError


def _time_wait_port() -> int:
    """A port whose server closed first after a connection: the server side sits in TIME_WAIT, as the
    port of a process killed with -9 does, and nothing listens on it any more."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = int(server.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the side that closes first keeps the TIME_WAIT
    server.close()
    client.close()
    return port


def test_a_port_left_in_time_wait_is_free() -> None:
    port = _time_wait_port()
    plain = socket.socket()
    with pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old probe did: refused for a minute
    plain.close()
    check_port_free("127.0.0.1", port)


def test_a_listening_port_is_refused() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        with pytest.raises(ChainError, match=f"cannot start the devnet on 127.0.0.1:{port}"):
            check_port_free("127.0.0.1", port)
