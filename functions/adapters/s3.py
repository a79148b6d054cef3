"""S3Store: the ObjectStore on S3 (or LocalStack) with conditional writes, and the start-up capability probe.

Conditional puts use ``IfNoneMatch="*"`` / ``IfMatch=<etag>`` (reference/broker.md §10): 412, 409
ConditionalRequestConflict, and NoSuchKey under If-Match -> PreconditionFailed. 5xx, throttling, timeouts and
connection errors -> StoreUnavailable; any other client error -> StoreRejected.

Every put carries ``Content-MD5`` (and no aws-chunked streaming): a body cut off in transit, e.g. by a SIGKILL of
the worker mid-PUT, is refused by the store instead of stored torn (LocalStack stores what it got otherwise;
measured: without it a cut-off PUT left 50 of 209 bytes, with it nothing). That protects new objects only: an
*overwrite* cut off mid-body still breaks the existing object in LocalStack's ephemeral storage (it truncates the
object's data in place before reading the new body, and keeps the old size), so the chaos suite's buckets are
versioned (tests/chaos/harness.py). S3 and MinIO never expose an incomplete PUT.

Every request asks for ``Connection: keep-alive``, after signing (a hop-by-hop header outside the signature).
HTTP/1.1 keeps connections by default, but LocalStack's hypercorn gateway closes each one unless the client asks
explicitly (its workaround for localstack/localstack#6557): every call was a new TCP + TLS handshake, about half the
S3 client's CPU per call (2.3 -> 1.1 ms measured: BENCHMARKS.md, "S3 keep-alive"). S3 and MinIO ignore the header.

botocore's own retries are off (one attempt per call): retries happen in one place, the shared policy, and a
conditional put is never resent blindly: after an unanswered attempt it re-reads first, and if the object already
holds our body (ETag = MD5 of the body for a single-part put without SSE-KMS) that counts as success.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from functions._core.platform.config import StoreSettings
from functions._core.platform.errors import PreconditionFailed, StoreRejected, StoreUnavailable, StoreUnreadable
from functions._core.platform.retry import retried
from functions._core.platform.store import ObjectStore, StoredObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Store", "probe_conditional_writes"]

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE_PREFIX = "_probe/"
_THROTTLING = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
}
_UNSUPPORTED = {"NotImplemented"}
# Kept-alive connections: at least the worker's handler threads. Below that (botocore's default is 10) the extra
# connections are opened and dropped again per call (BENCHMARKS.md: 32 of them per 200 domain.created, 16 threads).
POOL_CONNECTIONS = 64


def make_client(settings: StoreSettings) -> S3Client:
    """A boto3 S3 client with explicit timeouts, no hidden retries, and path-style addressing for an endpoint;
    TLS verified against ``settings.ca_file`` (or the system trust store)."""
    config = botocore.config.Config(
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout,
        max_pool_connections=POOL_CONNECTIONS,
        retries={"mode": "standard", "total_max_attempts": 1},
        # no aws-chunked uploads with trailing checksums: each put sends its plain body with Content-MD5 instead
        request_checksum_calculation="when_required",
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    key_id, secret = settings.access_key_id.reveal(), settings.secret_access_key.reveal()
    if settings.endpoint_url.startswith("http://"):
        log.warning(
            "store: plain HTTP endpoint %s: credentials and objects cross the network in clear", settings.endpoint_url
        )
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url if settings.endpoint_url else None,
        region_name=settings.region,
        aws_access_key_id=key_id if key_id else None,  # "" = the default credential chain (role, env, ...)
        aws_secret_access_key=secret if secret else None,
        verify=settings.ca_file if settings.ca_file else None,  # None = verified against the system trust store
        config=config,
    )
    client.meta.events.register("before-send.s3", _keep_alive)
    return client


def _keep_alive(request: Any, **_: Any) -> None:
    """before-send: ask the server to keep the connection (see the module's docstring); None = send as usual."""
    request.headers["Connection"] = "keep-alive"


class S3Store:
    """ObjectStore on one S3 bucket."""

    def __init__(self, settings: StoreSettings, bucket: str, client: S3Client | None = None) -> None:
        self._client: S3Client = client if client is not None else make_client(settings)
        self._bucket = bucket

    def get(self, key: str) -> StoredObject | None:
        """The object at ``key`` or None (retried in place on StoreUnavailable).

        Raises:
            StoreUnavailable: 5xx, throttling, timeouts, connection errors (after the retries).
            StoreRejected: any other refusal (no such bucket, access denied, ...).
        """
        return retried(self._get_once)(key)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Write ``body``; with a condition, 412/409/NoSuchKey raise PreconditionFailed. Returns the new ETag.

        Raises:
            ValueError: both conditions given.
            PreconditionFailed: the condition does not hold.
            StoreUnavailable: 5xx, throttling, timeouts, connection errors (after the retries).
            StoreRejected: any other refusal.
        """
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match are exclusive")
        digest = hashlib.md5(body, usedforsecurity=False)
        args: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
            "ContentMD5": base64.b64encode(digest.digest()).decode("ascii"),  # a cut-off body is refused, not stored
        }
        args.update({"IfNoneMatch": "*"} if if_none_match else {} if if_match is None else {"IfMatch": if_match})
        conditional = if_none_match or if_match is not None
        mine = '"' + digest.hexdigest() + '"'
        unanswered = False

        def attempt() -> str:
            nonlocal unanswered
            if unanswered and conditional:
                current = self._get_once(key)  # did the unanswered attempt land?
                if current is not None and current.etag == mine:
                    return current.etag
            try:
                return self._call(f"put {key}", lambda: self._client.put_object(**args)["ETag"], conditional)
            except StoreUnavailable:
                unanswered = True
                raise

        return retried(attempt)()

    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error.

        Raises:
            StoreUnavailable: 5xx, throttling, timeouts, connection errors (after the retries).
            StoreRejected: any other refusal.
        """

        def attempt() -> None:
            self._call(f"delete {key}", lambda: self._client.delete_object(Bucket=self._bucket, Key=key))

        retried(attempt)()

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix`` in S3 order, one page (1,000 keys) read at a time, so a caller that stops
        early (the due index stops at the first day after today) reads no further page. Each page is retried.

        Raises:
            StoreUnavailable: 5xx, throttling, timeouts, connection errors (after the retries).
            StoreRejected: any other refusal.
        """
        token: str | None = None
        while True:
            page = self._page(prefix, token)
            yield from (obj["Key"] for obj in page.get("Contents", []))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token is None:
                return

    def etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        """(key, ETag) for every object under ``prefix``, as ``list`` pages them (the ETag as ``get`` returns it).

        Raises:
            StoreUnavailable: 5xx, throttling, timeouts, connection errors (after the retries).
            StoreRejected: any other refusal.
        """
        token: str | None = None
        while True:
            page = self._page(prefix, token)
            yield from ((obj["Key"], str(obj["ETag"])) for obj in page.get("Contents", []))
            token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            if token is None:
                return

    def _page(self, prefix: str, token: str | None) -> Any:
        def attempt() -> Any:
            def one() -> Any:
                if token is None:
                    return self._client.list_objects_v2(Bucket=self._bucket, Prefix=prefix)
                return self._client.list_objects_v2(Bucket=self._bucket, Prefix=prefix, ContinuationToken=token)

            return self._call(f"list {prefix}", one)

        return retried(attempt)()

    def probe(self) -> None:
        """Refuse to run on a store without conditional writes (see ``probe_conditional_writes``).

        Raises:
            StoreRejected: a conditional write was not enforced.
            StoreUnavailable: the store did not answer.
        """
        probe_conditional_writes(self)

    def _get_once(self, key: str) -> StoredObject | None:
        def fetch() -> StoredObject | None:
            try:
                response = self._client.get_object(Bucket=self._bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            try:
                return StoredObject(response["Body"].read(), response["ETag"])
            except (botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError) as exc:
                modified = response.get("LastModified")
                raise StoreUnreadable(
                    f"get {key}: {type(exc).__name__}",
                    etag=response["ETag"],
                    modified=modified.timestamp() if modified is not None else None,
                ) from exc

        return self._call(f"get {key}", fetch)

    def _call(self, what: str, fn: Callable[[], T], conditional: bool = False) -> T:
        try:
            return fn()
        except botocore.exceptions.ClientError as exc:
            raise _mapped(what, exc, conditional) from exc
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            raise StoreUnavailable(f"{what}: {type(exc).__name__}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreRejected(f"{what}: {type(exc).__name__}") from exc


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _mapped(
    what: str, exc: botocore.exceptions.ClientError, conditional: bool
) -> PreconditionFailed | StoreUnavailable | StoreRejected:
    code, status = _code(exc), _status(exc)
    text = f"{what}: {code or 'error'} ({status})"
    if conditional and (status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")):
        return PreconditionFailed(text)
    if code in _UNSUPPORTED:
        return StoreRejected(text)
    if status >= 500 or status == 429 or code in _THROTTLING:
        return StoreUnavailable(text)
    return StoreRejected(text)


def probe_conditional_writes(store: ObjectStore, prefix: str = PROBE_PREFIX) -> None:
    """Start-up capability check: put-if-absent twice -> 412; if-match stale -> 412; if-match on a missing key -> 412.

    Cleans up its probe objects (``<prefix><uuid>/...``).

    Raises:
        StoreRejected: the store accepted a write it should have refused (no conditional writes).
        StoreUnavailable: the store did not answer.
    """
    base = f"{prefix}{uuid.uuid4().hex}/"
    created = [base + "a", base + "missing"]
    try:
        first = store.put(created[0], b"1", if_none_match=True)
        _expect_refused(lambda: store.put(created[0], b"2", if_none_match=True), "If-None-Match on an existing key")
        store.put(created[0], b"3", if_match=first)
        _expect_refused(lambda: store.put(created[0], b"4", if_match=first), "If-Match with a stale ETag")
        _expect_refused(lambda: store.put(created[1], b"5", if_match=first), "If-Match on a missing key")
    finally:
        for key in created:
            try:
                store.delete(key)
            except (StoreUnavailable, StoreRejected) as exc:
                log.warning("probe: cannot delete %s: %s", key, exc.reason)
    log.info("probe: conditional writes enforced")


def _expect_refused(write: Callable[[], str], what: str) -> None:
    try:
        write()
    except PreconditionFailed:
        return
    raise StoreRejected(f"object store lacks conditional writes: {what} was accepted")
