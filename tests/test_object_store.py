"""Object storage: R2's S3 API against moto's real server, and the local signed-URL folder."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from comfy_saas.backends.objects import LocalStore, S3Store, guess_content_type, object_store
from comfy_saas.config import Settings
from comfy_saas.errors import InvalidInput
from comfy_saas.jobs import keys

DAY = datetime(2026, 11, 29, tzinfo=UTC)


def http_get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), ""


def test_s3_upload_presign_download_over_http(s3: S3Store):
    key = keys.output("job1", DAY, "9", "out.png")
    assert s3.put_bytes(key, b"\x89PNG-bytes") == 10
    status, body, content_type = http_get(s3.url(key))
    assert (status, body, content_type) == (200, b"\x89PNG-bytes", "image/png")


def test_s3_large_files_go_up_in_parts_intact(s3: S3Store, tmp_path: Path):
    big = tmp_path / "video.mp4"
    data = os.urandom(11 * 1024 * 1024)
    big.write_bytes(data)
    key = keys.output("job2", DAY, "5", "video.mp4")
    assert s3.put_file(key, big) == len(data)
    status, body, content_type = http_get(s3.url(key, expires_s=60))
    assert status == 200 and body == data and content_type == "video/mp4"


def test_s3_delete_by_job_prefix_leaves_other_jobs(s3: S3Store):
    for name in ("a.png", "b.txt", "c.webm"):
        s3.put_bytes(keys.output("job3", DAY, "1", name), b"x")
    s3.put_bytes(keys.output("job30", DAY, "1", "keep.png"), b"keep")
    assert s3.delete_prefix(keys.object_prefix("job3", DAY)) == 3
    assert http_get(s3.url(keys.output("job3", DAY, "1", "a.png")))[0] == 404
    assert s3.read(keys.output("job30", DAY, "1", "keep.png")) == b"keep"


def test_settings_pick_the_s3_backend(s3: S3Store):
    settings = Settings(storage_backend="s3", r2=s3.config)
    assert isinstance(object_store(settings), S3Store)


def test_local_urls_are_signed_and_expire(tmp_path: Path):
    store = LocalStore(tmp_path, "secret", "http://127.0.0.1:8000")
    key = keys.output("job4", DAY, "2", "x y.png")
    store.put_bytes(key, b"img")
    url = store.url(key, expires_s=60, now=1_000)
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert url.startswith("http://127.0.0.1:8000/files/jobs/2026-11-29/job4/out/2/x%20y.png?")
    assert store.verify(key, int(query["expires"]), query["sig"], now=1_030)
    assert not store.verify(key, int(query["expires"]), query["sig"], now=1_061)
    assert not store.verify(keys.output("job4", DAY, "2", "other.png"), int(query["expires"]), query["sig"], now=1_030)
    assert not LocalStore(tmp_path, "other", "http://h").verify(key, int(query["expires"]), query["sig"], now=1_0)
    assert store.read(key) == b"img"


@pytest.mark.parametrize("key", ["../escape.png", "/etc/passwd", "job/../../x", "a\\b", "", "job//x"])
def test_local_keys_cannot_escape_the_folder(tmp_path: Path, key: str):
    store = LocalStore(tmp_path / "outputs", "secret", "http://h")
    with pytest.raises(InvalidInput):
        store.put_bytes(key, b"x")
    assert not (tmp_path / "escape.png").exists()


def test_local_delete_prefix_and_restart_keep_urls_valid(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    first = object_store(settings)
    first.put_bytes(keys.output("job5", DAY, "1", "a.png"), b"a")
    url = first.url(keys.output("job5", DAY, "1", "a.png"), now=1_000)
    assert object_store(settings).url(keys.output("job5", DAY, "1", "a.png"), now=1_000) == url
    assert first.delete_prefix(keys.object_prefix("job5", DAY)) == 1
    assert first.delete_prefix(keys.object_prefix("job5", DAY)) == 0


def test_an_expected_folder_holds_no_object_until_one_is_put(tmp_path: Path, s3: S3Store):
    local = LocalStore(tmp_path / "outputs", "secret", "http://h")
    folder = keys.output_folder("job6", DAY, "9")
    for store in (local, s3):
        store.expect(folder)
        assert store.list_keys(keys.object_prefix("job6", DAY)) == []
        store.put_bytes(f"{folder}a.png", b"a")
        assert store.list_keys(keys.object_prefix("job6", DAY)) == [f"{folder}a.png"]
        assert store.delete_prefix(keys.object_prefix("job6", DAY)) == 1
    assert not (tmp_path / "outputs" / keys.object_prefix("job6", DAY)).exists()
    local.expect("../escape/")  # a hint never writes outside the store
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(("name", "expected"), [
    ("a.png", "image/png"), ("clip.webm", "video/webm"), ("s.flac", "audio/flac"), ("t.txt", "text/plain"),
    ("weird.bin", "application/octet-stream"), ("noext", "application/octet-stream"),
])
def test_content_types(name: str, expected: str):
    assert guess_content_type(name) == expected


def test_local_writers_of_one_key_at_once_all_succeed_and_one_whole_value_wins(tmp_path: Path):
    """Workers starting together publish the same catalogue object at the same moment."""
    store = LocalStore(tmp_path / "objects", "s", "http://127.0.0.1:9")
    values = [bytes([i]) * 100_000 for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda v: store.put_bytes("catalogues/default.json", v), values))
    assert store.read("catalogues/default.json") in values
    assert store.list_keys("catalogues/") == ["catalogues/default.json"]  # no half-written file left


def test_s3_failures_other_than_a_missing_object_are_backend_errors(s3: S3Store):
    """A missing object is None; storage that cannot answer (here: no such bucket) is a 503, never a 500."""
    from dataclasses import replace

    from comfy_saas.errors import BackendError

    assert s3.read_if_exists("templates/shared/none/template.json") is None
    broken = S3Store(replace(s3.config, bucket="no-such-bucket"), expiry_s=600)
    for call in (lambda: broken.read_if_exists("templates/shared/t/template.json"),
                 lambda: broken.list_keys("templates/shared/"), lambda: broken.delete_prefix("templates/shared/t/")):
        with pytest.raises(BackendError):
            call()
