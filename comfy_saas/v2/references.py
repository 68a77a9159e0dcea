"""Asset references in a submitted workflow, resolved at submit into media staged to the worker.

Two forms are resolved, both only against the caller's own account:
- a `core/ASSET` object (`{"__type": "core/ASSET", "info": {"id", "hash"?, "file_path"?}}`) as any node input,
  or inside a list input: `info.id` is authoritative; a malformed one, or one that names no asset of the
  caller's, refuses the submission with MissingAsset (422 `missing_asset`);
- a plain file name in an input that ComfyUI opens from its input folder (workflows/files.FILE_INPUTS, e.g.
  LoadImage.image) that matches the latest asset the caller uploaded under that name. A name matching none is
  left alone (ComfyUI may have the file itself). Other inputs are never matched, so a prompt or a model name
  that happens to equal an upload's name is not rewritten.

Each asset becomes one media item read from object storage by the worker like /v1 media (MediaInput.stored:
nothing is copied), and every reference to it is rewritten to that item's name.
"""

from __future__ import annotations

from typing import Any

from comfy_saas import inputs
from comfy_saas.errors import InvalidInput, MissingAsset
from comfy_saas.jobs import keys
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.request import MediaInput
from comfy_saas.jobs.services import Services
from comfy_saas.v2 import assets
from comfy_saas.workflows.edits import copy_graph
from comfy_saas.workflows.files import FILE_INPUTS

ASSET_TYPE = "core/ASSET"
MAX_NAME_LOOKUPS = 64  # plain names looked up per submission (one object read each, in parallel)


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__type") == ASSET_TYPE


def _slots(workflow: dict[str, Any]) -> list[tuple[dict[str, Any], str | int, Any, bool]]:
    """Every (container, key, value, opened-from-input) where a reference may sit: node inputs and the items
    of list inputs."""
    found = []
    for node in workflow.values():
        node_inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(node_inputs, dict):
            continue
        file_inputs = FILE_INPUTS.get(node.get("class_type"), ())
        for name, value in node_inputs.items():
            found.append((node_inputs, name, value, name in file_inputs))
            if isinstance(value, list) and any(is_reference(v) for v in value):
                found += [(value, i, v, False) for i, v in enumerate(value)]
    return found


def _reference_id(value: dict[str, Any]) -> str:
    info = value.get("info")
    asset_id = info.get("id") if isinstance(info, dict) else None
    if not isinstance(asset_id, str) or not asset_id:
        raise MissingAsset("workflow: a core/ASSET reference needs info.id (the asset's id)",
                           {"reason": "malformed_reference"})
    return asset_id


def _plain_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = value.removesuffix(" [input]")
    return name if inputs.file_name_ok(name) else None


def _records(svc: Services, caller: Caller, ids: list[str], names: list[str]) -> tuple[dict, dict]:
    """The caller's records for the referenced ids (all must exist) and for the names that have one."""
    from comfy_saas.backends.parallel import run_all

    found = run_all([lambda i=i: assets.record_by_id(svc, caller.user_id, i) for i in ids]
                    + [lambda: assets.records_by_name(svc, caller.user_id, names[:MAX_NAME_LOOKUPS])])
    by_id = dict(zip(ids, found[:-1], strict=True))
    missing = [i for i, r in by_id.items() if r is None]
    if missing:
        raise MissingAsset(f"workflow: no asset {missing[0]!r} of this API key's account (an id from "
                           f"POST /api/v2/assets)", {"asset_ids": missing})
    return by_id, found[-1]


def _staged_name(record: dict[str, Any], taken: set[str]) -> str:
    """The file name ComfyUI gets: the upload's own name when it is a plain one not taken, else one from the id."""
    name = assets.base_name(record.get("file_path")) or ""
    if not inputs.file_name_ok(name) or name in taken:
        suffix = name.rsplit(".", 1)[-1] if "." in name else "bin"
        name = f"{record['id']}.{suffix}" if inputs.file_name_ok(f"x.{suffix}") else f"{record['id']}.bin"
    return name


def resolve_references(svc: Services, caller: Caller, workflow: dict[str, Any]
                       ) -> tuple[dict[str, Any], list[MediaInput]]:
    """(the workflow with every asset reference rewritten to a staged file name, the media to stage)."""
    if not isinstance(workflow, dict):
        return workflow, []
    workflow = copy_graph(workflow)
    slots = _slots(workflow)
    ids = list(dict.fromkeys(_reference_id(v) for _, _, v, _ in slots if is_reference(v)))
    names = list(dict.fromkeys(n for _, _, v, opened in slots if opened and (n := _plain_name(v))))
    if not ids and not names:
        return workflow, []
    by_id, by_name = _records(svc, caller, ids, names)
    staged: dict[str, tuple[str, dict[str, Any]]] = {}  # asset id -> (staged name, record)
    for container, key, value, opened in slots:
        record = by_id.get(_reference_id(value)) if is_reference(value) else (
            by_name.get(_plain_name(value) or "") if opened else None)
        if record is None:
            continue
        if record["id"] not in staged:
            taken = {n for n, _ in staged.values()}
            plain = _plain_name(value)
            name = plain if plain and not is_reference(value) and plain not in taken else _staged_name(record, taken)
            staged[record["id"]] = (name, record)
        container[key] = staged[record["id"]][0]
    return workflow, _media(svc, staged.values())


def _media(svc: Services, staged: Any) -> list[MediaInput]:
    items = [MediaInput.stored(name, keys.asset_blob(r["account"], r["hash"].removeprefix("blake3:")), r["size_bytes"])
             for name, r in staged]
    limit = svc.settings.limits.max_media_items
    if len(items) > limit:
        raise InvalidInput(f"workflow: references {len(items)} assets; the limit is {limit} per job",
                           field="workflow")
    return items
