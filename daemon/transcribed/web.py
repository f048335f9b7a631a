"""The status page, /healthz and /metrics: a small read-only HTTP/1.1 server in the daemon.

    GET /                 the page (static HTML + JS + CSS shipped in the package; no CDN)
    GET /api/status       the snapshot the page polls (status.collect + the live board)
    GET /healthz          200 {"status": "ok"} while the loop and the workers are healthy,
                          503 with the reasons otherwise (draining, loop stalled, a worker's
                          job not moving, disk, quota)
    GET /metrics          Prometheus text format (metrics.py)
    GET /outbox/NAME      a transcript, only if a done job's progress file lists NAME as one
                          of its outputs, and only a regular file (never a link) in the outbox
                          (or PROFILE/NAME, in a profile's subfolder of it, never a link either)

Why h11 over Trio sockets rather than hypercorn: the server is five read-only routes on
loopback, and h11 (already installed with httpx) gives exactly the HTTP/1.1 parsing and
framing with the sockets left to us, so the server is one more `serve_*` task in the root
nursery under Trio's rules (cancelled with the daemon, no thread, no second logging system,
no ASGI adapter layer, no new dependency). hypercorn would add h2, wsproto and priority for
features this page does not use. The costs of doing it ourselves are bounded here: every
connection has an idle and a request deadline, connections are capped, bodies are refused,
and h11 caps the header size.

The Host header must name the listening address or localhost (unless the server listens on
a non-loopback address): a web page elsewhere cannot read transcripts through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import h11
import structlog
import trio

from transcribed import status
from transcribed.config import Config
from transcribed.errors import ConfigError
from transcribed.jobs import Services
from transcribed.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from transcribed.metrics import Metrics
from transcribed.outputs import OUTPUT_SUFFIXES

logger = structlog.get_logger()

MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 30.0
REQUEST_TIMEOUT = 10.0
MAX_TRANSCRIPT_BYTES = 64 << 20
LOOP_TICK_INTERVAL = 1.0
LOOP_STALL_LIMIT = 5.0  # seconds late a tick may be before /healthz says the loop stalled
LOOP_STALL_MEMORY = 60.0  # how long a stall keeps /healthz at 503
WORKING_STATES = ("validating", "transcribing", "merging")
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
TRANSCRIPT_TYPES = {
    ".txt": "text/plain; charset=utf-8",
    ".srt": "text/plain; charset=utf-8",
    ".vtt": "text/vtt; charset=utf-8",
    ".json": "application/json",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
COMMON_HEADERS = [
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
]
PAGE_POLICY = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
FILE_POLICY = "default-src 'none'; sandbox"


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> Address:
    """HOST:PORT, [IPv6]:PORT, or :PORT (loopback); ConfigError naming web.listen otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            f"web.listen {text!r} is not HOST:PORT",
            hint='for example "127.0.0.1:8750", "[::1]:8750", or "" to turn the page off',
        )
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    return Address(host=host, port=int(port_text))


@dataclass(slots=True, kw_only=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[str, str]]


def _json(status_code: int, data: Any) -> Reply:
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return Reply(status=status_code, body=body, content_type="application/json", headers=[])


def _text(status_code: int, text: str) -> Reply:
    return Reply(
        status=status_code,
        body=text.encode("utf-8"),
        content_type="text/plain; charset=utf-8",
        headers=[],
    )


class LoopMonitor:
    """How late the event loop has been: a tick every second notes how late it woke."""

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (when, seconds late)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            before = trio.current_time()
            await trio.sleep(LOOP_TICK_INTERVAL)
            now = trio.current_time()
            late = now - before - LOOP_TICK_INTERVAL
            self.stalls = [(t, s) for t, s in self.stalls if now - t < LOOP_STALL_MEMORY]
            if late > LOOP_STALL_LIMIT:
                self.stalls.append((now, late))
                logger.warning("web.loop_stalled", seconds=round(late, 2))

    def worst(self) -> float:
        now = trio.current_time()
        return max((s for t, s in self.stalls if now - t < LOOP_STALL_MEMORY), default=0.0)


class StatusSite:
    """The routes, over the daemon's shared services."""

    def __init__(
        self, config: Config, services: Services, metrics: Metrics, address: Address
    ) -> None:
        self.config = config
        self.services = services
        self.metrics = metrics
        self.address = address
        self.loop = LoopMonitor()
        self.outbox = config.folder("outbox")
        port = f":{address.port}"
        host = f"[{address.host}]" if ":" in address.host else address.host
        self.allowed_hosts = {
            f"{host}{port}",
            f"localhost{port}",
            f"127.0.0.1{port}",
            f"[::1]{port}",
        }

    # ---- what the routes say

    def live_jobs(self) -> list[dict[str, Any]]:
        board = self.services.board
        return [
            board.snapshot(job)
            for job in list(board.jobs.values())
            if job.state not in status.FINAL_STATES
        ]

    def health(self) -> tuple[bool, dict[str, Any]]:
        reasons: list[str] = []
        if self.services.draining.is_set():
            reasons.append("draining: the daemon is stopping")
        stalled = self.loop.worst()
        if stalled:
            reasons.append(f"the event loop stalled for {stalled:.1f} s in the last minute")
        paused = self.services.pause_reason()  # disk, a folder, quota, key, model, unreachable
        if paused is not None:
            reasons.append(f"{paused}; intake is paused")
        reasons.extend(self.stalled_workers())
        jobs = [
            job for job in self.services.board.jobs.values() if job.state not in status.FINAL_STATES
        ]
        body = {
            "status": "unhealthy" if reasons else "ok",
            "reasons": reasons,
            "jobs": len(jobs),
            "job_workers": self.config.job_workers,
            "pid": os.getpid(),
        }
        return not reasons, body

    def stalled_workers(self) -> list[str]:
        """Workers whose job has not moved for twice the longest a step may legitimately take
        (one request, or a silent decoder); waiting jobs are told apart by their reason."""
        limit = 2 * max(self.config.decode_stall_timeout, self.config.openai.request_timeout)
        board = self.services.board
        now = board.now()
        stalled = []
        for job in list(board.jobs.values()):
            if job.state not in WORKING_STATES:
                continue
            try:
                updated = datetime.fromisoformat(job.updated_at.replace("Z", "+00:00"))
            except ValueError:
                continue
            idle = (now - updated).total_seconds()
            if idle > limit:
                stalled.append(
                    f"worker: {job.source} ({job.state}) made no progress for {idle:.0f} s"
                )
        return stalled

    async def snapshot(self) -> dict[str, Any]:
        live = self.live_jobs()
        data = await trio.to_thread.run_sync(partial(status.collect, self.config, live_jobs=live))
        _, health = self.health()
        data["health"] = health
        data["engine"] = {"name": self.services.traits.name, "model": self.services.traits.model}
        return data

    def published_outputs(self) -> set[str]:
        """Every output name a done job's progress file lists (blocking)."""
        _, done = status.read_progress(self.outbox, profiles=self.config.profile_names)
        return {str(name) for job in done for name in job.get("outputs") or []}

    def read_transcript(self, name: str) -> bytes | None:
        """The bytes of outbox/NAME (or outbox/PROFILE/NAME) if the daemon published it and it
        is a regular file, reached through no link."""
        if name not in self.published_outputs():
            return None
        subfolder, _, base = name.rpartition("/")
        try:
            directory = os.open(self.outbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if subfolder:
                outer, directory = directory, -1
                try:
                    directory = os.open(
                        subfolder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=outer,
                    )  # fmt: skip
                finally:
                    os.close(outer)
            fd = os.open(
                base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory
            )
        except OSError:
            return None
        finally:
            if directory >= 0:
                os.close(directory)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_TRANSCRIPT_BYTES:
                return None
            return handle.read(MAX_TRANSCRIPT_BYTES + 1)

    # ---- routing

    async def respond(self, request: h11.Request) -> Reply:
        method = request.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            reply = _text(405, "read-only: only GET and HEAD\n")
            reply.headers.append(("allow", "GET, HEAD"))
            return reply
        host = next((v for k, v in request.headers if k == b"host"), b"").decode("ascii", "replace")
        host = host.lower()
        if self.address.loopback and host not in self.allowed_hosts:
            return _text(421, "this server answers only to its own address\n")
        path = urlsplit(request.target.decode("ascii", "replace")).path
        if path in STATIC:
            filename, content_type = STATIC[path]
            body = resources.files("transcribed").joinpath("static", filename).read_bytes()
            return Reply(
                status=200,
                body=body,
                content_type=content_type,
                headers=[("content-security-policy", PAGE_POLICY)],
            )
        if path == "/api/status":
            return _json(200, await self.snapshot())
        if path == "/healthz":
            healthy, report = self.health()
            return _json(200 if healthy else 503, report)
        if path == "/metrics":
            count, _ = await trio.to_thread.run_sync(
                partial(
                    status.inbox_entries, self.config.folder("inbox"),
                    self.config.settle_interval, profiles=self.config.profile_names,
                )
            )  # fmt: skip
            return Reply(
                status=200,
                body=self.metrics.render(self.services.board, count),
                content_type=METRICS_CONTENT_TYPE,
                headers=[],
            )
        if path.startswith("/outbox/"):
            return await self.transcript(unquote(path.removeprefix("/outbox/"), errors="strict"))
        return _text(404, "not found\n")

    async def transcript(self, name: str) -> Reply:
        suffix = os.path.splitext(name)[1]
        subfolder, _, base = name.rpartition("/")
        if (
            not base
            or (subfolder and subfolder not in self.config.profile_names)
            or "\\" in name
            or "\x00" in name
            or base in (".", "..")
            or suffix not in OUTPUT_SUFFIXES
        ):
            return _text(404, "not found\n")
        body = await trio.to_thread.run_sync(self.read_transcript, name)
        if body is None:
            return _text(404, "not found\n")
        # a document downloads; the text formats show in the browser
        how = "attachment" if suffix == ".docx" else "inline"
        disposition = f"{how}; filename*=UTF-8''" + _rfc5987(base)
        return Reply(
            status=200,
            body=body,
            content_type=TRANSCRIPT_TYPES[suffix],
            headers=[
                ("content-disposition", disposition),
                ("content-security-policy", FILE_POLICY),
            ],
        )

    # ---- HTTP/1.1

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while True:
                event: Any = None
                with trio.move_on_after(IDLE_TIMEOUT):
                    event = await self._next_event(stream, connection)
                    if isinstance(event, h11.Request):
                        with trio.fail_after(REQUEST_TIMEOUT):
                            await self._exchange(stream, connection, event)
                if not isinstance(event, h11.Request) or connection.our_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (
            h11.RemoteProtocolError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.TooSlowError,
        ):
            return
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _next_event(self, stream: trio.SocketStream, connection: h11.Connection) -> Any:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            connection.receive_data(await stream.receive_some(65536))

    async def _exchange(
        self, stream: trio.SocketStream, connection: h11.Connection, request: h11.Request
    ) -> None:
        # a read-only server takes no body: anything announced is refused, and the connection closed
        has_body = any(
            name in (b"content-length", b"transfer-encoding") and value not in (b"0",)
            for name, value in request.headers
        )
        if has_body:
            reply = _text(413, "this server takes no request bodies\n")
        else:
            while not isinstance(await self._next_event(stream, connection), h11.EndOfMessage):
                pass
            try:
                reply = await self.respond(request)
            except UnicodeDecodeError:
                reply = _text(404, "not found\n")
            except Exception as exc:
                logger.error(
                    "web.error", path=request.target.decode("ascii", "replace")[:200], exc_info=exc
                )
                reply = _text(500, "internal error; see the daemon's log\n")
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(reply.body))),
            *COMMON_HEADERS,
            *reply.headers,
        ]
        if has_body:
            headers.append(("connection", "close"))
        response = h11.Response(
            status_code=reply.status, headers=headers, reason=_phrase(reply.status)
        )
        await stream.send_all(connection.send(response))
        if request.method != b"HEAD":
            await stream.send_all(connection.send(h11.Data(data=reply.body)))
        await stream.send_all(connection.send(h11.EndOfMessage()))


def _phrase(status_code: int) -> bytes:
    return HTTPStatus(status_code).phrase.encode("ascii")


def _rfc5987(name: str) -> str:
    return quote(name, safe="")


async def serve_web(
    config: Config,
    services: Services,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[Address | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the page and the endpoints on web.listen until cancelled; reports the bound
    address. A web.listen that is not HOST:PORT is a ConfigError; an address that cannot be
    bound (in use, not this host's) is logged as `web.unavailable` and the daemon goes on
    transcribing without its page (reported None): the page must never stop the work."""
    address = parse_listen(config.web.listen)
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        logger.error(
            "web.unavailable",
            listen=config.web.listen,
            error=exc.strerror or str(exc),
            hint='choose another web.listen, or set it to "" to turn the page off',
        )
        task_status.started(None)
        return
    bound = listeners[0].socket.getsockname()
    address = Address(host=address.host, port=int(bound[1]))
    site = StatusSite(config, services, metrics, address)
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter:
            await site.serve_connection(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(site.loop.serve)
        await nursery.start(trio.serve_listeners, handle, listeners)
        logger.info(
            "web.listening",
            url=f"http://{config.web.listen.rpartition(':')[0] or '127.0.0.1'}:{address.port}/",
        )
        task_status.started(address)
