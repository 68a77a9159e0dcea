"""The custom nodes' web files (ComfyUI's `EXTENSION_WEB_DIRS`: each node pack's WEB_DIRECTORY) that the
editor loads, kept in object storage per pool beside its catalogue, so the editor gets them while no GPU runs.

A worker publishes them with its catalogue (`publish`, with ComfyUI's {pack name: web dir}); the editor lists
the `.js` files at GET /extensions and serves every file at `/extensions/{pack}/{file}`, as ComfyUI does.
The frontend's own `extensions/` folder comes first; a pool that published nothing adds nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from comfy_saas.backends.objects import guess_content_type
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import BackendError
from comfy_saas.jobs import keys
from comfy_saas.jobs.services import Services

MAX_FILES = 2_000  # web files one pool publishes (a large node pack has a few hundred)


def publish(svc: Services, pool: str, web_dirs: dict[str, Path]) -> list[str]:
    """Upload every file under each pack's web dir, then the index naming them; the published paths."""
    files = [(f"{name}/{p.relative_to(root).as_posix()}", p) for name, root in sorted(web_dirs.items())
             for p in sorted(Path(root).rglob("*")) if p.is_file()][:MAX_FILES]
    run_all([lambda rel=rel, p=p: svc.objects.put_file(keys.extension_file(pool, rel), p, guess_content_type(p.name))
             for rel, p in files])
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
