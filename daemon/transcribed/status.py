"""What the daemon's folders say, in one snapshot: for `transcribed status` and the status page.

    inbox/          entries waiting: settling (still changing) or queued (settled, no free worker)
    outbox/*.progress.json   jobs: running or waiting (with the reason), done (with outputs)
    failed/*.error.json      failed (a fault of the service or the daemon) or rejected (the file's)
    (each profile's subfolders of these too: names shown as NAME/FILE, relative to the folder)
    work/.lock      held (flock) by a running daemon, with its pid; absent or unlocked means none
                    runs, so a job whose progress file is not final is shown as `stopped`

Everything here is blocking file I/O on the folders, never on the daemon: call it from a
thread in the daemon. The daemon's web page overlays its live board on the same snapshot.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcribed.config import Config
from transcribed.errors import ConfigError
from transcribed.intake import candidate_entries
from transcribed.journal import JOB_FILE
from transcribed.lock import LOCK_NAME
from transcribed.naming import PROGRESS_SUFFIX, display_name

ERROR_SUFFIX = ".error.json"
FINAL_STATES = ("done", "failed")
# error codes that are the service's or the daemon's fault; every other code is the file's
# (RejectedFileError codes, and the intake's symlink / hardlink / directory / special)
FAILURE_CODES = frozenset(
    {
        "permanent",
        "job_failed",
        "internal",
        "engine",
        "retryable",
        "quota",
        "error",
        "config",
        "interrupted",
    }
)
INBOX_SHOWN = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonState:
    running: bool
    pid: int | None


def daemon_state(work: Path) -> DaemonState:
    """Is a daemon running on this work/? It is while it holds the exclusive flock on
    work/.lock: a shared, non-blocking probe fails then (and is released at once otherwise)."""
    try:
        fd = os.open(work / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return DaemonState(running=False, pid=None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode("ascii", "replace").split()
            pid = int(text[0]) if text and text[0].isdigit() else None
            return DaemonState(running=True, pid=pid)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return DaemonState(running=False, pid=None)
    finally:
        os.close(fd)


def inbox_entries(
    inbox: Path,
    settle_interval: float,
    *,
    profiles: Iterable[str] = (),
    now: Callable[[], float] = time.time,
) -> tuple[int, list[dict[str, Any]]]:
    """(how many entries wait in the inbox and the profiles' subfolders, the oldest
    INBOX_SHOWN of them described)."""
    found: list[dict[str, Any]] = []
    moment = now()
    for name, info in candidate_entries(inbox, profiles):
        age = max(0.0, moment - info.st_mtime)
        found.append(
            {
                "name": display_name(name),
                "size": info.st_size if stat.S_ISREG(info.st_mode) else None,
                "state": "settling" if age < settle_interval else "queued",
                "waiting_seconds": round(age, 1),
            }
        )
    found.sort(key=lambda item: -float(item["waiting_seconds"]))
    return len(found), found[:INBOX_SHOWN]


def _newest_first(
    folder: Path, suffix: str, profiles: Iterable[str] = ()
) -> list[tuple[str, Path]]:
    """(prefix, path) of the folder's files ending in `suffix`, and of each profile's subfolder
    of it (prefix "NAME/"), newest first."""
    stamped = []
    for prefix, where in [("", folder), *((f"{name}/", folder / name) for name in profiles)]:
        try:
            entries = [
                e
                for e in os.scandir(where)
                if e.name.endswith(suffix) and e.is_file(follow_symlinks=False)
            ]
        except OSError:
            continue
        for entry in entries:
            try:
                stamped.append((entry.stat(follow_symlinks=False).st_mtime_ns, prefix, entry.path))
            except OSError:
                continue
    return [(prefix, Path(path)) for _, prefix, path in sorted(stamped, reverse=True)]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_progress(
    outbox: Path, *, done_limit: int | None = None, profiles: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(jobs not concluded, jobs done newest first) from the outbox's progress files; a
    profile's job's `outputs` are named relative to the outbox (NAME/FILE), as it serves them."""
    active: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    for prefix, path in _newest_first(outbox, PROGRESS_SUFFIX, profiles):
        data = _read_json(path)
        if data is None:
            continue
        if prefix and isinstance(data.get("outputs"), list):
            data["outputs"] = [f"{prefix}{name}" for name in data["outputs"]]
        state = data.get("state")
        if state == "done":
            if done_limit is None or len(done) < done_limit:
                done.append(data)
        elif state != "failed":  # failed jobs are told by their error.json
            active.append(data)
    return active, done


def read_failures(
    failed: Path, *, limit: int | None = None, profiles: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(failed, rejected) from failed/*.error.json (and failed/NAME/), newest first."""
    failures: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for prefix, path in _newest_first(failed, ERROR_SUFFIX, profiles):
        data = _read_json(path)
        if data is None:
            continue
        entry = {
            "source": data.get("source"),
            "job_id": data.get("job_id"),
            "error": data.get("error"),
            "reason": data.get("reason"),
            "what_to_do": data.get("what_to_do"),
            "moved_to": data.get("moved_to"),
            "failed_at": data.get("failed_at"),
            "explanation": prefix + path.name,
        }
        target = failures if data.get("error") in FAILURE_CODES else rejected
        if limit is None or len(target) < limit:
            target.append(entry)
    return failures, rejected


def read_claimed(work: Path, known: set[str]) -> list[dict[str, Any]]:
    """Jobs claimed into work/ that no worker has taken yet (no progress file, not on the
    board): they wait for a free worker, state `queued`."""
    found = []
    try:
        entries = sorted(e.name for e in os.scandir(work) if not e.name.startswith("."))
    except OSError:
        return []
    for name in entries:
        if name in known:
            continue
        record = _read_json(work / name / JOB_FILE)
        if record is None or record.get("job_id") in known:
            continue
        found.append(
            {
                "source": record.get("display_name"),
                "job_id": record.get("job_id"),
                "state": "queued",
                "waiting_reason": "claimed; waits for a free worker",
                "percent": 0.0,
                "eta_seconds": None,
                "claimed_at": record.get("claimed_at"),
            }
        )
    return found


def mark_stopped(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs whose daemon is gone: state `stopped` (the state they were in kept as `was`)."""
    stopped = []
    for job in jobs:
        stopped.append({**job, "state": "stopped", "was": job.get("state"), "eta_seconds": None})
    return stopped


def collect(
    config: Config,
    *,
    live_jobs: list[dict[str, Any]] | None = None,
    done_limit: int | None = 50,
    failure_limit: int | None = 100,
) -> dict[str, Any]:
    """The whole picture. `live_jobs` (the daemon's board, when it asks) replaces the progress
    files of jobs not concluded. Blocking."""
    folders = config.folders
    state = (
        daemon_state(folders["work"])
        if live_jobs is None
        else DaemonState(running=True, pid=os.getpid())
    )
    profiles = config.profile_names
    inbox_count, inbox = inbox_entries(folders["inbox"], config.settle_interval, profiles=profiles)
    active, done = read_progress(folders["outbox"], done_limit=done_limit, profiles=profiles)
    if live_jobs is not None:
        active = live_jobs
    known = {str(job.get("job_id")) for job in active} | {str(job.get("job_id")) for job in done}
    active = active + read_claimed(folders["work"], known)
    if not state.running:
        active = mark_stopped(active)
    failures, rejected = read_failures(folders["failed"], limit=failure_limit, profiles=profiles)
    return {
        "root": str(config.root),
        "daemon": {"running": state.running, "pid": state.pid},
        "inbox": {"count": inbox_count, "files": inbox},
        "jobs": active,
        "done": done,
        "failed": failures,
        "rejected": rejected,
    }


def ask_daemon(config: Config, *, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running daemon's own snapshot from its web API (web.listen), if one answers for this
    root; None when the page is off or nobody answers. Blocking."""
    if not config.web.listen:
        return None
    import httpx

    from transcribed.web import parse_listen

    try:
        address = parse_listen(config.web.listen)
    except ConfigError:
        return None
    host = f"[{address.host}]" if ":" in address.host else address.host
    if address.host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if address.host == "0.0.0.0" else "[::1]"
    try:
        answer = httpx.get(
            f"http://{host}:{address.port}/api/status", timeout=timeout, trust_env=False
        )
        data = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("root") != str(config.root):
        return None
    return data


def snapshot(config: Config) -> dict[str, Any]:
    """What `transcribed status` shows: the running daemon's live view when it answers, else
    the folders (with `stopped` jobs if no daemon holds work/.lock). Blocking."""
    return ask_daemon(config) or collect(config, done_limit=None, failure_limit=None)


# ---------------------------------------------------------------- `transcribed status`


def _eta(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    whole = int(seconds)
    return (
        f"{whole // 3600}h{whole % 3600 // 60:02d}m"
        if whole >= 3600
        else f"{whole // 60}m{whole % 60:02d}s"
    )


def _money(value: object) -> str:
    return f"${value:.4f}" if isinstance(value, int | float) and value else "-"


def _pieces(job: dict[str, Any]) -> str:
    pieces = job.get("pieces") or {}
    if not isinstance(pieces, dict) or not pieces:
        return "-"
    total = pieces.get("total")
    return f"{pieces.get('done', 0)}/{'?' if total is None else total}"


def render_table(data: dict[str, Any]) -> list[str]:
    """The human view: one section a kind, names printed as the daemon escaped them (once)."""
    daemon = data.get("daemon") or {}
    running = "running" + (f" (pid {daemon['pid']})" if daemon.get("pid") else "")
    lines = [f"root {data.get('root')}: daemon {running if daemon.get('running') else 'stopped'}"]
    inbox = data.get("inbox") or {"count": 0, "files": []}
    jobs = data.get("jobs") or []
    lines.append("")
    lines.append(f"{'STATE':<14} {'DONE':>6} {'ETA':>7} {'PIECES':>7} {'COST':>9}  SOURCE")
    for job in jobs:
        state = str(job.get("state"))
        detail = ""
        if state == "stopped":
            detail = f"was {job.get('was')}; the daemon is not running, it resumes when it starts"
        elif job.get("waiting_reason"):
            detail = str(job["waiting_reason"])
        percent = job.get("percent")
        done = f"{percent:.1f}%" if isinstance(percent, int | float) else "-"
        cost = (job.get("cost") or {}).get("spent") if isinstance(job.get("cost"), dict) else None
        line = f"{state:<14} {done:>6} {_eta(job.get('eta_seconds')):>7} {_pieces(job):>7} {_money(cost):>9}  {job.get('source')}"
        lines.append(line + (f"  ({detail})" if detail else ""))
    for entry in inbox.get("files") or []:
        state = "settling" if entry.get("state") == "settling" else "inbox"
        lines.append(f"{state:<14} {'-':>6} {'-':>7} {'-':>7} {'-':>9}  {entry.get('name')}")
    hidden = int(inbox.get("count") or 0) - len(inbox.get("files") or [])
    if hidden > 0:
        lines.append(f"{'inbox':<14} and {hidden} more")
    for job in data.get("done") or []:
        outputs = [str(name) for name in job.get("outputs") or []]
        shown = outputs[0] if outputs else "-"
        if len(outputs) > 1:
            shown += " (+" + " ".join(os.path.splitext(name)[1] for name in outputs[1:]) + ")"
        cost = (job.get("cost") or {}).get("spent") if isinstance(job.get("cost"), dict) else None
        lines.append(
            f"{'done':<14} {'100%':>6} {'-':>7} {_pieces(job):>7} {_money(cost):>9}  {job.get('source')} -> {shown}"
        )
    for kind in ("failed", "rejected"):
        for entry in data.get(kind) or []:
            lines.append(
                f"{kind:<14} {'-':>6} {'-':>7} {'-':>7} {'-':>9}  {entry.get('source')}: "
                f"{entry.get('reason')} (what to do: {entry.get('what_to_do')})"
            )
    if len(lines) == 3:
        lines.append("(nothing: no jobs, an empty inbox, nothing failed)")
    return lines


def show_status(config: Config, *, as_json: bool, out: Any = None) -> int:
    """`transcribed status`: 0, or EXIT_CONFIG (78) when the root is not a folder. A reader
    that goes away (`status | head`) ends it quietly."""
    out = out or sys.stdout
    if not config.root.is_dir():
        print(
            f"transcribed: configuration error: the root {config.root} is not a folder",
            file=sys.stderr,
        )
        return 78
    data = snapshot(config)
    text = (
        json.dumps(data, indent=2, ensure_ascii=False) if as_json else "\n".join(render_table(data))
    )
    try:
        out.write(text + "\n")
        out.flush()
    except BrokenPipeError:
        # nobody reads any more: point stdout at /dev/null so the interpreter's final flush
        # does not raise again, and end as if done
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    return 0
