"""DirStore: the ObjectStore on a local directory, with the same conditional-write semantics as S3.

Keys map to files under ``root`` ('/' = subdirectory); writes go to a temporary file in the same directory and are
renamed into place (atomic); every write and delete holds an exclusive flock on ``root/.~mp-lock``, so the check of
a condition and the write it guards cannot interleave with another writer (processes on one host). ETag = quoted
sha256 of the content. Files are created mode 0600.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from functions._core.platform.errors import PreconditionFailed, StoreRejected, StoreUnavailable
from functions._core.platform.store import StoredObject

__all__ = ["DirStore"]

RESERVED = ".~mp-"  # prefix of our lock and temporary files; no key component may start with it
LOCK_NAME = RESERVED + "lock"


class DirStore:
    """ObjectStore on a directory (created on first write)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def get(self, key: str) -> StoredObject | None:
        """The object at ``key``, or None.

        Raises:
            StoreRejected: an invalid key, or permission denied.
            StoreUnavailable: another I/O error.
        """
        path = self._path(key)
        with _mapped(f"get {key}"):
            try:
                body = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        return StoredObject(body, _etag(body))

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/json",
    ) -> str:
        """Write ``body`` atomically; ``content_type`` is not stored. Returns the new ETag.

        Raises:
            ValueError: both conditions given.
            PreconditionFailed: if_none_match and the key exists; if_match and the key is missing or differs.
            StoreRejected: an invalid key (or one that names a directory), or permission denied.
            StoreUnavailable: another I/O error (disk full, ...).
        """
        if if_none_match and if_match is not None:
            raise ValueError("if_none_match and if_match are exclusive")
        path = self._path(key)
        with self._locked(f"put {key}"):
            if if_none_match or if_match is not None:
                current = self.get(key)
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"put {key}: object exists")
                if if_match is not None and (current is None or current.etag != if_match):
                    raise PreconditionFailed(f"put {key}: ETag does not match")
            if path.is_dir():
                raise StoreRejected(f"put {key}: the key names a directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, body)
        return _etag(body)

    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error. Empty parent directories are removed.

        Raises:
            StoreRejected: an invalid key, or permission denied.
            StoreUnavailable: another I/O error.
        """
        path = self._path(key)
        with self._locked(f"delete {key}"):
            try:
                path.unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return
            _prune(path.parent, self._root)

    def list(self, prefix: str) -> Iterator[str]:
        """Keys starting with ``prefix``, sorted (like S3's UTF-8 binary order for ASCII keys).

        Raises:
            StoreUnavailable: an I/O error.
        """
        parts = prefix.split("/")[:-1]
        safe = not any(p in ("", ".", "..") or p.startswith(RESERVED) for p in parts)
        top = self._root.joinpath(*parts) if safe else self._root  # walk only the directory the prefix lies in
        with _mapped(f"list {prefix}"):
            if not top.is_dir() or top.is_symlink():
                return iter([])
            keys = [
                path.relative_to(self._root).as_posix()
                for path in top.rglob("*")
                if path.is_file() and not any(p.startswith(RESERVED) for p in path.relative_to(self._root).parts)
            ]
        return iter(sorted(k for k in keys if k.startswith(prefix)))

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(RESERVED) for p in parts):
            raise StoreRejected(f"invalid object key {key!r}")
        return self._root.joinpath(*parts)

    @contextmanager
    def _locked(self, what: str) -> Iterator[None]:
        with _mapped(what):
            self._root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest() + '"'


def _write_atomic(path: Path, body: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=RESERVED + "tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prune(directory: Path, root: Path) -> None:
    while directory != root:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Map OSError: permissions and bad paths are permanent, other I/O errors transient."""
    try:
        yield
    except PermissionError as exc:
        raise StoreRejected(f"{what}: permission denied") from exc
    except (NotADirectoryError, FileExistsError) as exc:
        raise StoreRejected(f"{what}: a key prefix names an object") from exc
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.EISDIR):
            raise StoreRejected(f"{what}: {exc.strerror}") from exc
        raise StoreUnavailable(f"{what}: {exc.strerror}") from exc
