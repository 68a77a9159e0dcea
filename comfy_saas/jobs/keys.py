"""Every key format: Dict keys for jobs and their bookkeeping, queue partitions, and object keys.

Nothing else builds a key. Object keys start with the job's creation date, so retention deletes whole
days by prefix without reading any record (records expire on their own on Modal).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

ALL = "all"
METRICS = "metrics"  # the index scope of counter shards


def job(job_id: str) -> str:
    return f"job:{job_id}"


def payload(job_id: str) -> str:
    return f"payload:{job_id}"


def progress(job_id: str) -> str:
    """The running attempt's heartbeat, progress and recent progress events (written by its owner only)."""
    return f"progress:{job_id}"


def preview(job_id: str) -> str:
    """The running attempt's latest preview frame (written by its owner only, at most as often as progress)."""
    return f"preview:{job_id}"


def claim(job_id: str, n: int) -> str:
    """The decision that moved a job from the record at claim n-1: who made it, when, and its outcome."""
    return f"claim:{job_id}:{n}"


def cancel(job_id: str) -> str:
    return f"cancel:{job_id}"


def idempotency(user_id: str | None, key: str) -> str:
    # Hashed so user ids and keys may contain the separator without colliding.
    digest = hashlib.sha256(f"{user_id or ''}\0{key}".encode()).hexdigest()
    return f"idem:{digest}"


def scope(user_id: str | None) -> str:
    return ALL if user_id is None else f"user:{user_id}"


def index_slot(scope_name: str, n: int) -> str:
    return f"idx:{scope_name}:{n}"


def index_head(scope_name: str) -> str:
    return f"idxhead:{scope_name}"


def active_slot(scope_name: str, n: int) -> str:
    return f"active:{scope_name}:{n}"


def webhook(job_id: str) -> str:
    return f"webhook:{job_id}"


def webhook_attempt(job_id: str, n: int) -> str:
    return f"whattempt:{job_id}:{n}"


def metrics_shard(shard: str) -> str:
    """One process's counters (written by that process only)."""
    return f"metrics:{shard}"


def maintenance(name: str) -> str:
    """State the sweeper and cleanup keep between runs (cursors, watch lists, leases)."""
    return f"maint:{name}"


def taken_slot(pool: str) -> str:
    """The listing slot (in the `all` scope) of the latest job a worker of the pool started."""
    return maintenance(f"takenslot:{pool}")


def object_info(pool: str) -> str:
    return f"object_info:{pool}"


def catalogue_object(pool: str) -> str:
    """A pool's node catalogue in object storage: what answers when the Dict's copy has expired."""
    return f"catalogues/{pool}.json"


# --- ComfyUI's native API (comfy_saas/native): per-prompt routing state, never part of a job record ------------


def native_prompt(prompt_id: str) -> str:
    """Who submitted a native prompt (the job of the same id), from which client_id, and its queue number."""
    return f"nativeprompt:{prompt_id}"


def native_extra(prompt_id: str) -> str:
    """The extra_data a native prompt was sent with (extra_pnginfo: the editor's workflow), as /history gives it."""
    return f"nativeextra:{prompt_id}"


def native_scope(owner: str) -> str:
    """The index scope listing one owner's native prompts, newest first (their /history and /queue)."""
    return f"native:{owner}"


def native_upload(owner: str, subfolder: str, name: str) -> str:
    """A file uploaded through /upload/image for one owner, kept until deleted (prompts name it)."""
    return f"native/uploads/{owner}/{subfolder + '/' if subfolder else ''}{name}"


def native_upload_digest(owner: str, subfolder: str, name: str) -> str:
    """The sha256 of that upload, so a later upload under its name is compared without reading it."""
    return f"native/upload-digests/{owner}/{subfolder + '/' if subfolder else ''}{name}"


def template_scope(user_id: str | None) -> str:
    """Whose workflow templates: one user's, or the shared set (managed by keys not bound to a user). It is
    their folder in object storage, where templates live rather than in the Dict, whose entries Modal drops
    after 7 days untouched."""
    return "templates/shared/" if user_id is None else f"templates/users/{user_id}/"


def template_folder(scope: str, name: str) -> str:
    """A folder per template, so deleting one by prefix cannot touch another whose name starts the same."""
    return f"{scope}{name}/"


def template_object(scope: str, name: str) -> str:
    """One template: its record and its workflow as stored."""
    return f"{template_folder(scope, name)}template.json"


def template_name(object_key: str) -> str:
    """The name in a key made by template_object."""
    return object_key.rsplit("/", 2)[-2]


def handover(key: str, token: str) -> str:
    """Who moved a held key (a slot, a lock) off its value with `token`: won once (jobs/held_keys.py)."""
    return f"handover:{key}:{token}"


def drain_slot(pool: str, n: int) -> str:
    """Slot n (0 .. ceiling-1) of a pool's drains: spawned, idle or busy, and until when (wakeups.py)."""
    return f"drain:{pool}:{n}"


def partition(pool: str) -> str:
    return pool


def object_day(created: datetime) -> str:
    """The folder of everything stored for jobs created that day (UTC)."""
    return f"jobs/{created:%Y-%m-%d}/"


def object_prefix(job_id: str, created: datetime) -> str:
    return f"{object_day(created)}{job_id}/"


def output_folder(job_id: str, created: datetime, node_id: str) -> str:
    """Where one node's outputs of a job are stored."""
    return f"{object_prefix(job_id, created)}out/{node_id}/"


def output(job_id: str, created: datetime, node_id: str, filename: str) -> str:
    return f"{output_folder(job_id, created, node_id)}{filename}"


def input_object(job_id: str, created: datetime, name: str) -> str:
    """Large submitted data (media, big workflows) kept out of the Dict."""
    return f"{object_prefix(job_id, created)}in/{name}"


# --- the model cache (files jobs name by URL, content-addressed by sha256) -------------------------


def model(sha256: str) -> str:
    """What is known about a cached file: folder, name, size, source URL without credentials."""
    return f"model:{sha256}"


def model_used(sha256: str) -> str:
    """When a job last used the file (the eviction order), apart from the record so users never rewrite it."""
    return f"modelused:{sha256}"


def model_source(url: str) -> str:
    """The sha256 a URL gave when it was downloaded without one (hashed: URLs are long)."""
    return f"modelsrc:{hashlib.sha256(url.encode()).hexdigest()}"


def model_ident(sha256: str | None, url: str) -> str:
    """What one download claim is for: the content when it is known, else the URL."""
    return sha256 or "url-" + hashlib.sha256(url.encode()).hexdigest()[:40]


def model_claim(ident: str, generation: int) -> str:
    """The one download of a file in flight; a dead downloader's claim is taken over by the next generation."""
    return f"modeldl:{ident}:{generation}"


def model_lease(sha256: str, n: int) -> str:
    """Numbered slots: lease n says a job uses the file until a time (eviction reads the recent ones)."""
    return f"modeluse:{sha256}:{n}"


def model_lease_head(sha256: str) -> str:
    return f"modelusehead:{sha256}"


def model_eviction(sha256: str) -> str:
    """Held while one evictor removes the file; users that see it wait and re-check."""
    return f"modelevict:{sha256}"


# --- Comfy API v2 assets (records over blake3-addressed blobs, per account, in object storage) -------


def asset_account(user_id: str | None) -> str:
    """Whose assets: a user's, or the operator's (keys not bound to a user). Their folder in object storage:
    assets are durable, so they live there rather than in the Dict."""
    return "assets/operator/" if user_id is None else f"assets/users/{user_id}/"


def asset_record(account: str, asset_id: str) -> str:
    """One asset record (a folder of its own, so deleting it by prefix touches nothing else)."""
    return f"{account}records/{asset_id}/record.json"


def asset_blob_folder(account: str, hex_digest: str) -> str:
    """A blob of the account: its bytes, what is known about them, and a marker per record over them."""
    return f"{account}blobs/{hex_digest}/"


def asset_blob(account: str, hex_digest: str) -> str:
    return f"{asset_blob_folder(account, hex_digest)}data"


def asset_blob_meta(account: str, hex_digest: str) -> str:
    """Written after the bytes, so its presence means the blob is whole."""
    return f"{asset_blob_folder(account, hex_digest)}meta.json"


def asset_blob_refs(account: str, hex_digest: str) -> str:
    return f"{asset_blob_folder(account, hex_digest)}refs/"


def asset_blob_ref(account: str, hex_digest: str, asset_id: str) -> str:
    return f"{asset_blob_refs(account, hex_digest)}{asset_id}/ref"


def asset_name(account: str, name: str) -> str:
    """The account's latest asset uploaded under a file name (how plain names in a workflow are found)."""
    return f"{account}names/{hashlib.sha256(name.encode()).hexdigest()}/entry.json"


def output_asset(created: datetime, asset_id: str) -> str:
    """Which job output an output asset id stands for; under the job's day, so retention deletes it too."""
    return f"{object_day(created)}v2-assets/{asset_id}.json"


# --- the editor's per-user files (ComfyUI's userdata: saved workflows, settings) ----------------------


def userdata_scope(owner: str) -> str:
    """Whose editor files: the native surface's owner (a key's user, or a key bound to none)."""
    return f"userdata/{owner}/"


def userdata_file(scope: str, path: str) -> str:
    """The folder of one file's versions. The path is one segment (base64url), so a file's folder never holds
    another file's and deleting it by prefix cannot touch a file whose name starts the same."""
    return f"{scope}{base64.urlsafe_b64encode(path.encode()).decode().rstrip('=')}/"


def userdata_version(scope: str, path: str, modified_ms: int, created_ms: int, size: int) -> str:
    """One written version of a file; its name carries what a listing shows, so a listing reads no file."""
    return f"{userdata_file(scope, path)}{modified_ms}-{created_ms}-{size}/data"


def userdata_version_folder(object_key: str) -> str:
    """The folder of the version a key made by userdata_version names (what deleting that version removes)."""
    return object_key.rsplit("/", 1)[0] + "/"


def userdata_parse(scope: str, object_key: str) -> tuple[str, int, int, int] | None:
    """(path, modified_ms, created_ms, size) of a key made by userdata_version; None for any other key."""
    parts = object_key[len(scope):].split("/") if object_key.startswith(scope) else []
    stamp = parts[1].split("-") if len(parts) == 3 and parts[2] == "data" else []
    if len(stamp) != 3 or not all(s.isdigit() for s in stamp):
        return None
    try:
        path = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)).decode()
    except ValueError:
        return None
    return path, int(stamp[0]), int(stamp[1]), int(stamp[2])


def extension_index(pool: str) -> str:
    """The list of a pool's custom nodes' web files (ComfyUI's EXTENSION_WEB_DIRS), published with its
    catalogue, so the editor serves them without a GPU running."""
    return f"catalogues/{pool}/extensions.json"


def extension_file(pool: str, path: str) -> str:
    """One web file of a custom node pack, `path` as the editor asks for it: `<pack>/<file under its web dir>`."""
    return f"catalogues/{pool}/extensions/{path}"
