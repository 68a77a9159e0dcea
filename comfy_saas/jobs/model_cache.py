"""The shared model cache's bookkeeping in the Dict: what is cached, who downloads what, eviction, listing.

    model:{sha}            folder, name, size, source URL (without credentials), when it was downloaded
    modelused:{sha}        when a job last used it (leases: model_leases.py)
    modelsrc:{url hash}    the sha256 a URL produced (so a job that gives none still finds it cached)
    modeldl:{ident}:{gen}  the one download in flight (put with skip_if_exists; renewed while it runs; a claim
                           not renewed within claim_ttl_s is taken over by generation gen+1)
    modelevict:{sha}       held while one evictor removes the file (a held key: jobs/held_keys.py)

The blobs themselves are `svc.model_files` (a folder, or the models Volume on Modal). The worker's step that
uses all this is runner/models.py; operators list and delete through the functions at the end.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from comfy_saas.backends.model_files import LocalModelFiles
from comfy_saas.backends.parallel import map_all, run_all
from comfy_saas.errors import Conflict, NotFound
from comfy_saas.jobs import held_keys, keys
from comfy_saas.jobs.model_leases import CLOCK_SKEW_S, Leases
from comfy_saas.jobs.request import SHA256_PATTERN
from comfy_saas.jobs.services import Services

log = logging.getLogger(__name__)

_EVICTION_HOLD_S = 120.0  # an evictor that has not finished by then gives up (its mark lapses)
_LEASE_GRACE_S = 300.0


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class ModelCache:
    """The cache as every container sees it: records, download claims, leases and eviction."""

    def __init__(self, svc: Services) -> None:
        self.d = svc.store.d
        self.settings = svc.settings
        self.cfg = svc.settings.model_cache
        self.files: LocalModelFiles = svc.model_files  # type: ignore[assignment]
        self._clock = svc.store.clock
        self.leases = Leases(self.d, self.now, svc.settings.limits.max_timeout_s + _LEASE_GRACE_S)

    def now(self) -> float:
        return self._clock().timestamp()

    # --- records ---------------------------------------------------------------------------------

    def record(self, sha256: str) -> dict[str, Any] | None:
        return self.d.get(keys.model(sha256))

    def sha_for_url(self, url: str) -> str | None:
        """The content a URL gave when it was last downloaded."""
        return self.d.get(keys.model_source(url))

    def remember(self, sha256: str, size: int, folder: str, name: str, url: str, job_id: str,
                 url_key: str | None) -> None:
        """Record a file that just landed (and which content its URL gave, when url_key is that URL)."""
        entry = {"sha256": sha256, "size": size, "folder": folder, "name": name, "url": url,
                 "downloaded_at": self.now(), "downloaded_by": job_id}
        self.d.update({keys.model(sha256): entry, **({keys.model_source(url_key): sha256} if url_key else {})})

    def evicting(self, sha256: str) -> bool:
        """Whether an evictor holds the file right now (a lapsed mark does not count)."""
        mark = self.d.get(keys.model_eviction(sha256))
        return mark is not None and mark["until"] > self.now()

    # --- download claims -----------------------------------------------------------------------------

    def current_claim(self, ident: str) -> tuple[int, dict[str, Any] | None]:
        """The first generation that is free (entry None) or alive; lapsed ones belonged to dead downloaders."""
        gen, now = 0, self.now()
        while (entry := self.d.get(keys.model_claim(ident, gen))) is not None and entry["until"] <= now:
            gen += 1
        return gen, entry

    def try_claim(self, ident: str, gen: int, owner: str, url: str) -> dict[str, Any] | None:
        """Become the one downloader of generation gen; the claim's body when won, else None."""
        body = {"owner": owner, "url": url, "state": "downloading", "bytes": 0, "total": None,
                "until": self.now() + self.cfg.claim_ttl_s}
        return body if self.d.put(keys.model_claim(ident, gen), body, skip_if_exists=True) else None

    def renew(self, ident: str, gen: int, body: dict[str, Any]) -> None:
        """The downloader is alive: push the claim's lapse time out and publish its progress."""
        body["until"] = self.now() + self.cfg.claim_ttl_s
        self.d.put(keys.model_claim(ident, gen), body)

    def done(self, ident: str, gen: int) -> None:
        """The file is in place and recorded: the claim goes (a later miss starts a fresh one)."""
        self.d.pop(keys.model_claim(ident, gen), None)

    def failed(self, ident: str, gen: int, body: dict[str, Any], message: str, details: list[dict]) -> None:
        """Tell the jobs waiting on this download why it failed; the failure lapses like a claim."""
        self.d.put(keys.model_claim(ident, gen), {**body, "state": "failed", "error": message, "details": details,
                                                  "until": self.now() + self.cfg.claim_ttl_s})

    # --- eviction ----------------------------------------------------------------------------------

    def evict(self, sha256: str) -> str:
        """Remove one file unless a job uses it: 'evicted', 'in_use' or 'busy' (another evictor has it)."""
        key, token = keys.model_eviction(sha256), uuid.uuid4().hex
        mark = {"owner": token, "until": self.now() + _EVICTION_HOLD_S, "token": token}
        if not self._take_mark(key, mark):
            return "busy"
        try:
            if self.leases.in_use(sha256):
                return "in_use"
            if self.now() > mark["until"] - CLOCK_SKEW_S / 10:
                return "busy"  # too slow to be sure users still wait on the mark
            self.files.remove(sha256)
            run_all([lambda: self.d.pop(keys.model(sha256), None), lambda: self.d.pop(keys.model_used(sha256), None)])
            log.info("model.evicted %s", sha256, extra={"event": "model.evicted", "phase": "download"})
            return "evicted"
        finally:  # ours only: an evictor slower than its mark may find another's there by now
            held_keys.release(self.d, key, token, self.now())

    def _take_mark(self, key: str, mark: dict[str, Any]) -> bool:
        """Hold a file's eviction mark: a free one, or a dead evictor's, taken over as a held key (two evictors
        finding it lapsed cannot both win)."""
        if self.d.put(key, mark, skip_if_exists=True):
            return True
        held = self.d.get(key)
        if held_keys.token_of(held) == mark["token"]:
            return True  # our own write, reported lost by a retried call
        if held is None or held["until"] > self.now():
            return False
        return held_keys.replace(self.d, key, held, mark, self.now())

    def evict_to_budget(self, keep: set[str]) -> list[str]:
        """Evict least recently used files until the cache fits its budget; never `keep` or a file in use."""
        self.files.sweep_temp(self.cfg.download_timeout_s + CLOCK_SKEW_S)
        blobs = self.files.list()
        total = sum(b.size for b in blobs)
        if total <= self.cfg.budget_bytes:
            return []
        used = map_all(self.leases.last_used, [b.sha256 for b in blobs])
        order = sorted(zip(blobs, used, strict=True), key=lambda bu: bu[1] if bu[1] is not None else bu[0].mtime)
        evicted = []
        for blob, _ in order:
            if total <= self.cfg.budget_bytes:
                break
            if blob.sha256 not in keep and self.evict(blob.sha256) == "evicted":
                total -= blob.size
                evicted.append(blob.sha256)
        return evicted

    # --- operators ---------------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Every cached file, most recently used first."""
        blobs = self.files.list()
        got = map_all(lambda b: (self.record(b.sha256), self.leases.last_used(b.sha256)), blobs)
        rows = []
        for blob, (record, used) in zip(blobs, got, strict=True):
            record = record or {}
            rows.append({"sha256": blob.sha256, "size_bytes": blob.size, "folder": record.get("folder"),
                         "name": record.get("name"), "url": record.get("url"),
                         "downloaded_at": _iso(record.get("downloaded_at")), "last_used_at": _iso(used)})
        return sorted(rows, key=lambda r: r["last_used_at"] or r["downloaded_at"] or "", reverse=True)

    def delete(self, sha256: str) -> dict[str, Any]:
        """Remove one cached file; NotFound when unknown, Conflict while a job uses it."""
        sha256 = sha256.lower()
        if not SHA256_PATTERN.match(sha256) or (self.record(sha256) is None
                                         and all(b.sha256 != sha256 for b in self.files.list())):
            raise NotFound(f"no cached model file with sha256 {sha256!r}")
        outcome = self.evict(sha256)
        if outcome == "in_use":
            raise Conflict(f"model file {sha256} is in use by a running job; try again when it has finished")
        if outcome == "busy":
            raise Conflict(f"model file {sha256} is being evicted right now")
        return {"sha256": sha256, "deleted": True}
