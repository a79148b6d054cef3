"""SMTP front-end of one simulated PMG node: postfix's answers from that node's EFFECTIVE maps (postfix.py).

Enough of SMTP for a sender's probe: the banner, EHLO/HELO, MAIL, RCPT (answered by ``PmgModel.rcpt`` for the
client's address), RSET, NOOP, QUIT; DATA is refused (no recipient is ever accepted for delivery here). A node that
is down closes every connection before the banner. Binds loopback addresses only.
"""

from __future__ import annotations

import ipaddress
import re
import socketserver
import threading

from sim.pmg.model import PmgModel

_RCPT = re.compile(r"^RCPT TO:\s*<([^<>\s]+@[^<>\s]+)>", re.IGNORECASE)
_MAIL = re.compile(r"^MAIL FROM:\s*<[^<>\s]*>", re.IGNORECASE)


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model: PmgModel, node: str) -> None:
        self.model, self.node = model, node
        super().__init__(address, _Session)


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
        mail = False
        for raw in self.rfile:
            line = raw.decode("latin-1").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                self._send(f"250-{node}\r\n250-PIPELINING\r\n250 8BITMIME" if verb == "EHLO" else f"250 {node}")
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
