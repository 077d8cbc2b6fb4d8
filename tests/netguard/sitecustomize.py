"""Loaded by every Python process the tests start (PYTHONPATH) and by the test process itself (conftest):
any connection beyond this machine (loopback and Unix sockets stay open for DDP/gloo) raises, so a test that would
reach the network fails loudly instead of passing on a machine that happens to be online."""

import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


class NetworkBlocked(OSError):
    pass


def _is_local(address) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX path
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: not local


def _guard(address) -> None:
    if not _is_local(address):
        raise NetworkBlocked(f"geor1 tests block network access; attempted connection to {address!r}")


def _guarded_connect(self, address):
    _guard(address)
    return _connect(self, address)


def _guarded_connect_ex(self, address):
    _guard(address)
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
_getaddrinfo = socket.getaddrinfo


def _guarded_getaddrinfo(host, *args, **kwargs):
    if host is not None and not _is_local((host if isinstance(host, str) else host.decode(), 0)):
        raise NetworkBlocked(f"geor1 tests block network access; attempted DNS lookup of {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _guarded_getaddrinfo
