"""sd_notify over $NOTIFY_SOCKET without a C dependency; every call is a no-op when it is unset.

The protocol is one datagram per message to the AF_UNIX socket named in $NOTIFY_SOCKET (a
leading '@' means the abstract namespace). systemd documents it as the stable API.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

logger = structlog.get_logger()


class Notifier:
    """Sends READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 to systemd, if it is listening."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watchdog_for_us = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 2_000_000 if usec.isdigit() and int(usec) > 0 and watchdog_for_us else None
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one message; False (and a warning) if it could not be sent."""
        if self._address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                # never block the event loop on a full socket buffer: drop and warn instead
                sock.send(message, socket.MSG_DONTWAIT)
        except OSError as exc:
            logger.warning("systemd.notify_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str, *, extend_timeout: float | None = None) -> None:
        """STOPPING=1; with `extend_timeout`, also ask systemd for that much more time than
        TimeoutStopSec gives, so a long drain_timeout is not cut short by SIGKILL."""
        lines = ["STOPPING=1", f"STATUS={status}"]
        if extend_timeout is not None:
            lines.append(f"EXTEND_TIMEOUT_USEC={round(extend_timeout * 1_000_000)}")
        self.notify(*lines)

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
