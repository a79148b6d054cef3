"""SMTP front-end of one simulated PMG node: postfix's answers from that node's EFFECTIVE maps (postfix.py).

Enough of SMTP for a sender's probe: the banner, EHLO/HELO, STARTTLS (presenting the node's /etc/pmg/pmg-tls.pem,
``PmgModel.smtp_certificate``: the stock self-signed one or the custom one uploaded through the API, read at every
handshake), MAIL, RCPT (answered by ``PmgModel.rcpt`` for the client's address), RSET, NOOP, QUIT; DATA is refused (no
recipient is ever accepted for delivery here). A node that
is down closes every connection before the banner. Binds loopback addresses only.
"""

from __future__ import annotations

import ipaddress
import re
import socketserver
import ssl
import tempfile
import threading
from pathlib import Path

from sim.pmg.certs import tls_files
from sim.pmg.model import PmgModel

_RCPT = re.compile(r"^RCPT TO:\s*<([^<>\s]+@[^<>\s]+)>", re.IGNORECASE)
_MAIL = re.compile(r"^MAIL FROM:\s*<[^<>\s]*>", re.IGNORECASE)


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model: PmgModel, node: str) -> None:
        self.model, self.node = model, node
        self.tls_dir = Path(tempfile.mkdtemp(prefix=f"pmg-tls-{node}-"))
        super().__init__(address, _Session)

    def tls_context(self) -> ssl.SSLContext:
        """A server context with the certificate the node presents now."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        path = tls_files(self.model.smtp_certificate(self.node), self.tls_dir)
        try:
            ctx.load_cert_chain(path)
        finally:
            path.unlink()
        return ctx


class _Session(socketserver.StreamRequestHandler):
    server: SmtpServer
    timeout = 30

    def _send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        model, node = self.server.model, self.server.node
        if not model.nodes[node].up:
            return  # powered off: no banner
        client = str(self.client_address[0])
        self._send(f"220 {node} ESMTP Proxmox")
        mail, tls = False, False
        while raw := self.rfile.readline():
            line = raw.decode("latin-1").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                starttls = "" if tls else "250-STARTTLS\r\n"
                self._send(
                    f"250-{node}\r\n250-PIPELINING\r\n{starttls}250 8BITMIME" if verb == "EHLO" else f"250 {node}"
                )
            elif line.upper() == "STARTTLS" and not tls:
                self._send("220 2.0.0 Ready to start TLS")
                try:
                    self._start_tls()
                except (ssl.SSLError, OSError):
                    return
                mail, tls = False, True
            elif verb == "MAIL" and _MAIL.match(line):
                mail = True
                self._send("250 2.1.0 Ok")
            elif verb == "RCPT":
                self._send(self._rcpt(line, mail, client))
            elif verb == "RSET":
                mail = False
                self._send("250 2.0.0 Ok")
            elif verb == "NOOP":
                self._send("250 2.0.0 Ok")
            elif verb == "QUIT":
                self._send("221 2.0.0 Bye")
                return
            elif verb == "DATA":
                self._send("554 5.5.1 Error: no valid recipients")
            else:
                self._send("502 5.5.2 Error: command not recognized")

    def _start_tls(self) -> None:
        self.wfile.flush()
        conn = self.server.tls_context().wrap_socket(self.connection, server_side=True)
        self.connection = conn
        self.rfile = conn.makefile("rb")
        self.wfile = conn.makefile("wb", buffering=0)  # type: ignore[assignment]

    def _rcpt(self, line: str, mail: bool, client: str) -> str:
        if not mail:
            return "503 5.5.1 Error: need MAIL command"
        m = _RCPT.match(line)
        if not m:
            return "501 5.1.3 Bad recipient address syntax"
        try:
            code, text = self.server.model.rcpt(self.server.node, client, m.group(1))
        except ConnectionRefusedError:
            return "421 4.3.2 Service shutting down"
        return f"{code} {text}"


def serve_smtp(model: PmgModel, node: str, host: str, port: int) -> SmtpServer:
    """Serve ``node``'s SMTP on host:port (loopback only) in a daemon thread; port 0 picks a free one.

    Raises:
        ValueError: ``host`` is not a loopback address.
        OSError: the port cannot be bound.
    """
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"simulators bind loopback only, not {host}")
    server = SmtpServer((host, port), model, node)
    threading.Thread(target=server.serve_forever, name=f"smtp-{node}", daemon=True).start()
    return server
