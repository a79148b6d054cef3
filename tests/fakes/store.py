"""MemoryStore: an in-memory ObjectStore with S3's conditional-write semantics; counts puts and gets."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

from functions._core.platform.errors import AutomationError, PreconditionFailed
from functions._core.platform.store import StoredObject


class MemoryStore:
    """ObjectStore in memory. ETag = quoted sha256 of the body (same as DirStore).

    ``faults`` are raised by the next calls (any method), in order, before anything changes.
    """

    def __init__(self) -> None:
        self.objects: dict[str, StoredObject] = {}
        self.content_types: dict[str, str] = {}
        self.puts = 0  # successful puts
        self.gets = 0
        self.faults: list[AutomationError] = []
        self._atomic = threading.Lock()

    def get(self, key: str) -> StoredObject | None:
        self._fault()
        self.gets += 1
        return self.objects.get(_checked(key))

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        self._fault()
        key = _checked(key)
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match are exclusive")
        with self._atomic:  # a conditional write is atomic, as on S3
            return self._put(key, body, if_none_match, if_match, content_type)

    def _put(self, key: str, body: bytes, if_none_match: bool, if_match: str | None, content_type: str) -> str:
        current = self.objects.get(key)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"put {key}: object exists")
        if if_match is not None and (current is None or current.etag != if_match):
            raise PreconditionFailed(f"put {key}: ETag does not match")
        etag = '"' + hashlib.sha256(body).hexdigest() + '"'
        self.objects[key] = StoredObject(bytes(body), etag)
        self.content_types[key] = content_type
        self.puts += 1
        return etag

    def delete(self, key: str) -> None:
        self._fault()
        self.objects.pop(_checked(key), None)
        self.content_types.pop(key, None)

    def list(self, prefix: str) -> Iterator[str]:
        self._fault()
        return iter(sorted(k for k in self.objects if k.startswith(prefix)))

    def etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        self._fault()
        return iter(sorted((k, o.etag) for k, o in self.objects.items() if k.startswith(prefix)))

    def _fault(self) -> None:
        if self.faults:
            raise self.faults.pop(0)


def _checked(key: str) -> str:
    if not key:
        raise ValueError("empty object key")
    return key
