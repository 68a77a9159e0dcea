"""Files a tool uploads (/upload/image, /upload/mask) go to object storage for the caller; a later prompt that
names one gets it staged to the worker by reference (MediaInput.stored, as v2's assets are): nothing is read or
copied at submit."""

from __future__ import annotations

import io
import re
from typing import Any

from comfy_saas import inputs
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import BodyTooLarge, InvalidInput
from comfy_saas.jobs import keys
from comfy_saas.jobs.request import MediaInput
from comfy_saas.jobs.services import Services

LISTED = 1000  # uploads an upload combo lists
RENAMES_TRIED = 20  # "name (1).png" ... before the upload is refused
_SUBFOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()\-]{0,63}(/[A-Za-z0-9][A-Za-z0-9 ._()\-]{0,63}){0,3}")
_ANNOTATION = re.compile(r"\s*\[(input|output|temp)\]\Z")
FILE_INPUTS = frozenset({"image", "mask", "video", "audio", "file", "upload", "model_file"})


def check_name(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not inputs.file_name_ok(base):
        raise InvalidInput("image: the file name must be plain (letters, digits, space, . _ - ( ))", field="image")
    return base


def check_subfolder(subfolder: str) -> str:
    subfolder = subfolder.strip("/")
    if subfolder and (not inputs.matches(_SUBFOLDER, subfolder) or ".." in subfolder):
        raise InvalidInput("subfolder: up to 4 plain folder names separated by /", field="subfolder")
    return subfolder


def _renamed(name: str, n: int) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem} ({n}).{ext}" if dot else f"{name} ({n})"


def store_upload(svc: Services, owner: str, name: str, subfolder: str, data: bytes, overwrite: bool,
                 content_type: str | None) -> dict[str, str]:
    """Keep an upload; as ComfyUI: the same bytes under a taken name keep it, other bytes get `name (n).ext`.
    The taken names come from one listing and are compared by their digests (small objects), not their bytes."""
    import hashlib

    limit = svc.settings.limits.max_media_bytes
    if len(data) > limit:
        raise BodyTooLarge(f"image: the file is larger than {limit} bytes", field="image")
    name, subfolder = check_name(name), check_subfolder(subfolder)
    digest = hashlib.sha256(data).hexdigest()
    candidates = [name if n == 0 else _renamed(name, n) for n in range(RENAMES_TRIED + 1)]
    taken = set() if overwrite else _taken(svc, owner, subfolder, candidates)
    same = _same_bytes(svc, owner, subfolder, [c for c in candidates if c in taken], data, digest)
    chosen = same or next((c for c in candidates if c not in taken), None)
    if chosen is None:
        raise InvalidInput(f"image: {RENAMES_TRIED} files named like {name!r} exist; choose another name",
                           field="image")
    if chosen != same:
        run_all([lambda: svc.objects.put_bytes(keys.native_upload(owner, subfolder, chosen), data,
                                               content_type or "application/octet-stream"),
                 lambda: svc.objects.put_bytes(keys.native_upload_digest(owner, subfolder, chosen),
                                               digest.encode(), "text/plain")])
    return {"name": chosen, "subfolder": subfolder, "type": "input"}


def _taken(svc: Services, owner: str, subfolder: str, candidates: list[str]) -> set[str]:
    """Which of these names the owner's uploads in `subfolder` already use: one listing (of the names sharing
    the first one's stem in object storage; of the folder in the local store, where keys are folders)."""
    from comfy_saas.backends.objects import LocalStore

    folder = keys.native_upload(owner, subfolder, "")
    stem = "" if isinstance(svc.objects, LocalStore) else candidates[0].rpartition(".")[0] or candidates[0]
    listed = {k.removeprefix(folder) for k in svc.objects.list_keys(folder + stem)}
    return {c for c in candidates if c in listed}


def _same_bytes(svc: Services, owner: str, subfolder: str, taken: list[str], data: bytes, digest: str) -> str | None:
    """The first taken name holding these bytes: its digest read (one batch); an upload from before digests
    were kept is read whole."""
    if not taken:
        return None
    digests = run_all([lambda c=c: svc.objects.read_if_exists(keys.native_upload_digest(owner, subfolder, c))
                       for c in taken])
    for candidate, kept in zip(taken, digests, strict=True):
        if kept is not None and kept.decode() == digest:
            return candidate
        if kept is None and svc.objects.read_if_exists(keys.native_upload(owner, subfolder, candidate)) == data:
            return candidate
    return None


def listing(svc: Services, owner: str) -> list[str]:
    """The owner's uploads as LoadImage names them (`subfolder/name`), at most LISTED of them."""
    prefix = keys.native_upload(owner, "", "")
    return sorted(k.removeprefix(prefix) for k in svc.objects.list_keys(prefix))[:LISTED]


def read_upload(svc: Services, owner: str, name: str, subfolder: str) -> bytes | None:
    return svc.objects.read_if_exists(keys.native_upload(owner, check_subfolder(subfolder), check_name(name)))


def _reference(value: Any) -> tuple[str, str] | None:
    """(subfolder, name) when a node input names a file the way LoadImage's widget does."""
    if not isinstance(value, str) or not value or len(value) > 300:
        return None
    value = _ANNOTATION.sub("", value)
    subfolder, _, name = value.rpartition("/")
    if not inputs.file_name_ok(name) or "." not in name:
        return None
    try:
        return check_subfolder(subfolder), name
    except InvalidInput:
        return None


def _staged_names(refs: list[tuple[str, str]]) -> list[str]:
    """One plain, distinct file name per (subfolder, name): `sub_dir_name.png`, renamed `... (n).png` when two
    references would flatten to the same name (a/b.png and a_b.png)."""
    taken: set[str] = set()
    names = []
    for subfolder, name in refs:
        flat = f"{subfolder.replace('/', '_')}_{name}" if subfolder else name
        candidate, n = flat, 0
        while candidate in taken:
            n += 1
            candidate = _renamed(flat, n)
        taken.add(candidate)
        names.append(candidate)
    return names


def _present(svc: Services, key: str) -> bool:
    """Whether the upload exists, its bytes unread (the worker reads them at run time): a listing of keys
    starting with it (a prefix in object storage; a folder in the local store, so there the file is looked at)."""
    from comfy_saas.backends.objects import LocalStore

    if isinstance(svc.objects, LocalStore):
        return svc.objects.path(key).is_file()
    return key in svc.objects.list_keys(key)


def stage(svc: Services, owner: str, prompt: dict[str, Any]) -> tuple[dict[str, Any], list[MediaInput]]:
    """The prompt with its references to this owner's uploads renamed to plain names, and those uploads as
    media staged by reference (MediaInput.stored: nothing is copied); inputs naming no upload stay as they are
    (the worker may have the file). One batch of listings."""
    wanted: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node_id, node in prompt.items():
        node_inputs = node.get("inputs") if isinstance(node, dict) else None
        for field, value in node_inputs.items() if isinstance(node_inputs, dict) else ():
            ref = _reference(value) if field in FILE_INPUTS else None
            if ref is not None:
                wanted.setdefault(ref, []).append((node_id, field))
    refs = list(wanted)[: svc.settings.limits.max_media_items]
    where = [keys.native_upload(owner, *r) for r in refs]
    found = run_all([lambda k=k: _present(svc, k) for k in where])
    present = [(r, k) for r, k, ok in zip(refs, where, found, strict=True) if ok]
    media, staged = [], {k: dict(v) if isinstance(v, dict) else v for k, v in prompt.items()}
    for (ref, key), name in zip(present, _staged_names([r for r, _ in present]), strict=True):
        media.append(MediaInput.stored(name, key, 0))  # the size is not known without reading it; unused
        for node_id, field in wanted[ref]:
            staged[node_id] = {**staged[node_id], "inputs": {**staged[node_id]["inputs"], field: name}}
    return staged, media


def with_mask(original: bytes, mask: bytes) -> bytes:
    """ComfyUI's /upload/mask: the original image with the mask's alpha as its alpha channel, as PNG."""
    base, painted = _image(original, "original_ref"), _image(mask, "image")
    try:
        with base, painted:
            image = base.convert("RGBA")
            image.putalpha(painted.convert("RGBA").getchannel("A").resize(image.size))
            out = io.BytesIO()
            image.save(out, format="PNG", compress_level=4)
            return out.getvalue()
    except (OSError, ValueError):  # a truncated or corrupt image fails only when decoded
        raise InvalidInput("image: the mask or the original image could not be decoded", field="image") from None


def _image(data: bytes, field: str) -> Any:
    """The bytes opened as an image (size checked against the decompression-bomb limit); 400 naming the field."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.size  # noqa: B018 - opening reads the header; a bomb raises here
        return image
    except (OSError, ValueError, Image.DecompressionBombError, Image.UnidentifiedImageError):
        raise InvalidInput(f"{field}: not an image this server can read", field=field) from None
