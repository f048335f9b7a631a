"""sd_notify: the Notifier against real AF_UNIX datagram sockets, and the real daemon under one."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from transcribed.systemd import Notifier

# How long a test waits for one datagram that should already be there.
RECEIVE_TIMEOUT = 5.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening datagram socket in tmp_path, as systemd's $NOTIFY_SOCKET would be."""
    path = tmp_path / "notify"
    if len(os.fsencode(path)) >= 108:  # sun_path's size
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECEIVE_TIMEOUT)
        yield sock, str(path)


def _lines(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


class TestMessages:
    def test_ready_sends_ready_and_status_in_one_datagram(
        self, notify_socket: tuple[socket.socket, str]
    ) -> None:
        """ready() sends READY=1 and STATUS=... together, as one datagram."""
        sock, path = notify_socket
        notifier = Notifier({"NOTIFY_SOCKET": path})

        notifier.ready("watching /var/lib/transcribed/inbox")

        assert _lines(sock) == ["READY=1", "STATUS=watching /var/lib/transcribed/inbox"]

    def test_stopping_sends_stopping_and_status(
        self, notify_socket: tuple[socket.socket, str]
    ) -> None:
        """stopping() sends STOPPING=1 with the reason as STATUS."""
        sock, path = notify_socket

        Notifier({"NOTIFY_SOCKET": path}).stopping("draining running jobs")

        assert _lines(sock) == ["STOPPING=1", "STATUS=draining running jobs"]

    def test_stopping_can_extend_the_stop_timeout(
        self, notify_socket: tuple[socket.socket, str]
    ) -> None:
        """stopping(extend_timeout=90) asks systemd for 90 s more, in microseconds."""
        sock, path = notify_socket

        Notifier({"NOTIFY_SOCKET": path}).stopping("draining", extend_timeout=90)

        assert _lines(sock) == ["STOPPING=1", "STATUS=draining", "EXTEND_TIMEOUT_USEC=90000000"]

    def test_watchdog_sends_watchdog(self, notify_socket: tuple[socket.socket, str]) -> None:
        """watchdog() sends exactly WATCHDOG=1."""
        sock, path = notify_socket

        Notifier({"NOTIFY_SOCKET": path}).watchdog()

        assert sock.recv(4096) == b"WATCHDOG=1"

    def test_status_sends_status_alone(self, notify_socket: tuple[socket.socket, str]) -> None:
        """status() updates STATUS= without claiming readiness."""
        sock, path = notify_socket

        Notifier({"NOTIFY_SOCKET": path}).status("idle, 0 queued")

        assert _lines(sock) == ["STATUS=idle, 0 queued"]

    def test_notify_reports_success(self, notify_socket: tuple[socket.socket, str]) -> None:
        """notify() returns True once the datagram was handed to a listening socket."""
        sock, path = notify_socket
        notifier = Notifier({"NOTIFY_SOCKET": path})

        assert notifier.enabled
        assert notifier.notify("WATCHDOG=1") is True
        assert sock.recv(4096) == b"WATCHDOG=1"

    def test_abstract_namespace_socket(self) -> None:
        """A NOTIFY_SOCKET starting with '@' reaches the abstract-namespace socket of that name."""
        name = f"transcribed-test-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(b"\0" + name.encode())
            sock.settimeout(RECEIVE_TIMEOUT)

            Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")

            assert _lines(sock) == ["READY=1", "STATUS=up"]

    def test_newline_in_status_cannot_inject_a_field(
        self, notify_socket: tuple[socket.socket, str]
    ) -> None:
        """A newline in a status (from a file name, say) cannot start a second field."""
        sock, path = notify_socket

        Notifier({"NOTIFY_SOCKET": path}).ready("claimed evil\nWATCHDOG=trigger\nREADY=0")

        lines = _lines(sock)
        assert lines == ["READY=1", "STATUS=claimed evil WATCHDOG=trigger READY=0"]


class TestWithoutSystemd:
    def test_unset_socket_is_a_no_op(self, notify_socket: tuple[socket.socket, str]) -> None:
        """Without NOTIFY_SOCKET every call does nothing and notify() says False."""
        sock, _ = notify_socket
        notifier = Notifier({})

        assert not notifier.enabled
        assert notifier.notify("READY=1") is False
        notifier.ready("up")
        notifier.watchdog()
        notifier.stopping("bye")

        sock.settimeout(0.1)
        with pytest.raises(TimeoutError):
            sock.recv(4096)

    def test_unsupported_address_is_ignored(self) -> None:
        """A NOTIFY_SOCKET neither a path nor '@name' (such as vsock:) disables the notifier."""
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})

        assert not notifier.enabled
        assert notifier.notify("READY=1") is False

    def test_socket_nobody_listens_on_gives_false(self, tmp_path: Path) -> None:
        """A NOTIFY_SOCKET nobody listens on makes notify() return False instead of raising."""
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})

        assert notifier.enabled
        assert notifier.notify("READY=1") is False


class TestWatchdogInterval:
    @pytest.mark.parametrize(
        ("environ", "interval"),
        [
            ({"WATCHDOG_USEC": "60000000"}, 30.0),
            ({"WATCHDOG_USEC": "1000000"}, 0.5),
            ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
            ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
            ({"WATCHDOG_USEC": "0"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({"WATCHDOG_USEC": "-5"}, None),
            ({}, None),
        ],
    )
    def test_interval_is_half_of_watchdog_usec_for_this_process(
        self, environ: dict[str, str], interval: float | None
    ) -> None:
        """The ping interval is WATCHDOG_USEC/2 s; None if unset, invalid or for another pid."""
        notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **environ})

        assert notifier.watchdog_interval == interval


# ---------------------------------------------------------------------------------------------
# The real daemon, as systemd runs it.

DAEMON = Path(sys.executable).with_name("transcribed")
WATCHDOG_USEC = 1_000_000
_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


async def _receive(sock: trio.socket.SocketType) -> tuple[list[str], int]:
    """One datagram's fields and the pid of the process that sent it (SO_PASSCRED)."""
    data, ancillary, _, _ = await sock.recvmsg(4096, socket.CMSG_SPACE(_CREDENTIALS.size))
    sender = -1
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            sender = _CREDENTIALS.unpack(payload[: _CREDENTIALS.size])[0]
    return data.decode("utf-8").split("\n"), sender


async def _receive_until(
    sock: trio.socket.SocketType, field: str, pid: int, seen: list[list[str]]
) -> list[str]:
    """Receive datagrams (all from `pid`) until one has `field`; every one is kept in `seen`."""
    while True:
        lines, sender = await _receive(sock)
        assert sender == pid, f"{lines} came from pid {sender}, not the main process {pid}"
        seen.append(lines)
        if field in lines:
            return lines


@pytest.mark.slow
async def test_daemon_speaks_sd_notify_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The real daemon: READY=1, WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1 on SIGTERM, exit 0."""
    if not DAEMON.exists():
        pytest.skip(f"{DAEMON} is not installed")
    socket_path = tmp_path / "notify"
    root = tmp_path / "root"
    stderr_path = tmp_path / "daemon.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRANSCRIBED_")}
    env |= {"NOTIFY_SOCKET": str(socket_path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    env.pop("WATCHDOG_PID", None)
    seen: list[list[str]] = []

    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(str(socket_path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        with open(stderr_path, "wb") as stderr:
            process = await trio.lowlevel.open_process(
                [
                    *(str(DAEMON), "run", "--root", str(root)),
                    *("--settle-interval", "0.2", "--log-format", "json"),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            # Two model-loading workers take about 2 s; allow a slow CI machine far more.
            with trio.fail_after(120):
                ready = await _receive_until(sock, "READY=1", process.pid, seen)
            assert ready == ["READY=1", f"STATUS=watching {root / 'inbox'}"]

            with trio.fail_after(10):
                pings = []
                while len(pings) < 4:
                    lines, sender = await _receive(sock)
                    assert sender == process.pid
                    seen.append(lines)
                    assert lines == ["WATCHDOG=1"]
                    pings.append(trio.current_time())
            gaps = [later - earlier for earlier, later in zip(pings, pings[1:], strict=False)]
            # systemd would kill a service that stays silent for the whole WATCHDOG_USEC.
            assert max(gaps) < WATCHDOG_USEC / 1e6, gaps

            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                stopping = await _receive_until(sock, "STOPPING=1", process.pid, seen)
            assert stopping == ["STOPPING=1", "STATUS=draining running jobs", "EXTEND_TIMEOUT_USEC=90000000"]
            with trio.fail_after(15):
                returncode = await process.wait()
            assert returncode == 0, stderr_path.read_text("utf-8", "replace")
        except BaseException:
            print(f"datagrams received: {seen}")
            print(stderr_path.read_text("utf-8", "replace"))
            raise
        finally:
            if process.returncode is None:
                process.kill()
                with trio.move_on_after(5, shield=True):
                    await process.wait()


# ---------------------------------------------------------------------------------------------
# The unit file itself.

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "transcribed.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


@needs_systemd_analyze
def test_unit_file_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (its ExecStart pointed at this venv's binary)."""
    assert SYSTEMD_ANALYZE is not None
    text = UNIT.read_text("utf-8")
    installed = "ExecStart=/opt/transcribed/.venv/bin/transcribed "
    assert installed in text
    # verify insists that ExecStart's binary exists; everything else is checked as shipped.
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(installed, f"ExecStart={DAEMON} "), "utf-8")

    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@needs_systemd_analyze
def test_unit_file_exposure_is_at_most_two() -> None:
    """systemd-analyze security rates the unit file's exposure 2.0 or lower."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    rating = re.search(r"Overall exposure level for transcribed\.service: (\d+\.\d)", result.stdout)
    assert rating is not None, result.stdout + result.stderr
    assert float(rating[1]) <= 2.0, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
