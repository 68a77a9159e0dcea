"""/history, /queue, GET /prompt and /api/jobs: the caller's recent prompts, read from their index (never a scan).

A finished prompt's entry never changes, so this process keeps the newest ones it built (a bounded map) and never
reads that prompt again; each owner's reading (their index, their unfinished jobs) is kept for LIST_TTL_S and
answers /history, /queue and GET /prompt alike, so a tool polling ten times a second costs the store about two
bounded batches a second."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from comfy_saas.backends.parallel import run_all
from comfy_saas.errors import InvalidInput
from comfy_saas.jobs import operations
from comfy_saas.jobs.model import Status
from comfy_saas.jobs.services import Services
from comfy_saas.jobs.store import MAX_PAGE
from comfy_saas.native import catalogue, records, views
from comfy_saas.native.records import Prompt

LIST_TTL_S = 0.5
UPLOADS_TTL_S = 10.0  # the owner's upload names /object_info lists (this process's uploads drop it at once)
ENTRIES_KEPT = 2000
DEFAULT_ITEMS = 64


class HistoryCache:
    """Finished prompts' entries by id, and each owner's latest reading of their prompts for LIST_TTL_S."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._graphs: OrderedDict[str, tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()  # never change
        self._settled: OrderedDict[str, Prompt] = OrderedDict()  # finished prompts: they never change either
        self._lists: dict[tuple[str, str, int], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def entry(self, prompt_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(prompt_id)

    def keep(self, prompt_id: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries[prompt_id] = entry
            while len(self._entries) > ENTRIES_KEPT:
                self._entries.popitem(last=False)

    def graph(self, prompt_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        with self._lock:
            return self._graphs.get(prompt_id)

    def keep_graph(self, prompt_id: str, graph: tuple[dict[str, Any], dict[str, Any]]) -> None:
        with self._lock:
            _bounded_put(self._graphs, prompt_id, graph)

    def settled(self, prompt_id: str) -> Prompt | None:
        with self._lock:
            return self._settled.get(prompt_id)

    def keep_settled(self, prompts: list[Prompt]) -> None:
        with self._lock:
            for p in prompts:
                if p.job is not None and p.job.terminal:
                    _bounded_put(self._settled, p.id, p)

    def listing(self, key: tuple[str, str, int]) -> Any:
        with self._lock:
            expires, body = self._lists.get(key, (0.0, None))
            return body if time.monotonic() < expires else None

    def forget(self, owner: str) -> None:
        """Drop the owner's listings (after a submit or a cancel, so their next read sees it)."""
        with self._lock:
            for key in [k for k in self._lists if k[0] == owner]:
                del self._lists[key]

    def keep_listing(self, key: tuple[str, str, int], body: Any, ttl_s: float = LIST_TTL_S) -> None:
        with self._lock:
            if len(self._lists) > ENTRIES_KEPT:
                self._lists.clear()
            self._lists[key] = (time.monotonic() + ttl_s, body)


def _bounded_put(kept: OrderedDict[str, Any], key: str, value: Any) -> None:
    kept[key] = value
    while len(kept) > ENTRIES_KEPT:
        kept.popitem(last=False)


def max_items(raw: str | None) -> int:
    """?max_items=N, at most MAX_PAGE (the editor asks for 200: it gets the newest MAX_PAGE)."""
    if raw is None or raw == "":
        return DEFAULT_ITEMS
    if not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
        raise InvalidInput("max_items must be a whole number, 1 or more", field="max_items")
    return min(int(raw), MAX_PAGE)


def _workflows(svc: Services, prompts: list[Prompt], cache: HistoryCache | None = None
               ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each prompt's workflow and kept extra_data, in one batch; with `cache`, each is read once per process
    (a job's workflow never changes), so polling /queue reads only prompts it has not seen."""
    if cache is not None:
        todo = [p for p in prompts if cache.graph(p.id) is None]
        for p, graph in zip(todo, _workflows(svc, todo), strict=True):
            cache.keep_graph(p.id, graph)
        return [cache.graph(p.id) or ({}, {}) for p in prompts]
    having = [p for p in prompts if p.has_extra]
    got = run_all([*(lambda p=p: operations.job_workflow(svc, p.id) for p in prompts),
                   *(lambda p=p: records.extras(svc, [p])[0] for p in having)])
    kept = dict(zip([p.id for p in having], got[len(prompts):], strict=True))
    return [(wf, kept.get(p.id, {})) for p, wf in zip(prompts, got[:len(prompts)], strict=True)]


def entries(svc: Services, cache: HistoryCache, prompts: list[Prompt]) -> dict[str, dict[str, Any]]:
    """History entries of the finished ones among `prompts` (built once per process, then kept)."""
    done = [p for p in prompts if p.job is not None and p.job.terminal]
    todo = [p for p in done if cache.entry(p.id) is None]
    if todo:
        nodes = _nodes(svc, todo)
        for p, (wf, kept) in zip(todo, _workflows(svc, todo), strict=True):
            cache.keep(p.id, views.history_entry(p, wf, catalogue.output_nodes(wf, nodes), kept))
    return {p.id: e for p in done if (e := cache.entry(p.id)) is not None}


def _nodes(svc: Services, prompts: list[Prompt]) -> dict[str, Any] | None:
    pool = prompts[0].job.pool if prompts and prompts[0].job else None
    return operations.catalogue(svc, pool, needed=False)


def unsettled(svc: Services, cache: HistoryCache, owner: str, limit: int) -> tuple[list[str], list[Prompt]]:
    """The owner's newest prompt ids, and those of them not known finished, read (the finished ones this process
    built an entry for are not read again: an owner's index lists only prompts that owner claimed)."""
    ids = records.newest_ids(svc, owner, limit)
    return ids, records.load(svc, owner, [i for i in ids if cache.entry(i) is None])


def snapshot(svc: Services, cache: HistoryCache, owner: str) -> tuple[list[str], list[Prompt]]:
    """The owner's newest MAX_PAGE prompt ids and their unfinished prompts, as one reading kept for LIST_TTL_S, so
    /history and /queue always agree (a prompt gone from the queue is in the history); the finished ones among
    them have their entries built."""
    key = (owner, "snapshot", MAX_PAGE)
    if (found := cache.listing(key)) is None:
        ids, prompts = unsettled(svc, cache, owner, MAX_PAGE)
        entries(svc, cache, prompts)
        found = (ids, [p for p in prompts if p.job is not None and not p.job.terminal])
        cache.keep_listing(key, found)
    return found


def history(svc: Services, cache: HistoryCache, owner: str, limit: int) -> dict[str, Any]:
    """GET /history: the caller's finished prompts among their newest `limit`, oldest first as ComfyUI orders
    them."""
    ids, _ = snapshot(svc, cache, owner)
    return {i: e for i in reversed(ids[:limit]) if (e := cache.entry(i)) is not None}


def history_of(svc: Services, cache: HistoryCache, owner: str, prompt_id: str) -> dict[str, Any]:
    """GET /history/{id}: {} until the prompt is done (or when it is not the caller's)."""
    if (entry := cache.entry(prompt_id)) is not None:
        return {prompt_id: entry} if entry["prompt"][1] == prompt_id and _mine(svc, owner, prompt_id) else {}
    prompt = records.one(svc, owner, prompt_id) if len(prompt_id) <= 64 else None
    return entries(svc, cache, [prompt]) if prompt is not None else {}


def _mine(svc: Services, owner: str, prompt_id: str) -> bool:
    return (records.record(svc, prompt_id) or {}).get("owner") == owner


def active(svc: Services, cache: HistoryCache, owner: str) -> list[Prompt]:
    """The caller's queued and running prompts among their newest."""
    return snapshot(svc, cache, owner)[1]


def queue(svc: Services, cache: HistoryCache, owner: str) -> dict[str, Any]:
    """GET /queue: ComfyUI's running and pending tuples, oldest first."""
    prompts = list(reversed(active(svc, cache, owner)))
    nodes = _nodes(svc, prompts)
    items = [views.queue_item(p, wf, catalogue.output_nodes(wf, nodes), kept)
             for p, (wf, kept) in zip(prompts, _workflows(svc, prompts, cache), strict=True)]
    running = [i for i, p in zip(items, prompts, strict=True) if p.job and p.job.status is Status.RUNNING]
    return {"queue_running": running, "queue_pending": [i for i in items if i not in running]}


def queue_info(svc: Services, cache: HistoryCache, owner: str) -> dict[str, Any]:
    """GET /prompt."""
    return {"exec_info": {"queue_remaining": len(active(svc, cache, owner))}}


def recent_kept(svc: Services, cache: HistoryCache, owner: str) -> list[Prompt]:
    """The owner's newest MAX_PAGE prompts, newest first, as one reading kept for LIST_TTL_S; finished ones are
    read once per process (they never change), so a poll reads the index and the unfinished jobs only."""
    key = (owner, "recent", MAX_PAGE)
    if (found := cache.listing(key)) is None:
        ids = records.newest_ids(svc, owner, MAX_PAGE)
        loaded = {p.id: p for p in records.load(svc, owner, [i for i in ids if cache.settled(i) is None])}
        cache.keep_settled(list(loaded.values()))
        found = [p for i in ids if (p := loaded.get(i) or cache.settled(i)) is not None]
        cache.keep_listing(key, found)
    return found


def jobs(svc: Services, cache: HistoryCache, owner: str, query: dict[str, str]) -> dict[str, Any]:
    """GET /api/jobs: the caller's newest prompts in ComfyUI's jobs shape (status filter, offset, limit)."""
    wanted = {s.strip() for s in (query.get("status") or "").split(",") if s.strip()}
    if unknown := wanted - set(views.JOBS_STATUS.values()):
        raise InvalidInput(f"status: unknown {', '.join(sorted(unknown))}; use {', '.join(views.JOBS_STATUS.values())}",
                           field="status")
    offset, limit = _number(query.get("offset"), "offset", 0), _number(query.get("limit"), "limit", MAX_PAGE)
    window = recent_kept(svc, cache, owner)
    found = [p for p in window if p.job is not None]
    found = [p for p in found if not wanted or views.JOBS_STATUS[p.job.status] in wanted]  # type: ignore[union-attr]
    # Pages come from the newest MAX_PAGE; unfiltered, the total is the owner's count (the newest one's number).
    total = len(found) if wanted or not window else max(len(found), window[0].number)
    if query.get("sort_order", "desc") == "asc":
        found.reverse()
    page = found[offset: offset + limit]
    return {"jobs": [views.jobs_item(p) for p in page],
            "pagination": {"offset": offset, "limit": limit, "total": total,
                           "has_more": offset + len(page) < total}}


def job(svc: Services, cache: HistoryCache, owner: str, prompt_id: str) -> dict[str, Any] | None:
    """GET /api/jobs/{id}, or None when it is not the caller's (a finished one is read once per process)."""
    prompt = cache.settled(prompt_id)
    if prompt is None:
        prompt = records.one(svc, owner, prompt_id) if len(prompt_id) <= 64 else None
        cache.keep_settled([prompt] if prompt is not None else [])
    if prompt is None or prompt.owner != owner or prompt.job is None:
        return None
    [(wf, kept)] = _workflows(svc, [prompt], cache)
    detail = {"outputs": views.outputs_by_node(prompt.job),
              "workflow": {"prompt": wf, "extra_data": views.extra_data(prompt, kept)}}
    if prompt.job.terminal:
        ok = prompt.job.status is Status.COMPLETED
        detail["execution_status"] = {"status_str": "success" if ok else "error", "completed": ok,
                                      "messages": views.status_messages(prompt.job)}
    return views.jobs_item(prompt, detail)


def _number(raw: str | None, field: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) > 10**6:
        raise InvalidInput(f"{field} must be a whole number", field=field)
    if field == "limit" and int(raw) < 1:
        raise InvalidInput("limit must be a positive integer", field="limit")
    return int(raw)
