"""Ray engine of the batch API: the same per-file and per-run work as Ray tasks.

``ray_runs(jobs, address, workers)`` runs each run's :class:`~overlapscope.analyzers.
batch.Job` on Ray: every rank file is decoded by its own task, and the run's analysis
(with the caller's ``finish``) is one more task that receives the decoded files
straight from Ray's object store (the driver never holds them). Outcomes come back in
input order; two runs are in progress at once (the next run decodes while the head
one is analyzed), so the object store holds at most about two decoded runs.

Tasks receive what the local engine's workers receive (paths and options, never
trace data), so every node must read the traces from shared storage and have
overlapscope installed (the optional extra ``overlapscope[ray]``). Results are the
same objects the local engine returns, so reports are identical.

``address``: an existing cluster (``"auto"``, ``"ray://head:10001"``, ...); None
starts (or reuses) a local instance. ``workers``: the CPUs of a local instance it
starts (default: all); on a cluster, tasks run on the cluster's CPUs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from overlapscope.analyzers.batch import RUNS_AHEAD


class RayEngineError(RuntimeError):
    """Ray is missing, or the cluster could not be started or reached."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the environment
        raise RayEngineError(
            "--engine ray needs Ray: pip install 'overlapscope[ray]' (or pip install ray)"
        ) from None
    return ray


def _connect(address: str | None, workers: int | None) -> Any:
    """Ray, connected to ``address`` (or a local instance without the dashboard)
    unless already initialised in this process; RayEngineError when it cannot be."""
    ray = _import_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None and workers:
            kwargs["num_cpus"] = workers
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception on timeouts
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise RayEngineError(f"could not start or reach {where}: {exc}") from None
    return ray


def ray_runs(
    jobs: Iterator[Any], address: str | None = None, workers: int | None = None
) -> Iterator[Any]:
    """Each job's outcome, in input order, computed by Ray tasks (see the module doc).

    A task that raises re-raises its original exception here; closing the iterator
    early cancels the tasks still pending.
    """
    ray = _connect(address, workers)
    remotes: dict[Callable[..., Any], Any] = {}

    def remote(fn: Callable[..., Any]) -> Any:
        if fn not in remotes:
            remotes[fn] = ray.remote(num_cpus=1, max_retries=0)(fn)
        return remotes[fn]

    def start(job: Any) -> tuple[bool, Any, list[Any]]:
        if job.fn is None:
            return False, job.done, []
        decoded = [remote(job.decode).remote(d) for d in job.decodes]
        return True, remote(job.fn).remote(job.arg, *decoded), decoded

    live: deque[tuple[bool, Any, list[Any]]] = deque()
    try:
        while True:
            while len(live) < RUNS_AHEAD and (job := next(jobs, None)) is not None:
                live.append(start(job))
            if not live:
                return
            is_ref, value, _ = live.popleft()
            if is_ref:
                try:
                    value = ray.get(value)
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
            yield value
    finally:
        for is_ref, value, decoded in live:
            for ref in (value, *decoded) if is_ref else ():
                ray.cancel(ref)
