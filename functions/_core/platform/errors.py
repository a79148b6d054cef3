"""One error tree for all of mailplane; its type decides whether a failure is retried.

AutomationError
├── TransientError            retried (tenacity for seconds, then the broker's retry ladder)
│   ├── MailcowUnavailable    5xx, timeouts, connection errors
│   ├── PmgUnavailable        595/596, timeouts, lock timeouts, "not the master node"
│   ├── DnsServfail           SERVFAIL, timeouts
│   ├── DnsConflict           NXRRSET/YXRRSET/YXDOMAIN/NXDOMAIN: state changed; re-read and re-plan
│   ├── NotPropagated         an authoritative server does not serve the planned data yet
│   ├── StoreUnavailable      object store 5xx, throttling, timeouts
│   │   └── StoreUnreadable   an object that exists (ETag known) but whose body cannot be read back
│   └── CaUnavailable         the ACME CA failed, refused or timed out (a CA failure is never a silent skip)
└── PermanentError            parked with the reason, never retried
    ├── ConfigError           missing or unknown setting, bad secret reference
    ├── EventInvalid          schema-invalid event, bad or hostile domain name, refused zone
    ├── NotAuthorized         event from a publisher not allowed to send it
    ├── PoisonError           a delivery that killed its worker again and again (parked alone)
    ├── OwnershipConflict     a managed name holds data we do not own
    ├── MailcowRejected       Mailcow said no (danger entries, 4xx, false-positive success)
    ├── PmgRejected           PMG said no (400 field errors, 401/403, other 500s)
    ├── DnsRefused            REFUSED, NOTAUTH, NOTZONE, FORMERR, bad TSIG
    ├── PreconditionFailed    a conditional object-store write lost (raised to callers that handle it)
    └── StoreRejected         the object store refused the request or lacks conditional writes

Messages never contain secrets: adapters pass only status codes, message keys and names.
"""

from __future__ import annotations


class AutomationError(Exception):
    """Base of every error mailplane raises on purpose."""

    retryable = False

    @property
    def reason(self) -> str:
        """A one-line reason for logs, parked messages and outbound events."""
        return f"{type(self).__name__}: {self}"


class TransientError(AutomationError):
    """A fault that may go away: retry later."""

    retryable = True


class PermanentError(AutomationError):
    """A fault that will not go away by retrying: park with the reason."""


class ConfigError(PermanentError):
    """A setting is missing, unknown or malformed."""


class EventInvalid(PermanentError):
    """The event is malformed, names a bad domain, or asks for something refused by policy."""


class NotAuthorized(PermanentError):
    """The event's validated publisher may not send this event type."""


class PoisonError(PermanentError):
    """The delivery killed the worker process running it, again and again: parked so that it cannot take others
    down with it (functions/runtime/poison.py)."""


class OwnershipConflict(PermanentError):
    """A managed name already holds data mailplane does not own."""


class MailcowUnavailable(TransientError):
    """Mailcow did not answer or answered 5xx."""


class MailcowRejected(PermanentError):
    """Mailcow refused the request (danger entries, 4xx, missing success key)."""


class PmgUnavailable(TransientError):
    """PMG (or its cluster master) did not answer."""


class PmgRejected(PermanentError):
    """PMG refused the request."""


class DnsServfail(TransientError):
    """The DNS server failed or timed out."""


class DnsConflict(TransientError):
    """A compare-and-set prerequisite failed: the zone changed since it was read."""


class NotPropagated(TransientError):
    """An authoritative server does not serve the planned data yet."""


class DnsRefused(PermanentError):
    """The DNS server refused the update (policy, zone, key)."""


class StoreUnavailable(TransientError):
    """The object store did not answer or throttled."""


class StoreUnreadable(StoreUnavailable):
    """The object exists (its ETag and time are known) but its body could not be read (e.g. a torn object that
    LocalStack stored from an aborted PUT: it announces more bytes than it sends). Transient like any read error,
    so retried in place; a caller that can do without the body (the ledger: take the record over) may catch it."""

    def __init__(self, message: str, *, etag: str, modified: float | None = None) -> None:
        super().__init__(message)
        self.etag = etag
        self.modified = modified  # POSIX time of the object's last write, when the store says


class CaUnavailable(TransientError):
    """The ACME CA did not issue (unreachable, 5xx, an order or challenge it marked invalid, a timeout): retried,
    since a CA outage or a challenge record not yet visible to the CA goes away; the reason names the step."""


class StoreRejected(PermanentError):
    """The object store refused the request."""


class PreconditionFailed(PermanentError):
    """A conditional write lost: the object exists, or changed since it was read."""
