"""Ray engine of the batch API: the same per-run (or per-file) work as Ray tasks.

``ray_mapper(address, workers)`` returns ``mapper(fn, items)``: an iterator of
``fn(item)`` in input order, each call run as a Ray task. Tasks receive what the
local engine's workers receive (paths and options, never trace data), so every node
must read the traces from shared storage and have overlapscope installed (the
optional extra ``overlapscope[ray]``). Results are the same objects the local
engine returns, so reports are identical.

``address``: an existing cluster (``"auto"``, ``"ray://head:10001"``, ...); None
starts (or reuses) a local instance. ``workers``: most tasks in flight at once
(default: the cluster's CPUs), which bounds memory at about workers x largest run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any


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


def ray_mapper(
    address: str | None = None, workers: int | None = None
) -> Callable[[Callable[[Any], Any], list[Any]], Iterator[Any]]:
    """A mapper running each ``fn(item)`` as a Ray task, results in input order.

    Connects to ``address`` (or starts a local instance without the dashboard) unless
    Ray is already initialised in this process; RayEngineError when Ray is missing or
    cannot start / connect. A task that raises re-raises its original exception here.
    """
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

    def mapper(fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending: deque[Any] = deque()
        todo = iter(items)

        def fill() -> None:
            while len(pending) < limit:
                try:
                    item = next(todo)
                except StopIteration:
                    return
                pending.append(remote.remote(item))

        fill()
        while pending:
            ref = pending.popleft()
            try:
                value = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                raise exc.as_instanceof_cause() from None
            fill()
            yield value

    return mapper
