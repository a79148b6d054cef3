"""The one tenacity policy: bounded, jittered, transient errors only (seconds inside one delivery)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from tenacity import retry, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from functions._core.platform.errors import DnsServfail, MailcowUnavailable, PmgUnavailable, StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

# Faults where repeating the same call is safe. DnsConflict and NotPropagated are transient too, but they
# need a fresh read and plan (the whole delivery again), so they go to the broker's retry ladder instead.
IN_PLACE = (MailcowUnavailable, PmgUnavailable, DnsServfail, StoreUnavailable)

transient = retry(
    retry=retry_if_exception_type(IN_PLACE),
    stop=stop_after_attempt(3) | stop_after_delay(20),
    wait=wait_exponential_jitter(multiplier=0.2, max=5),
    reraise=True,
)


def retried(fn: Callable[P, T]) -> Callable[P, T]:
    """Wrap ``fn`` in the shared transient-only retry policy."""
    return transient(fn)
