"""Write the ``aws:rmq`` Lambda batches in this folder from the envelope samples in ``events/``.

Usage: ``python events/aws-rmq/make.py`` (rewrite) or ``python events/aws-rmq/make.py --check`` (exit 1 if stale).
The shape follows reference/broker.md §13: records under ``"<queue>::<vhost>"``, string headers as ``{"bytes": [...]}``,
``data`` = base64 of the exact body the publisher sent (compact UTF-8 JSON of the sample).

``BATCHES`` (``<batch>.json``) carry valid samples from their allowed publishers. ``INVALID_BATCHES``
(``invalid/<batch>.json``) mix in records the Lambda must park: the event of an ``events/invalid/<case>.json``
(sample name ``invalid/<case>``), a publisher not allowed to send the type, and no ``userId`` at all.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EVENTS = HERE.parent
QUEUE = "q.work.0::mailplane"
ARN = "arn:aws:mq:eu-central-1:000000000000:broker:mailplane:b-3f1c2a9e-5d7b-4c1e-9a0f-6b2d8e4c7a15"
_BYTES = re.compile(r'"bytes": \[([0-9,\s]*)\]')
PUBLISHER = {"domain": "billing", "key": "scheduler", "node": "monitoring"}

# batch file -> the envelope samples it carries, in order (the second one arrives redelivered)
BATCHES: dict[str, tuple[str, ...]] = {
    "domain.created": ("domain.created", "domain.created.idn"),
}

# invalid/<batch> -> (sample, userId) records, in order; the expected verdict is noted per record
INVALID_BATCHES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "invalid/domain.created.mixed": (
        ("domain.created", "billing"),  # done
        ("invalid/domain-semicolon", "billing"),  # parked: EventInvalid (hostile domain name)
        ("domain.created.external", "monitoring"),  # parked: NotAuthorized (monitoring may not send domain.created)
        ("domain.created.delegate", None),  # parked: NotAuthorized (no validated user_id)
    ),
}


def body(sample: str) -> bytes:
    """The wire body of ``events/<sample>.json`` (for ``invalid/<case>``: its ``event``): compact UTF-8 JSON."""
    event = json.loads((EVENTS / f"{sample}.json").read_text(encoding="utf-8"))
    if sample.startswith("invalid/"):
        event = event["event"]
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def java_timestamp(rfc3339: str) -> str:
    """The locale string the event source mapping shows, e.g. ``Nov 27, 2026, 9:30:00 AM`` (UTC)."""
    t = datetime.fromisoformat(rfc3339)
    return f"{t:%b} {t.day}, {t.year}, {t.hour % 12 or 12}:{t:%M:%S} {t:%p}"


def allowed(sample: str) -> str:
    """The publisher allowed to send the sample's type (``PUBLISHER``)."""
    return PUBLISHER[json.loads(body(sample))["type"].split(".")[0]]


def record(sample: str, *, redelivered: bool, user: str | None) -> dict[str, Any]:
    """One record as the event source mapping delivers it; ``user`` is ``basicProperties.userId`` (None: unset)."""
    raw = body(sample)
    event = json.loads(raw)
    subject = event.get("subject")
    return {
        "basicProperties": {
            "contentType": "application/cloudevents+json",
            "contentEncoding": None,
            "headers": {"ce-subject": {"bytes": list(subject.encode("utf-8"))}} if isinstance(subject, str) else {},
            "deliveryMode": 2,
            "priority": None,
            "correlationId": None,
            "replyTo": None,
            "expiration": None,
            "messageId": event.get("id"),
            "timestamp": java_timestamp(event["time"]) if "time" in event else None,
            "type": event.get("type"),
            "userId": user,
            "appId": event.get("source"),
            "clusterId": None,
            "bodySize": len(raw),
        },
        "redelivered": redelivered,
        "data": base64.b64encode(raw).decode("ascii"),
    }


def render(batch: str) -> str:
    """The JSON text of ``events/aws-rmq/<batch>.json`` (``batch`` from BATCHES or INVALID_BATCHES)."""
    if batch in BATCHES:
        records = [record(s, redelivered=i > 0, user=allowed(s)) for i, s in enumerate(BATCHES[batch])]
    else:
        records = [record(s, redelivered=False, user=u) for s, u in INVALID_BATCHES[batch]]
    doc = {"eventSource": "aws:rmq", "eventSourceArn": ARN, "rmqMessagesByQueue": {QUEUE: records}}
    text = json.dumps(doc, indent=2)
    return _BYTES.sub(lambda m: '"bytes": [' + ", ".join(re.findall("[0-9]+", m.group(1))) + "]", text) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for batch in [*BATCHES, *INVALID_BATCHES]:
        path = HERE / f"{batch}.json"
        text = render(batch)
        if "--check" in argv:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(f"{batch}.json")
        else:
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for name in stale:
        print(f"stale: events/aws-rmq/{name} (run python events/aws-rmq/make.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
