"""Held keys: Dict entries (a slot, a lock, an idempotency key) that one holder owns at a time, moved from one
holder to the next with the one conditional write Modal's Dict has, put(skip_if_exists=True).

Modal's Dict has no compare-and-swap or compare-and-delete: `pop` takes whatever is there and `put` overwrites
it, so "remove it if it is still the one I saw" cannot be one call, and popping then putting back leaves the
key free in between. Instead, every value of a held key carries a `token`, and moving a key off a value (a
renewal, a takeover, a release) first wins that value's handover entry, `handover:{key}:{token}`, with
put(skip_if_exists): exactly one move away from a given value ever wins, and while a value stands only the
winner of its handover may write or pop the key. So a takeover never overwrites a renewal, two takeovers never
both win, and a holder that lost its key learns it at its next move.

Retries: the winner's own write or pop of the key goes out once, without the guard's retries (a retried pop
could take a newer holder's value); when it fails, the key is read, and the call is sent again only while
the key still holds the value being moved away from, which nobody else can change. A winner that died between
its handover and its write leaves the key wedged; after REPAIR_AFTER_S anyone may finish its move.

Handover entries are small; they expire with everything else on Modal (7 idle days), and callers that know
when a token can no longer be acted on delete them (a job's quota slots, with the job).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import BackendError
from comfy_saas.jobs import keys

log = logging.getLogger(__name__)

REPAIR_AFTER_S = 300.0  # a handover won this long ago whose key still holds the old value: its winner died
_ATTEMPTS = 4


def new_token() -> str:
    return uuid.uuid4().hex


def token_of(value: Any) -> str | None:
    """The token of a held key's value; values stored before tokens existed get one from their content."""
    if value is None:
        return None
    if isinstance(value, dict) and isinstance(value.get("token"), str):
        return value["token"]
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


def claim(d: Any, key: str, value: dict[str, Any]) -> bool:
    """Take a free (absent) key; True when it holds `value` (a retried call's own write counts)."""
    if d.put(key, value, skip_if_exists=True):
        return True
    return token_of(d.get(key)) == value["token"]


def replace(d: Any, key: str, seen: Any, value: dict[str, Any], now: float | None = None) -> bool:
    """Move the key from `seen` (as read) to `value`; False when another move away from `seen` won (then the
    key is someone else's, or released)."""
    if not _win(d, key, token_of(seen), {"token": value["token"], "value": value}, now):
        return False
    _write_exact(d, key, value, token_of(seen))
    return True


def release(d: Any, key: str, token: str, now: float | None = None) -> bool:
    """Free the key if it holds the value with `token`; False when another move away from that value won. Two
    round trips: the handover and a read of the key together (a value with `token` stays until the handover's
    winner pops it, so the read tells whether it is there to pop), then the pop."""
    won, held = run_all([lambda: _win(d, key, token, {"token": new_token(), "value": None}, now),
                         lambda: d.get(key)])
    if won and token_of(held) == token:
        _pop_exact(d, key, token)
    return won


def _win(d: Any, key: str, token: str | None, move: dict[str, Any], now: float | None) -> bool:
    """Win the handover of the key's value `token`; on a loss, finish the winner's move if it died."""
    now = time.time() if now is None else now
    handover = keys.handover(key, token or "")
    if d.put(handover, {**move, "at": now}, skip_if_exists=True):
        return True
    decided = d.get(handover) or {}
    if decided.get("token") == move["token"]:
        return True  # our own write, reported lost by a retried call
    if now - float(decided.get("at", now)) >= REPAIR_AFTER_S and token_of(d.get(key)) == token:
        _finish(d, key, token or "", decided.get("value"))
    return False


def _finish(d: Any, key: str, token: str, value: dict[str, Any] | None) -> None:
    if value is None:
        _pop_exact(d, key, token)
    else:
        _write_exact(d, key, value, token)


def _write_exact(d: Any, key: str, value: dict[str, Any], moved_from: str | None) -> None:
    """Put `value`, which only the handover's winner may do while the key holds `moved_from`."""
    _send_once(d, key, lambda once: once.put(key, value), moved_from)


def _pop_exact(d: Any, key: str, token: str) -> None:
    """Pop the key, which holds the value with `token` until we do."""
    _send_once(d, key, lambda once: once.pop(key, None), token)


def _send_once(d: Any, key: str, call: Any, moved_from: str | None) -> None:
    """Send the winner's write or pop without the guard's retries, and again only while the key still holds
    `moved_from` (nobody else can change that): once it does not, the call landed, and a newer holder there
    stays. Given up on, the move is still decided, and finished by the winner's next move or after
    REPAIR_AFTER_S."""
    for _ in range(_ATTEMPTS):
        try:
            call(_once(d))
            return
        except BackendError:
            try:
                if token_of(d.get(key)) != moved_from:
                    return
            except BackendError:
                break  # not knowing whether it landed, sending it again could undo a newer move
    log.warning("the move of %s is decided but not written; it is finished later", key)


def _once(d: Any) -> Any:
    """The Dict without the guard's retries (a Guarded's `once`), or the Dict itself."""
    return getattr(d, "once", d)
