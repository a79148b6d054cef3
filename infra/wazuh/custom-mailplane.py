#!/usr/bin/env python3
"""Wazuh -> mailplane: turn a Wazuh alert about a PMG node into a node.down / node.up CloudEvent and publish it.

Wazuh's integratord runs ``custom-mailplane <alert_file> <api_key> <hook_url> [<options_file>]`` for every alert
that matches the ``<integration>`` block (see README.md):

- ``alert_file``: the alert as JSON;
- ``api_key``: the RabbitMQ password of the publisher, or ``env:NAME`` / ``file:/path`` (recommended: argv is visible
  to other local users, a file or the environment is not);
- ``hook_url``: ``amqp://monitoring@rabbitmq.example:5672/mailplane`` (user = the validated publisher; the password
  never goes into the URL);
- ``options_file`` (optional JSON): ``down_rules``/``up_rules`` (rule ids), ``down_groups``/``up_groups`` (rule groups),
  ``nodes`` (agent name -> node), ``observer``, ``exchange``, ``ca_file`` (amqps: the broker's CA; the host name
  of ``hook_url`` is checked against its certificate).

The sequence is the alert's timestamp in milliseconds, the same clock the mailplane prober uses (its sequences are
``max(last + 1, now in ms)``), so events of both observers order correctly. Alerts that match no rule are ignored
(exit 0). Exit codes: 0 published or ignored, 1 publishing failed, 2 bad input. Never prints the password.
Needs ``pika`` in the Python that runs it (``/var/ossec/framework/python/bin/pip3 install pika``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import ssl
import sys
import time
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULTS: dict[str, Any] = {
    "down_rules": ["100910"],
    "up_rules": ["100911"],
    "down_groups": ["mailplane_node_down"],
    "up_groups": ["mailplane_node_up"],
    "nodes": {},
    "observer": "wazuh",
    "exchange": "events",
    "ca_file": "",  # amqps: the CA that signed the broker's certificate; "" = the system trust store
}
SOURCE = "urn:mailplane:monitoring"
UTC = dt.timezone.utc  # noqa: UP017 (Wazuh 4 runs integrations with Python 3.10: no datetime.UTC)
NODE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


class BadInput(Exception):
    """The alert, the options or the arguments cannot be used."""


def event_type(alert: dict[str, Any], options: dict[str, Any]) -> str | None:
    """node.down / node.up for an alert that matches the configured rules or groups, else None."""
    rule = alert.get("rule") or {}
    rule_id, groups = str(rule.get("id", "")), set(rule.get("groups") or [])
    for kind in ("down", "up"):
        if rule_id in {str(r) for r in options[f"{kind}_rules"]} or groups & set(options[f"{kind}_groups"]):
            return f"node.{kind}"
    return None


def alert_time(alert: dict[str, Any]) -> dt.datetime:
    """The alert's timestamp (Wazuh writes ``2026-11-27T09:31:02.123+0000``); now if it has none."""
    raw = str(alert.get("timestamp", ""))
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return dt.datetime.strptime(raw, fmt)
        except ValueError:
            continue
    return dt.datetime.now(UTC)


def node_of(alert: dict[str, Any], options: dict[str, Any]) -> str:
    """``data.mailplane_node`` if the decoder set it, else the agent name mapped through ``nodes`` (or as it is)."""
    data = alert.get("data") or {}
    agent = str((alert.get("agent") or {}).get("name", ""))
    node = str(data.get("mailplane_node") or options["nodes"].get(agent, agent)).strip().lower()
    if not NODE_RE.match(node) or len(node) > 253:
        raise BadInput(f"alert names no usable node (agent {agent[:60]!r})")
    return node


def to_event(alert: dict[str, Any], options: dict[str, Any]) -> dict[str, Any] | None:
    """The CloudEvent for ``alert``, or None when the alert is not about a node going down or up."""
    etype = event_type(alert, options)
    if etype is None:
        return None
    node = node_of(alert, options)
    when = alert_time(alert).astimezone(UTC)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sequence = int(when.timestamp() * 1000)
    alert_id = re.sub(r"[^A-Za-z0-9._-]", "-", str(alert.get("id", sequence)))[:80]
    data: dict[str, Any] = {
        "node": node,
        "observer": options["observer"],
        "observed_at": stamp,
        "sequence": sequence,
    }
    description = str((alert.get("rule") or {}).get("description", ""))
    if description:
        data["reason"] = description[:200]
    return {
        "specversion": "1.0",
        "id": f"wazuh-{alert_id}-{etype}",
        "source": SOURCE,
        "type": etype,
        "time": stamp,
        "subject": node,
        "datacontenttype": "application/json",
        "dataschema": f"https://mailplane.invalid/schemas/{etype}.json",
        "data": data,
    }


def secret(api_key: str) -> str:
    """The password: ``env:NAME``, ``file:/path`` or the value itself."""
    if api_key.startswith("env:"):
        value = os.environ.get(api_key[4:])
        if value is None:
            raise BadInput(f"environment variable {api_key[4:]} is not set")
        return value
    if api_key.startswith("file:"):
        try:
            with open(api_key[5:], encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise BadInput(f"cannot read {api_key[5:]}: {exc.strerror}") from None
    return api_key


def publish(event: dict[str, Any], hook_url: str, password: str, exchange: str, ca_file: str = "") -> None:
    """Publish with confirms, mandatory routing and the validated user_id; amqps verifies the broker's certificate
    (``ca_file`` or the system trust store) and host name. mailplane's own clients build their connections in
    functions/runtime/amqp.py; this script runs with Wazuh's Python, without mailplane installed."""
    import pika  # imported here so the mapping can be tested without it

    url = urlsplit(hook_url)
    if url.scheme not in ("amqp", "amqps") or not url.username or not url.hostname:
        raise BadInput("hook_url must be amqp[s]://USER@HOST[:PORT]/VHOST")
    user = unquote(url.username)
    params = pika.ConnectionParameters(
        host=url.hostname,
        port=url.port or (5671 if url.scheme == "amqps" else 5672),
        virtual_host=unquote(url.path[1:]) or "/",
        credentials=pika.PlainCredentials(user, password),
        ssl_options=pika.SSLOptions(ssl.create_default_context(cafile=ca_file or None), server_hostname=url.hostname)
        if url.scheme == "amqps"
        else None,
        socket_timeout=10,
        blocked_connection_timeout=30,
        connection_attempts=3,
        retry_delay=2,
    )
    props = pika.BasicProperties(
        content_type="application/cloudevents+json",
        delivery_mode=2,
        message_id=event["id"],
        type=event["type"],
        app_id=SOURCE,
        timestamp=int(time.time()),
        user_id=user,
        headers={"ce-subject": event["subject"]},
    )
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        body = json.dumps(event, sort_keys=True).encode()
        ch.basic_publish(exchange, event["type"], body, props, mandatory=True)
    finally:
        conn.close()


def load_options(path: str | None) -> dict[str, Any]:
    options = dict(DEFAULTS)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                given = json.load(f)
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read options file {path}: {exc}") from None
        unknown = set(given) - set(DEFAULTS)
        if unknown:
            raise BadInput(f"unknown options {sorted(unknown)}")
        options.update(given)
    return options


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print("usage: custom-mailplane <alert_file> <api_key> <hook_url> [<options_file>]", file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            alert = json.load(f)
        options = load_options(argv[4] if len(argv) > 4 else None)
        event = to_event(alert, options)
        if event is None:
            return 0
        publish(event, argv[3], secret(argv[2]), options["exchange"], options["ca_file"])
    except (BadInput, OSError, ValueError) as exc:
        print(f"custom-mailplane: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # pika errors: report the type only (messages may echo connection details)
        print(f"custom-mailplane: publishing failed: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"custom-mailplane: published {event['type']} {event['subject']} sequence {event['data']['sequence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
