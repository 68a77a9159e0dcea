"""The custom nodes' web files (ComfyUI's `EXTENSION_WEB_DIRS`: each node pack's WEB_DIRECTORY) that the
editor loads, kept in object storage per pool beside its catalogue, so the editor gets them while no GPU runs.

A worker publishes them with its catalogue (`publish`, with ComfyUI's {pack name: web dir}, or
`publish_from_comfyui`, with its ComfyUI's URL); the editor lists the `.js` files at GET /extensions and serves
every file at `/extensions/{pack}/{file}`, as ComfyUI does.
The frontend's own `extensions/` folder comes first; a pool that published nothing adds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

from comfy_saas.backends.objects import guess_content_type
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import BackendError, InvalidInput
from comfy_saas.jobs import keys
from comfy_saas.jobs.services import Services

MAX_FILES = 2_000  # web files one pool publishes (a large node pack has a few hundred)
MAX_FILE_BYTES = 8 * 1024 * 1024


def publish(svc: Services, pool: str, web_dirs: dict[str, Path]) -> list[str]:
    """Upload every file under each pack's web dir, then the index naming them; the published paths."""
    files = [(f"{name}/{p.relative_to(root).as_posix()}", p) for name, root in sorted(web_dirs.items())
             for p in sorted(Path(root).rglob("*")) if p.is_file()][:MAX_FILES]
    return _store(svc, pool, [(rel, p.read_bytes) for rel, p in files])


def publish_from_comfyui(svc: Services, pool: str, comfy_url: str, timeout_s: float = 10.0) -> list[str]:
    """Copy the custom nodes' scripts a running ComfyUI lists at its GET /extensions (the frontend's own
    `extensions/core/` left out); what a worker can do beside publishing its catalogue. ComfyUI lists scripts
    only: a pack's other web files (styles, images) need `publish` with its web dir."""
    base = comfy_url.rstrip("/")
    listed = json.loads(_fetch(f"{base}/extensions", timeout_s))
    wanted = [u for u in listed if isinstance(u, str) and u.startswith("/extensions/")
              and not u.startswith("/extensions/core/")][:MAX_FILES]
    return _store(svc, pool, [(unquote(u[len("/extensions/"):]), lambda u=u: _fetch(base + u, timeout_s))
                              for u in wanted])


def _fetch(url: str, timeout_s: float) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # the worker's own ComfyUI, by URL
        data = response.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(f"extension file {url!r}: at most {MAX_FILE_BYTES} bytes", field="extensions")
    return data


def _store(svc: Services, pool: str, files: list[tuple[str, Callable[[], bytes]]]) -> list[str]:
    """Upload the files (each read when its upload runs), then the index naming them."""
    run_all([lambda rel=rel, read=read: svc.objects.put_bytes(keys.extension_file(pool, rel), read(),
                                                              guess_content_type(rel)) for rel, read in files])
    paths = [rel for rel, _ in files]
    svc.objects.put_bytes(keys.extension_index(pool), json.dumps({"files": paths}).encode(), "application/json")
    return paths


def published(svc: Services, pool: str) -> list[str]:
    """The pool's published web files (`{pack}/{file}`); none when it published nothing or storage fails."""
    try:
        raw = svc.objects.read_if_exists(keys.extension_index(pool))
        files = json.loads(raw)["files"] if raw else []
    except (BackendError, ValueError, KeyError, TypeError):
        return []
    return [f for f in files if isinstance(f, str)]


def script_urls(svc: Services, pool: str, frontend_root: Path | None) -> list[str]:
    """ComfyUI's GET /extensions: the URL of every extension script, the frontend's own and the pool's."""
    own = [] if frontend_root is None else sorted(
        "/" + p.relative_to(frontend_root).as_posix() for p in (frontend_root / "extensions").rglob("*.js"))
    return own + [f"/extensions/{quote(f)}" for f in published(svc, pool) if f.endswith(".js")]


def read(svc: Services, pool: str, path: str) -> bytes | None:
    """One published web file, None when the pool published no such file."""
    return svc.objects.read_if_exists(keys.extension_file(pool, path)) if path in published(svc, pool) else None
