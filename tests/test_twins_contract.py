"""One contract for Dict/Queue: the local SQLite twins, and Modal's own when credentials exist."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfy_saas.backends.twins import LocalDict, LocalQueue

ROOT = Path(__file__).resolve().parent.parent


def _modal_credentials() -> bool:
    has_env = bool(os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"))
    return has_env or (Path.home() / ".modal.toml").exists()


@pytest.fixture(params=["local", "modal"])
def pair(request: pytest.FixtureRequest, db_path: Path):
    if request.param == "local":
        yield LocalDict(db_path, "contract"), LocalQueue(db_path, "contract")
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
from comfy_saas.backends.twins import LocalDict, LocalQueue
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
from comfy_saas.backends.twins import LocalDict, LocalQueue
LocalDict(sys.argv[1], "durable").put("job:1", {"status": "queued"})
LocalQueue(sys.argv[1], "durable").put_many(["1", "2"], partition="p")
"""


def test_items_survive_a_process_restart(db_path):
    _run_child(_WRITE_AND_EXIT_CHILD, str(db_path)).wait(30)
    assert LocalDict(db_path, "durable")["job:1"] == {"status": "queued"}
    assert LocalQueue(db_path, "durable").get_many(5, partition="p") == ["1", "2"]
