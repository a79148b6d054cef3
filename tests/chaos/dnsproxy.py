"""A tiny DNS proxy for the chaos suite: forwards UDP and TCP to the local BIND, or answers SERVFAIL in bursts.

The workers' settings point ``[dns] primary/port`` at the proxy, so every query, AXFR and UPDATE goes through it.
While ``servfail`` is on, every request gets a SERVFAIL answer; a TSIG-signed request (UPDATE, AXFR) gets a
SERVFAIL signed with the same key, as BIND would send it, so the client sees a server failure and not a bad
signature. Bytes are never rewritten otherwise (TSIG signatures stay valid).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Callable

import dns.exception
import dns.message
import dns.rcode
import dns.tsigkeyring

from functions._core.platform.config import Secret

BUFSIZE = 65535


class DnsProxy:
    """``start()`` binds 127.0.0.1 on a free port (``.port``); ``servfail`` toggles the fault; ``close()`` stops."""

    def __init__(self, upstream: tuple[str, int], tsig_name: str, tsig_algorithm: str, tsig_secret: Secret) -> None:
        self.upstream = upstream
        self._keyring = dns.tsigkeyring.from_text({tsig_name: (tsig_algorithm, tsig_secret.reveal())})
        self.servfail = False
        self.counts = {"forwarded": 0, "servfail": 0}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._udp, self._tcp = _bind_pair()
        self.port: int = self._udp.getsockname()[1]
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"DnsProxy(127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]}, servfail={self.servfail})"

    def start(self) -> DnsProxy:
        for target in (self._serve_udp, self._serve_tcp):
            t = threading.Thread(target=target, daemon=True, name=f"dnsproxy-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        self._stop.set()
        for sock in (self._udp, self._tcp):
            try:
                sock.close()
            except OSError:
                pass

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    # ------------------------------------------------------------------ SERVFAIL answers

    def servfail_for(self, wire: bytes) -> bytes | None:
        """A SERVFAIL answer to ``wire`` (signed when the request was), or None if the request does not parse."""
        try:
            query = dns.message.from_wire(wire, keyring=self._keyring)
        except (dns.exception.DNSException, ValueError):
            return None
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
        return response.to_wire()

    # ------------------------------------------------------------------ UDP

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                wire, client = self._udp.recvfrom(BUFSIZE)
            except OSError:
                return
            threading.Thread(target=self._udp_one, args=(wire, client), daemon=True).start()

    def _udp_one(self, wire: bytes, client: tuple[str, int]) -> None:
        if self.servfail:
            answer = self.servfail_for(wire)
            self._count("servfail")
        else:
            answer = self._udp_forward(wire)
            self._count("forwarded")
        if answer is not None:
            try:
                self._udp.sendto(answer, client)
            except OSError:
                pass

    def _udp_forward(self, wire: bytes) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            try:
                up.sendto(wire, self.upstream)
                answer, _ = up.recvfrom(BUFSIZE)
            except OSError:
                return None
        return answer

    # ------------------------------------------------------------------ TCP

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_one, args=(conn,), daemon=True).start()

    def _tcp_one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            if self.servfail:
                self._count("servfail")
                wire = _read_frame(conn)
                answer = self.servfail_for(wire) if wire else None
                if answer is not None:
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
                return
            self._count("forwarded")
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                return
            with up:
                _pipe(conn, up, self._stop.is_set)


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port of 127.0.0.1."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(64)
        return udp, tcp
    raise OSError("no free port for both UDP and TCP")


def _read_frame(conn: socket.socket) -> bytes | None:
    try:
        head = _read_exact(conn, 2)
        return _read_exact(conn, struct.unpack("!H", head)[0])
    except (OSError, EOFError):
        return None


def _read_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _pipe(a: socket.socket, b: socket.socket, stopped: Callable[[], bool]) -> None:
    """Copy bytes both ways until either side closes."""
    sel = selectors.DefaultSelector()
    peer = {a: b, b: a}
    for sock in (a, b):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    try:
        while not stopped():
            for key, _ in sel.select(timeout=1.0):
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = src.recv(BUFSIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                dst = peer[src]
                dst.setblocking(True)
                try:
                    dst.sendall(data)
                except OSError:
                    return
                finally:
                    dst.setblocking(False)
    finally:
        sel.close()
