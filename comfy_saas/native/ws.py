"""GET /ws: ComfyUI's per-client event stream, made from our jobs as the store has them.

Each socket follows its owner's prompts (their index, probed a few slots past the head on every poll) and
speaks only of those submitted with its client_id or with none (ComfyUI broadcasts those; here only to the same
owner's sockets). A poll is one batched round trip (the probe, the tracked
jobs, their progress events and preview frames), every POLL_S: workers write progress at most that often.
A prompt that finished shortly before the socket connected (tools that submit first, then connect) gets its
closing events replayed. Events come in ComfyUI's order: execution_start, execution_cached, then executing /
progress per node, executed per output node, the outcome, a status, and `executing` with node null.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from comfy_saas.backends.parallel import run_all
from comfy_saas.jobs import keys
from comfy_saas.jobs.model import Job, Progress, Status
from comfy_saas.jobs.services import Services
from comfy_saas.native import records, views
from comfy_saas.native.records import Prompt

POLL_S = 0.5  # as often as a worker writes progress (runner/monitor.py PROGRESS_WRITE_S)
WINDOW = 16  # the owner's newest prompts a socket looks at when it connects
PROBE = 4  # slots past the head read on each poll for prompts submitted since
HOLE_POLLS = 10  # how long an empty slot below the head is probed again
TRACKED_MAX = 100
REPLAY_S = 60.0  # a prompt of this client that finished this long before it connected still gets its end
PREVIEW_FORMAT = {"jpeg": 1, "png": 2}

Message = dict[str, Any] | bytes


def message(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "data": data}


@dataclass
class Watch:
    """What this socket already said about one prompt of its client."""

    prompt: Prompt
    mine: bool
    started: bool = False
    node: str | None = None
    step: tuple[str | None, int | None] = (None, None)
    event_seq: int = 0
    preview_seq: int = 0
    catch_up: bool = False  # followed from mid-run: of the progress so far, only the latest is told


@dataclass
class Poll:
    """One poll's reads: jobs by id, new progress events and preview frames of this client's running ones, and
    newly listed prompts."""

    jobs: dict[str, Job | None] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    previews: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    new: list[Prompt] = field(default_factory=list)


def executing(node: str | None, prompt_id: str) -> dict[str, Any]:
    data: dict[str, Any] = {"node": node, "prompt_id": prompt_id}
    if node is not None:
        data["display_node"] = node
    return message("executing", data)


def preview_frame(frame: dict[str, Any]) -> bytes:
    """A legacy type-1 binary frame: event type, image format (1 JPEG, 2 PNG), the image."""
    import base64

    return struct.pack(">II", 1, PREVIEW_FORMAT.get(frame.get("format", ""), 1)) + base64.b64decode(frame["data_b64"])


def progress_messages(watch: Watch, events: list[dict[str, Any]]) -> list[Message]:
    """executing when the node changes, progress when its step does."""
    out: list[Message] = []
    for event in events:
        watch.event_seq = max(watch.event_seq, int(event.get("seq", 0)))
        progress = Progress.model_validate(event.get("progress") or {})
        if progress.node_id and progress.node_id != watch.node:
            watch.node = progress.node_id
            out.append(executing(progress.node_id, watch.prompt.id))
        if progress.step is not None and (progress.node_id, progress.step) != watch.step:
            watch.step = (progress.node_id, progress.step)
            out.append(message("progress", {"value": progress.step, "max": progress.steps or progress.step,
                                            "prompt_id": watch.prompt.id, "node": progress.node_id}))
    return out


def start_messages(watch: Watch, job: Job) -> list[Message]:
    if watch.started or job.started_at is None:
        return []
    watch.started = True
    cached = views.cached_nodes(job) if job.terminal else []
    return [message("execution_start", views.start_data(job)),
            message("execution_cached", {"nodes": cached, **views.start_data(job)})]


def end_messages(watch: Watch, job: Job) -> list[Message]:
    """executed per output node, then the outcome (the closing `executing` follows the status)."""
    out: list[Message] = [message("executed", {"node": node, "display_node": node, "output": output,
                                               "prompt_id": job.id})
                          for node, output in views.outputs_by_node(job).items()]
    kind, data = views.terminal_message(job)
    return [*out, message(kind, data)]


class Fanout:
    """One socket's view of its owner's prompts; `poll()` reads the store (blocking), `advance()` turns what
    changed into messages."""

    def __init__(self, svc: Services, owner: str, client_id: str) -> None:
        self.svc, self.owner, self.client_id = svc, owner, client_id
        self.watches: dict[str, Watch] = {}
        self.head = 0
        self.holes: dict[int, int] = {}  # empty slots below the head still probed: polls left
        self.queue_remaining = 0

    def _track(self, prompts: list[Prompt], replay_after: datetime | None = None) -> None:
        """Follow these prompts: all unfinished ones, and this client's finished ones (listed since the socket
        connected, or, with `replay_after`, finished after it)."""
        for p in prompts:
            if p.id in self.watches or p.job is None or len(self.watches) >= TRACKED_MAX:
                continue
            # As ComfyUI broadcasts a prompt sent without client_id, but only to its submitter's own sockets.
            watch = Watch(p, mine=p.client_id in (None, self.client_id), catch_up=replay_after is not None)
            recent = replay_after is None or (p.client_id == self.client_id and p.job.finished_at is not None
                                              and p.job.finished_at >= replay_after)
            if p.job.terminal and not (watch.mine and recent):
                continue
            self.watches[p.id] = watch

    def connect(self) -> None:
        """What a new socket reads first (blocking); then the status greeting is sent."""
        scope = keys.native_scope(self.owner)
        self.head, seen = self.svc.store.index.newest(scope, WINDOW)
        ids = [seen.get(n) for n in range(self.head, max(0, self.head - WINDOW), -1)]
        prompts = records.load(self.svc, self.owner, list(dict.fromkeys(i for i in ids if i)))
        self._track(prompts, replay_after=self.svc.store.clock() - timedelta(seconds=REPLAY_S))
        self.queue_remaining = self._remaining()

    def _remaining(self) -> int:
        return sum(1 for w in self.watches.values() if w.prompt.job is not None and not w.prompt.job.terminal)

    def poll(self) -> Poll:
        """One batched round trip (two when new prompts were listed since the last)."""
        scope = keys.native_scope(self.owner)
        numbers = sorted(self.holes) + list(range(self.head + 1, self.head + PROBE + 1))
        watches = list(self.watches.values())
        calls: list[Callable[[], Any]] = [lambda: self.svc.store.index.slots(scope, numbers)]
        calls += [lambda w=w: self.svc.store.get(w.prompt.id) for w in watches]
        running = [w for w in watches if w.mine and w.prompt.job is not None and not w.prompt.job.terminal]
        calls += [lambda w=w: self.svc.store.progress_events(w.prompt.id, w.event_seq) for w in running]
        calls += [lambda w=w: self.svc.store.latest_preview(w.prompt.id) for w in running]
        got = run_all(calls)
        poll = Poll(jobs={w.prompt.id: j for w, j in zip(watches, got[1:1 + len(watches)], strict=True)})
        rest = got[1 + len(watches):]
        poll.events = {w.prompt.id: e for w, e in zip(running, rest[:len(running)], strict=True)}
        poll.previews = {w.prompt.id: f for w, f in zip(running, rest[len(running):], strict=True)}
        listed = [(n, pid) for n, pid in zip(numbers, got[0], strict=True) if pid]
        self._note_holes(numbers, {n for n, _ in listed})
        if listed:
            poll.new = records.load(self.svc, self.owner, [pid for _, pid in listed])
        return poll

    def _note_holes(self, probed: list[int], filled: set[int]) -> None:
        """Move the head to the highest filled slot; empty slots below it are probed again for a while (a
        submission elsewhere may have claimed a slot before another one that was written first)."""
        for n in filled:
            self.holes.pop(n, None)
        for n in list(self.holes):
            self.holes[n] -= 1
            if self.holes[n] <= 0:
                del self.holes[n]
        top = max(filled, default=self.head)
        for n in probed:
            if self.head < n < top and n not in filled:
                self.holes[n] = HOLE_POLLS
        self.head = max(self.head, top)

    def advance(self, poll: Poll) -> list[Message]:
        """Messages for what the poll saw, in ComfyUI's order."""
        before = set(self.watches)
        self._track(poll.new)
        out: list[Message] = []
        closing: list[str] = []
        # As ComfyUI: the queue grew (a status) before a new prompt runs, even one first seen already finished.
        done_new = sum(1 for pid, w in self.watches.items() if pid not in before and w.prompt.job is not None
                       and w.prompt.job.terminal)
        if (queued := self._remaining() + done_new) > self.queue_remaining:
            self.queue_remaining = queued
            out.append(self.status())
        for pid, watch in list(self.watches.items()):
            job = poll.jobs.get(pid) or watch.prompt.job
            if pid in poll.jobs and poll.jobs[pid] is None:
                del self.watches[pid]  # purged
                continue
            assert job is not None
            watch.prompt = dataclasses.replace(watch.prompt, job=job)
            if watch.mine:
                out += self._advance_one(watch, job, poll)
            if job.terminal:
                del self.watches[pid]
                if watch.mine:
                    closing.append(pid)
        remaining = self._remaining()
        if remaining != self.queue_remaining or closing:
            self.queue_remaining = remaining
            out.append(self.status())
        return out + [executing(None, pid) for pid in closing]

    def _advance_one(self, watch: Watch, job: Job, poll: Poll) -> list[Message]:
        out = start_messages(watch, job)
        if job.status is Status.RUNNING:
            events = poll.events.get(job.id) or []
            if watch.catch_up and events:
                watch.catch_up, events = False, events[-1:]
            out += progress_messages(watch, events)
            frame = poll.previews.get(job.id)
            if frame and int(frame.get("seq", 0)) > watch.preview_seq and frame.get("data_b64"):
                watch.preview_seq = int(frame["seq"])
                out.append(preview_frame(frame))
        if job.terminal:
            out += end_messages(watch, job)
        return out

    def replay(self) -> list[Message]:
        """The closing events of prompts already finished when the socket connected."""
        poll = Poll(jobs={pid: w.prompt.job for pid, w in self.watches.items()})
        return self.advance(poll)

    def status(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.queue_remaining}}}
        if sid is not None:
            data["sid"] = sid
        return message("status", data)


Greeting = Callable[[str], list[dict[str, Any]]]


@dataclass
class SocketOptions:
    """What the socket says beyond ComfyUI's events: the server's feature flags (answered to a client's first
    `feature_flags` frame) and greetings, each called with the sid after the status (the editor adds its own)."""

    feature_flags: dict[str, Any] = field(default_factory=lambda: {"supports_preview_metadata": False})
    greetings: list[Greeting] = field(default_factory=list)


async def _send(ws: WebSocket, item: Message) -> None:
    if isinstance(item, bytes):
        await ws.send_bytes(item)
    else:
        await ws.send_text(json.dumps(item))


async def _listen(ws: WebSocket, options: SocketOptions, closed: asyncio.Event) -> None:
    """Answer a first `feature_flags` frame as ComfyUI does; ignore everything else until the client leaves."""
    first = True
    try:
        while (frame := await ws.receive())["type"] != "websocket.disconnect":
            if first and frame.get("text") is not None and _asks_flags(frame["text"]):
                await _send(ws, message("feature_flags", dict(options.feature_flags)))
            first = False
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        closed.set()


def _asks_flags(text: str) -> bool:
    try:
        sent = json.loads(text)
    except ValueError:
        return False
    return isinstance(sent, dict) and sent.get("type") == "feature_flags"


async def serve_socket(ws: WebSocket, svc: Services, owner: str, client_id: str | None,
                       options: SocketOptions, max_s: float = 3600.0) -> None:
    """Run one accepted socket until the client closes it, or for at most `max_s` (then closed with 1001)."""
    ends = asyncio.get_running_loop().time() + max_s
    sid = client_id or uuid.uuid4().hex
    fanout = Fanout(svc, owner, sid)
    await run_in_threadpool(fanout.connect)
    await _send(ws, fanout.status(sid))
    for greet in options.greetings:
        for item in greet(sid):
            await _send(ws, item)
    closed = asyncio.Event()
    listener = asyncio.create_task(_listen(ws, options, closed))
    try:
        for item in fanout.replay():
            await _send(ws, item)
        while not closed.is_set():
            if asyncio.get_running_loop().time() >= ends:
                await ws.close(code=1001, reason="socket lifetime reached; reconnect")
                break
            try:
                await asyncio.wait_for(closed.wait(), POLL_S)
                break
            except TimeoutError:
                pass
            for item in fanout.advance(await run_in_threadpool(fanout.poll)):
                await _send(ws, item)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        listener.cancel()
