"""Modal wiring only: named resources, images, functions and schedules. No business logic here."""

from __future__ import annotations

import modal

APP_NAME = "comfy-saas"

app = modal.App(APP_NAME)

# Every named Modal object, declared once.
jobs_dict = modal.Dict.from_name(f"{APP_NAME}-jobs", create_if_missing=True)
work_queue = modal.Queue.from_name(f"{APP_NAME}-work", create_if_missing=True)
