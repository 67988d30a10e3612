"""The idempotency-key cache: a client that retries an item it already sent (after a timeout, a dropped
connection) gets the stored scores back without a second forward pass.

Keyed by ``(idempotency_key, dimensions)``: the same key asking for other dimensions is scored anew.
Entries live ``ttl_s`` seconds and at most ``max_entries`` are kept (oldest dropped first). Only scored
items are stored; an item that failed is scored again on retry.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable
from typing import Any


class IdempotencyCache:
    """A TTL + size bounded map from key to a scored item (``ttl_s = 0``: nothing is stored)."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.hits = 0
        self._entries: collections.OrderedDict[Hashable, tuple[float, Any]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self.clock():
            del self._entries[key]
            return None
        self.hits += 1
        return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.ttl_s <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self.clock() + self.ttl_s, value)
        now = self.clock()
        while self._entries:  # drop expired entries from the front, then the oldest beyond the bound
            oldest_key, (expires, _) = next(iter(self._entries.items()))
            if expires <= now or len(self._entries) > self.max_entries:
                del self._entries[oldest_key]
            else:
                break
