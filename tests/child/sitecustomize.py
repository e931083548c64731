"""Loaded at start-up by the tests' child processes (PYTHONPATH=tests/child; `tests.conftest.child_env`).

DIA2_TEST_NETWORK_LOG=FILE: a network that refuses every connection and name lookup beyond this
machine, and appends each attempt to FILE (the machine has no route to the Hub anyway; this also
records what a command tried). DIA2_TEST_BLOCK_IMPORTS=a,b: modules that cannot be imported, so a
command that reaches a model loader fails there instead of refusing its input first.
"""

import os
import socket
import sys

_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _refuse(log: str, what: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(what + "\n")
    raise OSError(101, f"Network is unreachable ({what} blocked by the test)")


def _block_network(log: str) -> None:
    lookup, connect, connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if (host.decode() if isinstance(host, bytes) else host) not in _LOCAL:
            _refuse(log, f"getaddrinfo {host}")
        return lookup(host, *args, **kwargs)

    def remote(sock: socket.socket, address) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL

    def guarded_connect(sock, address):
        if remote(sock, address):
            _refuse(log, f"connect {address}")
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        if remote(sock, address):
            _refuse(log, f"connect {address}")
        return connect_ex(sock, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex


if os.environ.get("DIA2_TEST_NETWORK_LOG"):
    _block_network(os.environ["DIA2_TEST_NETWORK_LOG"])
for _name in filter(None, os.environ.get("DIA2_TEST_BLOCK_IMPORTS", "").split(",")):
    sys.modules[_name] = None
