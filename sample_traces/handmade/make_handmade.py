"""Write the hand-made two-rank run in this folder (rank-0.json.gz, rank-1.json.gz).

Run ``python sample_traces/handmade/make_handmade.py`` from the repository root;
the output is byte-for-byte deterministic (gzip mtime 0). README.md beside this
script draws the timelines and works out every expected number by hand;
tests/unit/test_handmade_answer.py checks the analyzers against them.

All times below are relative nanoseconds from T0 and are written as exact
decimal microseconds, the way Kineto writes them.
"""

from __future__ import annotations

import gzip
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
#: Trace time zero in Kineto microseconds (same magnitude as a real H200 trace).
T0_US = 5_038_693_760_000
BASE_TIME_NS = 1_790_857_026_000_000_000
US = 1_000  # ns per microsecond: times below read as `20 * US` = 20 us

_ENCODER = msgspec.json.Encoder(decimal_format="number")

GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_cublas"
FLASH_FWD = "void flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false>>(" \
    "Flash_fwd_params)"
FILL = "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, " \
    "at::detail::Array<char*, 1>>(int, at::native::FillFunctor<float>, " \
    "at::detail::Array<char*, 1>)"
MLP_GEMM = "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT"
FLASH_BWD = "void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128>>(" \
    "Flash_bwd_params)"
WGRAD = "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_grouped_bf16_128x128_64x3_tn>(" \
    "Params)"
LAYOUT = "void deep_ep::layout::get_dispatch_layout<256, 32, 8>(long const*, int*, int*, int*, " \
    "bool*, int, int, int, int)"
NOTIFY = "void dpsk::ep::internode::notify_dispatch<false, 8>(int const*, int*, int, int*)"
DISPATCH = "void dpsk::ep::internode::dispatch<false, 8, false, 8>(int4*, float*, long*, int*)"
COMBINE = "void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 128, 1, 24>(int4*, " \
    "float*, bool const*, int4 const*)"
FP8_CAST = "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(" \
    "at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#12}::operator()() " \
    "const::{lambda(float)#1}, at::detail::Array<char*, 2>>(int, at::detail::Array<char*, 2>)"
NCCL_SENDRECV = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"
NCCL_ALLGATHER = "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
SILU = "triton_poi_fused_mul_silu_0"
ELEMENTWISE = "void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl<" \
    "at::native::CUDAFunctor_add<c10::BFloat16>>(at::TensorIteratorBase&)>(int)"


def us(ns: int) -> Decimal:
    """Relative ns -> absolute Kineto microseconds as an exact decimal."""
    return Decimal(T0_US) + Decimal(ns) / 1000


class RankTrace:
    """Events of one rank: annotations and host ops on CPU threads, kernels on GPU streams."""

    def __init__(self, rank: int, cpu_pid: int) -> None:
        self.rank = rank
        self.device = rank  # one GPU per process, GPU index = rank (pid of GPU rows)
        self.pid = cpu_pid
        self.events: list[dict[str, Any]] = []
        self._corr = 1000 * (rank + 1)
        self._ext = 100 * (rank + 1)

    def _x(self, cat: str, name: str, pid: int, tid: int, t0: int, t1: int, args: dict) -> None:
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid,
                            "ts": us(t0), "dur": Decimal(t1 - t0) / 1000, "args": args})

    def _next_ext(self) -> int:
        self._ext += 1
        return self._ext

    def annotation(self, name: str, t0: int, t1: int) -> None:
        self._x("user_annotation", name, self.pid, self.pid, t0, t1,
                {"External id": self._next_ext(), "Record function id": 0})

    def cpu_op(self, name: str, t0: int, t1: int, tid: int | None = None,
               **args: Any) -> None:
        self._x("cpu_op", name, self.pid, tid or self.pid, t0, t1,
                {"External id": self._next_ext(), "Record function id": 0, **args})

    def runtime(self, name: str, t0: int, t1: int, tid: int | None = None) -> int:
        self._corr += 1
        self._x("cuda_runtime", name, self.pid, tid or self.pid, t0, t1,
                {"External id": self._ext, "cbid": 211, "correlation": self._corr})
        return self._corr

    def kernel(self, name: str, stream: int, t0: int, t1: int, *, launch: int,
               tid: int | None = None, grid: int = 132, block: int = 128) -> None:
        """Kernel [t0, t1) on ``stream`` plus its cudaLaunchKernel at ``launch`` (1 us long)."""
        tid = tid or self.pid
        corr = self.runtime("cudaLaunchKernel", launch, launch + 1 * US, tid)
        self._x("kernel", name, self.device, stream, t0, t1, {
            "External id": self._ext, "queued": 0, "device": self.device, "context": 1,
            "stream": stream, "correlation": corr, "registers per thread": 128,
            "shared memory": 0, "grid": [grid, 1, 1], "block": [block, 1, 1],
        })
        self.events.append({"ph": "s", "id": corr, "pid": self.pid, "tid": tid,
                            "ts": us(launch), "cat": "ac2g", "name": "ac2g"})
        self.events.append({"ph": "f", "id": corr, "pid": self.device, "tid": stream,
                            "ts": us(t0), "cat": "ac2g", "name": "ac2g", "bp": "e"})

    def metadata(self, streams: list[int], threads: dict[int, str]) -> list[dict]:
        meta = [
            {"name": "process_name", "ph": "M", "ts": us(0), "pid": self.pid, "tid": 0,
             "args": {"name": "python3"}},
            {"name": "process_labels", "ph": "M", "ts": us(0), "pid": self.pid, "tid": 0,
             "args": {"labels": "CPU"}},
            {"name": "process_name", "ph": "M", "ts": us(0), "pid": self.device, "tid": 0,
             "args": {"name": "python3"}},
            {"name": "process_labels", "ph": "M", "ts": us(0), "pid": self.device, "tid": 0,
             "args": {"labels": f"GPU {self.device}"}},
        ]
        meta += [{"name": "thread_name", "ph": "M", "ts": us(0), "pid": self.device, "tid": s,
                  "args": {"name": f"stream {s} "}} for s in streams]
        meta += [{"name": "thread_name", "ph": "M", "ts": us(0), "pid": self.pid, "tid": t,
                  "args": {"name": label}} for t, label in threads.items()]
        return meta

    def document(self, streams: list[int], threads: dict[int, str]) -> dict[str, Any]:
        return {
            "schemaVersion": 1,
            "deviceProperties": [{"id": self.device, "name": "NVIDIA H200", "numSms": 132,
                                  "computeMajor": 9, "computeMinor": 0}],
            "distributedInfo": {"backend": "nccl", "rank": self.rank, "world_size": 2},
            "displayTimeUnit": "ms",
            "baseTimeNanoseconds": BASE_TIME_NS,
            "traceName": f"handmade rank {self.rank}",
            "traceEvents": self.metadata(streams, threads) + self.events + [
                {"ph": "X", "cat": "Trace", "ts": us(-1 * US), "dur": Decimal(110),
                 "pid": "Spans", "tid": "PyTorch Profiler", "name": "PyTorch Profiler (0)",
                 "args": {"Op count": 0}},
                {"name": "Iteration Start: PyTorch Profiler", "ph": "i", "s": "g",
                 "pid": "Traces", "tid": "Trace PyTorch Profiler", "ts": us(-1 * US)},
            ],
        }


def rank0() -> dict[str, Any]:
    """GPU 0: DeepEP dispatch/combine on stream 27 against compute on streams 7 and 23."""
    r = RankTrace(0, cpu_pid=4242)
    autograd = 4250
    r.annotation("ProfilerStep#1", 0, 100 * US)
    r.annotation("attn(F)", 1 * US, 9 * US)
    r.cpu_op("aten::mm", 1500, 3500)
    r.kernel(GEMM, 7, 20 * US, 40 * US, launch=2 * US)
    r.cpu_op("FlashAttnFunc", 4 * US, 6 * US)
    r.kernel(FLASH_FWD, 7, 40 * US, 50 * US, launch=5 * US)  # touches the GEMM
    r.annotation("dispatch(F)", 9 * US, 19 * US)
    r.kernel(LAYOUT, 27, 10 * US, 12 * US, launch=9500, grid=16, block=256)
    r.kernel(NOTIFY, 27, 12 * US, 18 * US, launch=10500, grid=9, block=256)
    r.kernel(DISPATCH, 27, 18 * US, 45500, launch=12 * US, grid=20, block=512)
    r.annotation("mlp(F)", 19 * US, 29 * US)
    r.cpu_op("aten::zero_", 19500, 21 * US)
    r.kernel(FILL, 7, 50 * US, 50 * US, launch=20 * US)  # zero-length kernel
    r.kernel(MLP_GEMM, 7, 60 * US, 80 * US, launch=22 * US, grid=112)
    r.annotation("mlp(W)", 29 * US, 34 * US)
    r.kernel(WGRAD, 23, 65 * US, 75 * US, launch=30 * US, grid=112)  # nested in the MLP GEMM
    r.annotation("attn(B)", 34 * US, 44 * US)
    # The backward kernel is launched by the autograd engine's own thread, inside
    # attn(B)'s time on the main thread (as in DeepSeek's released trace).
    r.cpu_op("autograd::engine::evaluate_function: FlashAttnFuncBackward", 35 * US, 40 * US,
             tid=autograd)
    r.kernel(FLASH_BWD, 7, 85 * US, 95 * US, launch=36 * US, tid=autograd)
    r.annotation("combine(F)", 44 * US, 54 * US)
    r.kernel(COMBINE, 27, 55 * US, 90 * US, launch=45 * US, grid=20, block=800)
    r.kernel(FP8_CAST, 27, 90 * US, 92 * US, launch=47 * US)  # compute name, comm stream
    r.runtime("cudaDeviceSynchronize", 96 * US, 99 * US)  # a runtime call with no kernel
    return r.document([7, 23, 27], {4242: "thread 4242 (python3)",
                                    autograd: "thread 4250 (pt_autograd_0)"})


def rank1() -> dict[str, Any]:
    """GPU 1: NCCL kernels on stream 13 against compute on streams 7 and 23."""
    r = RankTrace(1, cpu_pid=4243)
    r.annotation("ProfilerStep#1", 0, 100 * US)
    r.annotation("attn(F)", 1 * US, 9 * US)
    r.kernel(GEMM, 7, 10 * US, 40 * US, launch=2 * US)
    r.kernel(ELEMENTWISE, 23, 15 * US, 20 * US, launch=4 * US)  # nested in the GEMM
    r.annotation("dispatch(F)", 9 * US, 19 * US)
    r.cpu_op("record_param_comms", 9800, 11 * US, **{
        "Collective name": "all_to_allv", "dtype": "BFloat16", "In msg nelems": 1048576,
        "Out msg nelems": 1048576, "Group size": 2, "Process Group Name": "0"})
    r.kernel(NCCL_SENDRECV, 13, 30 * US, 60 * US, launch=10 * US, grid=32, block=640)
    r.annotation("mlp(F)", 19 * US, 29 * US)
    r.kernel(SILU, 7, 60 * US, 70 * US, launch=20 * US)  # touches the SendRecv end
    r.annotation("combine(F)", 44 * US, 54 * US)
    r.kernel(NCCL_ALLGATHER, 13, 80 * US, 90250, launch=45 * US, grid=32, block=640)
    return r.document([7, 13, 23], {4243: "thread 4243 (python3)"})


def main() -> None:
    for name, doc in (("rank-0.json.gz", rank0()), ("rank-1.json.gz", rank1())):
        (HERE / name).write_bytes(gzip.compress(_ENCODER.encode(doc), mtime=0))


if __name__ == "__main__":
    main()
