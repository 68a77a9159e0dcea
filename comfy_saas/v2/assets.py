"""Comfy API v2 assets: UUID records over blobs addressed by the blake3 hash the server computes, per account.

An account is the API key's user, or the operator for keys not bound to one. Everything lives in object storage
(durable; Modal drops Dict entries untouched for 7 days), under the account's folder (keys.asset_account):

    records/{id}/record.json     the record: hash, size, content type, file path, tags, created_at
    blobs/{hex}/data, meta.json  the bytes once per account (dedup), and what is known about them; meta.json
                                 is written last, so its presence means the blob is whole
    blobs/{hex}/refs/{id}/ref    one marker per record over the blob: the last record deleted takes the blob
    names/{sha256(name)}/...     the latest record uploaded under a file name (plain names in a workflow)

Blobs are never shared between accounts, so a hash only ever finds the caller's own bytes, and a miss and
"not yours" cannot be told apart. Output assets (jobs' outputs) are in v2/output_assets.py.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from comfy_saas.backends.objects import PRESIGN_MAX_S
from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import BlobNotFound, HashMismatch, InvalidInput, NotFound
from comfy_saas.jobs import keys
from comfy_saas.jobs.operations import Caller
from comfy_saas.jobs.services import Services

HASH = re.compile(r"^blake3:([0-9a-f]{64})\Z")
CONTENT_TYPE = re.compile(r"^[\w.+\-]+/[\w.+\-]+(\s*;[ -~]*)?\Z")
MAX_TAGS, MAX_TAG_CHARS, MAX_PATH_CHARS = 32, 128, 512
EXPIRES_IN = (60, 604_800)  # the contract's bounds for the retention override (accepted, not applied)


@dataclass
class Received:
    """An uploaded file as received: spooled to `path`, its blake3 and size computed on the way in."""

    path: Path
    size: int
    hex_digest: str
    fields: dict[str, list[str]]


@dataclass(frozen=True)
class Content:
    """Where an asset's bytes are: the object key, with what to serve them as."""

    key: str
    size: int
    content_type: str
    file_name: str


def account(caller: Caller) -> str:
    """The caller's account folder."""
    return keys.asset_account(caller.user_id)


def hex_of(text: Any) -> str | None:
    """The hex digest of a `blake3:<hex>` string, None when it is not one."""
    match = HASH.match(text.strip().lower()) if isinstance(text, str) else None
    return match.group(1) if match else None


def timestamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def signed_url(svc: Services, key: str) -> tuple[str, str]:
    """(a fresh download URL for the object, when it expires)."""
    expires_s = min(svc.settings.presign_expiry_s, PRESIGN_MAX_S)
    return svc.objects.url(key, expires_s), timestamp(svc.store.clock() + timedelta(seconds=expires_s))


# --- checking what a client sends ---------------------------------------------------------------------


def check_file_path(value: Any, field: str = "file_path") -> str:
    """A relative placement path (`photo.png`, `models/loras/x.safetensors`): no `..`, no absolute path."""
    if not isinstance(value, str) or not value or len(value) > MAX_PATH_CHARS:
        raise InvalidInput(f"{field}: must be a path of 1-{MAX_PATH_CHARS} characters", field=field)
    parts = value.split("/")
    if value.startswith(("/", "~")) or "\\" in value or any(p in {"", ".", ".."} for p in parts) or any(
            ord(c) < 32 or c == "\x7f" for c in value):
        raise InvalidInput(f"{field}: must be a relative path like photo.png (no '..', '\\', empty segments or "
                           "control characters)", field=field)
    return value


def check_tags(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_TAGS or not all(
            isinstance(t, str) and 0 < len(t) <= MAX_TAG_CHARS for t in value):
        raise InvalidInput(f"tags: must be a list of at most {MAX_TAGS} strings of 1-{MAX_TAG_CHARS} characters",
                           field="tags")
    return value


def check_expires_in(value: Any) -> None:
    """The retention override is validated as the contract bounds it; assets here do not expire (ignored)."""
    low, high = EXPIRES_IN
    if value is None:
        return
    try:
        seconds = int(value) if isinstance(value, str) else value
    except ValueError:
        seconds = None
    if not isinstance(seconds, int) or isinstance(seconds, bool) or not low <= seconds <= high:
        raise InvalidInput(f"expires_in: must be a whole number of seconds from {low} to {high}", field="expires_in")


def upload_fields(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The text parts of a multipart upload, checked: content_type, file_path, expected_hash?, tags."""
    one = {name: values[0] for name, values in fields.items() if values}
    for name in ("content_type", "file_path"):
        if name not in one:
            raise InvalidInput(f"{name}: is required", field=name)
    content_type = one["content_type"].strip()
    if len(content_type) > 255 or not CONTENT_TYPE.match(content_type):
        raise InvalidInput("content_type: must be a media type like image/png", field="content_type")
    expected = one.get("expected_hash")
    if expected is not None and hex_of(expected) is None:
        raise InvalidInput("expected_hash: must be blake3:<64 hexadecimal digits>", field="expected_hash")
    check_expires_in(one.get("expires_in"))
    return {"content_type": content_type, "file_path": check_file_path(one["file_path"]),
            "expected": hex_of(expected) if expected else None, "tags": check_tags(fields.get("tags", []))}


# --- records and blobs ---------------------------------------------------------------------------------


def _read_json(svc: Services, key: str) -> dict[str, Any] | None:
    raw = svc.objects.read_if_exists(key)
    return None if raw is None else json.loads(raw)


def _put_json(svc: Services, key: str, value: dict[str, Any]) -> None:
    svc.objects.put_bytes(key, json.dumps(value, separators=(",", ":")).encode(), "application/json")


def base_name(file_path: str | None) -> str | None:
    return None if not file_path else file_path.rsplit("/", 1)[-1]


def view(svc: Services, record: dict[str, Any], created_new: bool | None = None) -> dict[str, Any]:
    """The contract's Asset for a record, with a fresh URL."""
    url, url_expires_at = signed_url(svc, keys.asset_blob(record["account"], record["hash"].removeprefix("blake3:")))
    body = {k: record.get(k) for k in ("id", "hash", "size_bytes", "content_type", "file_path", "created_at")}
    body.update(url=url, url_expires_at=url_expires_at, expires_at=None, tags=record.get("tags", []))
    if created_new is not None:
        body["created_new"] = created_new
    return body


def _mint(svc: Services, acct: str, hex_digest: str, meta: dict[str, Any], file_path: str | None,
          tags: list[str], content_type: str | None = None, new_blob: bool = False) -> dict[str, Any]:
    """A new record over a blob the account has: its ref marker and the record first (with the blob's meta.json
    for a new blob), the name entry last (a name entry always points at a record that was written)."""
    record = {"id": str(uuid.uuid4()), "account": acct, "hash": f"blake3:{hex_digest}",
              "size_bytes": meta["size_bytes"], "content_type": content_type or meta["content_type"],
              "file_path": file_path, "tags": tags, "created_at": timestamp(svc.store.clock())}
    writes = [lambda: svc.objects.put_bytes(keys.asset_blob_ref(acct, hex_digest, record["id"]), b"{}"),
              lambda: _put_json(svc, keys.asset_record(acct, record["id"]), record)]
    if new_blob:
        writes.append(lambda: _put_json(svc, keys.asset_blob_meta(acct, hex_digest), meta))
    run_all(writes)
    if name := base_name(file_path):
        _put_json(svc, keys.asset_name(acct, name), record)
    return record


def store_upload(svc: Services, caller: Caller, received: Received) -> tuple[dict[str, Any], bool]:
    """Mint an asset over uploaded bytes; (Asset, whether the blob is new). The declared hash is verified
    first: a mismatch stores nothing."""
    fields = upload_fields(received.fields)
    if fields["expected"] is not None and fields["expected"] != received.hex_digest:
        raise HashMismatch(f"the uploaded bytes hash to blake3:{received.hex_digest}, not the expected_hash sent")
    acct, hex_digest = account(caller), received.hex_digest
    meta = _read_json(svc, keys.asset_blob_meta(acct, hex_digest))
    created_new = meta is None
    if meta is None:
        svc.objects.put_file(keys.asset_blob(acct, hex_digest), received.path, fields["content_type"])
        meta = {"size_bytes": received.size, "content_type": fields["content_type"],
                "created_at": timestamp(svc.store.clock())}
    record = _mint(svc, acct, hex_digest, meta, fields["file_path"], fields["tags"], fields["content_type"],
                   new_blob=created_new)
    return view(svc, record, created_new), created_new


def from_hash(svc: Services, caller: Caller, body: Any) -> tuple[dict[str, Any], bool]:
    """Mint an asset over a blob the caller's account already has; (Asset, minted). An identical record (same
    hash and file path, the latest under that name) is returned as it is. BlobNotFound for any other hash."""
    if not isinstance(body, dict) or not isinstance(body.get("hash"), str):
        raise InvalidInput("hash: is required (blake3:<hex>)", field="hash")
    file_path = None if body.get("file_path") is None else check_file_path(body["file_path"])
    tags = check_tags(body.get("tags", []))
    check_expires_in(body.get("expires_in"))
    acct, hex_digest = account(caller), hex_of(body["hash"])
    if hex_digest is None:
        raise BlobNotFound("no blob with this hash that this API key may use")
    name = base_name(file_path)
    meta, latest = run_all([lambda: _read_json(svc, keys.asset_blob_meta(acct, hex_digest)),
                            lambda: _read_json(svc, keys.asset_name(acct, name)) if name else None])
    if meta is None:
        raise BlobNotFound("no blob with this hash that this API key may use")
    if latest and latest.get("hash") == f"blake3:{hex_digest}" and latest.get("file_path") == file_path:
        return view(svc, latest, created_new=False), False
    return view(svc, _mint(svc, acct, hex_digest, meta, file_path, tags), created_new=False), True


def blob_usable(svc: Services, caller: Caller, hash_text: str) -> bool:
    """Whether the caller's account has a whole blob with this hash (HEAD by-hash)."""
    hex_digest = hex_of(hash_text)
    return hex_digest is not None and svc.objects.read_if_exists(
        keys.asset_blob_meta(account(caller), hex_digest)) is not None


def _uploaded_id(asset_id: str) -> str | None:
    """The canonical form of an uploaded asset's id (a UUID4), None for anything else."""
    try:
        parsed = uuid.UUID(asset_id)
    except (ValueError, TypeError, AttributeError):
        return None
    return str(parsed) if parsed.version == 4 else None


def record_by_id(svc: Services, user_id: str | None, asset_id: str) -> dict[str, Any] | None:
    """An uploaded asset's record in that account, None when there is none."""
    canonical = _uploaded_id(asset_id)
    if canonical is None:
        return None
    return _read_json(svc, keys.asset_record(keys.asset_account(user_id), canonical))


def records_by_name(svc: Services, user_id: str | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """The account's latest record uploaded under each file name, for those that have one (one read each, in
    parallel)."""
    acct = keys.asset_account(user_id)
    found = run_all([lambda n=n: _read_json(svc, keys.asset_name(acct, n)) for n in names])
    return {n: r for n, r in zip(names, found, strict=True) if r}


def get_asset(svc: Services, caller: Caller, asset_id: str) -> dict[str, Any]:
    """The Asset (an upload of the caller's account, or an output of a job the caller sees); NotFound else."""
    from comfy_saas.v2 import output_assets

    if output_assets.is_output_id(asset_id):
        return output_assets.output_view(svc, caller, asset_id)
    record = record_by_id(svc, caller.user_id, asset_id)
    if record is None:
        raise NotFound("no such asset")
    return view(svc, record)


def content(svc: Services, caller: Caller, asset_id: str) -> Content:
    """Where the asset's bytes are, for serving them."""
    from comfy_saas.v2 import output_assets

    if output_assets.is_output_id(asset_id):
        return output_assets.output_content(svc, caller, asset_id)
    record = record_by_id(svc, caller.user_id, asset_id)
    if record is None:
        raise NotFound("no such asset")
    key = keys.asset_blob(record["account"], record["hash"].removeprefix("blake3:"))
    name = base_name(record.get("file_path")) or record["id"]
    return Content(key, record["size_bytes"], record["content_type"], name)


def delete_asset(svc: Services, caller: Caller, asset_id: str) -> None:
    """Delete the record; the blob goes with the account's last record over it. An output asset is held by
    its job (AssetInUse) for as long as the job is retained."""
    from comfy_saas.v2 import output_assets

    if output_assets.is_output_id(asset_id):
        output_assets.refuse_delete(svc, caller, asset_id)
    record = record_by_id(svc, caller.user_id, asset_id)
    if record is None:
        raise NotFound("no such asset")
    acct, hex_digest = record["account"], record["hash"].removeprefix("blake3:")
    if name := base_name(record.get("file_path")):
        entry_key = keys.asset_name(acct, name)
        entry = _read_json(svc, entry_key)
        if entry and entry.get("id") == record["id"]:
            svc.objects.delete_prefix(entry_key.rsplit("/", 1)[0] + "/")
    run_all([lambda: svc.objects.delete_prefix(keys.asset_record(acct, record["id"]).rsplit("/", 1)[0] + "/"),
             lambda: svc.objects.delete_prefix(keys.asset_blob_ref(acct, hex_digest, record["id"]).rsplit("/", 1)[0]
                                               + "/")])
    if not svc.objects.list_keys(keys.asset_blob_refs(acct, hex_digest)):
        svc.objects.delete_prefix(keys.asset_blob_folder(acct, hex_digest))
