"""A place to run communication concurrently with compute, same API on CPU and CUDA.

``submit(fn, *args, **kwargs)`` queues ``fn`` and returns a :class:`CommFuture` at once.
Callables run one at a time, in submission order, on a dedicated daemon thread, so a
blocking gloo collective overlaps the caller's compute. On CUDA the thread additionally
issues its work on a side ``torch.cuda.Stream``; ``CommFuture.result()`` then also makes the
caller's current stream wait for that work, so workload code is identical on both.

The thread is named (Linux ``prctl``) ``osc-comm`` so that Kineto labels its track
"thread <tid> (osc-comm)"; with ``profile_all_threads`` its ops land in the trace.

``call(fn, *args)`` runs ``fn`` *on the comm stream and waits for it*: inline when the
caller already is on it (the comm thread, or the CUDA side stream), else on the CPU by
handing it to the comm thread, and on CUDA in the calling thread under the side stream
(so autograd's device thread, which runs CUDA backward functions, never waits for the
comm thread). Dispatch/combine use it so that *every* exchange, forward or backward,
paired or not, is issued on the comm stream.

Tensors that cross streams are protected from the caching allocator with
``Tensor.record_stream`` (:func:`protect`): everything reachable from a submitted
callable's arguments and result is recorded on both the side stream and the caller's
stream, so memory one stream still reads is never handed out again by the other.
A failure while setting up the worker (e.g. ``torch.cuda.set_device`` on a bad device)
is re-raised by the constructor instead of leaving it waiting forever.
"""

from __future__ import annotations

import ctypes
import dataclasses
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

#: Seconds the constructor waits for the worker thread to come up.
SETUP_TIMEOUT_S = 60.0


def walk_tensors(obj: Any, visit: Callable[[torch.Tensor], None],
                 _seen: set[int] | None = None) -> None:
    """Call ``visit`` on every tensor reachable from ``obj`` through lists, tuples, sets,
    dicts, dataclasses and the ``__dict__`` of objects whose class sets
    ``_walk_tensors = True`` (dispatch plans). Modules are skipped (parameters live for
    the whole run), and so is anything else."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        visit(obj)
    elif isinstance(obj, torch.nn.Module) or obj is None or isinstance(obj, str | bytes | int
                                                                      | float | bool):
        return
    elif isinstance(obj, dict):
        for v in obj.values():
            walk_tensors(v, visit, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            walk_tensors(v, visit, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            walk_tensors(getattr(obj, f.name, None), visit, seen)
    elif getattr(type(obj), "_walk_tensors", False):
        for v in vars(obj).values():
            walk_tensors(v, visit, seen)


def protect(obj: Any, *streams: Any) -> int:
    """``record_stream`` every CUDA tensor reachable from ``obj`` on each of ``streams``
    (lifetime protection for tensors used on a stream other than the one that allocated
    them). CPU tensors are skipped. Returns how many tensors were marked."""
    count = 0

    def mark(t: torch.Tensor) -> None:
        nonlocal count
        if t.is_cuda:
            for s in streams:
                t.record_stream(s)
            count += 1

    walk_tensors(obj, mark)
    return count

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
        self._setup_error: BaseException | None = None
        self.native_id: int | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(SETUP_TIMEOUT_S):
            self._closed = True
            raise RuntimeError(f"comm stream thread did not start within {SETUP_TIMEOUT_S} s")
        if self._setup_error is not None:
            self._closed = True
            raise RuntimeError(
                f"comm stream setup failed: {type(self._setup_error).__name__}: "
                f"{self._setup_error}") from self._setup_error

    @property
    def on_worker(self) -> bool:
        """True when the calling thread is the comm thread itself."""
        return threading.current_thread() is self._thread

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
        try:
            self._setup()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the constructor
            self._setup_error = exc
            self._ready.set()
            return
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

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Run ``fn`` on the comm stream and return its result (blocking the caller).

        Inline when the caller is the comm thread; otherwise handed to the comm thread."""
        if self.on_worker:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result(timeout)

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
        caller = torch.cuda.current_stream(self.device)
        event = torch.cuda.Event()
        event.record(caller)
        return event, caller

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict, box: list, token: Any) -> Any:
        assert self.stream is not None
        event_in, caller = token
        self.stream.wait_event(event_in)
        with torch.cuda.stream(self.stream):
            value = fn(*args, **kwargs)
            event = torch.cuda.Event()
            event.record(self.stream)
        # inputs were allocated on the caller's stream and read here; outputs (and tensors
        # the callable stored into its arguments) were allocated here and are read there
        protect((args, kwargs, value), self.stream, caller)
        box.append(event)
        return value

    @property
    def on_side_stream(self) -> bool:
        """True when the calling thread's current stream is the side stream."""
        return self.stream is not None and torch.cuda.current_stream(self.device) == self.stream

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Run ``fn`` under the side stream *in the calling thread* and return its result.

        The side stream first waits for the caller's stream, the caller's stream then
        waits for the side stream, and tensors crossing are ``record_stream``-ed. No
        thread hop: CUDA backward functions run on autograd's device thread, which must
        not wait for the comm thread (that may itself be waiting in autograd)."""
        if self.on_worker or self.on_side_stream:
            return fn(*args, **kwargs)
        assert self.stream is not None
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            value = fn(*args, **kwargs)
        caller.wait_stream(self.stream)
        protect((args, kwargs, value), self.stream, caller)
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
