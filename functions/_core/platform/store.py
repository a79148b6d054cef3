"""The object store port: a bucket with conditional writes (S3, MinIO, LocalStack, or a local directory).

The event platform keeps its ledger and leases here; the mail model keeps domain state, sealed keys and the MTA-STS
policies here. Adapters: functions/adapters/s3.py and functions/adapters/dirstore.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    etag: str


class ObjectStore(Protocol):
    """A bucket with conditional writes. put raises PreconditionFailed when the condition does not hold.

    Raises StoreUnavailable (transient) or StoreRejected (permanent) on other failures.
    """

    def get(self, key: str) -> StoredObject | None: ...
    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/json",
    ) -> str: ...  # returns the new ETag
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...


@runtime_checkable
class ListsEtags(Protocol):
    """A store whose listing also gives each object's ETag (S3: ``ListObjectsV2``), so that a fleet-wide reader
    can skip the GET of an object whose content it has seen under that ETag (``functions/ops/snapshot.py``)."""

    def etags(self, prefix: str) -> Iterator[tuple[str, str]]: ...


def put_over(store: ObjectStore, key: str, body: bytes, etag: str | None) -> str:
    """Compare-and-set write of one object: create it when ``etag`` is None, else replace exactly that version.

    Raises:
        PreconditionFailed: the object exists (create) or changed since it was read (replace).
    """
    if etag is None:
        return store.put(key, body, if_none_match=True)
    return store.put(key, body, if_match=etag)
