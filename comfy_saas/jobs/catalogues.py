"""Each pool's node catalogue (ComfyUI's /object_info, compacted), which pre-flight checks, UI-format
conversion and templates read. Workers publish it to the Dict, where submits read it (cached per process),
and to object storage, which keeps it when the Dict's copy expires after 7 days without a worker starting
or a submit reading it: a request after a quiet week is answered without waiting for a GPU to boot.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from comfy_saas import logs
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import BackendError
from comfy_saas.jobs import keys
from comfy_saas.jobs.services import Services

log = logging.getLogger(__name__)


def publish(svc: Services, schema: dict[str, Any], pool: str) -> None:
    """Store a worker's catalogue in both places (one round trip)."""
    body = json.dumps(schema, separators=(",", ":")).encode()
    run_all([lambda: svc.store.save_object_info(schema, pool),
             lambda: svc.objects.put_bytes(keys.catalogue_object(pool), body, "application/json")])


def load(svc: Services, pool: str, fresh: bool = False) -> dict[str, Any] | None:
    """The pool's catalogue: the Dict's, else the durable copy (put back in the Dict); the store keeps either,
    or their absence, in memory for a while."""
    def durable() -> dict[str, Any] | None:
        try:
            raw = svc.objects.read_if_exists(keys.catalogue_object(pool))
            return None if raw is None else json.loads(raw)
        except (BackendError, ValueError) as exc:  # as if there were none: only requests that need it wait
            logs.event(log, "catalogue.durable_read_failed", logging.WARNING, pool=pool, error=str(exc))
            return None
    return svc.store.object_info(pool, fresh=fresh, durable=durable)
