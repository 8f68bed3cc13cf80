"""One worker thread owns the model; requests wait in a bounded queue, and images' encodings in a cache
bounded in bytes.

Every job runs on the worker thread, one at a time, so the predictor and the image cache are never
touched concurrently. A full queue is refused at once (the server answers 503 with ``Retry-After``);
a job that has waited past its deadline is dropped before it starts, and a caller that stops waiting
gets a timeout while the running job finishes (a forward pass cannot be interrupted) and is thrown
away.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from ..inference.predictor import ImageEncoding

_Result = TypeVar("_Result")


class QueueFull(RuntimeError):
    """The request queue holds its maximum; ``retry_after`` estimates when to come back (seconds)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the server is busy: its request queue is full")
        self.retry_after = retry_after


class JobExpired(RuntimeError):
    """A job waited in the queue past its deadline and was not run."""


@dataclass
class _Job:
    run: Callable[[], Any]
    future: Future
    deadline: float


class ModelWorker:
    """A thread running submitted jobs in order; ``queue_size`` bounds the waiting ones.

    Args:
        queue_size: jobs that may wait (beyond the running one) before :meth:`submit` refuses.
    """

    def __init__(self, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._seconds_per_job = 1.0  # running mean, for Retry-After
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, run: Callable[[], _Result], timeout: float) -> Future:
        """Queue ``run``; its Future fails with :class:`JobExpired` if it has not started by ``timeout``.

        Raises:
            QueueFull: the queue is full.
        """
        self._start()
        job = _Job(run, Future(), time.monotonic() + timeout)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(max(1, round(self._seconds_per_job * self._jobs.maxsize))) from None
        return job.future

    @property
    def waiting(self) -> int:
        """Jobs in the queue (not counting the running one)."""
        return self._jobs.qsize()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread (a later :meth:`submit` starts a new one, so an
        application may start and stop more than once)."""
        with self._lock:
            if self._thread is None:
                return
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="xsam-model-worker", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            if time.monotonic() > job.deadline:
                job.future.set_exception(JobExpired("the request waited too long in the queue"))
                continue
            start = time.monotonic()
            try:
                job.future.set_result(job.run())
            except BaseException as error:  # handed to the waiting request, which decides
                job.future.set_exception(error)
            self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (time.monotonic() - start)


class ImageCache:
    """Images' encodings by id, least recently used first out, never holding more than ``max_bytes``.

    Used from the worker thread only (no lock). An encoding larger than the whole cache is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[ImageEncoding, int]] = OrderedDict()
        self.nbytes = 0

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, image_id: str) -> ImageEncoding | None:
        """The encoding (now the most recently used), or None."""
        if image_id not in self._entries:
            return None
        self._entries.move_to_end(image_id)
        return self._entries[image_id][0]

    def put(self, image_id: str, encoding: ImageEncoding) -> bool:
        """Keep ``encoding`` (evicting the least recently used ones); False when it alone is too large."""
        self.remove(image_id)
        size = encoding.nbytes + encoding.image.width * encoding.image.height * 3
        if size > self.max_bytes:
            return False
        while self.nbytes + size > self.max_bytes:
            self.remove(next(iter(self._entries)))
        self._entries[image_id] = (encoding, size)
        self.nbytes += size
        return True

    def remove(self, image_id: str) -> bool:
        """Forget one image; False when it was not there."""
        entry = self._entries.pop(image_id, None)
        if entry is None:
            return False
        self.nbytes -= entry[1]
        return True
