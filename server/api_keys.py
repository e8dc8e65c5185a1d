"""The bearer tokens a server accepts: from the settings (`--api-key`, `REFINERY_API_KEYS`) and
from a file (`REFINERY_API_KEYS_FILE`, what a Kubernetes Secret mounted as a volume provides).

A presented token is compared with every key in constant time: both sides are hashed first
(SHA-256), so `hmac.compare_digest` compares equal-length digests and the time taken tells
neither which key nearly matched nor how long the keys are. Keys never appear in a log line or
an error message; problems with the file name the path only.

The file is re-read when its modification time changes (checked at most once a second), so a
rotated Secret takes effect without a restart (the kubelet swaps the mounted file in place).
A file that becomes unreadable or empty keeps the keys last read: a broken rotation must not
open the server, nor lock every client out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ApiKeys", "parse_keys", "read_keys_file"]

logger = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[,\s]+")
_RECHECK_S = 1.0


def parse_keys(text: str) -> list[str]:
    """Keys separated by commas, spaces or newlines (a Secret's value often ends in one)."""
    return [key for key in _SEPARATORS.split(text) if key]


def read_keys_file(path: Path) -> list[str]:
    """The keys in `path`; ValueError naming the path (never its content) when it cannot be
    read or holds no key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"cannot read the API keys file {path}: {reason}") from None
    keys = parse_keys(text)
    if not keys:
        raise ValueError(f"the API keys file {path} holds no key")
    return keys


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeys:
    """The accepted keys of one server (held on `app.state`)."""

    def __init__(self, keys: Iterable[str], file: Path | None = None) -> None:
        self._static = [_digest(key) for key in keys]
        self._file = file
        self._from_file: list[bytes] = []
        self._file_mtime: int | None = None
        self._checked_at = float("-inf")
        if file is not None:
            self._from_file = [_digest(key) for key in read_keys_file(file)]
            self._file_mtime = self._mtime()

    @property
    def required(self) -> bool:
        """True when requests must carry a key (keys configured, or a keys file)."""
        return bool(self._static) or self._file is not None

    def matches(self, presented: str | bytes) -> bool:
        """Whether `presented` is one of the keys, compared with every key in constant time."""
        candidate = _digest(presented)
        matched = False
        for key in [*self._static, *self._current_file_keys()]:
            matched |= hmac.compare_digest(candidate, key)
        return matched

    def _mtime(self) -> int | None:
        assert self._file is not None
        try:
            return os.stat(self._file).st_mtime_ns
        except OSError:
            return None

    def _current_file_keys(self) -> list[bytes]:
        if self._file is None:
            return []
        now = time.monotonic()
        if now - self._checked_at < _RECHECK_S:
            return self._from_file
        self._checked_at = now
        mtime = self._mtime()
        if mtime is not None and mtime != self._file_mtime:
            try:
                self._from_file = [_digest(key) for key in read_keys_file(self._file)]
            except ValueError as exc:
                logger.warning("%s; keeping the keys read before", exc)
            else:
                logger.info("API keys re-read from %s", self._file)
            self._file_mtime = mtime
        return self._from_file
