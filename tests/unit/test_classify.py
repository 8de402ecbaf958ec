"""The classification table of issue #2, rule files and the launch/stream rules."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.classify import (
    RuleError,
    classify_activities,
    classify_cpu_ops,
    classify_frames,
    load_rules,
)
from overlapscope.analyzers.load import load_run

TABLE = [
    # (name, cat, kind, comm_type)
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "kernel",
     "comm", "nccl"),
    ("ncclKernel_AllGather_RING_LL_Sum_int8_t(ncclWork)", "kernel", "comm", "nccl"),
    ("void deep_ep::legacy::internode::dispatch<false, 8, false, 8>(int4*, float*)", "kernel",
     "comm", "deepep"),
    ("void dpsk::ep::internode::combine<false, 8, __nv_bfloat16, 24>(int4*)", "kernel",
     "comm", "deepep"),
    ("void deep_ep::intranode::notify_dispatch<8>(int const*)", "kernel", "comm", "deepep"),
    ("void dpsk::ep::internode::cached_notify<8>(int)", "kernel", "comm", "deepep"),
    ("void deep_ep::layout::get_dispatch_layout(long const*, int*)", "kernel", "comm", "deepep"),
    ("dispatch(Dev, Cfg)", "kernel", "comm", "deepep"),
    ("void combine<8>(float*)", "kernel", "comm", "deepep"),
    # Substrings are not the function's own name: these are compute.
    ("void cub::DeviceReduceByKeyKernel<cub::DispatchReduceByKey<int*, int*>>(int*)", "kernel",
     "compute", None),
    ("void at::native::index_elementwise_kernel<dispatch_helper>(int)", "kernel", "compute", None),
    ("void my_combine_norm_kernel<float>(float*)", "kernel", "compute", None),
    ("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopA_NNT", "kernel", "compute", None),
    ("void nvshmemi_transfer_rma_kernel<int>(int)", "kernel", "comm", "nvshmem"),
    ("rcclGenericKernel(ncclDevComm*)", "kernel", "comm", "rccl"),
    ("Memcpy PtoP (Device -> Device)", "gpu_memcpy", "comm", "p2p_memcpy"),
    ("Memcpy DtoD (Device -> Device)", "gpu_memcpy", "memory", None),
    ("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", "memory", None),
    ("Memset (Device)", "gpu_memset", "memory", None),
]


@pytest.mark.parametrize(("name", "cat", "kind", "comm_type"), TABLE)
def test_gpu_classification_table(name: str, cat: str, kind: str, comm_type: str | None) -> None:
    df = pl.DataFrame({"name": [name], "cat": [cat]})
    out = classify_activities(df)
    assert out["kind"].item() == kind
    assert out["comm_type"].item() == comm_type


@pytest.mark.parametrize(
    ("name", "kind", "comm_type"),
    [("c10d::allreduce_", "comm", "c10d"), ("gloo:all_reduce", "comm", "gloo"),
     ("c10d::send", "comm", "c10d"), ("record_param_comms", "comm", "c10d"),
     ("aten::mm", "compute", None)],
)
def test_host_classification(name: str, kind: str, comm_type: str | None) -> None:
    df = pl.DataFrame({"name": [name], "cat": ["cpu_op"]})
    out = classify_cpu_ops(df)
    assert (out["kind"].item(), out["comm_type"].item()) == (kind, comm_type)


def test_user_rules_come_first(tmp_path: Path) -> None:
    rules = tmp_path / "mine.toml"
    rules.write_text(
        '[[rule]]\nid = "my-a2a"\nfunc = "^my_all_to_all$"\nkind = "comm"\ncomm_type = "mine"\n'
        '[[rule]]\nid = "not-nccl"\nname = "nccl_fake_compute"\nkind = "compute"\n'
    )
    rs = load_rules(str(rules))
    df = pl.DataFrame({"name": ["void ns::my_all_to_all<4>(int)", "nccl_fake_compute"],
                       "cat": ["kernel", "kernel"]})
    out = classify_activities(df, rs)
    assert out["kind"].to_list() == ["comm", "compute"]
    assert out["rule"].to_list() == ["my-a2a", "not-nccl"]


def test_bad_rule_file_names_file_and_rule(tmp_path: Path) -> None:
    rules = tmp_path / "bad.toml"
    rules.write_text('[[rule]]\nid = "oops"\nname = "x"\nkind = "network"\n')
    with pytest.raises(RuleError, match="bad.toml.*oops"):
        load_rules(str(rules))


def test_launch_context_rule_and_no_stream_promotion(tmp_path: Path) -> None:
    """Issue #7: an activity is comm by what it is, never by the stream it shares."""
    tb = TraceBuilder()
    # NCCL world-size-1 all_to_all: a DtoD copy launched inside record_param_comms.
    tb.cpu_op("record_param_comms", 1_000, 10_000)
    tb.kernel("Memcpy DtoD (Device -> Device)", 20_000, 30_000, stream=13, cat="gpu_memcpy",
              launch_ns=5_000)
    # A copy on the same stream (not launched in a comm op) and a cast kernel: memory
    # and compute, although the stream is mostly comm.
    tb.kernel("Memcpy DtoH (Device -> Pinned)", 30_000, 60_000, stream=13, cat="gpu_memcpy",
              launch_ns=15_000)
    tb.kernel("void cast_to_fp8<float>(float*)", 60_000, 61_000, stream=13, launch_ns=16_000)
    # The main compute stream: a copy launched outside comm stays memory.
    tb.kernel("void gemm_kernel(float*)", 0, 50_000, stream=7, launch_ns=100)
    tb.kernel("Memcpy DtoH (Device -> Pinned)", 50_000, 55_000, stream=7, cat="gpu_memcpy",
              launch_ns=200)
    frames = classify_frames(load_run(tb.write(tmp_path / "t.json"), cache=False))
    got = {(r["stream"], r["name"][:12]): (r["kind"], r["rule"])
           for r in frames.activities.iter_rows(named=True)}
    assert got[(13, "Memcpy DtoD ")] == ("comm", "launched-in-comm-op")
    assert got[(13, "Memcpy DtoH ")] == ("memory", "memcpy")
    assert got[(13, "void cast_to")] == ("compute", "kernel-default")
    assert got[(7, "void gemm_ke")] == ("compute", "kernel-default")
    assert got[(7, "Memcpy DtoH ")] == ("memory", "memcpy")
