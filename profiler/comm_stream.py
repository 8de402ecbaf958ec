"""A place to run communication concurrently with compute, same API on CPU and CUDA.

``submit(fn, *args, **kwargs)`` queues ``fn`` and returns a :class:`CommFuture` at once.
Callables run one at a time, in submission order, on a dedicated daemon thread, so a
blocking gloo collective overlaps the caller's compute. On CUDA the thread additionally
issues its work on a side ``torch.cuda.Stream``; ``CommFuture.result()`` then also makes the
caller's current stream wait for that work, so workload code is identical on both.

The thread is named (Linux ``prctl``) ``osc-comm`` so that Kineto labels its track
"thread <tid> (osc-comm)"; with ``profile_all_threads`` its ops land in the trace.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

#: OS-level name of the communication thread (Linux limits names to 15 bytes).
COMM_THREAD_NAME = "osc-comm"


def _name_native_thread(name: str) -> None:
    """Set the kernel-visible name of the calling thread (best effort, Linux only)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass


class CommFuture:
    """Result of a submitted callable.

    ``result(timeout)`` blocks the calling thread until the callable returned (re-raising
    its exception) and, on CUDA, orders the caller's current stream after the side-stream
    work. ``done()`` tells whether the host part finished.
    """

    def __init__(self, future: Future, event_box: list | None = None) -> None:
        self._future = future
        self._event_box = event_box

    def done(self) -> bool:
        """True once the callable has returned or raised."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        """The callable's return value (its exception is re-raised here)."""
        try:
            value = self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"comm stream work not finished after {timeout} s") from None
        if self._event_box:
            torch.cuda.current_stream().wait_event(self._event_box[0])
        return value

    wait = result


class ThreadCommStream:
    """Runs submitted callables in order on one daemon worker thread (CPU flavour)."""

    def __init__(self, name: str = COMM_THREAD_NAME) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._ready = threading.Event()
        self._closed = False
        self.native_id: int | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _setup(self) -> None:
        """Per-thread initialisation (overridden by the CUDA flavour)."""

    def _capture(self) -> Any:
        """Caller-side token taken at submit time (the CUDA flavour records an event)."""
        return None

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict, box: list, token: Any) -> Any:
        return fn(*args, **kwargs)

    def _loop(self) -> None:
        _name_native_thread(self._thread.name)
        self.native_id = threading.get_native_id()
        self._setup()
        self._ready.set()
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs, box, token = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._run(fn, args, kwargs, box, token))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> CommFuture:
        """Queue ``fn(*args, **kwargs)``; returns immediately."""
        if self._closed:
            raise RuntimeError("comm stream is closed")
        future: Future = Future()
        box: list = []
        self._queue.put((future, fn, args, kwargs, box, self._capture()))
        return CommFuture(future, box)

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait until everything submitted so far has finished."""
        self.submit(lambda: None).result(timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker after the queued work (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout)

    def __enter__(self) -> ThreadCommStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CudaCommStream(ThreadCommStream):
    """The worker thread issues its work on a side CUDA stream of ``device``."""

    def __init__(self, device: torch.device, name: str = COMM_THREAD_NAME) -> None:
        self.device = device
        self.stream: torch.cuda.Stream | None = None
        super().__init__(name)

    def _setup(self) -> None:
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(device=self.device)

    def _capture(self) -> Any:
        # The side stream must see everything the caller queued before submitting.
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict, box: list, token: Any) -> Any:
        assert self.stream is not None
        self.stream.wait_event(token)
        with torch.cuda.stream(self.stream):
            value = fn(*args, **kwargs)
            event = torch.cuda.Event()
            event.record(self.stream)
        box.append(event)
        return value

    def synchronize(self, timeout: float | None = None) -> None:
        """Wait for the queued host work, then for the side stream itself."""
        super().synchronize(timeout)
        if self.stream is not None:
            self.stream.synchronize()


def make_comm_stream(device: torch.device) -> ThreadCommStream:
    """The right flavour for ``device``: CUDA side stream or plain CPU thread."""
    if device.type == "cuda":
        return CudaCommStream(device)
    return ThreadCommStream()
