"""Deleting a Dict entry only if it is still the one we mean, with the one conditional write Modal's Dict has.

Modal's Dict has no compare-and-delete: `pop` takes whatever is there. So pop, and if what came out is not
ours (another holder took the key since we looked), put it straight back with `skip_if_exists`, which never
overwrites a newer holder that got in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def pop_if(d: Any, key: Any, ours: Callable[[Any], bool]) -> bool:
    """Pop key unless its value fails `ours` (then it is put back): False only when another holder's value
    was there, so the caller may go on to claim the key."""
    popped = d.pop(key, None)
    if popped is not None and not ours(popped):
        d.put(key, popped, skip_if_exists=True)
        return False
    return True
