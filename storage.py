"""Every named Modal object, declared once, and the services built over them.

The Dict is the job store, the Queue carries wake-ups, the Volume holds models, the Secrets carry the
configuration (COMFY_* variables). Nothing else in the project names a Modal object.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import modal

from comfy_saas.config import names

jobs_dict = modal.Dict.from_name(names.JOBS_DICT, create_if_missing=True)
work_queue = modal.Queue.from_name(names.WORK_QUEUE, create_if_missing=True)
models_volume = modal.Volume.from_name(names.MODELS_VOLUME, create_if_missing=True)
# Deploying fails unless each Secret exists with these keys. COMFY_WEBHOOK_SECRET is an optional key of the
# api Secret: an absent Secret cannot be attached, and a deployment without webhooks needs none (submitting a
# webhook_url to it is a 422).
api_secret = modal.Secret.from_name(names.API_SECRET, required_keys=["COMFY_API_KEYS"])
r2_secret = modal.Secret.from_name(names.R2_SECRET, required_keys=[
    "COMFY_R2_BUCKET", "COMFY_R2_ENDPOINT_URL", "COMFY_R2_ACCESS_KEY_ID", "COMFY_R2_SECRET_ACCESS_KEY"])
SECRETS = [api_secret, r2_secret]

# Settings every deployed container shares, on top of the Secrets.
RUNTIME_ENV = {"COMFY_STORAGE_BACKEND": "s3", "COMFY_DATA_DIR": "/tmp/comfy-saas"}

_lock = threading.Lock()  # concurrent inputs (@modal.concurrent) may ask for the services at once
_services = None
_services_mount: str | None = None
_wakeups = None


def services(models_mount: str | None = None):
    """This container's Services over the deployed Dict and Queue (built once per container); `models_mount` is
    where this container mounts the models Volume (None: it reaches the Volume through its API only). Every
    call in a container must name the same mount: the first one decides what is built."""
    global _services, _services_mount
    with _lock:
        if _services is None:
            from comfy_saas.modal_runtime import services as build

            _services, _services_mount = build(jobs_dict, work_queue, models_volume, models_mount), models_mount
        elif models_mount != _services_mount:
            raise RuntimeError(f"services were built for models mount {_services_mount!r}, not {models_mount!r}")
        return _services


def wakeups(spawn: Callable[[str, int], None], models_mount: str | None = None):
    """This container's wake-up component (jobs/wakeups.py), spawning drains with `spawn`; it is also the
    services' `wake`, so every accepted submission wakes its pool."""
    global _wakeups
    svc = services(models_mount)
    with _lock:
        if _wakeups is None:
            from comfy_saas.modal_runtime import wakeups as build

            _wakeups = build(svc, spawn)
        return _wakeups
