"""The readers-writer lock and the token-bucket rate limiter, by hand."""

from __future__ import annotations

import threading
import time

import pytest

from landmarks.serve.limits import RateLimiter, ReadWriteLock
from landmarks.serve.settings import ServiceError


def test_rate_limiter_refills_continuously_and_says_when_to_retry():
    now = [0.0]
    limiter = RateLimiter(3, 60.0, "predictions", clock=lambda: now[0])  # one token every 20 s
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(ServiceError) as refused:
        limiter.take("a")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "20"}
    limiter.take("b")  # another client has its own bucket
    now[0] = 10.0
    with pytest.raises(ServiceError) as refused:
        limiter.take("a")
    assert refused.value.headers["Retry-After"] == "10"
    now[0] = 20.0
    limiter.take("a")
    RateLimiter(0, 60.0, "x").take("a")  # 0: no limit


def test_a_writer_waits_for_readers_and_excludes_them():
    lock = ReadWriteLock()
    events: list[str] = []
    reading = threading.Event()
    release = threading.Event()

    def reader() -> None:
        with lock.read():
            events.append("read start")
            reading.set()
            release.wait(5)
            events.append("read end")

    def writer() -> None:
        reading.wait(5)
        with lock.write():
            events.append("write")

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    reading.wait(5)
    for _ in range(50):  # the writer is waiting; a new reader must not overtake it
        if lock._writers_waiting:
            break
        time.sleep(0.01)
    assert lock._writers_waiting == 1 and events == ["read start"]
    release.set()
    for thread in threads:
        thread.join(5)
    assert events == ["read start", "read end", "write"]
