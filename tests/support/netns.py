"""A machine of its own for a test's process: a Linux network namespace joined to this one by
a veth pair, and a TCP relay that lets it reach a server listening on 127.0.0.1 only (as
PostgreSQL does here) through the veth address, as another machine would over the network.

Needs root (or CAP_NET_ADMIN) and the ``ip`` command; :func:`netns_unavailable` says why not.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import threading


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why this process cannot make a network namespace with a veth pair; None when it can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    try:
        with NetworkNamespace():
            return None
    except subprocess.CalledProcessError as exc:
        return f"`{' '.join(exc.cmd)}` failed: {(exc.stderr or '').strip() or exc.returncode}"


class NetworkNamespace:
    """A network namespace whose only way out is a veth pair: ``host_ip`` on this side,
    ``inside_ip`` inside; its loopback is its own (127.0.0.1 there is not 127.0.0.1 here).

    Use as a context manager; :meth:`command` prefixes a command line to run inside.
    """

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"hpo-{tag}"
        self._host_link, self._inside_link = f"hpoh{tag}", f"hpon{tag}"
        subnet = secrets.randbelow(64) * 4  # a random /30 in 10.213.x.0/24, so parallel tests do not collide
        prefix = f"10.213.{secrets.randbelow(256)}"
        self.host_ip, self.inside_ip = f"{prefix}.{subnet + 1}", f"{prefix}.{subnet + 2}"

    def __enter__(self) -> NetworkNamespace:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self._host_link, "type", "veth", "peer", "name", self._inside_link)
            _ip("link", "set", self._inside_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self._host_link)
            _ip("link", "set", self._host_link, "up")
            _ip("netns", "exec", self.name, "ip", "addr", "add", f"{self.inside_ip}/30", "dev", self._inside_link)
            _ip("netns", "exec", self.name, "ip", "link", "set", self._inside_link, "up")
            _ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self._host_link)  # takes its peer with it
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", self.name)

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]


class TcpRelay:
    """Accept connections on ``listen_host`` (a free port: ``port``) and pipe each to ``target``.

    Use as a context manager; connections still open when it ends are closed.
    """

    def __init__(self, listen_host: str, target: tuple[str, int]):
        self.target = target
        self._server = socket.create_server((listen_host, 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> TcpRelay:
        threading.Thread(target=self._accept, name="tcp-relay", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._server.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), name="tcp-relay-pipe", daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side closes, then close the other direction too."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
