"""The status poll's rendered documents, kept per box and version in this process.

A running box is polled far more often than it changes. ``status_document.box_version`` (the
ETag's input, one small query) moves whenever the document may have changed, so the JSON
rendered for one version can answer every later poll that reads the same version: such a
poll costs the version query and no document queries, decryption or serialization. A client
with the ETag gets 304 on the same condition; this serves the ones without it.

The cached bytes carry the owner's Happy URL (credentials): they stay in this process's
memory, are served only after the poll's own ownership check (``box_version`` with the
owner), and a box keeps at most its latest version.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

from cachetools import LRUCache

#: Boxes whose latest document a web process keeps (a few KB each).
MAX_BOXES = 4096


class RenderedDocuments:
    """Box id -> (version, JSON body) of the last document rendered, least recently used
    boxes dropped first. Thread-safe (gthread workers)."""

    def __init__(self, max_boxes: int = MAX_BOXES) -> None:
        self._entries: LRUCache[uuid.UUID, tuple[tuple[Any, ...], bytes]] = LRUCache(max_boxes)
        self._lock = threading.Lock()

    def get(self, box_id: uuid.UUID, version: Sequence[Any]) -> bytes | None:
        """The body rendered for exactly this version of the box, or None."""
        with self._lock:
            entry = self._entries.get(box_id)
        if entry is None or entry[0] != tuple(version):
            return None
        return entry[1]

    def put(self, box_id: uuid.UUID, version: Sequence[Any], body: bytes) -> None:
        with self._lock:
            self._entries[box_id] = (tuple(version), body)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
