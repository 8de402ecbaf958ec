"""Host side of the CUDA warp-specialized dispatch kernel (``kernel.cu``).

The kernel is plain CUDA with an ``extern "C"`` launcher, compiled at run time
with ``nvcc -shared`` into a cached library and bound with ``ctypes`` (no torch
headers, so ``nvcc -c kernel.cu`` alone checks it on machines without a GPU).
Device buffers are torch CUDA tensors; their pointers go into a ``ctypes``
mirror of ``DispatchParams``.

What the kernel does is described at the top of ``kernel.cu``; every wait is
bounded (``timeout_ms``), and a failure is reported as ``CudaDispatchError``
naming the role, channel and chunk that gave up. Records come back as a numpy
array of ``EVENT_DTYPE`` and are turned into the one warp-event schema
(``schema.WarpLog``, hence ``warp_role`` Chrome events) by :func:`records_to_log`.

Destinations are given per token as a 64-bit mask, bit ``n * G + g`` = GPU ``g``
of node ``n``; node 0 is the source's own node (its copies skip the IB link) and the
source has local index 0 (:data:`SRC_LOCAL`), so the forwarder of node ``n`` is GPU
``(n, 0)`` and its copy to GPU 0 is a copy to itself: "local", not NVLink (BRIEF
§4.10; the emulator and the torch path count the same way).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from overlapscope.profiler.warps import schema as S

KERNEL_SOURCE = Path(__file__).with_name("kernel.cu")
#: Local index of the source GPU (and so of every node's forwarder) in the kernel.
SRC_LOCAL = 0

#: Mirror of ``struct WarpEvent`` (40 bytes, little endian).
EVENT_DTYPE = np.dtype([
    ("t0_ns", "<u8"), ("t1_ns", "<u8"), ("bytes", "<u8"), ("chunk", "<i4"),
    ("node", "<i2"), ("gpu", "<i2"), ("smid", "<u2"), ("role", "u1"), ("kind", "u1"),
    ("warp", "u1"), ("channel", "u1"), ("pad", "u1", (2,)),
])
assert EVENT_DTYPE.itemsize == 40

ROLE_OF_ID = {0: S.RDMA_SENDER, 1: S.SENDER_COORDINATOR, 2: S.FORWARDER, 3: S.NVL_RECEIVER}
#: Kernel event kind -> warp_role state (kind 0 busy; see the enum in kernel.cu).
STATE_OF_KIND = {0: S.BUSY, 1: S.WAIT_REMOTE_HEAD, 2: S.WAIT_TAIL, 3: S.WAIT_REMOTE_HEAD,
                 4: S.WAIT_TAIL, 5: S.WAIT_TAIL}
ERRORS = {1: "a wait timed out", 2: "bad configuration"}


class CudaKernelUnavailable(RuntimeError):
    """No CUDA device, no CUDA torch or no nvcc: the kernel cannot be built or run."""


class CudaDispatchError(RuntimeError):
    """The kernel reported a failure (status code, channel, warp, chunk)."""


@dataclass(frozen=True)
class KernelConfig:
    """Shape of one dispatch. Role counts are per channel (one block per channel).

    Defaults follow the H200 fixture kernel: 8 nodes x 8 GPUs, 7232-byte tokens,
    10 channels, 32-token chunks, 4-slot rings, roles 4/1/8/4, IB 50 / NVLink
    160 GB/s (0 = unlimited). ``timeout_ms`` bounds every single wait.
    """

    nodes: int = 8
    gpus_per_node: int = 8
    token_bytes: int = 7232
    channels: int = 10
    chunk_tokens: int = 32
    ring_chunks: int = 4
    senders: int = 4
    forwarders: int = 8
    receivers: int = 4
    ib_gbps: float = 50.0
    nvl_gbps: float = 160.0
    timeout_ms: int = 2000
    min_wait_ns: int = 200
    max_events_per_warp: int = 8192

    @property
    def warps_per_block(self) -> int:
        return self.senders + 1 + self.forwarders + self.receivers

    @property
    def destinations(self) -> int:
        return self.nodes * self.gpus_per_node

    def validate(self) -> None:
        """Raise ValueError naming the first setting the kernel cannot run with."""
        if self.warps_per_block > 32:
            raise ValueError(f"senders+1+forwarders+receivers = {self.warps_per_block} > 32 warps")
        if min(self.senders, self.forwarders, self.receivers, self.channels, self.nodes,
               self.gpus_per_node, self.chunk_tokens) < 1:
            raise ValueError("role counts, channels, nodes, GPUs and chunk size must be >= 1")
        if self.destinations > 64:
            raise ValueError("nodes x gpus_per_node must be <= 64 (64-bit destination mask)")
        if self.channels > 255 or self.ring_chunks < 2:
            raise ValueError("channels must be <= 255 and ring_chunks >= 2")
        if self.token_bytes < 16 or self.token_bytes % 16:
            raise ValueError("token_bytes must be a positive multiple of 16")


@dataclass(frozen=True)
class DispatchPlan:
    """Host arithmetic of one dispatch: where each channel's rows land, and the bytes.

    ``counts[c, d]`` tokens of channel ``c`` for destination ``d``; ``out_offset[c, d]``
    their first output row; ``out_rows`` rows per destination buffer; ``ib_bytes`` =
    token_bytes x sum over tokens of destination nodes other than node 0; ``nvl_bytes``
    = token_bytes x sum of destination GPUs other than the forwarders themselves (GPU
    ``SRC_LOCAL`` of each node); ``local_fwd_bytes`` = token_bytes x those forwarder
    self-copies; ``channel_begin[c]`` first token of channel c.
    """

    counts: np.ndarray
    out_offset: np.ndarray
    out_rows: int
    ib_bytes: int
    nvl_bytes: int
    channel_begin: np.ndarray
    local_fwd_bytes: int = 0


def node_masks(mask: np.ndarray, cfg: KernelConfig) -> np.ndarray:
    """[T, nodes] bool: token goes to at least one GPU of the node."""
    bits = (mask.astype(np.uint64)[:, None] >> np.arange(cfg.destinations, dtype=np.uint64)) & 1
    return bits.reshape(len(mask), cfg.nodes, cfg.gpus_per_node).any(axis=2)


def dest_bits(mask: np.ndarray, cfg: KernelConfig) -> np.ndarray:
    """[T, destinations] bool from the 64-bit masks."""
    m = mask.astype(np.uint64)[:, None] >> np.arange(cfg.destinations, dtype=np.uint64)
    return (m & np.uint64(1)).astype(bool)


def dispatch_plan(mask: np.ndarray, cfg: KernelConfig) -> DispatchPlan:
    """Row layout and expected link bytes for per-token destination masks ``mask`` [T]."""
    cfg.validate()
    t = len(mask)
    begin = (np.arange(cfg.channels + 1, dtype=np.int64) * t) // cfg.channels
    bits = dest_bits(mask, cfg)
    counts = np.stack([bits[begin[c]:begin[c + 1]].sum(axis=0) for c in range(cfg.channels)])
    offset = np.cumsum(counts, axis=0) - counts
    nodes = node_masks(mask, cfg)
    own = int(bits.reshape(t, cfg.nodes, cfg.gpus_per_node)[:, :, SRC_LOCAL].sum())
    return DispatchPlan(
        counts=counts.astype(np.int32),
        out_offset=offset.astype(np.int32),
        out_rows=max(int(counts.sum(axis=0).max(initial=0)), 1),
        ib_bytes=int(nodes[:, 1:].sum()) * cfg.token_bytes,
        nvl_bytes=(int(bits.sum()) - own) * cfg.token_bytes,
        channel_begin=begin[:-1],
        local_fwd_bytes=own * cfg.token_bytes,
    )


def masks_from_topk(topk_ids: np.ndarray, *, experts: int, cfg: KernelConfig) -> np.ndarray:
    """Per-token destination masks (uint64) from top-k expert ids [T, k] (ids < 0 ignored);
    experts are split into equal contiguous blocks per GPU, as in ``profiler.routing``."""
    per_gpu = experts // cfg.destinations
    ids = np.asarray(topk_ids, dtype=np.int64)
    gpu = np.where(ids >= 0, ids // per_gpu, -1)
    mask = np.zeros(len(ids), dtype=np.uint64)
    for j in range(ids.shape[1]):
        ok = gpu[:, j] >= 0
        mask[ok] |= np.left_shift(np.uint64(1), gpu[ok, j].astype(np.uint64))
    return mask


def reference_rows(mask: np.ndarray, cfg: KernelConfig) -> list[np.ndarray]:
    """For each destination, the token ids its output rows must hold, in order."""
    bits = dest_bits(mask, cfg)
    return [np.flatnonzero(bits[:, d]) for d in range(cfg.destinations)]


def records_to_log(records: np.ndarray, *, min_wait_ns: int = 0) -> S.WarpLog:
    """Kernel records (``EVENT_DTYPE``) -> ``schema.WarpLog``, times from the earliest record.

    Links: sender work to node 0 is "local" (own node, no IB), to other nodes "ib";
    forwarder work "nvl", except to GPU ``SRC_LOCAL`` (the forwarder itself): "local";
    receiver work "local"; coordinator work and waits none.
    """
    sms: dict[int, int] = {}
    log = S.WarpLog(min_wait_ns=min_wait_ns)
    if len(records) == 0:
        return log
    origin = int(records["t0_ns"].min())
    for r in np.sort(records, order=["channel", "warp", "t0_ns"]):
        c, w, role_id, kind = int(r["channel"]), int(r["warp"]), int(r["role"]), int(r["kind"])
        sms.setdefault(c, int(r["smid"]))
        role, state = ROLE_OF_ID[role_id], STATE_OF_KIND[kind]
        t0, t1 = int(r["t0_ns"]) - origin, int(r["t1_ns"]) - origin
        node = int(r["node"]) if r["node"] >= 0 else None
        gpu = int(r["gpu"]) if r["gpu"] >= 0 else None
        if state == S.BUSY:
            link = {0: "ib" if node else "local", 1: None,
                    2: "local" if gpu == SRC_LOCAL else "nvl", 3: "local"}[role_id]
            log.busy(c, w, role, int(r["chunk"]), int(r["bytes"]), link, t0, t1, node, gpu)
        else:
            log.wait(c, w, role, state, int(r["chunk"]), t0, t1, node, gpu)
    log.sm_of_channel = [sms.get(c, c) for c in range(max(sms) + 1)]
    return log


def records_to_frame(records: np.ndarray, *, rank: int = 0) -> pl.DataFrame:
    """Kernel records as a frame: ``schema.WARP_LOG_SCHEMA`` plus ``rank`` and ``sm``
    (a superset of the analyzers' ``WARP_EVENTS_SCHEMA`` columns)."""
    log = records_to_log(records)
    sms = log.sm_of_channel or []
    frame = log.to_frame()
    return frame.with_columns(
        rank=pl.lit(rank, dtype=pl.Int32),
        sm=pl.col("channel").map_elements(lambda c: sms[c], return_dtype=pl.Int32)
        if frame.height else pl.lit(None, dtype=pl.Int32),
    )


# ------------------------------------------------------------------ build and launch


class _Params(ctypes.Structure):
    """Mirror of ``struct DispatchParams`` in kernel.cu (same field order and types)."""

    _fields_ = [(name, ctypes.c_void_p) for name in (
        "x", "mask", "out_offset", "rdma_ring", "rdma_tok", "rdma_count", "rdma_done",
        "rdma_tail", "rdma_head", "nvl_ring", "nvl_tok", "nvl_count", "nvl_tail", "nvl_head",
        "out", "out_tok", "link_free", "events", "event_count", "status")] + [
        (name, ctypes.c_int) for name in (
            "T", "S", "C", "N", "G", "K", "R", "NS", "NF", "NR", "out_rows", "max_events")] + [
        ("ib_bytes_per_ns", ctypes.c_float), ("nvl_bytes_per_ns", ctypes.c_float),
        ("timeout_ns", ctypes.c_ulonglong), ("min_wait_ns", ctypes.c_uint)]


def _cache_dir() -> Path:
    root = os.environ.get("OVERLAPSCOPE_CACHE") or Path.home() / ".cache" / "overlapscope"
    return Path(root) / "cuda"


def build_library(arch: str = "sm_90", *, cache_dir: Path | None = None) -> Path:
    """Compile ``kernel.cu`` into a shared library with nvcc (cached by source hash + arch).

    Raises ``CudaKernelUnavailable`` when nvcc is missing and ``RuntimeError`` with
    the compiler's message when compilation fails.
    """
    nvcc = shutil.which("nvcc") or (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
                                    / "bin" / "nvcc")
    if not Path(nvcc).exists():
        raise CudaKernelUnavailable("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    src = KERNEL_SOURCE.read_bytes()
    key = hashlib.sha256(src + arch.encode()).hexdigest()[:16]
    out_dir = cache_dir or _cache_dir()
    lib = out_dir / f"warp_dispatch_{arch}_{key}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    cmd = [str(nvcc), f"-arch={arch}", "-O3", "-shared", "-Xcompiler", "-fPIC",
           str(KERNEL_SOURCE), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {KERNEL_SOURCE}:\n{proc.stderr[-4000:]}")
    tmp.replace(lib)  # atomic: concurrent builders never see a half-written library
    return lib


def load_library(path: Path) -> ctypes.CDLL:
    """Load the compiled kernel library and check the struct layouts agree with Python."""
    lib = ctypes.CDLL(str(path))
    lib.launch_warp_dispatch.argtypes = [ctypes.POINTER(_Params), ctypes.c_void_p]
    lib.launch_warp_dispatch.restype = ctypes.c_int
    if lib.warp_dispatch_params_size() != ctypes.sizeof(_Params):
        raise RuntimeError("DispatchParams layout differs between kernel.cu and cuda_kernel.py")
    if lib.warp_event_size() != EVENT_DTYPE.itemsize:
        raise RuntimeError("WarpEvent layout differs between kernel.cu and cuda_kernel.py")
    return lib


@dataclass
class CudaDispatchResult:
    """One kernel run: records, outputs (torch CUDA tensors) and timings."""

    cfg: KernelConfig
    plan: DispatchPlan
    records: np.ndarray
    out: Any  # torch.Tensor [destinations, out_rows, token_bytes] uint8
    out_tok: Any  # torch.Tensor [destinations, out_rows] int32 (-1 = unused row)
    kernel_ms: float

    def log(self) -> S.WarpLog:
        return records_to_log(self.records, min_wait_ns=self.cfg.min_wait_ns)

    def frame(self, *, rank: int = 0) -> pl.DataFrame:
        return records_to_frame(self.records, rank=rank)

    def link_bytes(self) -> dict[str, int]:
        """Bytes the busy records moved per link class ("ib", "nvl", "local")."""
        out = {"ib": 0, "nvl": 0, "local": 0}
        for row in self.log().rows:
            if row[3] == S.BUSY and row[6] is not None:
                out[row[6]] += row[5]
        return out


def run_cuda_dispatch(x: Any, mask: Any, cfg: KernelConfig | None = None, *,
                      arch: str | None = None) -> CudaDispatchResult:
    """Dispatch tokens ``x`` (torch uint8 CUDA tensor [T, token_bytes]) to the destinations
    in ``mask`` (int64 / uint64 per token, bit n*G+g) with the warp-specialized kernel.

    Raises ``CudaKernelUnavailable`` without CUDA, ``CudaDispatchError`` when the
    kernel reports a failure or drops events (raise ``max_events_per_warp``).
    """
    import torch  # local: the analyzers and the CPU emulator must not need torch/CUDA

    cfg = cfg or KernelConfig()
    cfg.validate()
    if not torch.cuda.is_available():
        raise CudaKernelUnavailable("torch reports no CUDA device")
    dev = x.device
    if x.dtype != torch.uint8 or x.dim() != 2 or x.shape[1] != cfg.token_bytes or not x.is_cuda:
        raise ValueError(f"x must be a CUDA uint8 tensor [T, {cfg.token_bytes}]")
    mask_np = mask if isinstance(mask, np.ndarray) else mask.cpu().numpy()
    mask_np = np.ascontiguousarray(mask_np).astype(np.int64, casting="unsafe").view(np.uint64)
    if len(mask_np) != x.shape[0]:
        raise ValueError("mask must have one entry per token")
    if cfg.destinations < 64 and (mask_np >> np.uint64(cfg.destinations)).any():
        raise ValueError(f"mask has bits above destination {cfg.destinations - 1}")
    major, minor = torch.cuda.get_device_capability(dev)
    lib = load_library(build_library(arch or f"sm_{major}{minor}"))
    plan = dispatch_plan(mask_np, cfg)

    C, N, G, R, K, Sb = (cfg.channels, cfg.nodes, cfg.gpus_per_node, cfg.ring_chunks,
                         cfg.chunk_tokens, cfg.token_bytes)
    W, E, D = cfg.warps_per_block, cfg.max_events_per_warp, cfg.destinations

    def zeros(*shape: int, dtype: Any = torch.int32) -> Any:
        return torch.zeros(shape, dtype=dtype, device=dev)

    buf = {
        "x": x.contiguous(),
        "mask": torch.from_numpy(mask_np.view(np.int64).copy()).to(dev),
        "out_offset": torch.from_numpy(plan.out_offset.copy()).to(dev),
        "rdma_ring": torch.empty((C, N, R, K, Sb), dtype=torch.uint8, device=dev),
        "rdma_tok": zeros(C, N, R, K), "rdma_count": zeros(C, N, R), "rdma_done": zeros(C, N, R),
        "rdma_tail": zeros(C, N), "rdma_head": zeros(C, N),
        "nvl_ring": torch.empty((C, N, G, R, K, Sb), dtype=torch.uint8, device=dev),
        "nvl_tok": zeros(C, N, G, R, K), "nvl_count": zeros(C, N, G, R),
        "nvl_tail": zeros(C, N, G), "nvl_head": zeros(C, N, G),
        "out": zeros(D, plan.out_rows, Sb, dtype=torch.uint8),
        "out_tok": torch.full((D, plan.out_rows), -1, dtype=torch.int32, device=dev),
        "link_free": zeros(1 + N, dtype=torch.int64),
        "events": zeros(C * W * E * EVENT_DTYPE.itemsize, dtype=torch.uint8),
        "event_count": zeros(C, W), "status": zeros(4),
    }
    params = _Params(
        **{k: v.data_ptr() for k, v in buf.items()},
        T=x.shape[0], S=Sb, C=C, N=N, G=G, K=K, R=R, NS=cfg.senders, NF=cfg.forwarders,
        NR=cfg.receivers, out_rows=plan.out_rows, max_events=E,
        ib_bytes_per_ns=cfg.ib_gbps, nvl_bytes_per_ns=cfg.nvl_gbps,
        timeout_ns=int(cfg.timeout_ms) * 1_000_000, min_wait_ns=cfg.min_wait_ns,
    )
    stream = torch.cuda.current_stream(dev)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    rc = lib.launch_warp_dispatch(ctypes.byref(params), ctypes.c_void_p(stream.cuda_stream))
    stop.record(stream)
    if rc != 0:
        raise CudaDispatchError(f"launch failed with code {rc}")
    stream.synchronize()
    status = buf["status"].cpu().tolist()
    if status[0] != 0:
        role = _role_of_warp(status[2], cfg)
        raise CudaDispatchError(
            f"{ERRORS.get(status[0], status[0])}: {role} (warp {status[2]}) of channel "
            f"{status[1]} at chunk {status[3]}")
    counts = buf["event_count"].cpu().numpy().reshape(-1)
    if counts.max(initial=0) > E:
        raise CudaDispatchError(
            f"a warp produced {int(counts.max())} events > max_events_per_warp={E}")
    raw = buf["events"].cpu().numpy().view(EVENT_DTYPE).reshape(C * W, E)
    records = np.concatenate([raw[i, :n] for i, n in enumerate(counts)]) if len(counts) else (
        np.zeros(0, EVENT_DTYPE))
    return CudaDispatchResult(cfg=cfg, plan=plan, records=records, out=buf["out"],
                              out_tok=buf["out_tok"], kernel_ms=start.elapsed_time(stop))


def _role_of_warp(warp: int, cfg: KernelConfig) -> str:
    if warp < cfg.senders:
        return "sender"
    if warp == cfg.senders:
        return "coordinator"
    return "forwarder" if warp < cfg.senders + 1 + cfg.forwarders else "receiver"
