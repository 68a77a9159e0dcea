"""The standard surfaces over our jobs: Comfy API v2 (`/api/v2/...`) and ComfyUI's native API (`/prompt`, `/ws`,
`/history`, ... and the editor). Both need path parameters and WebSockets on one base URL, so on Modal they are
served by one `@modal.asgi_app` function (app.py), and locally by the same server as `/v1` (web/http.py).
Each surface is a thin translation over jobs/operations.py; nothing here keeps state of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from comfy_saas.jobs.services import Services


def mount_surfaces(app: FastAPI, services: Callable[[], Services]) -> None:
    """Register every surface's routes on `app` (the native API last: it serves the editor at `/`)."""
    from comfy_saas import v2
    from comfy_saas.native.editor import mount_editor
    from comfy_saas.native.routes import mount as mount_native

    v2.mount(app, services)
    mount_native(app, services)
    mount_editor(app, services)


def surfaces_app(services: Callable[[], Services]) -> FastAPI:
    """The ASGI app Modal serves from one function: every surface over the services `services()` builds."""
    from comfy_saas.web import fast_lane

    app = FastAPI(title="comfy-saas surfaces", version="0.1.0")
    mount_surfaces(app, services)
    fast_lane.install(app)
    return app
