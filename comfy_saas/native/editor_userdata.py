"""The editor's per-user files (ComfyUI's `userdata`: saved workflows, settings, user.css, ...) in object
storage, so they outlive every container: a user's saved workflows are there after the API scaled to zero.

Each file is a folder of versions, `userdata/{owner}/{path, base64url}/{modified}-{created}-{size}/data`: a
write adds a version and then drops the older ones, so a reader never sees half a file and a listing is one
LIST that reads no file. The owner is the native surface's: a key's user, or a key bound to none (each such
key has its own files, as it has its own prompts and uploads).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, NamedTuple

from comfy_saas.backends.objects import guess_content_type
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import Conflict, InvalidInput, NotFound
from comfy_saas.jobs import keys
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services
from comfy_saas.native.auth import owner_of

SETTINGS_FILE = "comfy.settings.json"  # where ComfyUI keeps a user's settings, among their files
# Our image has no ComfyUI template gallery, so the editor's first-run "Get started with a template" dialog would
# open empty: a user starts as one who has seen it (storing their own value still wins).
DEFAULT_SETTINGS = {"Comfy.TutorialCompleted": True}
MAX_PATH_BYTES = 180  # base64 of it stays one folder name (255 bytes) on every filesystem


class UserFile(NamedTuple):
    path: str
    modified: int  # ms since the epoch, as ComfyUI's full_info
    created: int
    size: int
    key: str


def check_path(path: Any, field: str = "file") -> str:
    """A relative path inside the user's files: no empty, `.` or `..` parts, no backslash, at most 180 bytes."""
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"{field}: a file path is required", field=field)
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidInput(f"{field}: at most {MAX_PATH_BYTES} bytes", field=field)
    parts = path.split("/")
    if "\\" in path or "\0" in path or any(p in {"", ".", ".."} for p in parts):
        raise InvalidInput(f"{field}: must be a relative path without empty, '.' or '..' parts", field=field)
    return path


def _scope(caller: Caller) -> str:
    return keys.userdata_scope(owner_of(caller))


def _newest(files: list[UserFile]) -> dict[str, UserFile]:
    newest: dict[str, UserFile] = {}
    for f in files:
        if f.path not in newest or (f.modified, f.key) > (newest[f.path].modified, newest[f.path].key):
            newest[f.path] = f
    return newest


def _parsed(scope: str, object_keys: list[str]) -> list[UserFile]:
    return [UserFile(*parsed, k) for k in object_keys if (parsed := keys.userdata_parse(scope, k))]


def _versions(svc: Services, scope: str, path: str) -> list[UserFile]:
    return _parsed(scope, svc.objects.list_keys(keys.userdata_file(scope, path)))


def _current(svc: Services, scope: str, path: str) -> UserFile | None:
    return _newest(_versions(svc, scope, path)).get(path)


def _drop(svc: Services, versions: list[UserFile]) -> None:
    run_all([lambda v=v: svc.objects.delete_prefix(keys.userdata_version_folder(v.key)) for v in versions])


def read(svc: Services, caller: Caller, path: str) -> tuple[bytes, UserFile]:
    """The file's bytes (NotFound when the user has no such file)."""
    scope, path = _scope(caller), check_path(path)
    for _ in range(2):  # a writer may drop the version just listed: list again once
        current = _current(svc, scope, path)
        if current is None:
            break
        data = svc.objects.read_if_exists(current.key)
        if data is not None:
            return data, current
    raise NotFound(f"no file {path!r}")


def write(svc: Services, caller: Caller, path: str, data: bytes, overwrite: bool = True) -> UserFile:
    """Store the file (Conflict when it exists and overwrite is false); limits on size and file count."""
    limits, scope, path = svc.settings.limits, _scope(caller), check_path(path)
    if len(data) > limits.max_userdata_bytes:
        raise InvalidInput(f"file: at most {limits.max_userdata_bytes} bytes", field="file")
    old = _versions(svc, scope, path)
    if old and not overwrite:
        raise Conflict(f"file {path!r} already exists")
    if not old and len(_all(svc, scope)) >= limits.max_userdata_files:
        raise InvalidInput(f"file: at most {limits.max_userdata_files} files per user", field="file")
    now = time.time_ns() // 1_000_000
    created = min((v.created for v in old), default=now)
    key = keys.userdata_version(scope, path, now, created, len(data))
    svc.objects.put_bytes(key, bytes(data), guess_content_type(path))
    _drop(svc, [v for v in old if v.key != key])
    return UserFile(path, now, created, len(data), key)


def delete(svc: Services, caller: Caller, path: str) -> None:
    """Remove the file (NotFound when there is none)."""
    scope, path = _scope(caller), check_path(path)
    if not svc.objects.delete_prefix(keys.userdata_file(scope, path)):
        raise NotFound(f"no file {path!r}")


def move(svc: Services, caller: Caller, source: str, dest: str, overwrite: bool = False) -> UserFile:
    """Rename a file (NotFound without the source, Conflict when dest exists and overwrite is false)."""
    check_path(dest, "dest")
    data, _ = read(svc, caller, source)
    moved = write(svc, caller, dest, data, overwrite)
    if source != dest:
        delete(svc, caller, source)
    return moved


def _all(svc: Services, scope: str) -> dict[str, UserFile]:
    return _newest(_parsed(scope, svc.objects.list_keys(scope)))


def listing(svc: Services, caller: Caller, directory: str, recurse: bool = False, full_info: bool = False,
            split: bool = False) -> list[Any]:
    """ComfyUI's GET /userdata: the files under `directory` as relative paths, [path, *parts] (split), or
    {path, size, modified, created} (full_info); NotFound when no file is under it."""
    folder = check_path(directory.strip("/"), "dir") + "/"
    found = sorted((f.path[len(folder):], f) for f in _all(svc, _scope(caller)).values()
                   if f.path.startswith(folder))
    if not found:
        raise NotFound(f"no directory {directory!r}")
    chosen = [(rel, f) for rel, f in found if recurse or "/" not in rel]
    if full_info:
        return [{"path": rel, "size": f.size, "modified": f.modified, "created": f.created} for rel, f in chosen]
    return [[rel, *rel.split("/")] if split else rel for rel, _ in chosen]


def file_info(f: UserFile, full_info: bool) -> Any:
    """What ComfyUI answers for a stored or moved file: its path, or {path, size, modified, created}."""
    return {"path": f.path, "size": f.size, "modified": f.modified, "created": f.created} if full_info else f.path


# --- settings: one JSON object in the user's comfy.settings.json, as ComfyUI keeps them ------------------


def settings(svc: Services, caller: Caller) -> dict[str, Any]:
    """Every setting of the user, over DEFAULT_SETTINGS."""
    return {**DEFAULT_SETTINGS, **_stored_settings(svc, caller)}


def _stored_settings(svc: Services, caller: Caller) -> dict[str, Any]:
    try:
        data, _ = read(svc, caller, SETTINGS_FILE)
        loaded = json.loads(data)
    except (NotFound, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


_settings_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _settings_lock(caller: Caller) -> threading.Lock:
    with _locks_lock:
        return _settings_locks.setdefault(_scope(caller), threading.Lock())


def store_settings(svc: Services, caller: Caller, values: Any) -> None:
    """Merge these settings into the user's (a JSON object of id -> value). The editor stores several at once
    on start: one user's merges take turns in this process, so none is lost to another's read-modify-write."""
    if not isinstance(values, dict):
        raise InvalidInput("settings: must be a JSON object of setting id -> value", field="settings")
    with _settings_lock(caller):
        merged = {**_stored_settings(svc, caller), **values}
        write(svc, caller, SETTINGS_FILE, json.dumps(merged, indent=4).encode())
