"""A small typed client for the API: the local server (one base URL) or Modal's endpoints (one URL each).

    from comfy_saas.client import Client
    c = Client("http://127.0.0.1:8000", api_key="...")
    job = c.submit("workflow_api.json", media={"input.png": "cat.png"}, overrides={"3.seed": 42})
    done = c.wait(job["id"], on_progress=lambda j: print(j["progress"]))
    c.download(done, "out/")
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

TERMINAL = {"completed", "failed", "cancelled"}


class ApiUnreachable(ConnectionError):
    """Nothing answered at the API's address."""

    def __init__(self, url: str, reason: object) -> None:
        base = urllib.parse.urlsplit(url)
        where = f"{base.scheme}://{base.netloc}"
        super().__init__(f"cannot reach the API at {where} ({reason}). Start one with `comfy-saas serve`, or "
                         f"point to a running one with --url / COMFY_CLIENT_URL (or --modal-app).")
        self.url = url


class ApiError(Exception):
    """An error answer from the API: HTTP status plus the error body's type, message and field."""

    def __init__(self, status: int, type: str, message: str, field: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status, self.type, self.message, self.field = status, type, message, field
        self.retry_after_s = retry_after_s


# The Modal function serving each operation (app.py registers one web endpoint per route of web/routes.py).
MODAL_FUNCTIONS = {"submit": "submit", "job": "job", "jobs": "jobs", "cancel": "cancel", "health": "health",
                   "events": "events"}
MODAL_TEMPLATE_FUNCTIONS = {"put": "put_workflow", "get": "workflow", "list": "workflows",
                            "delete": "delete_workflow", "jobs": "workflow_jobs"}


class Routes:
    """Where each operation lives: `local(base)` for the local server, `deployed(app)` for Modal."""

    def __init__(self, submit: str, job: str, jobs: str, cancel: str, health: str, events: str,
                 by_path: bool, templates: dict[str, str] | None = None) -> None:
        self.submit, self.job, self.jobs, self.cancel, self.health = submit, job, jobs, cancel, health
        self.events = events
        self.by_path = by_path  # local: ids in the path; Modal: ids as ?id=
        # Workflow templates: put, get, list, delete, jobs (one base locally, one endpoint each on Modal).
        self.templates = templates or {}

    @classmethod
    def local(cls, base_url: str) -> Routes:
        b = base_url.rstrip("/")
        return cls(f"{b}/v1/jobs", f"{b}/v1/jobs", f"{b}/v1/jobs", f"{b}/v1/jobs", f"{b}/health", f"{b}/v1/jobs",
                   True, dict.fromkeys(("put", "get", "list", "delete", "jobs"), f"{b}/v1/workflows"))

    @classmethod
    def deployed(cls, app: str = "comfy-saas", environment: str | None = None,
                 web_url: Callable[[str], str] | None = None) -> Routes:
        """Modal's endpoints, each URL as the deployment reports it (`modal.Function.from_name(app, name)
        .get_web_url()`): Modal shortens labels over 63 characters and names environments its own way, so a URL
        is never built from a workspace name. Needs Modal credentials; `web_url(function name)` replaces the
        lookup (for a `modal serve` session, whose URLs it prints)."""
        url = web_url or _deployed_web_url(app, environment)
        names = [*MODAL_FUNCTIONS.values(), *MODAL_TEMPLATE_FUNCTIONS.values()]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:  # one lookup per function, each a round trip to Modal
            urls = dict(zip(names, pool.map(url, names), strict=True))
        op = {k: urls[v] for k, v in MODAL_FUNCTIONS.items()}
        return cls(op["submit"], op["job"], op["jobs"], op["cancel"], op["health"], op["events"], False,
                   {k: urls[v] for k, v in MODAL_TEMPLATE_FUNCTIONS.items()})

    def one(self, base: str, job_id: str, action: str = "") -> str:
        if self.by_path:
            return f"{base}/{urllib.parse.quote(job_id)}{action}"
        return f"{base}?{urllib.parse.urlencode({'id': job_id})}"

    def template(self, operation: str, name: str) -> str:
        """The URL of a template operation on `name`."""
        base = self.templates[operation]
        if self.by_path:
            return f"{base}/{urllib.parse.quote(name)}" + ("/jobs" if operation == "jobs" else "")
        return f"{base}?{urllib.parse.urlencode({'name': name})}"


def _deployed_web_url(app: str, environment: str | None) -> Callable[[str], str]:
    def web_url(name: str) -> str:
        import modal

        url = modal.Function.from_name(app, name, environment_name=environment).get_web_url()
        if not url:
            raise ValueError(f"{app}.{name} is not a web endpoint of the deployed app")
        return url

    return web_url


def with_query(url: str, **params: Any) -> str:
    """url with these query parameters added (None values left out)."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"{url}{'&' if '?' in url else '?'}{query}" if query else url


def _overrides(overrides: Mapping[str, Any] | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """{"3.seed": 42} or [{"node", "input", "value"}] -> the API's list form."""
    if overrides is None:
        return []
    if isinstance(overrides, list):
        return overrides
    out = []
    for path, value in overrides.items():
        node, _, field = path.partition(".")
        if not node or not field:
            raise ValueError(f"override {path!r} must look like NODE.INPUT")
        out.append({"node": node, "input": field, "value": value})
    return out


def data_url(path: str | Path) -> str:
    """A local file as a data: URL (what a template's media input accepts besides http(s) URLs)."""
    import mimetypes

    kind = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def _input_value(value: Any) -> Any:
    return data_url(value) if isinstance(value, Path) else value


def _media(media: Mapping[str, str | Path] | None) -> list[dict[str, str]]:
    """{name: path or URL} -> media items (files are sent as base64)."""
    items = []
    for name, source in (media or {}).items():
        text = str(source)
        if text.startswith(("http://", "https://")):
            items.append({"name": name, "url": text})
        else:
            items.append({"name": name, "base64": base64.b64encode(Path(text).read_bytes()).decode()})
    return items


class Client:
    """Submit, get, list, cancel, wait and download; every error answer raises ApiError."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, routes: Routes | None = None,
                 timeout_s: float = 60.0) -> None:
        if routes is None and base_url is None:
            raise ValueError("give base_url (local server) or routes (e.g. Routes.deployed())")
        self.routes = routes or Routes.local(base_url or "")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _call(self, method: str, url: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raise _api_error(err) from None
        except (urllib.error.URLError, ConnectionError) as err:
            raise ApiUnreachable(url, getattr(err, "reason", err)) from None

    def submit(self, workflow: dict[str, Any] | str | Path, media: Mapping[str, str | Path] | None = None,
               overrides: Mapping[str, Any] | list[dict[str, Any]] | None = None, webhook_url: str | None = None,
               idempotency_key: str | None = None, wait_s: float | None = None, **extra: Any) -> dict[str, Any]:
        """Submit a workflow (a dict, or a JSON file in API or UI format); the queued job. With wait_s the
        server answers when the job ends or after wait_s seconds, whichever is first."""
        if not isinstance(workflow, dict):
            workflow = json.loads(Path(workflow).read_text())
        body = {"workflow": workflow, "media": _media(media), "overrides": _overrides(overrides), **extra}
        if webhook_url:
            body["webhook_url"] = webhook_url
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        return self._call("POST", with_query(self.routes.submit, wait=wait_s), body)

    def get(self, job_id: str, wait_s: float | None = None, include_workflow: bool = False) -> dict[str, Any]:
        """The job; wait_s long-polls until it ends; include_workflow adds the API-format workflow it ran."""
        url = self.routes.one(self.routes.job, job_id)
        return self._call("GET", with_query(url, wait=wait_s, include="workflow" if include_workflow else None))

    # --- workflow templates ----------------------------------------------------------------------------

    def put_template(self, name: str, workflow: dict[str, Any] | str | Path, inputs: dict[str, Any] | None = None,
                     description: str | None = None, pool: str | None = None) -> dict[str, Any]:
        """Store a template (workflow dict or JSON file, either format); it comes back with its input schema."""
        if not isinstance(workflow, dict):
            workflow = json.loads(Path(workflow).read_text())
        body = {k: v for k, v in {"workflow": workflow, "inputs": inputs, "description": description,
                                  "pool": pool}.items() if v is not None}
        return self._call("PUT", self.routes.template("put", name), body)

    def get_template(self, name: str) -> dict[str, Any]:
        """The template and the JSON Schema of its inputs (`schema`)."""
        return self._call("GET", self.routes.template("get", name))

    def list_templates(self) -> list[dict[str, Any]]:
        return self._call("GET", self.routes.templates["list"])["templates"]

    def delete_template(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", self.routes.template("delete", name))

    def start(self, name: str, inputs: Mapping[str, Any] | None = None, wait_s: float | None = None,
              **options: Any) -> dict[str, Any]:
        """Submit a job from a template: inputs by name (a Path for a media input is sent as base64) and job
        options (media, output, webhook_url, ...); the job, finished if it ended within wait_s."""
        body = {**options, "inputs": {k: _input_value(v) for k, v in (inputs or {}).items()}}
        if "media" in body and not isinstance(body["media"], list):
            body["media"] = _media(body["media"])
        return self._call("POST", with_query(self.routes.template("jobs", name), wait=wait_s), body)

    def run(self, name: str, /, **inputs: Any) -> dict[str, Any]:
        """Run a template with these inputs and return the finished job (see `start` for job options)."""
        job = self.start(name, inputs)
        return job if job["status"] in TERMINAL else self.wait(job["id"])

    def list(self, status: str | None = None, user_id: str | None = None, page_size: int = 50
             ) -> Iterator[dict[str, Any]]:
        """Every job, newest first, fetching pages as it goes."""
        cursor = None
        while True:
            params = {k: v for k, v in {"status": status, "user_id": user_id, "limit": page_size,
                                        "cursor": cursor}.items() if v is not None}
            page = self._call("GET", f"{self.routes.jobs}?{urllib.parse.urlencode(params)}")
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", self.routes.one(self.routes.cancel, job_id, "/cancel"))

    def health(self) -> dict[str, Any]:
        return self._call("GET", self.routes.health)

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             poll_s: float = 0.5, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll until the job finishes; `on_progress(job)` on every change. TimeoutError after timeout_s."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            job = self.get(job_id)
            snapshot = (job["status"], json.dumps(job.get("progress"), sort_keys=True))
            if on_progress is not None and snapshot != last:
                on_progress(job)
            last = snapshot
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")
            time.sleep(poll_s)

    def stream(self, job_id: str, last_event_id: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Server-Sent Events for a job as (event id, event type, data): progress events, then the terminal
        one. A dropped or time-limited stream is reopened with Last-Event-ID, so no event is lost."""
        while True:
            ended = False
            for event_id, kind, data in self._stream_once(job_id, last_event_id):
                if event_id and event_id != "end":
                    last_event_id = event_id
                yield event_id, kind, data
                ended = kind != "progress"
            if ended:
                return

    def _stream_once(self, job_id: str, last_event_id: str | None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        url = self.routes.one(self.routes.events, job_id, "/events")
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout_s)
        except urllib.error.HTTPError as err:
            raise _api_error(err) from None
        except (urllib.error.URLError, ConnectionError) as err:
            raise ApiUnreachable(url, getattr(err, "reason", err)) from None
        with resp:
            fields: dict[str, str] = {}
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if "data" in fields:
                    yield fields.get("id", ""), fields.get("event", "message"), json.loads(fields["data"])
                fields = {}

    def download(self, job: dict[str, Any], folder: str | Path) -> list[Path]:
        """Save every output to folder/{node}/{filename}; the paths written."""
        written = []
        for out in job.get("outputs", []):
            target = Path(folder) / out["node_id"] / Path(out["filename"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(out["url"], timeout=self.timeout_s) as resp, open(target, "wb") as f:
                while chunk := resp.read(1024 * 1024):
                    f.write(chunk)
            written.append(target)
        return written


def _api_error(err: urllib.error.HTTPError) -> ApiError:
    try:
        body = json.loads(err.read() or b"{}").get("error") or {}
    except ValueError:
        body = {}
    retry = err.headers.get("Retry-After")
    return ApiError(err.code, body.get("type", "http_error"), body.get("message", err.reason), body.get("field"),
                    float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """Check a received webhook's Standard Webhooks signature (webhook-id, -timestamp, -signature)."""
    from comfy_saas.signing import verify

    return verify(secret, headers, body, tolerance_s)
