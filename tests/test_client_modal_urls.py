"""The client on Modal: every endpoint URL comes from the deployment, used as given (Modal shortens labels over
63 characters with a hash and `modal serve` adds `-dev`: no URL is built from a workspace name), and the
functions it asks for are the web endpoints app.py registers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from comfy_saas.client import MODAL_FUNCTIONS, MODAL_TEMPLATE_FUNCTIONS, Client, Routes


class _Endpoints(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path))  # type: ignore[attr-defined]
        body = json.dumps({"ok": True, "templates": [], "jobs": [], "next_cursor": None}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoints() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoints)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def odd_url(base: str, name: str) -> str:
    """What Modal may answer: a label cut to 63 characters with a hash, and modal serve's -dev."""
    label = f"a-rather-long-workspace-name--comfy-saas-staging-{name.replace('_', '-')}"
    return f"{base}/{label[:56]}-{abs(hash(name)) % 10**6:06d}-dev"


def test_every_url_is_the_one_the_deployment_reports(endpoints: ThreadingHTTPServer):
    base = f"http://127.0.0.1:{endpoints.server_port}"
    asked: list[str] = []

    def web_url(name: str) -> str:
        asked.append(name)
        return odd_url(base, name)

    client = Client(routes=Routes.deployed(web_url=web_url), api_key="k")
    client.health()
    client.get("job-1")
    client.cancel("job-1")
    client.list_templates()
    path = lambda name: odd_url("", name)  # noqa: E731
    assert endpoints.seen == [("GET", path("health")), ("GET", path("job") + "?id=job-1"),
                              ("POST", path("cancel") + "?id=job-1"), ("GET", path("workflows"))]
    assert sorted(asked) == sorted({*MODAL_FUNCTIONS.values(), *MODAL_TEMPLATE_FUNCTIONS.values()})


def test_the_functions_the_client_asks_for_are_the_apps_web_endpoints():
    import app

    wanted = {*MODAL_FUNCTIONS.values(), *MODAL_TEMPLATE_FUNCTIONS.values()}
    assert wanted <= set(app.ENDPOINTS)
    assert all(app.ENDPOINTS[name].info().web_info for name in wanted)
