"""Concurrency and abuse limits: a readers-writer lock around the index, and per-client token-bucket rate limits."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from landmarks.serve.settings import ServiceError

MAX_TRACKED_CLIENTS = 10_000  # buckets kept in memory; full (idle) ones are forgotten past this


class ReadWriteLock:
    """Many readers or one writer; a waiting writer stops new readers from entering (no writer starvation)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._condition:
            while self._writing or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


class RateLimiter:
    """A token bucket per client: ``per_period`` requests per ``period_seconds``, refilled continuously, bursting up to
    ``per_period``. ``per_period == 0`` turns the limit off."""

    def __init__(self, per_period: float, period_seconds: float, what: str, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(per_period)
        self.rate = float(per_period) / period_seconds if per_period else 0.0
        self.what = what
        self.clock = clock
        self.lock = threading.Lock()
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens left, when counted)

    def take(self, client: str) -> None:
        """Count one request of ``client``; ServiceError 429 with Retry-After (seconds) when over the limit."""
        if not self.capacity:
            return
        now = self.clock()
        with self.lock:
            tokens, then = self.buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self.buckets[client] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise ServiceError(429, f"Too many {self.what}; try again in {wait} s.", {"Retry-After": str(wait)})
            self.buckets[client] = (tokens - 1.0, now)
            if len(self.buckets) > MAX_TRACKED_CLIENTS:
                self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        for client, (tokens, then) in list(self.buckets.items()):
            if tokens + (now - then) * self.rate >= self.capacity:
                del self.buckets[client]
