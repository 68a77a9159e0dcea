"""Talking to one ComfyUI server: HTTP calls, and its WebSocket as a stream of parsed events."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_saas.errors import ComfyUnavailable, MediaError, OutputUnavailable, PromptRejected

_MULTIPART_BOUNDARY = "----comfy-saas-boundary"


@dataclass
class Event:
    """One WebSocket message: a JSON event, or a binary frame (previews, progress text). A preview frame's
    image travels beside its data, in `image`."""

    type: str
    data: dict[str, Any]
    image: bytes | None = None

    @property
    def prompt_id(self) -> str | None:
        return self.data.get("prompt_id")

    @property
    def image_format(self) -> str | None:
        """A preview's image format: jpeg or png (None for other events or formats ComfyUI never sends)."""
        if self.type != "preview":
            return None
        named = self.data.get("format") or str(self.data.get("image_type", "")).removeprefix("image/")
        return named if named in {"jpeg", "png"} else None


def parse_binary(frame: bytes) -> Event:
    """Decode ComfyUI's binary frames (big-endian u32 event type first); never raises."""
    if len(frame) < 8:
        return Event("binary_unknown", {"length": len(frame)})
    kind, second = struct.unpack(">II", frame[:8])
    if kind == 1:
        return Event("preview", {"format": {1: "jpeg", 2: "png"}.get(second, "unknown"), "bytes": len(frame) - 8},
                     image=frame[8:])
    if kind == 3:
        node = frame[8:8 + second].decode("utf-8", "replace")
        return Event("progress_text", {"node": node, "text": frame[8 + second:].decode("utf-8", "replace")})
    if kind == 4:
        try:
            meta = json.loads(frame[8:8 + second])
        except ValueError:
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        return Event("preview", {**meta, "bytes": len(frame) - 8 - second}, image=frame[8 + second:])
    return Event("binary_unknown", {"event_type": kind, "length": len(frame)})


class ComfyClient:
    """HTTP client for one ComfyUI; every transport failure becomes ComfyUnavailable."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        parts = urllib.parse.urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port
        self._local = threading.local()
        self._last_answer = float("-inf")
        self.folders: Any = None  # ComfyFolders, when this ComfyUI's files are reachable from here

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        """This thread's kept-alive connection (a new TCP handshake per call costs more than the call)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=timeout_s)
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn

    def forget_health(self) -> None:
        """After any failure, the next health check asks ComfyUI again."""
        self._last_answer = float("-inf")

    def _drop_connection(self) -> None:
        self.forget_health()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _open(self, method: str, path: str, body: bytes | None, headers: dict | None,
              timeout_s: float | None) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            conn = self._connection(timeout_s or self.timeout_s)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop_connection()  # the server closed an idle kept-alive socket: one fresh try
                if attempt == 2:
                    raise ComfyUnavailable(f"ComfyUI at {self.base_url} dropped {method} {path}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {method} {path}: {exc}") from exc
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 timeout_s: float | None = None) -> tuple[int, bytes]:
        resp = self._open(method, path, body, headers, timeout_s)
        try:
            data = resp.read()
            if resp.status < 500:
                self._last_answer = time.monotonic()
            return resp.status, data
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} broke off {method} {path}: {exc}") from exc

    def _json(self, method: str, path: str, payload: Any = None, timeout_s: float | None = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, raw = self._request(method, path, body, {"Content-Type": "application/json"}, timeout_s)
        if status >= 500:
            raise ComfyUnavailable(f"ComfyUI answered {status} to {method} {path}")
        return json.loads(raw) if raw else None

    def healthy(self, timeout_s: float = 2.0, fresh_s: float = 1.0) -> bool:
        """True when /system_stats answers; an answer to any call within fresh_s counts as one."""
        if time.monotonic() - self._last_answer < fresh_s:
            return True
        try:
            status, _ = self._request("GET", "/system_stats", timeout_s=timeout_s)
            return status == 200
        except ComfyUnavailable:
            return False

    def queue_prompt(self, workflow: dict, client_id: str, prompt_id: str,
                     extra_data: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST /prompt (with the prompt's `extra_data`, such as a partner-node API key, when it has one);
        PromptRejected with ComfyUI's body on a 400."""
        fields = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        body = json.dumps({**fields, "extra_data": extra_data} if extra_data else fields).encode()
        status, raw = self._request("POST", "/prompt", body, {"Content-Type": "application/json"})
        if status == 400:
            parsed = json.loads(raw or b"{}")
            raise PromptRejected((parsed.get("error") or {}).get("message", "prompt rejected"), parsed)
        if status != 200:
            raise ComfyUnavailable(f"ComfyUI answered {status} to POST /prompt")
        return json.loads(raw)

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The prompt's history entry, or None while it has none."""
        return (self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}") or {}).get(prompt_id)

    def object_info(self) -> dict[str, Any]:
        """Every node class with its inputs and outputs (GET /object_info)."""
        return self._json("GET", "/object_info", timeout_s=120)

    def queue(self) -> dict[str, Any]:
        return self._json("GET", "/queue")

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt only if `prompt_id` is the one running (ComfyUI checks it too)."""
        self._json("POST", "/interrupt", {"prompt_id": prompt_id})

    def delete_queued(self, prompt_id: str) -> None:
        self._json("POST", "/queue", {"delete": [prompt_id]})

    def upload_image(self, filename: str, data: bytes, subfolder: str = "") -> str:
        """POST /upload/image; the name ComfyUI stored it under (subfolder/name when in a subfolder)."""
        fields = [("overwrite", "true"), ("type", "input"), ("subfolder", subfolder)]
        body = _multipart(fields, "image", filename, data)
        headers = {"Content-Type": f"multipart/form-data; boundary={_MULTIPART_BOUNDARY}"}
        status, raw = self._request("POST", "/upload/image", body, headers)
        if 400 <= status < 500:  # ComfyUI judged the file or its name: the job's problem, not ComfyUI's
            raise MediaError(f"ComfyUI refused the upload of {filename!r} (HTTP {status})")
        if status != 200:
            raise ComfyUnavailable(f"ComfyUI refused the upload of {filename!r} ({status})")
        stored = json.loads(raw)
        return f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]

    def download(self, ref: dict[str, Any], target: Path) -> int:
        """Stream a /view file to `target`; its size in bytes. OutputUnavailable when ComfyUI refuses the
        name (400), the folder (403) or has no such file (404): the prompt reported an output it cannot serve.
        A file in this ComfyUI's folders on this machine is copied from disk (no HTTP round trip)."""
        copied = self._copy_local(ref, target)
        if copied is not None:
            return copied
        query = urllib.parse.urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                        "type": ref.get("type", "output")})
        resp = self._open("GET", f"/view?{query}", None, None, None)
        try:
            if 400 <= resp.status < 500:
                resp.read()
                raise OutputUnavailable(f"ComfyUI answered {resp.status} for output {str(ref['filename'])[:100]!r}"
                                        f" (subfolder {str(ref.get('subfolder', ''))[:100]!r})")
            if resp.status != 200:
                resp.read()
                raise ComfyUnavailable(f"ComfyUI answered {resp.status} for output {ref['filename']!r}")
            with open(target, "wb") as out:
                shutil.copyfileobj(resp, out, 1024 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise ComfyUnavailable(f"could not download {ref['filename']!r} from ComfyUI: {exc}") from exc
        return target.stat().st_size

    def local_file(self, ref: dict[str, Any]) -> Path | None:
        """Where a /view file lies on this machine: in one of this ComfyUI's folders, when they are known here
        and the file is inside it; None otherwise (then only /view can say)."""
        base = self.folders.by_type(str(ref.get("type", "output"))) if self.folders is not None else None
        if base is None or not isinstance(ref.get("filename"), str):
            return None
        try:
            path = (base / str(ref.get("subfolder") or "") / ref["filename"]).resolve()
            return path if path != base and path.is_relative_to(base) and path.is_file() else None
        except (OSError, ValueError):
            return None

    def _copy_local(self, ref: dict[str, Any], target: Path) -> int | None:
        path = self.local_file(ref)
        if path is None:
            return None
        try:
            shutil.copyfile(path, target)
        except OSError:
            return None
        return target.stat().st_size

    def events(self, client_id: str | None = None) -> EventStream:
        """This ComfyUI's WebSocket; every message on it counts as an answer for `healthy()`."""
        return EventStream(self.base_url, client_id or uuid.uuid4().hex, on_message=self._answered)

    def _answered(self) -> None:
        self._last_answer = time.monotonic()

    def answered_within(self, seconds: float) -> bool:
        """Whether ComfyUI answered a call, or said anything on a socket, in the last `seconds`."""
        return time.monotonic() - self._last_answer < seconds


def _multipart(fields: list[tuple[str, str]], file_field: str, filename: str, data: bytes) -> bytes:
    parts = [f'--{_MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields]
    head = (f'--{_MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    return b"".join(parts) + head + data + f"\r\n--{_MULTIPART_BOUNDARY}--\r\n".encode()


class EventStream:
    """ComfyUI's /ws for one client id. `next()` returns an Event, or None on a quiet interval;
    a dropped socket is reopened (closing the old one first: ComfyUI keys sockets by client id)."""

    def __init__(self, base_url: str, client_id: str, on_message: Callable[[], None] | None = None) -> None:
        self.url = base_url.replace("http://", "ws://").replace("https://", "wss://") + f"/ws?clientId={client_id}"
        self.client_id = client_id
        self._ws: Any = None
        self.reconnects = 0
        self._on_message = on_message or (lambda: None)

    def open(self) -> None:
        import websocket  # heavy-ish; only workers need it

        self.close()
        try:
            # websocket-client checks UTF-8 byte by byte in Python (a quarter of a worker's CPU per job on
            # the double); the JSON decoder refuses what is not UTF-8 anyway.
            self._ws = websocket.create_connection(self.url, timeout=5, skip_utf8_validation=True)
            self._ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        except (OSError, websocket.WebSocketException) as exc:
            self._ws = None
            raise ComfyUnavailable(f"ComfyUI WebSocket {self.url} refused: {exc}") from exc

    def ensure_open(self) -> None:
        if self._ws is None:
            self.open()

    def next(self, timeout_s: float) -> Event | None:
        """The next event; None after timeout_s of silence. Raises ComfyUnavailable if it cannot reconnect."""
        import websocket

        if self._ws is None:
            self.reconnects += 1
            self.open()
            return Event("reconnected", {})
        self._ws.settimeout(timeout_s)
        try:
            opcode, data = self._ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return None
        except (OSError, websocket.WebSocketException):
            self.close()
            return Event("disconnected", {})
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close()
            return Event("disconnected", {})
        self._on_message()  # ComfyUI is there: a health check may take this for an answer
        if opcode == websocket.ABNF.OPCODE_BINARY:
            return parse_binary(data)
        try:
            msg = json.loads(data)
            return Event(str(msg.get("type")), msg.get("data") or {})
        except (ValueError, AttributeError):
            raw = data[:200]
            return Event("unparsable", {"raw": raw.decode(errors="replace") if isinstance(raw, bytes) else raw})

    def drop_waiting(self, timeout_s: float = 0.05) -> bool:
        """Read and drop whatever messages are already waiting, without waiting for more; False when the
        socket is not open or ComfyUI closed it (a ComfyUI that died reads as closed at once). No round trip."""
        import select

        import websocket

        try:
            while self._ws is not None and select.select([self._ws.sock], [], [], 0)[0]:
                self._ws.settimeout(timeout_s)  # bounds a frame that is still arriving
                opcode, _ = self._ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                self._on_message()
            else:
                return self._ws is not None
        except (OSError, TypeError, ValueError, websocket.WebSocketException):
            pass
        self.close()
        return False

    def alive(self, timeout_s: float = 2.0) -> bool:
        """Whether ComfyUI answers a ping on this open socket within timeout_s: a health check that costs no
        request (ComfyUI's /system_stats asks the GPU). Messages that were waiting (status broadcasts between
        prompts) are dropped; a socket that is not open, or breaks, says False."""
        import websocket

        if self._ws is None:
            return False
        deadline = time.monotonic() + timeout_s
        try:
            self._ws.ping()
            while (left := deadline - time.monotonic()) > 0:
                self._ws.settimeout(left)
                opcode, _ = self._ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_PONG:
                    self._on_message()
                    return True
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
        except (OSError, websocket.WebSocketException):
            pass
        self.close()  # silent or broken: the next use reopens it
        return False

    def close(self) -> None:
        if self._ws is not None:
            # Closing a broken socket may fail in many ways; it is gone either way.
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
