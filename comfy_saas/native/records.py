"""The native API's own state, beside the jobs it submits (never inside them): per prompt, who submitted it, from
which client_id and its queue number (`nativeprompt:{id}`); per owner, numbered slots listing their prompts
newest first (the store's SlotIndex, scope `native:{owner}`), which /history, /queue and the WebSocket read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job
from comfy_saas.jobs.services import Services


@dataclass(frozen=True)
class Prompt:
    """A native prompt: its routing record and its job (None while the job is not there)."""

    id: str
    owner: str
    client_id: str | None
    number: int
    created_ms: int
    job: Job | None
    has_extra: bool = False  # extra_data beyond client_id is kept apart (extras()), read only where shown


def claim(svc: Services, prompt_id: str, owner: str, client_id: str | None, created_ms: int) -> bool:
    """Take the prompt id for this owner; False when it is taken (exactly one claim wins, as job ids must)."""
    record = {"owner": owner, "client_id": client_id, "number": 0, "created_ms": created_ms}
    return svc.store.d.put(keys.native_prompt(prompt_id), record, skip_if_exists=True)


def record(svc: Services, prompt_id: str) -> dict[str, Any] | None:
    return svc.store.d.get(keys.native_prompt(prompt_id))


def release(svc: Services, prompt_id: str) -> None:
    """Give a claimed id back when its submission was refused (nothing lists it yet)."""
    svc.store.d.pop(keys.native_prompt(prompt_id), None)


def listed(svc: Services, prompt_id: str, owner: str, client_id: str | None, created_ms: int,
           extra: dict[str, Any] | None = None) -> int:
    """List a submitted prompt under its owner; its queue number (the slot), recorded with it (and its
    extra_data, kept beside the record)."""
    number = svc.store.index.append(keys.native_scope(owner), prompt_id)
    record = {"owner": owner, "client_id": client_id, "number": number, "created_ms": created_ms,
              **({"extra": True} if extra else {})}
    calls = [lambda: svc.store.d.put(keys.native_prompt(prompt_id), record)]
    if extra:
        calls.append(lambda: svc.store.d.put(keys.native_extra(prompt_id), extra))
    run_all(calls)
    return number


def extras(svc: Services, prompts: list[Prompt]) -> list[dict[str, Any]]:
    """Each prompt's kept extra_data ({} for none), one round trip for those that have it."""
    having = [p for p in prompts if p.has_extra]
    got = dict(zip([p.id for p in having],
                   run_all([lambda p=p: svc.store.d.get(keys.native_extra(p.id)) for p in having]), strict=True))
    return [got.get(p.id) or {} for p in prompts]


def prompt_of(prompt_id: str, rec: dict[str, Any] | None, job: Job | None, owner: str) -> Prompt | None:
    """The prompt when its record belongs to `owner`; None otherwise (another owner's id says nothing)."""
    if rec is None or rec.get("owner") != owner:
        return None
    return Prompt(prompt_id, owner, rec.get("client_id"), int(rec.get("number") or 0),
                  int(rec.get("created_ms") or 0), job, bool(rec.get("extra")))


def load(svc: Services, owner: str, prompt_ids: list[str]) -> list[Prompt]:
    """The owner's prompts among these ids, with their jobs, in one round trip (others' are left out)."""
    calls = []
    for pid in prompt_ids:
        calls += [lambda p=pid: record(svc, p), lambda p=pid: svc.store.get(p)]
    got = run_all(calls)
    found = [prompt_of(pid, got[2 * i], got[2 * i + 1], owner) for i, pid in enumerate(prompt_ids)]
    return [p for p in found if p is not None]


def one(svc: Services, owner: str, prompt_id: str) -> Prompt | None:
    """One prompt of this owner, or None."""
    found = load(svc, owner, [prompt_id])
    return found[0] if found else None


def newest_ids(svc: Services, owner: str, limit: int) -> list[str]:
    """The owner's newest prompt ids (at most `limit`), newest first."""
    scope = keys.native_scope(owner)
    head, seen = svc.store.index.newest(scope, limit)
    missing = [n for n in range(head, max(0, head - limit), -1) if n not in seen]
    if missing:
        seen.update(zip(missing, svc.store.index.slots(scope, missing), strict=True))
    ids = [seen.get(n) for n in range(head, max(0, head - limit), -1)]
    return list(dict.fromkeys(i for i in ids if i))

