"""Every named Modal object, declared once, and the services built over them.

The Dict is the job store, the Queue carries wake-ups, the Volume holds models, the Secrets carry the
configuration (COMFY_* variables). Nothing else in the project names a Modal object.
"""

from __future__ import annotations

from collections.abc import Callable

import modal

from comfy_saas.config import names

jobs_dict = modal.Dict.from_name(names.JOBS_DICT, create_if_missing=True)
work_queue = modal.Queue.from_name(names.WORK_QUEUE, create_if_missing=True)
models_volume = modal.Volume.from_name(names.MODELS_VOLUME, create_if_missing=True)
api_secret = modal.Secret.from_name(names.API_SECRET, required_keys=["COMFY_API_KEYS"])
r2_secret = modal.Secret.from_name(names.R2_SECRET, required_keys=[
    "COMFY_R2_BUCKET", "COMFY_R2_ENDPOINT_URL", "COMFY_R2_ACCESS_KEY_ID", "COMFY_R2_SECRET_ACCESS_KEY"])
webhook_secret = modal.Secret.from_name(names.WEBHOOK_SECRET, required_keys=["COMFY_WEBHOOK_SECRET"])
SECRETS = [api_secret, r2_secret, webhook_secret]

# Settings every deployed container shares, on top of the Secrets.
RUNTIME_ENV = {"COMFY_STORAGE_BACKEND": "s3", "COMFY_DATA_DIR": "/tmp/comfy-saas"}

_services = None


def services(wake: Callable[[str], None] | None = None, models_mount: str | None = None):
    """This container's Services over the deployed Dict and Queue (built once per container); `models_mount` is
    where this container mounts the models Volume (None: it reaches the Volume through its API only)."""
    global _services
    if _services is None:
        from comfy_saas.modal_runtime import services as build

        _services = build(jobs_dict, work_queue, wake, models_volume, models_mount)
    return _services
