"""One ObjectStore contract (conditional writes, listing, deletes, the capability probe) run against MemoryStore,
DirStore and (marked ``stack``) S3Store on LocalStack; then S3Store's error mapping with botocore's Stubber."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import boto3
import botocore.exceptions
import botocore.response
import pytest
from botocore.stub import Stubber

from functions._core.platform.config import Secret, StoreSettings
from functions._core.platform.errors import PreconditionFailed, StoreRejected, StoreUnavailable, StoreUnreadable
from functions._core.platform.store import ObjectStore
from functions.adapters.dirstore import DirStore
from functions.adapters.s3 import PROBE_PREFIX, S3Store, probe_conditional_writes
from tests.fakes.store import MemoryStore


class ObjectStoreContract:
    """What every ObjectStore does; subclasses provide the ``store`` fixture. Keys live under ``prefix``."""

    @pytest.fixture
    def prefix(self) -> str:
        return f"contract-{uuid.uuid4().hex[:12]}/"

    def test_get_missing_is_none(self, store: ObjectStore, prefix: str) -> None:
        assert store.get(prefix + "missing.json") is None

    def test_put_returns_the_etag_get_sees(self, store: ObjectStore, prefix: str) -> None:
        etag = store.put(prefix + "a.json", b'{"a": 1}')
        got = store.get(prefix + "a.json")
        assert got is not None and got.body == b'{"a": 1}' and got.etag == etag
        assert etag.startswith('"') and etag.endswith('"')

    def test_put_if_absent_twice_fails_and_keeps_the_first(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "claim.json"
        first = store.put(key, b"first", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            store.put(key, b"second", if_none_match=True)
        got = store.get(key)
        assert got is not None and (got.body, got.etag) == (b"first", first)

    def test_if_match_current_succeeds_and_stale_fails(self, store: ObjectStore, prefix: str) -> None:
        key = prefix + "state.json"
        first = store.put(key, b"v1")
        second = store.put(key, b"v2", if_match=first)
        assert second != first
        with pytest.raises(PreconditionFailed):
            store.put(key, b"v3", if_match=first)
        got = store.get(key)
        assert got is not None and (got.body, got.etag) == (b"v2", second)

    def test_if_match_on_a_missing_key_fails(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(PreconditionFailed):
            store.put(prefix + "missing.json", b"x", if_match='"0123456789abcdef0123456789abcdef"')
        assert store.get(prefix + "missing.json") is None

    def test_unconditional_put_overwrites(self, store: ObjectStore, prefix: str) -> None:
        store.put(prefix + "o.json", b"1")
        etag = store.put(prefix + "o.json", b"2")
        got = store.get(prefix + "o.json")
        assert got is not None and (got.body, got.etag) == (b"2", etag)

    def test_list_by_prefix(self, store: ObjectStore, prefix: str) -> None:
        for key in ("idem/a.json", "idem/b/c.json", "state/x.json", "idem-other.json"):
            store.put(prefix + key, b"{}")
        assert list(store.list(prefix + "idem/")) == [prefix + "idem/a.json", prefix + "idem/b/c.json"]
        assert list(store.list(prefix + "idem")) == [
            prefix + "idem-other.json",
            prefix + "idem/a.json",
            prefix + "idem/b/c.json",
        ]
        assert list(store.list(prefix + "nothing/")) == []

    def test_delete(self, store: ObjectStore, prefix: str) -> None:
        store.put(prefix + "d/e.json", b"{}")
        store.delete(prefix + "d/e.json")
        assert store.get(prefix + "d/e.json") is None
        assert list(store.list(prefix)) == []
        store.delete(prefix + "d/e.json")  # deleting a missing key is not an error

    def test_both_conditions_are_refused(self, store: ObjectStore, prefix: str) -> None:
        with pytest.raises(ValueError):
            store.put(prefix + "x.json", b"x", if_none_match=True, if_match='"x"')

    def test_capability_probe_passes_and_cleans_up(self, store: ObjectStore, prefix: str) -> None:
        probe_conditional_writes(store, prefix=prefix + PROBE_PREFIX)
        assert list(store.list(prefix)) == []


class TestMemoryStore(ObjectStoreContract):
    @pytest.fixture
    def store(self) -> ObjectStore:
        return MemoryStore()

    def test_counts_puts_and_gets(self) -> None:
        store = MemoryStore()
        store.put("a", b"1", if_none_match=True)
        with pytest.raises(PreconditionFailed):
            store.put("a", b"2", if_none_match=True)
        store.get("a")
        assert (store.puts, store.gets) == (1, 1)


class TestDirStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> ObjectStore:
        return DirStore(tmp_path / "bucket")

    def test_keys_map_to_files_and_leave_no_temporary_files(self, tmp_path: Path) -> None:
        store = DirStore(tmp_path / "bucket")
        store.put(".well-known/mta-sts.txt", b"version: STSv1\n")
        assert (tmp_path / "bucket/.well-known/mta-sts.txt").read_bytes() == b"version: STSv1\n"
        assert sorted(p.name for p in (tmp_path / "bucket/.well-known").iterdir()) == ["mta-sts.txt"]
        assert list(store.list("")) == [".well-known/mta-sts.txt"]  # the lock file is not an object

    @pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a/", ".~mp-lock"])
    def test_refuses_keys_that_escape_or_collide(self, tmp_path: Path, key: str) -> None:
        store = DirStore(tmp_path / "bucket")
        with pytest.raises(StoreRejected):
            store.put(key, b"x")
        with pytest.raises(StoreRejected):
            store.get(key)
        assert not (tmp_path / "x").exists()

    def test_a_key_under_an_object_or_naming_a_directory_is_refused(self, tmp_path: Path) -> None:
        store = DirStore(tmp_path / "bucket")
        store.put("a", b"object")
        with pytest.raises(StoreRejected):
            store.put("a/b", b"x")
        store.put("d/e", b"x")
        with pytest.raises(StoreRejected):
            store.put("d", b"x")


class LaxStore(MemoryStore):
    """A store without conditional writes (like an old S3-compatible server): conditions are ignored."""

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        return super().put(key, body, content_type=content_type)


def test_probe_refuses_a_store_without_conditional_writes() -> None:
    store = LaxStore()
    with pytest.raises(StoreRejected, match="lacks conditional writes"):
        probe_conditional_writes(store)
    assert list(store.list("")) == []


# ---------------------------------------------------------------- S3Store on LocalStack (infra/local/up)


@pytest.mark.stack
class TestS3Store(ObjectStoreContract):
    @pytest.fixture
    def store(self, stack_env: dict[str, str], prefix: str) -> Iterator[ObjectStore]:
        settings = StoreSettings(
            kind="s3",
            endpoint_url=stack_env["MAILPLANE_S3_ENDPOINT"],
            ca_file=stack_env["MAILPLANE_STACK_CA"],
            region=stack_env.get("AWS_DEFAULT_REGION", "us-east-1"),
            access_key_id=Secret(stack_env["AWS_ACCESS_KEY_ID"]),
            secret_access_key=Secret(stack_env["AWS_SECRET_ACCESS_KEY"]),
            timeout=5.0,
        )
        store = S3Store(settings, settings.state_bucket)
        yield store
        for key in store.list(prefix):
            store.delete(key)

    def test_probe(self, store: ObjectStore) -> None:
        assert isinstance(store, S3Store)
        store.probe()
        assert list(store.list(PROBE_PREFIX)) == []


# ---------------------------------------------------------------- S3Store error mapping (Stubber, no network)


@pytest.fixture
def stubbed() -> Iterator[tuple[S3Store, Stubber]]:
    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    with Stubber(client) as stub:
        yield S3Store(StoreSettings(kind="s3"), "bucket", client=client), stub
        stub.assert_no_pending_responses()


def _body(data: bytes) -> dict[str, Any]:
    etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
    return {"Body": botocore.response.StreamingBody(io.BytesIO(data), len(data)), "ETag": etag}


@pytest.mark.parametrize(
    ("status", "code", "kwargs"),
    [
        (412, "PreconditionFailed", {"if_none_match": True}),
        (412, "PreconditionFailed", {"if_match": '"e"'}),
        (409, "ConditionalRequestConflict", {"if_match": '"e"'}),
        (404, "NoSuchKey", {"if_match": '"e"'}),
    ],
)
def test_conditional_put_failures_are_precondition_failed(
    stubbed: tuple[S3Store, Stubber], status: int, code: str, kwargs: dict[str, Any]
) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"x", **kwargs)


def test_throttling_is_retried_in_place_for_get(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("get_object", service_error_code="SlowDown", http_status_code=503)
    stub.add_response("get_object", _body(b"v"), {"Bucket": "bucket", "Key": "k"})
    got = store.get("k")
    assert got is not None and got.body == b"v"


def test_client_errors_are_rejected_without_retry(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
    with pytest.raises(StoreRejected, match="AccessDenied"):
        store.get("k")
    stub.add_client_error("put_object", service_error_code="NotImplemented", http_status_code=501)
    with pytest.raises(StoreRejected, match="NotImplemented"):
        store.put("k", b"x", if_none_match=True)


def test_unanswered_conditional_put_rereads_before_resending(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", service_error_code="InternalError", http_status_code=500)
    stub.add_response("get_object", _body(b"mine"))  # the first attempt had landed
    assert store.put("k", b"mine", if_none_match=True) == _body(b"mine")["ETag"]


def test_unanswered_conditional_put_that_did_not_land_is_sent_again(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", service_error_code="InternalError", http_status_code=500)
    stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    stub.add_response("put_object", {"ETag": '"new"'})
    assert store.put("k", b"mine", if_none_match=True) == '"new"'


class _DownClient:
    def get_object(self, **_: Any) -> Any:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")


def test_connection_errors_are_unavailable() -> None:
    store = S3Store(StoreSettings(kind="s3"), "bucket", client=cast(Any, _DownClient()))
    with pytest.raises(StoreUnavailable, match="EndpointConnectionError"):
        store.get("k")


def test_an_object_whose_body_breaks_off_every_time_is_unreadable_with_its_etag(
    stubbed: tuple[S3Store, Stubber],
) -> None:
    store, stub = stubbed
    data = b'{"status": "IN_PROGRESS"}'
    etag = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
    modified = dt.datetime(2026, 11, 27, 10, 0, tzinfo=dt.UTC)
    for _ in range(3):  # a torn object: announces more bytes than it sends, on every attempt (retried in place)
        torn = botocore.response.StreamingBody(io.BytesIO(data[:7]), len(data))
        stub.add_response(
            "get_object", {"Body": torn, "ETag": etag, "LastModified": modified}, {"Bucket": "bucket", "Key": "k"}
        )
    with pytest.raises(StoreUnreadable) as info:
        store.get("k")
    assert info.value.etag == etag and info.value.modified == modified.timestamp()
    assert isinstance(info.value, StoreUnavailable)


def test_every_put_carries_content_md5(stubbed: tuple[S3Store, Stubber]) -> None:
    store, stub = stubbed
    body = b'{"a": 1}'
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    expected = {"Bucket": "bucket", "Key": "k", "Body": body, "ContentType": "application/json", "ContentMD5": md5}
    stub.add_response("put_object", {"ETag": '"e"'}, {**expected, "IfNoneMatch": "*"})
    assert store.put("k", body, if_none_match=True) == '"e"'
