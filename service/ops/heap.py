"""Keep Python's cyclic garbage collector off the objects a serving process loads at start-up.

After the engine, the web framework and the Redis client are loaded, the heap holds hundreds of
thousands of long-lived objects (modules, classes, onnxruntime and pydantic internals). Every
full collection walks them all, and a busy server allocates enough per request (results, lists,
dicts) to trigger collections often; that walk is charged to whatever request allocated.
`gc.freeze()` moves the objects alive now into a permanent generation that collections skip
(they are still freed by reference counting). bench/REPORT_NOTES.md section 9: about 13% less CPU
per event in the store's users-take-turns batches.
"""
from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect once, then exclude every object alive now from later collections. Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
