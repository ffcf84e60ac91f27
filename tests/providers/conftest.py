"""Setup for the provider tests: nothing may leave loopback.

* litellm downloads its model price map from GitHub when it is imported, unless told to use the copy
  it ships. Any test module may be the first to import litellm (directly or through
  ``providers.litellm``), so the switch is set here, for the whole session, before any of them is
  collected.
* Every test runs with a guard on ``socket.connect``: a connection to anything but a loopback
  address is refused and fails the test, naming the address (so an SDK that starts phoning home is
  caught here, not by a firewall in CI).
"""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    outside: list[object] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            outside.append(address)
            raise ConnectionRefusedError(f"tests/providers: connection outside loopback refused: {address}")

    def guarded_connect(self, address):
        check(self, address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        check(self, address)
        return connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield
    assert not outside, f"the test tried to connect outside loopback: {outside}"
