"""Comfy API v2 (`/api/v2/...`): the contract the official SDKs speak (../shared/comfy-api-v2/openapi.yaml), as a
thin surface over our jobs and object storage.

A v2 job is a job: the routes call the operations /v1 calls (jobs/operations.py) and render the same job
model in the contract's shapes. `mount(app, services)` adds the routes to a FastAPI app (web/surfaces.py).
"""

from comfy_saas.v2.routes import mount

__all__ = ["mount"]
