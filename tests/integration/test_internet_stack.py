"""The stack's "internet": the caching resolver real clients use, the CA's resolver, and the ACME CA (Pebble)."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
import uuid

import dns.query
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from tests.stackenv import REPO

pytestmark = pytest.mark.stack


def _client(*cmd: str) -> str:
    """Run a real client the way the stack's MTAs and verifiers run: through infra/local/with-resolver."""
    done = subprocess.run(
        [str(REPO / "infra/local/with-resolver"), *cmd], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout


def test_clients_resolve_the_stack_zones_through_the_caching_resolver(stack_env: dict[str, str]) -> None:
    assert _client("cat", "/etc/resolv.conf").split()[:2] == ["nameserver", stack_env["MAILPLANE_RESOLVER"]]
    # getaddrinfo, as every libc client resolves: the provider zone's loopback addresses
    got = _client("python3", "-c", "import socket; print(socket.gethostbyname('moo.faster.test'))")
    assert got.strip() == "127.0.2.1"
    # names the stack does not serve are not resolved (nothing leaves the machine)
    assert _client("dig", "+short", "+time=2", "+tries=1", "example.com", "A").strip() == ""


def test_resolver_caches_for_the_ttl(stack_env: dict[str, str]) -> None:
    """A change at the authoritative server is not seen through the resolver before the cached TTL ends."""
    keyring = dns.tsigkeyring.from_text(
        {stack_env["MAILPLANE_TSIG_NAME"]: (dns.tsig.HMAC_SHA256, stack_env["MAILPLANE_TSIG_SECRET"])}
    )
    name = f"cache-{uuid.uuid4().hex[:10]}"
    server, port = stack_env["MAILPLANE_DNS_SERVER"], int(stack_env["MAILPLANE_DNS_PORT"])

    def update(value: str) -> None:
        msg = dns.update.UpdateMessage("faster.test", keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
        msg.replace(name, 300, "TXT", f'"{value}"')
        assert dns.query.tcp(msg, server, port=port, timeout=5).rcode() == 0

    def through_resolver() -> str:
        return _client("dig", "+short", f"{name}.faster.test", "TXT").strip()

    update("one")
    try:
        assert through_resolver() == '"one"'
        update("two")
        assert through_resolver() == '"one"'  # cached for 300 s, as on the internet
        subprocess.run(
            [
                "unbound-control",
                "-c",
                f"{stack_env['MAILPLANE_STACK_DIR']}/unbound/resolver.conf",
                "flush_type",
                f"{name}.faster.test",
                "TXT",
            ],
            check=True,
            capture_output=True,
            timeout=10,
        )
        assert through_resolver() == '"two"'
    finally:
        msg = dns.update.UpdateMessage("faster.test", keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
        msg.delete(name)
        dns.query.tcp(msg, server, port=port, timeout=5)


def test_acme_directory_over_tls_and_its_issuing_root(stack_env: dict[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=stack_env["MAILPLANE_ACME_CA"])
    with urllib.request.urlopen(stack_env["MAILPLANE_ACME_DIRECTORY"], context=ctx, timeout=10) as resp:
        directory = json.load(resp)
    assert {"newAccount", "newNonce", "newOrder"} <= set(directory)
    root = subprocess.run(
        ["openssl", "x509", "-in", stack_env["MAILPLANE_ACME_ROOT"], "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Pebble Root CA" in root
