"""The model cache's bookkeeping over the store: leases keep files in use from eviction, LRU order, delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from modelfiles import blob, sha

from comfy_saas import cli
from comfy_saas.backends.objects import LocalStore
from comfy_saas.backends.twins import LocalDict, LocalQueue
from comfy_saas.config import ModelCacheConfig, Settings
from comfy_saas.errors import Conflict, NotFound
from comfy_saas.jobs.model_cache import ModelCache
from comfy_saas.jobs.services import Services


@pytest.fixture
def cache(tmp_path: Path) -> ModelCache:
    settings = Settings(data_dir=tmp_path, model_cache=ModelCacheConfig(budget_bytes=100 * 1024))
    db = tmp_path / "state.sqlite3"
    svc = Services.over(LocalDict(db), LocalQueue(db), settings, LocalStore(tmp_path / "out", "s", "http://x"))
    return ModelCache(svc)


def cached(cache: ModelCache, seed: str, used_by: str | None = None) -> str:
    """A 48 KiB file in the cache, recorded, optionally used (and released) by a job."""
    data = blob(seed)
    temp = cache.files.temp_path()
    temp.write_bytes(data)
    cache.files.put(temp, sha(data))
    cache.remember(sha(data), len(data), "loras", f"{seed}.safetensors", f"https://x/{seed}", "job", None)
    if used_by:
        cache.leases.release(cache.leases.acquire(sha(data), used_by, cache.now() + 60))
    return sha(data)


def listed(cache: ModelCache) -> set[str]:
    return {row["sha256"] for row in cache.listing()}


def test_eviction_removes_least_recently_used_files_but_never_a_leased_one(cache: ModelCache):
    oldest = cached(cache, "oldest", used_by="a")
    busy = cached(cache, "busy", used_by="b")
    lease = cache.leases.acquire(busy, "running-job", cache.now() + 3600)  # a running job holds it
    newest = cached(cache, "newest", used_by="c")
    assert cache.evict_to_budget(keep=set()) == [oldest]  # 144 KiB > 100 KiB: the LRU file goes, then it fits
    cached(cache, "another", used_by="d")
    assert busy not in cache.evict_to_budget(keep=set())
    assert busy in listed(cache) and cache.files.exists(busy)
    cache.leases.release(lease)
    cached(cache, "last", used_by="e")
    cache.evict_to_budget(keep=set())
    assert busy not in listed(cache) and not cache.files.exists(busy) and cache.record(busy) is None
    assert newest not in listed(cache)  # older than "another" and "last"


def test_a_lease_that_ran_out_does_not_hold_a_file(cache: ModelCache):
    file = cached(cache, "stale")
    cache.leases.acquire(file, "dead-worker", until=cache.now() - 3600)
    assert not cache.leases.in_use(file)
    assert cache.evict(file) == "evicted"


def test_listing_shows_folder_name_size_url_and_last_use(cache: ModelCache):
    file = cached(cache, "shown", used_by="j")
    [row] = cache.listing()
    assert row["sha256"] == file and row["size_bytes"] == 48 * 1024 and row["folder"] == "loras"
    assert row["name"] == "shown.safetensors" and row["url"] == "https://x/shown" and row["last_used_at"]


def test_delete_refuses_a_file_in_use_and_unknown_files(cache: ModelCache):
    file = cached(cache, "del")
    lease = cache.leases.acquire(file, "running-job", cache.now() + 3600)
    with pytest.raises(Conflict, match="in use"):
        cache.delete(file)
    cache.leases.release(lease)
    assert cache.delete(file.upper()) == {"sha256": file, "deleted": True}
    assert listed(cache) == set()
    with pytest.raises(NotFound):
        cache.delete(file)
    with pytest.raises(NotFound):
        cache.delete("not-a-sha")


def test_ops_commands_list_and_delete_cached_models(cache: ModelCache, tmp_path: Path, capsys: pytest.CaptureFixture):
    file = cached(cache, "ops", used_by="j")
    assert cli.main(["ops", "--data-dir", str(tmp_path), "models"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["sha256"], row["folder"], row["name"], row["size_bytes"]) == (file, "loras", "ops.safetensors", 49152)
    assert cli.main(["ops", "--data-dir", str(tmp_path), "models-delete", file]) == 0
    assert json.loads(capsys.readouterr().out) == {"sha256": file, "deleted": True}
    assert cli.main(["ops", "--data-dir", str(tmp_path), "models-delete", file]) == 2
    assert "not_found" in capsys.readouterr().err


class FakeVolume:
    """modal.Volume's consistency model in miniature: each container sees its own mount; commit publishes its
    changes, reload takes everyone's committed state; API calls act on the committed state."""

    def __init__(self) -> None:
        self.committed: dict[str, bytes] = {}

    def mount(self, root: Path) -> FakeVolume:
        handle = FakeVolumeHandle(self, root)
        handle.reload()
        return handle  # type: ignore[return-value]


class FakeVolumeHandle:
    def __init__(self, shared: FakeVolume, mount: Path | None) -> None:
        self.shared, self.mount = shared, mount

    def _local(self) -> dict[str, bytes]:
        files = [p for p in self.mount.rglob("*") if p.is_file()] if self.mount and self.mount.is_dir() else []
        return {str(p.relative_to(self.mount)): p.read_bytes() for p in files}

    def commit(self) -> None:
        self.shared.committed = self._local()

    def reload(self) -> None:
        for rel, data in self.shared.committed.items():
            (self.mount / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.mount / rel).write_bytes(data)
        for rel in set(self._local()) - set(self.shared.committed):
            (self.mount / rel).unlink()

    def listdir(self, path: str) -> list:
        from types import SimpleNamespace

        return [SimpleNamespace(path=rel, size=len(data), mtime=0, type=1)
                for rel, data in self.shared.committed.items() if rel.startswith(path + "/")]

    def remove_file(self, path: str) -> None:
        self.shared.committed.pop(path)


def test_the_volume_layout_commits_after_a_file_lands_and_other_containers_reload(tmp_path: Path):
    from comfy_saas.backends.model_files import VolumeModelFiles

    volume = FakeVolume()
    a = VolumeModelFiles(volume.mount(tmp_path / "a"), tmp_path / "a" / "job-cache", "job-cache", mounted=True)
    b = VolumeModelFiles(volume.mount(tmp_path / "b"), tmp_path / "b" / "job-cache", "job-cache", mounted=True)
    api = VolumeModelFiles(FakeVolumeHandle(volume, None), Path("/unmounted"), "job-cache", mounted=False)
    temp = a.temp_path()
    temp.write_bytes(b"weights")
    a.put(temp, "f" * 64)
    assert not b.exists("f" * 64)  # not until it reloads
    b.refresh()
    assert b.path("f" * 64).read_bytes() == b"weights"
    assert [(x.sha256, x.size) for x in api.list()] == [("f" * 64, 7)]
    api.remove("f" * 64)
    b.refresh()
    assert not b.exists("f" * 64) and api.list() == []
