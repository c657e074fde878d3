"""The explicit memo that replaces module-level caches: values by content key, bounded."""

from __future__ import annotations

import numpy as np

from fmri2img.core.memo import Memo, digest


def test_memo_computes_once_and_evicts_the_oldest_entry_at_its_limit():
    memo, calls = Memo(max_items=2), []

    def compute(value):
        calls.append(value)
        return value * 10

    assert memo.get("a", 1, lambda: compute(1)) == 10
    assert memo.get("a", 1, lambda: compute(1)) == 10 and calls == [1]
    memo.get("a", 2, lambda: compute(2))
    memo.get("a", 3, lambda: compute(3))  # over the limit: key 1 (the oldest) goes
    assert ("a", 1) not in memo and ("a", 3) in memo and memo.count("a") == 2
    memo.get("b", 1, lambda: compute(4), limit=1)  # namespaces are independent, each with its limit
    memo.get("b", 2, lambda: compute(5), limit=1)
    assert memo.count("b") == 1 and memo["b", 2] == 50
    assert memo.missing("a", [1, 2, 2, 3]) == [1]


def test_digest_keys_arrays_by_dtype_shape_and_bytes():
    a = np.arange(6, dtype=np.int64)
    assert digest(a) == digest(a.copy())
    assert digest(a) != digest(a.astype(np.int32)) and digest(a) != digest(a.reshape(2, 3))
    assert digest("x", 1) != digest("x", 2)
