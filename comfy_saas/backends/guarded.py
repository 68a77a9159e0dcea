"""A Dict or Queue behind a guard: transient failures are retried, and what is left becomes the project's
own errors, so callers see one tree whichever home they run in.

    a request Modal refuses as too large (RequestSizeError, HTTP 413)  ->  BodyTooLarge (413)
    the store did not answer, after retries                              ->  BackendError (503)

KeyError, queue.Empty and queue.Full keep their meaning and pass through, as do programming errors
(TypeError, ValueError). A retried `put(skip_if_exists=True)` may report False for a write that landed the
first time; every caller of it checks the stored value against its own before concluding it lost. A retried
`pop` may take a value written after the first one landed: keys that several holders share are popped through
`once` (jobs/held_keys.py).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from comfy_saas.errors import BackendError, BodyTooLarge

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.05, 0.2, 0.8)
_PASS_THROUGH = (KeyError, queue.Empty, queue.Full, TypeError, ValueError, AttributeError)


class Guarded:
    """Wraps a modal.Dict / modal.Queue (or a twin) with retries and the project's errors."""

    def __init__(self, target: Any, what: str, delays: tuple[float, ...] | None = None) -> None:
        self._target = target
        self._what = what
        self._delays = delays

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(name, attr, args, kwargs)

    @property
    def once(self) -> Guarded:
        """The same target without retries: for a call that must not be sent twice (a pop of a shared key,
        which could take a newer holder's value the second time; see jobs/held_keys.py)."""
        return Guarded(self._target, self._what, delays=())

    def __contains__(self, key: Any) -> bool:
        return self._call("contains", self._target.contains, (key,), {})

    def _call(self, name: str, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        for delay in (*(RETRY_DELAYS_S if self._delays is None else self._delays), None):
            try:
                return method(*args, **kwargs)
            except _PASS_THROUGH:
                raise
            except Exception as exc:
                if type(exc).__name__ == "RequestSizeError":
                    raise BodyTooLarge(f"the {self._what} refused the request as too large ({exc})",
                                       field="body") from exc
                if delay is None:
                    raise BackendError(f"the {self._what} did not answer {name}: {exc}") from exc
                log.warning("%s.%s failed (%s); retrying in %.2fs", self._what, name, exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")
