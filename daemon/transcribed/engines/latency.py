"""How long a request may wait in silence for its answer before it counts as hung.

    patience(piece seconds) = multiple × q95(latency per audio second) × piece seconds,
                              at least `floor`, at most `ceiling` (request_timeout)

The quantile is taken over answers for pieces at least half as long as the one judged (all of
them while fewer than `min_samples` are): a server's fixed cost a request makes short pieces
look slow per audio second (0.8 s + 2 s for 20 s of audio is 0.14 s/s, against 0.107 s/s for
120 s), and measured by the last round's short pieces a long one would get twice its due.

An answer's latency is the time from the last byte of the upload to the first byte of the
answer's body (a server that sends its headers early and its body after the work is judged by
the body). It is learned from usable answers only, over a window of the most recent ones, and
shared by every request of the engine. Until `min_samples` answers are in, patience is the
ceiling: a guess could not tell a slow server from a hung one.

An AnswerWatch is one request's wait, as a cancel scope:

  - disarmed while the upload is being sent (an upload that trickles out is the write
    timeout's business, and the hard ceiling's);
  - armed when the upload's last byte went out, with deadline = last byte received + patience:
    every byte that arrives (the headers, each chunk of the body) moves it, so an answer that
    trickles is left alone while bytes arrive, and one that stalls mid-way for `patience` is a
    hang like one that never starts;
  - re-armed whenever the model learns: a request sent before the first answers came back is
    judged by them as soon as they do.

Pure bookkeeping over Trio's clock: tested on the mock clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import trio

# Against a server answering in 0.8 s + audio/10 (issue 11's), with lognormal jitter (sigma
# 0.3), a 109 s piece takes ~12 s and a hung one is given up after ~60 s instead of
# request_timeout's 300 s (98 s with a multiple of 4 over every piece's rate, measured in
# bench/openai_throughput.py's fault mix). Three times the 95th percentile is about five times
# the median there: an answer that late is one in millions. The floor covers short pieces,
# whose fixed overhead dominates, and a server's occasional pause.
PATIENCE_FLOOR = 15.0
PATIENCE_MULTIPLE = 3.0
PATIENCE_QUANTILE = 0.95
MIN_SAMPLES = 4
WINDOW = 64


class LatencyModel:
    """Seconds per audio second the server took to start answering, over recent answers."""

    def __init__(
        self,
        *,
        ceiling: float,
        floor: float = PATIENCE_FLOOR,
        multiple: float = PATIENCE_MULTIPLE,
        quantile: float = PATIENCE_QUANTILE,
        min_samples: int = MIN_SAMPLES,
        window: int = WINDOW,
    ) -> None:
        self.ceiling = ceiling
        self.floor = floor
        self.multiple = multiple
        self.quantile = quantile
        self.min_samples = min_samples
        self._rates: deque[tuple[float, float]] = deque(maxlen=window)  # (s per audio s, audio s)
        self._watches: set[AnswerWatch] = set()

    @property
    def samples(self) -> int:
        return len(self._rates)

    def rate(self, seconds: float = 0.0) -> float | None:
        """The high quantile of seconds per audio second, once enough answers are in, over
        those for pieces at least half as long as `seconds` when there are enough of them."""
        if len(self._rates) < self.min_samples:
            return None
        alike = [rate for rate, length in self._rates if length >= seconds / 2]
        ordered = sorted(alike if len(alike) >= self.min_samples else (r for r, _ in self._rates))
        return ordered[min(len(ordered) - 1, math.ceil(self.quantile * len(ordered)) - 1)]

    def patience(self, seconds: float) -> float:
        """How long a request for `seconds` of audio may wait without a byte of its answer."""
        rate = self.rate(seconds)
        if rate is None:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.multiple * rate * seconds))

    def learn(self, latency: float, seconds: float) -> None:
        """A usable answer started `latency` seconds after its upload of `seconds` of audio."""
        self._rates.append((max(0.0, latency) / max(seconds, 1.0), seconds))
        for watch in self._watches:
            watch.rearm()

    @contextmanager
    def watch(self, seconds: float) -> Iterator[AnswerWatch]:
        """Run the block inside one request's watch; afterwards `overdue` says whether the
        watch ended it."""
        watch = AnswerWatch(self, seconds)
        self._watches.add(watch)
        try:
            with watch.scope:
                yield watch
        finally:
            self._watches.discard(watch)


class AnswerWatch:
    """One request's wait for its answer (see the module docstring)."""

    def __init__(self, model: LatencyModel, seconds: float) -> None:
        self.model = model
        self.seconds = seconds
        self.scope = trio.CancelScope()
        self.sent_at: float | None = None  # the upload's last byte went out
        self.answer_at: float | None = None  # the answer's first body byte arrived
        self._last_byte_at: float | None = None

    @property
    def overdue(self) -> bool:
        """The watch gave up on the request: no byte arrived within its patience."""
        return self.scope.cancelled_caught

    @property
    def latency(self) -> float | None:
        if self.sent_at is None or self.answer_at is None:
            return None
        return self.answer_at - self.sent_at

    def patience(self) -> float:
        return self.model.patience(self.seconds)

    def body_sent(self) -> None:
        self.sent_at = self._last_byte_at = trio.current_time()
        self.rearm()

    def received(self, *, body: bool = False) -> None:
        """Bytes of the answer arrived (its headers, or with `body`, a chunk of its body)."""
        now = trio.current_time()
        if body and self.answer_at is None:
            self.answer_at = now
        if self.sent_at is not None:
            self._last_byte_at = now
            self.rearm()

    def rearm(self) -> None:
        if self._last_byte_at is None:
            return
        patience = self.patience()
        self.scope.deadline = (
            self._last_byte_at + patience if patience < self.model.ceiling else math.inf
        )
