"""Write the hand-made edge-case traces under tests/data/bad and tests/data/odd.

Run ``python tests/data/make_corpus.py`` from the repository root; the output is
deterministic (gzip mtime 0, fixed event order), so re-running it on a clean
tree changes nothing. The files are committed; this script documents how each
was made. tests/data/README.md lists every file with its expected outcome.

Times are designed in integer nanoseconds and written as exact decimal
microseconds (msgspec writes ``Decimal`` values as JSON numbers digit for
digit), so a file can carry sub-microsecond digits that float64 would lose.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"
ODD = HERE / "odd"

_ENCODER = msgspec.json.Encoder(decimal_format="number")


def us(ns: int) -> Decimal:
    """Integer nanoseconds -> exact decimal microseconds (e.g. 20250 -> 20.25)."""
    return Decimal(ns) / 1000


class Builder:
    """A minimal Kineto-shaped trace: kernels with their launches, host ops, annotations.

    ``t0_ns`` is added to every time given to the methods (which are relative ns).
    """

    def __init__(self, t0_ns: int = 0, cpu_pid: int = 4242, main_tid: int = 4242) -> None:
        self.t0 = t0_ns
        self.pid = cpu_pid
        self.main = main_tid
        self.events: list[dict[str, Any]] = []
        self.top: dict[str, Any] = {"schemaVersion": 1}
        self._corr = 100
        self._ext = 1

    def ext(self) -> int:
        self._ext += 1
        return self._ext

    def x(self, cat: str, name: str, pid: Any, tid: Any, t0: int, t1: int, **args: Any) -> dict:
        ev = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid,
              "ts": us(self.t0 + t0), "dur": us(t1 - t0)}
        if args:
            ev["args"] = args
        self.events.append(ev)
        return ev

    def annotation(self, name: str, t0: int, t1: int, tid: int | None = None) -> None:
        self.x("user_annotation", name, self.pid, tid or self.main, t0, t1,
               **{"External id": self.ext(), "Record function id": 0})

    def cpu_op(self, name: str, t0: int, t1: int, tid: int | None = None, **args: Any) -> None:
        self.x("cpu_op", name, self.pid, tid or self.main, t0, t1,
               **{"External id": self.ext(), **args})

    def kernel(self, name: str, stream: int, t0: int, t1: int, *, launch_ns: int,
               device: int = 0, tid: int | None = None, grid: tuple = (1, 1, 1),
               block: tuple = (128, 1, 1), cat: str = "kernel",
               launcher: str = "cudaLaunchKernel", runtime_cat: str = "cuda_runtime",
               extra: dict | None = None) -> None:
        """A GPU activity on ``device``/``stream`` plus the host launch that issued it.

        The launch (``runtime_cat`` event named ``launcher``, 1 us long, on thread
        ``tid``) shares its correlation id with the activity, as Kineto writes them,
        and an ``ac2g`` flow pair links the two.
        """
        self._corr += 1
        corr = self._corr
        tid = tid or self.main
        ext = self.ext()
        self.x(runtime_cat, launcher, self.pid, tid, launch_ns, launch_ns + 1000,
               **{"External id": ext, "cbid": 211, "correlation": corr})
        args: dict[str, Any] = {"External id": ext, "device": device, "stream": stream,
                                "correlation": corr}
        if cat == "kernel":
            args.update(grid=list(grid), block=list(block))
        args.update(extra or {})
        self.x(cat, name, device, stream, t0, t1, **args)
        self.events.append({"ph": "s", "id": corr, "pid": self.pid, "tid": tid,
                            "ts": us(self.t0 + launch_ns), "cat": "ac2g", "name": "ac2g"})
        self.events.append({"ph": "f", "id": corr, "pid": device, "tid": stream,
                            "ts": us(self.t0 + t0), "cat": "ac2g", "name": "ac2g", "bp": "e"})

    def gpu(self, name: str, stream: int, t0: int, t1: int, device: int = 0,
            cat: str = "kernel", **args: Any) -> None:
        """A GPU activity without a launch (enough for overlap-only files)."""
        self.x(cat, name, device, stream, t0, t1,
               **{"device": device, "stream": stream, **args})

    def doc(self) -> dict[str, Any]:
        return {**self.top, "traceEvents": self.events}


def encode(doc: Any) -> bytes:
    """JSON bytes with exact decimal times."""
    return _ENCODER.encode(doc)


def encode_lines(doc: dict[str, Any]) -> bytes:
    """Like ``encode`` but one trace event per line, so the files read well in a diff."""
    head = {k: v for k, v in doc.items() if k != "traceEvents"}
    parts = [b"{"] + [encode(k) + b": " + encode(v) + b"," for k, v in head.items()]
    events = b",\n  ".join(encode(ev) for ev in doc["traceEvents"])
    return b"\n".join(parts) + b'\n"traceEvents": [\n  ' + events + b"\n]}\n"


def gz(data: bytes) -> bytes:
    """Deterministic gzip (mtime 0)."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --------------------------------------------------------------------------- bad


def good_small_trace() -> dict[str, Any]:
    """A valid two-kernel trace (the body that truncated.json.gz is cut from)."""
    b = Builder(t0_ns=5_000_000_000_000)
    for i in range(40):
        b.gpu(f"kernel_{i}", 7, i * 10_000, i * 10_000 + 5_000)
    return b.doc()


def make_bad() -> None:
    body = encode(good_small_trace())
    whole_gz = gz(body)
    write(BAD / "truncated.json.gz", whole_gz[: len(whole_gz) // 2])
    write(BAD / "truncated_text.json", body[: len(body) // 2])
    write(BAD / "invalid.json", b'{"traceEvents": [{"ph": "X", "name": oops}]}\n')
    write(BAD / "empty.json", b"")
    write(BAD / "empty_gzip.json.gz", gz(b""))
    write(BAD / "no_trace_events.json",
          b'{"schemaVersion": 1, "deviceProperties": [], "displayTimeUnit": "ms"}\n')
    write(BAD / "foo.json", b'{"foo": 1}\n')
    write(BAD / "top_level_list.json", b"[1, 2, 3]\n")
    write(BAD / "top_level_string.json", b'"traceEvents"\n')
    write(BAD / "trace_events_not_list.json", b'{"traceEvents": {"ph": "X"}}\n')
    write(BAD / "trace_events_wrong_types.json",
          b'{"traceEvents": [1, "kernel", null, [2, 3], true]}\n')
    # Deterministic pseudo-random bytes (no RNG state to pin down).
    garbage = bytes((i * 131 + 17) % 256 for i in range(4096))
    write(BAD / "garbage.json.gz", gz(garbage))
    write(BAD / "binary.json", garbage)
    write(BAD / "not_gzip.json.gz", encode(good_small_trace()))
    write(BAD / "no_traces_dir" / "notes.txt",
          b"A run directory with no trace files in it (used by test_bad_inputs.py).\n")


# --------------------------------------------------------------------------- odd
NCCL = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_cublas"


def odd_string_pids() -> dict:
    """Kineto's string pids/tids ("Spans", "Traces", "") next to two kernels."""
    b = Builder(t0_ns=5_038_693_761_774_000)
    b.top["traceName"] = "string_pids"
    b.events.append({"ph": "X", "cat": "Trace", "ts": us(b.t0 - 1000), "dur": us(30_000),
                     "pid": "Spans", "tid": "PyTorch Profiler", "name": "PyTorch Profiler (0)",
                     "args": {"Op count": 0}})
    b.events.append({"name": "process_sort_index", "ph": "M", "ts": us(b.t0), "pid": "Spans",
                     "tid": 0, "args": {"sort_index": 536870912}})
    b.events.append({"name": "Iteration Start: PyTorch Profiler", "ph": "i", "s": "g",
                     "pid": "Traces", "tid": "Trace PyTorch Profiler", "ts": us(b.t0)})
    b.cpu_op("aten::mm", 0, 2_000, tid="thread 7 (python3)")
    b.gpu(GEMM, 7, 0, 10_000)
    b.gpu(NCCL, 13, 5_000, 20_000)
    b.events.append({"name": "Record Window End", "ph": "i", "s": "g", "pid": "", "tid": "",
                     "ts": us(b.t0 + 25_000)})
    return b.doc()


def odd_missing_fields() -> dict:
    """Events without args / dur / cat / name; kernels fall back to pid/tid."""
    t0 = 5_000_000_000_000
    ev: list[dict] = [
        {"ph": "X", "cat": "kernel", "name": "gemm_no_args", "pid": 0, "tid": 7,
         "ts": us(t0), "dur": us(10_000)},
        {"ph": "X", "cat": "kernel", "name": "kernel_no_dur", "pid": 0, "tid": 7,
         "ts": us(t0 + 3_000), "args": {"device": 0, "stream": 7}},
        {"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce_Sum_f32_RING_LL(x)",
         "pid": 0, "tid": 13, "ts": us(t0 + 8_000), "dur": us(4_000),
         "args": {"device": 0, "stream": 13}},
        {"ph": "X", "name": "event_without_cat", "pid": 1, "tid": 1, "ts": us(t0), "dur": us(5)},
        {"ph": "X", "cat": "cpu_op", "name": "aten::empty", "pid": 1, "tid": 1, "ts": us(t0)},
        {"ph": "X", "cat": "cpu_op", "pid": 1, "tid": 1, "ts": us(t0 + 100), "dur": us(50)},
        {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "main"}},
        {"ph": "i", "name": "instant_without_anything"},
    ]
    return {"traceEvents": ev}


def odd_durations() -> dict:
    """Zero and negative durations among ordinary kernels (all inside [0, 15] us)."""
    b = Builder(t0_ns=5_000_000_000_000)
    b.gpu(GEMM, 7, 0, 10_000)
    b.gpu("zero_len_compute", 7, 5_000, 5_000)
    b.gpu("negative_compute", 7, 12_000, 9_000)  # dur -3 us
    b.gpu(NCCL, 13, 5_000, 15_000)
    b.gpu("ncclDevKernel_Broadcast_RING_LL(zero)", 13, 14_000, 14_000)
    b.gpu("ncclDevKernel_Reduce_RING_LL(negative)", 13, 3_000, 1_000)  # dur -2 us
    return b.doc()


def odd_float_int_ts() -> dict:
    """Integer and float timestamps/durations mixed in one file."""
    ev = [
        {"ph": "X", "cat": "kernel", "name": "int_times", "pid": 0, "tid": 7, "ts": 1000,
         "dur": 10, "args": {"device": 0, "stream": 7}},
        {"ph": "X", "cat": "kernel", "name": NCCL, "pid": 0, "tid": 13,
         "ts": Decimal("1005.5"), "dur": Decimal("2.25"), "args": {"device": 0, "stream": 13}},
        {"ph": "X", "cat": "kernel", "name": "float_times", "pid": 0, "tid": 7,
         "ts": Decimal("1012.125"), "dur": Decimal("0.875"), "args": {"device": 0, "stream": 7}},
    ]
    return {"traceEvents": ev}


EPOCH_US = Decimal("1795895704494889.248")


def odd_epoch_ns() -> dict:
    """Epoch-scale microsecond timestamps whose ns digits float64 cannot hold."""
    ev = [
        {"ph": "X", "cat": "kernel", "name": "epoch_gemm", "pid": 0, "tid": 7,
         "ts": EPOCH_US, "dur": Decimal("10.5"), "args": {"device": 0, "stream": 7}},
        {"ph": "X", "cat": "kernel", "name": NCCL, "pid": 0, "tid": 13,
         "ts": Decimal("1795895704494890.001"), "dur": Decimal("3.333"),
         "args": {"device": 0, "stream": 13}},
        {"ph": "X", "cat": "kernel", "name": "epoch_tiny", "pid": 0, "tid": 7,
         "ts": Decimal("1795895704494899.749"), "dur": Decimal("0.001"),
         "args": {"device": 0, "stream": 7}},
    ]
    return {"schemaVersion": 1, "displayTimeUnit": "ms", "traceEvents": ev}


def odd_display_ns() -> dict:
    """``displayTimeUnit: "ns"`` is a display hint; ts/dur stay microseconds."""
    b = Builder(t0_ns=100_000)
    b.top["displayTimeUnit"] = "ns"
    b.gpu(GEMM, 7, 0, 10_000)
    b.gpu(NCCL, 13, 5_000, 25_000)
    return b.doc()


def odd_string_ts(epoch: bool) -> dict:
    """ts/dur written as JSON strings of decimal microseconds (coerced, exactly)."""
    a_ts, b_ts = ("1795895704494889.5", "1795895704494893.25") if epoch else ("1000.5", "1004.25")
    ev = [
        {"ph": "X", "cat": "kernel", "name": "string_ts_gemm", "pid": 0, "tid": 7,
         "ts": a_ts, "dur": "10", "args": {"device": 0, "stream": 7}},
        {"ph": "X", "cat": "kernel", "name": NCCL, "pid": 0, "tid": 13,
         "ts": b_ts, "dur": "2.5", "args": {"device": 0, "stream": 13}},
    ]
    return {"traceEvents": ev}


def odd_one_bad_event() -> dict:
    """Two good kernels, one with a non-numeric ts and one non-object element."""
    b = Builder(t0_ns=5_000_000_000_000)
    b.gpu(GEMM, 7, 0, 10_000)
    b.gpu(NCCL, 13, 5_000, 20_000)
    b.events.append({"ph": "X", "cat": "kernel", "name": "ts_is_a_word", "pid": 0, "tid": 7,
                     "ts": "soon", "dur": 5, "args": {"device": 0, "stream": 7}})
    b.events.append(42)
    return b.doc()


def odd_unknown_ph_cat() -> dict:
    """Unknown phases and categories are ignored; two real kernels remain."""
    b = Builder(t0_ns=5_000_000_000_000)
    b.gpu(GEMM, 7, 0, 10_000)
    b.gpu(NCCL, 13, 4_000, 6_000)
    t = us(b.t0)
    b.events += [
        {"ph": "Z", "cat": "kernel", "name": "future_phase", "pid": 0, "tid": 7, "ts": t,
         "dur": us(50_000)},
        {"ph": "i", "cat": "kernel", "name": "instant_kernel", "pid": 0, "tid": 7, "ts": t},
        {"ph": "b", "cat": "async_thing", "name": "async", "id": 1, "pid": 1, "tid": 1, "ts": t},
        {"ph": "e", "cat": "async_thing", "name": "async", "id": 1, "pid": 1, "tid": 1,
         "ts": us(b.t0 + 1_000)},
        {"ph": "P", "cat": "sample", "name": "stack_sample", "pid": 1, "tid": 1, "ts": t},
        {"ph": "O", "cat": "object", "name": "snapshot", "id": "0x1", "pid": 1, "ts": t,
         "args": {"snapshot": {}}},
        {"ph": "X", "cat": "brand_new_category", "name": "mystery_host_op", "pid": 1,
         "tid": 1, "ts": t, "dur": us(3_000)},
    ]
    return b.doc()


def odd_amd_rocm() -> dict:
    """A ROCm/HIP trace: Tensile GEMM, RCCL kernels, HIP launches, HIP memcpy names."""
    b = Builder(t0_ns=5_000_000_000_000, cpu_pid=777, main_tid=777)
    b.top["deviceProperties"] = [{"id": 0, "name": "AMD Instinct MI300X", "numSms": 304}]
    b.top["distributedInfo"] = {"backend": "nccl", "rank": 0, "world_size": 8}
    b.annotation("ProfilerStep#1", 0, 40_000)
    b.annotation("attn(F)", 500, 3_000)
    b.kernel("Cijk_Ailk_Bljk_BBS_BH_MT256x256x64_MI16x16x16x1_SN_1LDSB1_AMAS3", 3, 0, 20_000,
             launch_ns=1_000, launcher="hipExtModuleLaunchKernel", grid=(304, 1, 1),
             block=(256, 1, 1))
    b.kernel("CopyDeviceToDevice", 3, 12_000, 16_000, launch_ns=1_500,
             launcher="hipMemcpyAsync", cat="gpu_memcpy", extra={"bytes": 1 << 26})
    b.kernel("CopyHostToDevice", 3, 14_000, 15_000, launch_ns=2_000,
             launcher="hipMemcpyWithStream", cat="gpu_memcpy", extra={"bytes": 1 << 20})
    b.annotation("dispatch(F)", 3_000, 6_000)
    b.kernel("ncclDevKernel_Generic(ncclDevComm*, channelMasks, ncclWork*)", 5, 10_000,
             25_000, launch_ns=4_000, launcher="hipLaunchKernel", grid=(32, 1, 1),
             block=(256, 1, 1))
    b.kernel("ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)",
             5, 25_000, 30_000, launch_ns=5_000, launcher="hipLaunchKernel")
    return b.doc()


def odd_cpu_only() -> dict:
    """A CPU gloo run: compute on the main thread, c10d/gloo ops on a comm thread."""
    b = Builder(t0_ns=5_000_000_000_000, cpu_pid=900, main_tid=900)
    b.top["distributedInfo"] = {"backend": "gloo", "rank": 0, "world_size": 2}
    comm = 901
    b.annotation("ProfilerStep#1", 0, 140_000)
    b.cpu_op("aten::mm", 0, 100_000)
    b.cpu_op("aten::empty", 1_000, 2_000)  # nested inside aten::mm
    b.cpu_op("aten::add", 110_000, 120_000)
    b.annotation("gloo:send", 20_000, 60_000, tid=comm)
    b.cpu_op("c10d::send", 20_000, 60_000, tid=comm,
             **{"Concrete Inputs": ["", "1", "0"], "Input Dims": [[[64, 64]], [], []]})
    b.annotation("gloo:recv", 70_000, 130_000, tid=comm)
    b.cpu_op("c10d::recv_", 70_000, 130_000, tid=comm,
             **{"Concrete Inputs": ["", "1", "0"], "Input Dims": [[[64, 64]], [], []]})
    return b.doc()


def odd_two_gpus() -> dict:
    """Kernels of GPU 0 (pid 0) and GPU 1 (pid 1) in one file."""
    b = Builder(t0_ns=5_000_000_000_000)
    b.gpu(GEMM, 7, 0, 10_000, device=0)
    b.gpu(NCCL, 13, 5_000, 15_000, device=0)
    b.gpu(GEMM, 7, 0, 4_000, device=1)
    b.gpu(NCCL, 13, 6_000, 8_000, device=1)
    b.gpu("triton_poi_fused_add_0", 7, 8_000, 20_000, device=1)
    return b.doc()


DPSK_LAYOUT = "void dpsk::ep::get_dispatch_layout<256, 32, 8>(long const*, int*, int*, int*, " \
    "bool*, int, int, int, int)"
DPSK_NOTIFY = "void dpsk::ep::internode::notify_dispatch<false, 8>(int const*, int*, int, " \
    "int const*, int*, int, int const*, int*, int, int, bool const*, int*, int*, int, int)"
DPSK_DISPATCH = "void dpsk::ep::internode::dispatch<false, 8, false, 8>(int4*, float*, long*, " \
    "float*, SourceMeta*, int4 const*, float const*, long const*, float const*, int*, int*)"
DPSK_CACHED_NOTIFY = "void dpsk::ep::internode::cached_notify<8>(int, int, int, int, int, int*, " \
    "int*, int*, int*, int*, void*, int, int, void**, int, int, int, bool)"
DPSK_COMBINE = "void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 128, 1, 24>(" \
    "int4*, float*, bool const*, int4 const*, float const*, int const*, int const*)"
CUB_REDUCE = "void cub::DeviceReduceByKeyKernel<cub::DispatchReduceByKey<int*, int*, " \
    "cub::ConstantInputIterator<int, long>, int*, long*, cub::Equality, cub::Sum, long>::" \
    "Policy350, int*, int*, cub::ConstantInputIterator<int, long>, int*, long*, " \
    "cub::ScanTileState<cub::KeyValuePair<long, int>, true>, cub::Equality, cub::Sum, long>" \
    "(int*, int*, int*, long*, long)"
DEEP_GEMM = "void deep_gemm::fp8_gemm_kernel<4096u, 7168u, 128u, 128u, 128u, 1u, 8u, 128u, " \
    "4u, 1u, 2u, true, (deep_gemm::GemmType)0>(__nv_bfloat16*, float*, int*, unsigned int)"


def odd_deepseek_excerpt() -> dict:
    """DeepSeek-style names: DeepEP internode kernels on stream 27, compute on stream 7.

    Traps: ``cub::...DispatchReduceByKey...`` and ``deep_gemm::`` are compute.
    """
    b = Builder(t0_ns=5_000_000_000_000)
    b.top["deviceProperties"] = [{"id": 0, "name": "NVIDIA H800", "numSms": 132}]
    b.gpu(DPSK_LAYOUT, 27, 0, 1_000, grid=[16, 1, 1], block=[256, 1, 1])
    b.gpu(DPSK_NOTIFY, 27, 1_000, 3_000, grid=[9, 1, 1], block=[256, 1, 1])
    b.gpu(DPSK_DISPATCH, 27, 3_000, 43_000, grid=[20, 1, 1], block=[512, 1, 1])
    b.gpu(DPSK_CACHED_NOTIFY, 27, 50_000, 52_000, grid=[20, 1, 1], block=[320, 1, 1])
    b.gpu(DPSK_COMBINE, 27, 52_000, 80_000, grid=[20, 1, 1], block=[800, 1, 1])
    b.gpu(CUB_REDUCE, 7, 0, 5_000, grid=[1, 1, 1], block=[128, 1, 1])
    b.gpu("flash_fwd_kernel", 7, 10_000, 40_000, grid=[112, 1, 1], block=[128, 1, 1])
    b.gpu(DEEP_GEMM, 7, 45_000, 70_000, grid=[112, 1, 1], block=[384, 1, 1])
    return b.doc()


def odd_chrome_array() -> list:
    """Chrome's JSON Array Format: a bare list of events, GEMM s7 [0,10] and NCCL s13
    [5,20], host op [0,2]; written left open (no closing bracket, a dangling comma)."""
    b = Builder(t0_ns=5_000_000_000_000)
    b.cpu_op("aten::mm", 0, 2_000)
    b.gpu(GEMM, 7, 0, 10_000)
    b.gpu(NCCL, 13, 5_000, 20_000)
    return b.events


def odd_begin_end() -> dict:
    """Duration events ("B"/"E") instead of "X": the NCCL kernel s13 [5,20] and host ops
    outer [0,30] > inner [2,4] on one thread, written out of time order; a stray "E"."""
    b = Builder(t0_ns=5_000_000_000_000)
    b.gpu(GEMM, 7, 0, 10_000)

    def mark(ph: str, t: int, tid: Any, pid: Any = b.pid, **extra: Any) -> dict:
        return {"ph": ph, "pid": pid, "tid": tid, "ts": us(b.t0 + t), **extra}

    b.events += [
        mark("E", 30_000, b.main),
        mark("B", 0, b.main, cat="cpu_op", name="outer", args={"External id": 7}),
        mark("B", 2_000, b.main, cat="cpu_op", name="inner"),
        mark("E", 4_000, b.main),
        mark("B", 5_000, 13, pid=0, cat="kernel", name=NCCL,
             args={"device": 0, "stream": 13}),
        mark("E", 20_000, 13, pid=0),
        mark("E", 25_000, 99),  # nothing open on thread 99
    ]
    return b.doc()


def make_odd() -> None:
    files = {
        "string_pids.json": odd_string_pids(),
        "missing_fields.json": odd_missing_fields(),
        "durations.json": odd_durations(),
        "float_int_ts.json": odd_float_int_ts(),
        "epoch_ns.json": odd_epoch_ns(),
        "display_ns.json": odd_display_ns(),
        "string_ts.json": odd_string_ts(epoch=False),
        "string_ts_epoch.json": odd_string_ts(epoch=True),
        "one_bad_event.json": odd_one_bad_event(),
        "unknown_ph_cat.json": odd_unknown_ph_cat(),
        "amd_rocm.json": odd_amd_rocm(),
        "cpu_only.json": odd_cpu_only(),
        "two_gpus.json": odd_two_gpus(),
        "begin_end.json": odd_begin_end(),
    }
    for name, doc in files.items():
        write(ODD / name, encode_lines(doc))
    events = odd_chrome_array()
    write(ODD / "chrome_array_open.json",
          b"[\n" + b"".join(encode(ev) + b",\n" for ev in events))
    # One gzip'd member of the corpus, so the odd tier also covers .json.gz.
    write(ODD / "deepseek_excerpt.json.gz", gz(encode(odd_deepseek_excerpt())))


def main() -> None:
    make_bad()
    make_odd()
    # Sanity: every odd file is valid JSON for the standard library too.
    for p in sorted(ODD.iterdir()):
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        if p.name.endswith("_open.json"):  # the array format lets the "]" be left out
            raw = raw.rstrip().rstrip(b",") + b"]"
        json.loads(raw)


if __name__ == "__main__":
    main()
