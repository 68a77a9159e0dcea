"""One contract for Dict/Queue: the local SQLite twins in both profiles, and Modal's own when credentials
exist; then what only the Modal profile does (expiry, partition clearing, size limits), on an injected clock."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfy_saas.backends.twins import LocalDict, LocalQueue, Profile, RequestSizeError

ROOT = Path(__file__).resolve().parent.parent


def _modal_credentials() -> bool:
    has_env = bool(os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"))
    return has_env or (Path.home() / ".modal.toml").exists()


@pytest.fixture(params=["local", "modal-profile", "modal"])
def pair(request: pytest.FixtureRequest, db_path: Path):
    if request.param != "modal":
        profile = Profile() if request.param == "local" else Profile.modal(rpc_ms=1)
        yield LocalDict(db_path, "contract", profile), LocalQueue(db_path, "contract", profile=profile)
        return
    if not _modal_credentials():
        pytest.skip("no Modal credentials (MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or ~/.modal.toml): "
                    "the contract ran on the local twins only")
    import modal

    with modal.Dict.ephemeral() as d, modal.Queue.ephemeral() as q:
        yield d, q


# --- Dict ---------------------------------------------------------------------------------------


def test_dict_get_put_contains(pair):
    d, _ = pair
    assert d.get("missing") is None
    assert d.get("missing", "fallback") == "fallback"
    assert d.put("k", {"a": [1, 2, {"b": None}]}) is True
    assert d["k"] == {"a": [1, 2, {"b": None}]}
    assert d.contains("k") and "k" in d and "other" not in d
    d["k"] = "replaced"
    assert d.get("k") == "replaced"


def test_dict_put_skip_if_exists_keeps_first_value(pair):
    d, _ = pair
    assert d.put("once", 1, skip_if_exists=True) is True
    assert d.put("once", 2, skip_if_exists=True) is False
    assert d["once"] == 1


def test_dict_missing_keys_raise_key_error(pair):
    d, _ = pair
    with pytest.raises(KeyError):
        d["nope"]
    with pytest.raises(KeyError):
        d.pop("nope")
    with pytest.raises(KeyError):
        del d["nope"]
    assert d.pop("nope", "dflt") == "dflt"


def test_dict_pop_and_delete_remove(pair):
    d, _ = pair
    d.update({"a": 1, "b": 2}, c=3)
    assert d.pop("a") == 1 and "a" not in d
    del d["b"]
    assert sorted(d.keys()) == ["c"]


def test_dict_iteration_len_clear(pair):
    d, _ = pair
    d.update({"x": 1, "y": 2})
    assert sorted(d.keys()) == ["x", "y"]
    assert sorted(d.values()) == [1, 2]
    assert sorted(d.items()) == [("x", 1), ("y", 2)]
    assert d.len() == 2
    d.clear()
    assert d.len() == 0 and d.get("x") is None


# --- Queue --------------------------------------------------------------------------------------


def test_queue_fifo_and_nonblocking_empty(pair):
    _, q = pair
    q.put("a")
    q.put_many(["b", "c"])
    assert q.len() == 3
    assert [q.get(), q.get(block=False)] == ["a", "b"]
    assert q.get_many(10) == ["c"]
    assert q.get(block=False) is None
    assert q.get_many(5, block=False) == []


def test_queue_blocking_get_times_out_with_empty(pair):
    _, q = pair
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)


def test_queue_partitions_are_independent(pair):
    _, q = pair
    q.put("default-item")
    q.put_many([1, 2], partition="gpu-a")
    q.put({"id": "x"}, partition="gpu-b")
    assert q.len(partition="gpu-a") == 2 and q.len() == 1
    assert q.len(total=True) == 4
    assert q.get(partition="gpu-b") == {"id": "x"}
    q.clear(partition="gpu-a")
    assert q.len(partition="gpu-a") == 0 and q.len() == 1
    q.put(3, partition="gpu-a")
    q.clear(all=True)
    assert q.len(total=True) == 0


def test_queue_blocking_get_wakes_for_a_put_in_another_thread(pair):
    _, q = pair
    threading.Timer(0.2, lambda: q.put("late")).start()
    assert q.get(timeout=30) == "late"


# --- local-only guarantees: capacity, processes, restarts --------------------------------------


def test_local_queue_full_raises_without_blocking_forever(db_path):
    q = LocalQueue(db_path, "small", capacity=2)
    q.put_many([1, 2])
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.1)
    assert q.get() == 1
    q.put(3, block=False)
    assert q.get_many(5) == [2, 3]


def test_local_twins_refuse_values_that_are_not_json(db_path):
    with pytest.raises(TypeError, match="JSON-compatible"):
        LocalDict(db_path).put("k", object())


def _run_child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)


_RACE_CHILD = """
import sys, threading, time
from comfy_saas.backends.twins import LocalDict
path, start = sys.argv[1], float(sys.argv[2])
d = LocalDict(path, "race")
wins = []
def race():
    while time.time() < start:
        time.sleep(0.001)
    wins.append(d.put("the-key", threading.get_ident(), skip_if_exists=True))
threads = [threading.Thread(target=race) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print(sum(wins))
"""


def test_skip_if_exists_has_one_winner_across_8_threads_and_2_processes(db_path):
    LocalDict(db_path, "race")  # create the schema before the race
    start = str(time.time() + 1.0)
    children = [_run_child(_RACE_CHILD, str(db_path), start) for _ in range(2)]
    wins = [int(c.communicate(timeout=60)[0]) for c in children]
    assert sum(wins) == 1
    assert LocalDict(db_path, "race").contains("the-key")


_PUT_LATER_CHILD = """
import sys, time
from comfy_saas.backends.twins import LocalDict, LocalQueue, Profile, RequestSizeError
deadline = time.monotonic() + 30
while not LocalDict(sys.argv[1], "wake").contains("parent-waiting") and time.monotonic() < deadline:
    time.sleep(0.005)  # poll for the parent's handshake
LocalQueue(sys.argv[1], "wake").put("from-another-process")
"""


def test_blocking_get_returns_when_another_process_puts(db_path):
    q = LocalQueue(db_path, "wake")
    child = _run_child(_PUT_LATER_CHILD, str(db_path))
    LocalDict(db_path, "wake").put("parent-waiting", True)  # the child puts only once we are about to block
    assert q.get(timeout=60) == "from-another-process"  # woken by the put (a timeout would raise queue.Empty)
    child.wait(30)


_WRITE_AND_EXIT_CHILD = """
import sys
from comfy_saas.backends.twins import LocalDict, LocalQueue, Profile, RequestSizeError
LocalDict(sys.argv[1], "durable").put("job:1", {"status": "queued"})
LocalQueue(sys.argv[1], "durable").put_many(["1", "2"], partition="p")
"""


def test_items_survive_a_process_restart(db_path):
    _run_child(_WRITE_AND_EXIT_CHILD, str(db_path)).wait(30)
    assert LocalDict(db_path, "durable")["job:1"] == {"status": "queued"}
    assert LocalQueue(db_path, "durable").get_many(5, partition="p") == ["1", "2"]


# --- the Modal profile: expiry, partition clearing, limits (the twin's clock is injected) ---------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def modal_pair(db_path: Path, clock: Clock, **limits) -> tuple[LocalDict, LocalQueue]:
    profile = Profile.modal(rpc_ms=0, clock=clock, **limits)
    return LocalDict(db_path, "m", profile), LocalQueue(db_path, "m", profile=profile)


def test_an_entry_expires_seven_days_after_its_last_read_or_write(db_path: Path, clock: Clock):
    d, _ = modal_pair(db_path, clock)
    d.update({"read": 1, "idle": 2})
    clock.now += 6 * 86_400
    assert d.get("read") == 1  # a read keeps it alive another 7 days
    clock.now += 2 * 86_400
    assert d.get("idle") is None and "idle" not in d and d.get("read") == 1
    assert d.put("idle", 3, skip_if_exists=True) is True  # an expired key is free again
    clock.now += 8 * 86_400
    assert list(d.keys()) == [] and d.len() == 0


def test_a_partition_is_cleared_a_day_after_its_last_put(db_path: Path, clock: Clock):
    _, q = modal_pair(db_path, clock)
    q.put("old", partition="p")
    q.put("fresh", partition="other")
    clock.now += 23 * 3600
    q.put("later", partition="other")
    clock.now += 2 * 3600
    assert q.len(partition="p") == 0 and q.get(block=False, partition="p") is None
    assert q.get_many(5, partition="other") == ["fresh", "later"]


def test_oversized_values_items_and_updates_are_refused_like_modal(db_path: Path, clock: Clock):
    d, q = modal_pair(db_path, clock, max_value_bytes=100, max_item_bytes=50, max_update_entries=3,
                      max_dict_bytes=400)
    with pytest.raises(RequestSizeError):
        d.put("big", "x" * 200)
    with pytest.raises(RequestSizeError):
        d.update({f"k{i}": i for i in range(4)})
    with pytest.raises(RequestSizeError):
        q.put("y" * 100)
    for i in range(4):
        d.put(f"fill{i}", "z" * 80)
    with pytest.raises(RequestSizeError):
        d.put("one-more", "z" * 80)  # the whole Dict is capped too
    assert "big" not in d and q.len() == 0


def test_a_partition_is_capped_in_items_and_bytes(db_path: Path, clock: Clock):
    profile = Profile.modal(rpc_ms=0, clock=clock, max_partition_bytes=30)
    q = LocalQueue(db_path, "cap", capacity=3, profile=profile)
    q.put_many(["a", "b", "c"], partition="items")
    with pytest.raises(queue.Full):
        q.put("d", block=False, partition="items")
    q.put("x" * 20, partition="bytes")
    with pytest.raises(queue.Full):
        q.put("y" * 20, block=False, partition="bytes")


def test_a_taken_item_is_gone_without_an_ack(db_path: Path, clock: Clock):
    _, q = modal_pair(db_path, clock)
    q.put("once")
    assert q.get() == "once" and q.get(block=False) is None and q.len(total=True) == 0


def test_a_partition_has_room_again_however_its_items_left(db_path: Path, clock: Clock):
    """Its count and bytes follow every way out: taken, expired, cleared; one queue's partitions are their own."""
    profile = Profile.modal(rpc_ms=0, clock=clock, max_partition_bytes=40)
    q, other = LocalQueue(db_path, "cap", capacity=3, profile=profile), LocalQueue(db_path, "other", profile=profile)
    for leave in (lambda: q.get_many(3, partition="p"), lambda: q.clear(partition="p"), lambda: q.clear(all=True),
                  lambda: setattr(clock, "now", clock.now + 25 * 3600)):
        q.put_many(["a", "b", "c"], partition="p")
        other.put("x" * 30, partition="p")
        with pytest.raises(queue.Full):
            q.put("d", block=False, partition="p")
        assert (q.len(partition="p"), q.len(total=True)) == (3, 3)
        leave()
        assert q.len(partition="p") == 0
        q.put("y" * 30, block=False, partition="p")  # room in items and in bytes
        assert q.get(partition="p") == "y" * 30
        other.clear(all=True)


def test_a_data_directory_from_before_the_partition_counts_is_counted_once(db_path: Path):
    import sqlite3

    q = LocalQueue(db_path, "old", capacity=3)
    q.put_many(["a", "b"], partition="p")
    conn = sqlite3.connect(db_path)
    conn.executescript("DROP TRIGGER queue_size_insert; DROP TRIGGER queue_size_delete; DROP TABLE queue_sizes;")
    conn.close()
    code = ("import queue, sys; from comfy_saas.backends.twins import LocalQueue; "
            "q = LocalQueue(sys.argv[1], 'old', capacity=3)\n"
            "if sys.argv[2] == 'first':\n    q.put('c', block=False, partition='p')\n"
            "print(q.len(partition='p'), end=' ')\n"
            "try:\n    q.put('d', block=False, partition='p')\nexcept queue.Full:\n    print('full')")
    runs = [subprocess.run([sys.executable, "-c", code, str(db_path), which], capture_output=True, text=True,
                           timeout=60) for which in ("first", "again")]  # the second open counts nothing twice
    assert [r.stdout.strip() for r in runs] == ["3 full", "3 full"], [r.stderr for r in runs]
