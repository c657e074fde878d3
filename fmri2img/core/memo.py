"""An explicit, bounded memo for results that are pure functions of their inputs.

Layers never keep module-level caches: a function that can reuse earlier work takes a
``memo: Memo | None`` argument, and the stage that calls it decides how long the memo lives (one
command, or one worker process of an ablation, where every cell of a subject scores the same
baselines and reads the same sessions). Keys are content digests of the exact inputs, so a
memoised result is the result that computing it again would give.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def digest(*parts: Any) -> str:
    """SHA-256 of ``parts``: arrays by dtype, shape and bytes, anything else by ``repr``."""
    sha = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            sha.update(repr((a.dtype.str, a.shape)).encode())
            sha.update(a.tobytes())
        else:
            sha.update(repr(part).encode())
    return sha.hexdigest()


class Memo:
    """Values by key, at most ``max_items`` per namespace (the oldest entries go first).

    Parameters
    ----------
    max_items : int
        Entries kept per namespace.
    """

    def __init__(self, max_items: int = 8192) -> None:
        self.max_items = max_items
        self._store: dict[str, dict[Any, Any]] = {}

    def get(self, namespace: str, key: Any, compute: Callable[[], Any], limit: int | None = None) -> Any:
        """The value stored under ``key``, or ``compute()`` stored there (at most ``limit`` entries
        in ``namespace`` when given, else ``max_items``)."""
        store = self._store.setdefault(namespace, {})
        if key not in store:
            if len(store) >= (limit or self.max_items):
                store.pop(next(iter(store)))
            store[key] = compute()
        return store[key]

    def missing(self, namespace: str, keys: Iterable[Any]) -> list[Any]:
        """The ``keys`` not stored yet (each once, in order)."""
        store = self._store.get(namespace, {})
        return [k for k in dict.fromkeys(keys) if k not in store]

    def put(self, namespace: str, key: Any, value: Any) -> None:
        self.get(namespace, key, lambda: value)

    def count(self, namespace: str) -> int:
        """Entries stored in ``namespace``."""
        return len(self._store.get(namespace, {}))

    def __contains__(self, item: tuple[str, Any]) -> bool:
        namespace, key = item
        return key in self._store.get(namespace, {})

    def __getitem__(self, item: tuple[str, Any]) -> Any:
        namespace, key = item
        return self._store[namespace][key]
