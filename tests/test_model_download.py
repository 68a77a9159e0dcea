"""Streaming model downloads: hashed on the way, capped, resumed after a drop, tokens only where they belong."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import wait_until
from modelfiles import blob, file_server, sha

from comfy_saas.backends import model_sources
from comfy_saas.backends.safe_fetch import Interrupt, download, parse_allowlist
from comfy_saas.errors import MediaError

LOOPBACK = parse_allowlist("127.0.0.1/32")


def test_a_download_lands_on_disk_with_its_sha256(tmp_path: Path):
    data = blob("a", 300 * 1024)
    seen = []
    with file_server({"/m.safetensors": data}) as files:
        got = download(files.url("/m.safetensors"), tmp_path / "m.part", 10**6, 10, LOOPBACK,
                       on_progress=lambda done, total: seen.append((done, total)))
    assert (tmp_path / "m.part").read_bytes() == data
    assert (got.size, got.sha256, got.transferred) == (len(data), sha(data), len(data))
    assert seen[-1] == (len(data), len(data))


def test_a_dropped_connection_resumes_with_a_range(tmp_path: Path):
    data = blob("resume", 256 * 1024)
    with file_server({"/big.safetensors": data}) as files:
        files.drop_once.add("/big.safetensors")
        got = download(files.url("/big.safetensors"), tmp_path / "big.part", 10**6, 10, LOOPBACK)
        assert files.ranges == [f"/big.safetensors from {len(data) // 2}"]
    assert got.sha256 == sha(data) and (tmp_path / "big.part").read_bytes() == data
    assert got.transferred == len(data)  # only the missing half was fetched again


def test_a_file_over_the_cap_is_refused_and_nothing_is_kept(tmp_path: Path):
    with file_server({"/huge.safetensors": blob("huge", 64 * 1024)}) as files, \
            pytest.raises(MediaError, match="limit is 1000"):
        download(files.url("/huge.safetensors"), tmp_path / "h.part", 1000, 10, LOOPBACK)
    assert list(tmp_path.iterdir()) == []


def test_an_http_error_names_the_status_and_keeps_nothing(tmp_path: Path):
    with file_server({}) as files, pytest.raises(MediaError, match="HTTP 404"):
        download(files.url("/missing.safetensors"), tmp_path / "x.part", 1000, 10, LOOPBACK)
    assert list(tmp_path.iterdir()) == []


def test_loopback_is_refused_without_the_allowlist(tmp_path: Path):
    with file_server({"/m.safetensors": b"x"}) as files:
        with pytest.raises(MediaError, match="loopback"):
            download(files.url("/m.safetensors"), tmp_path / "m.part", 1000, 10, [])
        assert files.gets == {}


def test_per_hop_headers_never_follow_a_redirect_to_another_host(tmp_path: Path):
    data = blob("gated", 1024)
    with file_server({"/f.safetensors": data}, host="127.0.0.1") as cdn, file_server({}, host="127.0.0.1") as hub:
        hub.redirects["/resolve/f.safetensors"] = cdn.url("/f.safetensors")
        hub_port = hub.server_address[1]
        token_for_hub = lambda url: {"Authorization": "Bearer hub-token"} if f":{hub_port}/" in url else {}  # noqa: E731
        download(hub.url("/resolve/f.safetensors"), tmp_path / "f.part", 10**6, 10, LOOPBACK, headers_for=token_for_hub)
    assert hub.auth == [("/resolve/f.safetensors", "Bearer hub-token")]
    assert cdn.auth == [("/f.safetensors", None)]


def test_tokens_go_to_their_own_source_over_https_only():
    hop = model_sources.headers_for({"huggingface": "hf-secret", "civitai": "cv-secret"})
    assert hop("https://huggingface.co/org/repo/resolve/main/x.safetensors") == {"Authorization": "Bearer hf-secret"}
    assert hop("https://cdn-lfs-us-1.hf.co/repos/x") == {"Authorization": "Bearer hf-secret"}
    assert hop("https://civitai.com/api/download/models/1") == {"Authorization": "Bearer cv-secret"}
    for elsewhere in ("http://huggingface.co/x", "https://huggingface.co.evil.example/x", "https://evil.example/hf.co",
                      "https://notcivitai.com/x", "https://b2.civitai-cdn.example/x"):
        assert hop(elsewhere) == {}, elsewhere
    assert model_sources.headers_for({"huggingface": ""})("https://huggingface.co/x") == {}


def test_urls_are_shown_without_credentials():
    shown = model_sources.public_url("https://user:pw@civitai.com/api/download/models/1?type=Model&token=abc"
                                     "&X-Amz-Signature=s&format=SafeTensor")
    assert shown == "https://civitai.com/api/download/models/1?type=Model&format=SafeTensor"


def test_an_interrupt_ends_a_download_stalled_in_a_read(tmp_path: Path):
    data = blob("stalled", 64 * 1024)
    with file_server({"/s.safetensors": data}) as files:
        files.hold("/s.safetensors")
        interrupt, seen = Interrupt(), []
        worker = threading.Thread(target=lambda: seen.append(_attempt(files.url("/s.safetensors"), tmp_path,
                                                                      interrupt)))
        worker.start()
        wait_until(lambda: files.gets["/s.safetensors"] == 1 and list(tmp_path.iterdir()), 10, "the download")
        interrupt.fire()
        worker.join(10)
    assert seen == ["interrupted"] and list(tmp_path.iterdir()) == []


def _attempt(url: str, folder: Path, interrupt: Interrupt) -> str:
    try:
        download(url, folder / "s.part", 10**6, 30, LOOPBACK, interrupt=interrupt)
        return "finished"
    except MediaError as exc:
        return "interrupted" if "interrupted" in exc.message else exc.message
