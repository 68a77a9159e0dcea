"""An aiohttp server that speaks ComfyUI 0.3.64's HTTP + WebSocket protocol, as recorded in the transcripts.

Prompts are validated and executed for real (see nodes.py) on one worker thread, in FIFO order, with
ComfyUI's caching, message order, binary frame layouts, history entries and interrupt semantics.
Extra `/double/*` routes let tests crash it, hang it, drop its sockets and read what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import struct
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from comfy_saas.comfyui_double import folder_paths
from comfy_saas.comfyui_double.model_paths import list_models
from comfy_saas.comfyui_double.nodes import NODES

log = logging.getLogger("comfyui_double")


class Interrupted(Exception):
    pass


@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class Config:
    dirs: dict[str, Path]
    exec_delay_s: float = 0.0
    argv: list[str] = field(default_factory=list)
    model_paths: dict[str, list[Path]] = field(default_factory=dict)  # folder -> roots, default roots first


def now_ms() -> int:
    return int(time.time() * 1000)


# --- validation ---------------------------------------------------------------------------------


def _err(kind: str, message: str, details: str, extra: dict | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _check_value(name: str, spec: tuple, value: Any) -> dict | None:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    cfg = {"input_name": name, "input_config": [kind, opts], "received_value": value}
    if isinstance(kind, list):
        if kind and value not in kind:
            return _err("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {kind}", cfg)
        return None
    if kind in ("INT", "FLOAT"):
        try:
            number = int(value) if kind == "INT" else float(value)
        except (TypeError, ValueError) as exc:
            return _err("invalid_input_type", f"Failed to convert an input value to a {kind} value",
                        f"{name}, {value}, {exc}", {**cfg, "exception_message": str(exc)})
        if "min" in opts and number < opts["min"]:
            return _err("value_smaller_than_min", f"Value {value} smaller than min of {opts['min']}", name, cfg)
        if "max" in opts and number > opts["max"]:
            return _err("value_bigger_than_max", f"Value {value} bigger than max of {opts['max']}", name, cfg)
    return None


def _check_model(name: str, ispec: tuple, value: Any, choices: list[str]) -> dict | None:
    """A loader's file name must be one the folder lists now (an empty folder refuses every name)."""
    if value in choices:
        return None
    shown = choices if len(choices) <= 20 else f"(list of length {len(choices)})"
    return _err("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {shown}",
                {"input_name": name, "input_config": [choices, ispec[1] if len(ispec) > 1 else {}],
                 "received_value": value})


def _validate_node(prompt: dict, node_id: str, errors: dict[str, list], seen: set, dirs: dict[str, Path],
                   model_paths: dict[str, list[Path]]) -> None:
    if node_id in seen:
        return
    seen.add(node_id)
    node = prompt[node_id]
    spec = NODES[node["class_type"]]
    inputs = node.get("inputs", {})
    mine: list[dict] = []
    for name, ispec in {**spec.required, **spec.optional}.items():
        if name not in inputs:
            if name in spec.required:
                mine.append(_err("required_input_missing", "Required input is missing", name, {"input_name": name}))
            continue
        value = inputs[name]
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
            src, idx = value
            if src not in prompt:
                mine.append(_err("exception_during_inner_validation", "Exception when validating inner node",
                                 repr(src), {"input_name": name, "input_config": list(ispec),
                                             "exception_message": repr(src), "exception_type": "KeyError",
                                             "traceback": [], "linked_node": [node_id, 0]}))
                continue
            returns = NODES[prompt[src]["class_type"]].returns
            got = returns[idx] if isinstance(idx, int) and 0 <= idx < len(returns) else None
            if got != ispec[0]:
                mine.append(_err("return_type_mismatch", "Return type mismatch between linked nodes",
                                 f"{name}, received_type({got}) mismatch input_type({ispec[0]})",
                                 {"input_name": name, "input_config": list(ispec), "received_type": got,
                                  "linked_node": value}))
                continue
            _validate_node(prompt, src, errors, seen, dirs, model_paths)
        elif spec.name == "LoadImage" and name == "image":  # its VALIDATE_INPUTS replaces the list check
            if not isinstance(value, str) or not folder_paths.exists_annotated_filepath(value, dirs):
                mine.append(_err("custom_validation_failed", "Custom validation failed for node",
                                 f"image - Invalid image file: {value}", {"input_name": "image"}))
        elif name in spec.folders:
            if (problem := _check_model(name, ispec, value, list_models(model_paths, spec.folders[name]))):
                mine.append(problem)
        elif (problem := _check_value(name, ispec, value)) is not None:
            mine.append(problem)
    if mine:
        errors[node_id] = mine


def validate_prompt(prompt: Any, dirs: dict[str, Path], model_paths: dict[str, list[Path]] | None = None
                    ) -> tuple[list[str], dict, dict | None]:
    """(good outputs, node_errors, error) the way ComfyUI's validate_prompt reports them."""
    if not isinstance(prompt, dict):
        return [], {}, _err("invalid_prompt", "Invalid prompt", "prompt must be an object")
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return [], {}, _err("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                f"Node ID '#{node_id}'")
        if node["class_type"] not in NODES:
            return [], {}, _err("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                                f"Node ID '#{node_id}'")
    outputs = [nid for nid, n in prompt.items() if NODES[n["class_type"]].output_node]
    if not outputs:
        return [], {}, _err("prompt_no_outputs", "Prompt has no outputs", "")
    good, node_errors = [], {}
    for out in outputs:
        errors: dict[str, list] = {}
        _validate_node(prompt, out, errors, set(), dirs, model_paths or {})
        if not errors:
            good.append(out)
        for nid, errs in errors.items():
            entry = node_errors.setdefault(nid, {"errors": errs, "dependent_outputs": [],
                                                 "class_type": prompt[nid]["class_type"]})
            entry["dependent_outputs"].append(out)
    if good:
        return good, node_errors, None
    first = next(iter(node_errors.values()))["errors"][0]
    details = f"Required input is missing: {first['details']}" if first["type"] == "required_input_missing" else ""
    return [], node_errors, _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)


# --- execution ----------------------------------------------------------------------------------


def _order(prompt: dict, outputs: list[str]) -> list[str]:
    """Nodes the outputs need, dependencies first."""
    order: list[str] = []

    def visit(nid: str) -> None:
        if nid in order:
            return
        for value in prompt[nid].get("inputs", {}).values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                visit(value[0])
        order.append(nid)

    for out in sorted(outputs, key=lambda x: (len(x), x)):
        visit(out)
    return order


def _signature(prompt: dict, nid: str, memo: dict[str, str]) -> str:
    if nid not in memo:
        node = prompt[nid]
        parts = {}
        for name, value in sorted(node.get("inputs", {}).items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                parts[name] = ["link", _signature(prompt, value[0], memo), value[1]]
            else:
                parts[name] = value
        memo[nid] = json.dumps([node["class_type"], parts], sort_keys=True, default=str)
    return memo[nid]


class Executor:
    """Runs one prompt at a time on its own thread and reports through `emit`."""

    def __init__(self, server: DoubleServer) -> None:
        self.server = server
        self.cache: dict[str, tuple[tuple, dict | None]] = {}
        self.interrupt = threading.Event()
        self.current_node: str | None = None
        self._prompt_id = ""
        self._client: str | None = None
        self._progress: dict[str, dict] = {}
        self._node = ""
        self._messages: list[list] = []

    # Context for nodes --------------------------------------------------------------------
    @property
    def dirs(self) -> dict[str, Path]:
        return self.server.config.dirs

    @property
    def model_paths(self) -> dict[str, list[Path]]:
        return self.server.config.model_paths

    def sleep(self, seconds: float) -> None:
        if self.interrupt.wait(seconds):
            raise Interrupted()

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        if self.interrupt.is_set():
            raise Interrupted()
        self._set_state(self._node, value, total, "running")
        data = {"value": value, "max": total, "prompt_id": self._prompt_id, "node": self._node}
        if preview is not None:
            self.server.emit_preview(self._client, preview, self._prompt_id, self._node, data)
        else:
            self.server.emit("progress", data, self._client)

    def progress_text(self, text: str) -> None:
        node = self._node.encode()
        self.server.emit_binary(struct.pack(">II", 3, len(node)) + node + text.encode(), None)

    # Running ---------------------------------------------------------------------------------
    def _set_state(self, nid: str, value: float, total: float, state: str) -> None:
        self._progress[nid] = {"value": value, "max": total, "state": state, "node_id": nid,
                               "prompt_id": self._prompt_id, "display_node_id": nid, "parent_node_id": None,
                               "real_node_id": nid}
        self.server.emit("progress_state", {"prompt_id": self._prompt_id, "nodes": dict(self._progress)},
                         self._client)

    def _client_emit(self, event: str, data: dict) -> None:
        # Without a client_id ComfyUI sends these to nobody [s08].
        if self._client is not None:
            self.server.emit(event, data, self._client)

    def run(self, item: QueueItem) -> dict[str, Any]:
        """Execute one queue item; its history entry."""
        self.interrupt.clear()
        self._prompt_id, self._client, self._progress = item.prompt_id, item.extra_data.get("client_id"), {}
        self._messages = []
        self._record("execution_start", {"prompt_id": item.prompt_id, "timestamp": now_ms()})
        order, memo = _order(item.prompt, item.outputs), {}
        cached = [n for n in order if _signature(item.prompt, n, memo) in self.cache]
        self._record("execution_cached", {"nodes": cached, "prompt_id": item.prompt_id, "timestamp": now_ms()})
        outputs: dict[str, dict] = {}
        status = self._execute(item, order, set(cached), memo, outputs)
        done = outputs if status == "success" else {}
        return {"prompt": item.as_list(), "outputs": done,
                "status": {"status_str": status, "completed": status == "success", "messages": self._messages},
                "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in done}}

    def _record(self, event: str, data: dict, broadcast: bool = False) -> None:
        """Keep the event for history and send it: to the prompt's client, or to all when `broadcast`."""
        self._messages.append([event, data])
        if broadcast or self._client is not None:
            self.server.emit(event, data, self._client)

    def _execute(self, item: QueueItem, order: list[str], cached: set[str], memo: dict, outputs: dict) -> str:
        values: dict[str, tuple] = {}
        executed: list[str] = []
        try:
            self.sleep(self.server.config.exec_delay_s)
            for nid in order:
                outs, ui = self._run_node(item, nid, nid in cached, memo, values)
                values[nid] = outs
                if nid not in cached:
                    executed.append(nid)
                if ui:
                    outputs[nid] = ui
                    self._client_emit("executed", {"node": nid, "display_node": nid, "output": ui,
                                                   "prompt_id": item.prompt_id})
                if nid not in cached:
                    self._set_state(nid, self._progress[nid]["max"], self._progress[nid]["max"], "finished")
                elif ui:  # a cached output node re-sends its output and is marked finished [s07]
                    self._set_state(nid, 1, 1, "finished")
        except Interrupted:
            # Unlike most events, an interrupt reaches every socket when the prompt has no client [s08].
            self._record("execution_interrupted", self._interrupted(item, executed), broadcast=True)
            return "error"
        except Exception as exc:  # a node failed: report it the way ComfyUI does
            self._record("execution_error", self._error(item, executed, exc))
            return "error"
        finally:
            self.current_node = None
        self._record("execution_success", {"prompt_id": item.prompt_id, "timestamp": now_ms()})
        return "success"

    def _run_node(self, item: QueueItem, nid: str, is_cached: bool, memo: dict, values: dict) -> tuple:
        sig = _signature(item.prompt, nid, memo)
        if is_cached:
            return self.cache[sig]
        node = item.prompt[nid]
        self._node = self.current_node = nid
        self._set_state(nid, 0.0, 1.0, "running")
        self._client_emit("executing", {"node": nid, "display_node": nid, "prompt_id": item.prompt_id})
        if self.interrupt.is_set():
            raise Interrupted()
        spec = NODES[node["class_type"]]
        kwargs = {}
        for name, value in node.get("inputs", {}).items():
            if name not in spec.required and name not in spec.optional:
                continue
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                kwargs[name] = values[value[0]][value[1]]
            else:
                kwargs[name] = _coerce(spec, name, value)
        result = spec.fn(self, **kwargs)
        self.cache[sig] = result
        return result

    def _interrupted(self, item: QueueItem, executed: list[str]) -> dict:
        node = item.prompt.get(self._node, {})
        return {"prompt_id": item.prompt_id, "node_id": self._node, "node_type": node.get("class_type"),
                "executed": executed, "timestamp": now_ms()}

    def _error(self, item: QueueItem, executed: list[str], exc: Exception) -> dict:
        node = item.prompt.get(self._node, {})
        tb = traceback.format_tb(exc.__traceback__)
        inputs = {k: [repr(v)] for k, v in node.get("inputs", {}).items()}
        return {"prompt_id": item.prompt_id, "node_id": self._node, "node_type": node.get("class_type"),
                "executed": executed, "exception_message": f"{exc}\n", "exception_type": type(exc).__name__,
                "traceback": tb, "current_inputs": inputs, "current_outputs": [], "timestamp": now_ms()}


def _coerce(spec: Any, name: str, value: Any) -> Any:
    kind = ({**spec.required, **spec.optional}[name])[0]
    if kind == "INT":
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "BOOLEAN":
        return bool(value)
    return value


# --- the server ---------------------------------------------------------------------------------


class DoubleServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        for d in config.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.meta_clients: set[int] = set()
        self.pending: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.history: dict[str, dict] = {}
        self.events: list[dict[str, Any]] = []
        self.counter = 0
        self.cond = threading.Condition()
        self.executor = Executor(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.outbox: asyncio.Queue | None = None

    # outgoing messages, in order, from any thread
    def emit(self, event: str, data: dict, sid: str | None) -> None:
        self._post(("text", json.dumps({"type": event, "data": data}), sid))

    def emit_binary(self, payload: bytes, sid: str | None) -> None:
        self._post(("binary", payload, sid))

    def emit_preview(self, sid: str | None, image: Any, prompt_id: str, node: str, progress: dict) -> None:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=95)
        meta = json.dumps({"node_id": node, "prompt_id": prompt_id, "display_node_id": node, "parent_node_id": None,
                           "real_node_id": node, "image_type": "image/jpeg"}).encode()
        self._post(("preview", (struct.pack(">II", 4, len(meta)) + meta + buf.getvalue(),
                                struct.pack(">II", 1, 1) + buf.getvalue(), progress), sid))

    def _post(self, item: tuple) -> None:
        assert self.loop is not None and self.outbox is not None
        self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)

    async def publisher(self) -> None:
        assert self.outbox is not None
        while True:
            kind, payload, sid = await self.outbox.get()
            targets = list(self.sockets.items()) if sid is None else [(sid, self.sockets.get(sid))]
            for _, ws in targets:
                if ws is None or ws.closed:
                    continue
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._deliver(ws, kind, payload)

    async def _deliver(self, ws: web.WebSocketResponse, kind: str, payload: Any) -> None:
        if kind == "text":
            await ws.send_str(payload)
        elif kind == "binary":
            await ws.send_bytes(payload)
        else:
            with_meta, legacy, progress = payload
            progress_msg = json.dumps({"type": "progress", "data": progress})
            if id(ws) in self.meta_clients:
                await ws.send_bytes(with_meta)
                await ws.send_str(progress_msg)
            else:
                await ws.send_str(progress_msg)
                await ws.send_bytes(legacy)

    def queue_remaining(self) -> int:
        return len(self.pending) + (1 if self.running else 0)

    def broadcast_status(self) -> None:
        self.emit("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}, None)

    # prompt worker thread
    def worker(self) -> None:
        while True:
            with self.cond:
                while not self.pending:
                    self.cond.wait()
                self.running = self.pending.pop(0)
            self.broadcast_status()
            item = self.running
            try:
                entry = self.executor.run(item)
            except Exception:  # never let the worker thread die
                log.exception("double executor crashed on %s", item.prompt_id)
                entry = {"prompt": item.as_list(), "outputs": {}, "meta": {},
                         "status": {"status_str": "error", "completed": False, "messages": []}}
            with self.cond:
                self.history[item.prompt_id] = entry
                self.running = None
            self.broadcast_status()
            if item.extra_data.get("client_id") is not None:
                self.emit("executing", {"node": None, "prompt_id": item.prompt_id}, item.extra_data["client_id"])

    # routes ------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=200 * 1024 * 1024, middlewares=[origin_guard])
        routes = [
            ("GET", "/ws", self.ws), ("GET", "/system_stats", self.system_stats), ("GET", "/features", self.features),
            ("GET", "/prompt", self.get_prompt), ("POST", "/prompt", self.post_prompt),
            ("GET", "/queue", self.get_queue), ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.interrupt), ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_one), ("POST", "/history", self.post_history),
            ("GET", "/view", self.view), ("POST", "/upload/image", self.upload_image),
            ("GET", "/object_info", self.object_info), ("GET", "/object_info/{cls}", self.object_info_one),
            ("GET", "/embeddings", self.empty_list), ("GET", "/models", self.empty_list),
            ("POST", "/free", self.ok),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            if path != "/ws":
                app.router.add_route(method, "/api" + path, handler)
        app.router.add_post("/double/crash", self.crash)
        app.router.add_post("/double/hang", self.hang)
        app.router.add_post("/double/drop_ws", self.drop_ws)
        app.router.add_post("/double/config", self.set_config)
        app.router.add_get("/double/events", self.get_events)
        app.on_startup.append(self._start)
        return app

    async def _start(self, app: web.Application) -> None:
        self.loop = asyncio.get_running_loop()
        self.outbox = asyncio.Queue()
        app["publisher"] = asyncio.create_task(self.publisher())
        threading.Thread(target=self.worker, name="prompt_worker", daemon=True).start()

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_str(json.dumps({"type": "status", "data": {
                "status": {"exec_info": {"queue_remaining": self.queue_remaining()}}, "sid": sid}}))
            running = self.running
            if running and running.extra_data.get("client_id") == sid and self.executor.current_node:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": self.executor.current_node}}))
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    await self._first_frame(ws, msg.data)
                first = False
        finally:
            self.sockets.pop(sid, None)  # as ComfyUI does, even if a newer socket took this sid [s14]
            self.meta_clients.discard(id(ws))
        return ws

    async def _first_frame(self, ws: web.WebSocketResponse, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "feature_flags":
            if (msg.get("data") or {}).get("supports_preview_metadata"):
                self.meta_clients.add(id(ws))
            await ws.send_str(json.dumps({"type": "feature_flags", "data": {
                "supports_preview_metadata": True, "max_upload_size": 104857600}}))

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"system": {
            "os": os.name, "ram_total": 25769803776, "ram_free": 20000000000, "comfyui_version": "0.3.64",
            "required_frontend_version": "1.27.10", "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95", "python_version": sys.version, "pytorch_version": "none (double)",
            "embedded_python": False, "argv": self.config.argv}, "devices": [{
                "name": "cpu", "type": "cpu", "index": None, "vram_total": 25769803776, "vram_free": 20000000000,
                "torch_vram_total": 25769803776, "torch_vram_free": 20000000000}]})

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response({"supports_preview_metadata": True, "max_upload_size": 104857600})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.queue_remaining()}})

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()  # malformed JSON -> aiohttp's plain 500, as in ComfyUI [s00]
        self.counter += 1
        number = self.counter - 1
        if "number" in body:
            number = float(body["number"])
        elif body.get("front"):
            number = -number
        if "prompt" not in body:
            return web.json_response({"error": _err("no_prompt", "No prompt provided", "No prompt provided"),
                                      "node_errors": {}}, status=400)
        outputs, node_errors, error = validate_prompt(body["prompt"], self.config.dirs, self.config.model_paths)
        if error is not None:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        extra = dict(body.get("extra_data") or {})
        if body.get("client_id") is not None:
            extra["client_id"] = body["client_id"]
        item = QueueItem(number, prompt_id, body["prompt"], extra, outputs)
        with self.cond:
            self.pending.append(item)
            self.pending.sort(key=lambda i: i.number)
            self.cond.notify()
        self.broadcast_status()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def get_queue(self, request: web.Request) -> web.Response:
        with self.cond:
            running = [self.running.as_list()] if self.running else []
            pending = [i.as_list() for i in self.pending]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self.cond:
            if body.get("clear"):
                self.pending.clear()
            doomed = set(body.get("delete") or [])
            self.pending = [i for i in self.pending if i.prompt_id not in doomed]
        self.events.append({"type": "queue", "body": body})
        self.broadcast_status()
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        body = json.loads(await request.text() or "{}")
        target = body.get("prompt_id") if isinstance(body, dict) else None
        running = self.running.prompt_id if self.running else None
        effective = running is not None and (target is None or target == running)
        self.events.append({"type": "interrupt", "prompt_id": target, "running": running, "effective": effective})
        if effective:
            self.executor.interrupt.set()
        return web.Response()

    async def get_history(self, request: web.Request) -> web.Response:
        items = list(self.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]):]
        return web.json_response(dict(items))

    async def get_history_one(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for pid in body.get("delete") or []:
            self.history.pop(pid, None)
        return web.Response()

    async def view(self, request: web.Request) -> web.StreamResponse:
        status, path = folder_paths.view_path(dict(request.query), self.config.dirs)
        if path is None:
            return web.Response(status=status)
        name = os.path.basename(path)
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{name}"'})

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if image is None or not hasattr(image, "file") or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        subfolder = str(post.get("subfolder") or "")
        base = self.config.dirs.get(kind)
        if base is None:  # ComfyUI's get_dir_by_type has no else branch: UnboundLocalError, a plain 500
            return web.Response(status=500)
        target = folder_paths.upload_path(base, subfolder, image.filename)
        if target is None:
            return web.Response(status=400)
        folder = Path(target[0])
        if not folder.exists():
            folder.mkdir(parents=True)
        data = image.file.read()
        overwrite = str(post.get("overwrite", "")).lower() in {"true", "1"}
        name = _free_name(folder, image.filename, data, overwrite)
        (folder / name).write_bytes(data)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def object_info(self, request: web.Request) -> web.Response:
        info = {n: s.schema(self.config.dirs["input"], self.config.model_paths) for n, s in NODES.items()}
        return web.json_response(info)

    async def object_info_one(self, request: web.Request) -> web.Response:
        cls = request.match_info["cls"]
        spec = NODES.get(cls)
        return web.json_response({cls: spec.schema(self.config.dirs["input"], self.config.model_paths)}
                                 if spec else {})

    async def empty_list(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def ok(self, request: web.Request) -> web.Response:
        return web.Response()

    # knobs -------------------------------------------------------------------------------------
    async def crash(self, request: web.Request) -> web.Response:
        asyncio.get_running_loop().call_later(0.05, os._exit, 17)
        return web.json_response({"crashing": True})

    async def hang(self, request: web.Request) -> web.Response:
        seconds = float((await request.json()).get("seconds", 5))
        time.sleep(seconds)  # deliberately blocks the event loop: HTTP and WebSocket go silent
        return web.json_response({"hung_s": seconds})

    async def drop_ws(self, request: web.Request) -> web.Response:
        sockets = list(self.sockets.values())
        for ws in sockets:
            await ws.close()
        return web.json_response({"dropped": len(sockets)})

    async def set_config(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "exec_delay_s" in body:
            self.config.exec_delay_s = float(body["exec_delay_s"])
        return web.json_response({"exec_delay_s": self.config.exec_delay_s})

    async def get_events(self, request: web.Request) -> web.Response:
        return web.json_response(self.events)


def _free_name(folder: Path, filename: str, data: bytes, overwrite: bool) -> str:
    """ComfyUI's upload naming: same bytes dedupe, different bytes get ' (1)', ' (2)', ..."""
    if overwrite or not (folder / filename).exists() or (folder / filename).read_bytes() == data:
        return filename
    stem, dot, ext = filename.rpartition(".")
    stem, ext = (stem, dot + ext) if dot else (filename, "")
    i = 1
    while (folder / f"{stem} ({i}){ext}").exists():
        if (folder / f"{stem} ({i}){ext}").read_bytes() == data:
            break
        i += 1
    return f"{stem} ({i}){ext}"


@web.middleware
async def origin_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """ComfyUI's CSRF guard: a foreign Origin against a loopback Host gets 403 [s00]."""
    origin = request.headers.get("Origin")
    if origin:
        from urllib.parse import urlsplit

        host = request.host.split(":")[0]
        if urlsplit(origin).hostname not in {host, "127.0.0.1", "localhost"}:
            return web.Response(status=403)
    return await handler(request)
