// Warp-specialized two-hop MoE dispatch of one source rank, instrumented per warp.
//
// Same roles and data flow as the H200 fixture kernel (sample_traces/h200/PROVENANCE.md)
// and BRIEF.md §2.3: one thread block per channel; its warps have fixed roles
//   [0, NS)            senders:     copy each token of their chunks once per destination
//                                   node into that node's RDMA ring ("IB hop")
//   NS                 coordinator: publishes RDMA ring tails in chunk order
//   [NS+1, NS+1+NF)    forwarders:  copy each staged token to every destination GPU of its
//                                   node, into that GPU's NVL ring ("NVLink hop")
//   [NS+1+NF, +NR)     receivers:   copy NVL rings into the final per-GPU output rows
// Rings hold R chunk slots of K tokens and are addressed by ever-increasing chunk
// counters (slot = chunk % R); every role walks chunks in order.
//
// Link speed is emulated like the fixture: a copy reserves time on its link (an atomic
// on a global "link free at" timestamp) and spins until the reservation ends. Link 0 is
// the source NIC (IB), link 1+n the NVLink fabric of node n. Node 0 is the source's own
// node: its sender copies do not use IB. The source has local index 0, so node n's
// forwarder is GPU (n, 0): its copy to GPU 0 is a copy to itself and does not use
// NVLink either (BRIEF 4.10; the host accounting in cuda_kernel.py counts it as local).
//
// Every warp records its work and wait intervals with %globaltimer / %smid into its own
// slice of a device buffer (no atomics needed). Every wait loop is bounded: on timeout it
// raises a status code that makes all other warps give up too, so a bug cannot hang the
// GPU. No torch headers: the host binds launch_warp_dispatch() via ctypes.

#include <cstdint>
#include <cuda_runtime.h>

namespace {

constexpr unsigned kFull = 0xffffffffu;

// Event kinds (WarpEvent::kind). The analyzer maps them to warp_role states.
enum : unsigned char {
  kBusy = 0,
  kWaitRdmaSpace = 1,  // sender: RDMA ring full        -> wait_remote_head
  kWaitRdmaData = 2,   // forwarder: RDMA ring empty    -> wait_tail
  kWaitNvlSpace = 3,   // forwarder: NVL ring full      -> wait_remote_head
  kWaitNvlData = 4,    // receiver: NVL ring empty      -> wait_tail
  kWaitSenders = 5,    // coordinator: chunk not done   -> wait_tail
};

enum : int { kOk = 0, kErrTimeout = 1, kErrBadConfig = 2 };

}  // namespace

// 40 bytes, mirrored by EVENT_DTYPE in cuda_kernel.py.
struct WarpEvent {
  unsigned long long t0_ns;
  unsigned long long t1_ns;
  unsigned long long bytes;
  int chunk;
  short node;  // -1: none
  short gpu;   // -1: none
  unsigned short smid;
  unsigned char role;  // 0 sender, 1 coordinator, 2 forwarder, 3 receiver
  unsigned char kind;
  unsigned char warp;
  unsigned char channel;
  unsigned char pad[2];
};
static_assert(sizeof(WarpEvent) == 40, "WarpEvent layout is shared with Python");

struct DispatchParams {
  const uint8_t* x;                // [T, S] token bytes
  const unsigned long long* mask;  // [T] destination bits, bit n*G+g
  const int* out_offset;           // [C, N*G] first output row of channel c for dest d
  uint8_t* rdma_ring;              // [C, N, R, K, S]
  int* rdma_tok;                   // [C, N, R, K] token id per slot
  int* rdma_count;                 // [C, N, R] tokens in the chunk slot
  int* rdma_done;                  // [C, N, R] chunk+1 once its senders are done
  int* rdma_tail;                  // [C, N] chunks published (coordinator)
  int* rdma_head;                  // [C, N] chunks consumed (forwarder)
  uint8_t* nvl_ring;               // [C, N, G, R, K, S]
  int* nvl_tok;                    // [C, N, G, R, K]
  int* nvl_count;                  // [C, N, G, R]
  int* nvl_tail;                   // [C, N, G]
  int* nvl_head;                   // [C, N, G]
  uint8_t* out;                    // [N*G, out_rows, S]
  int* out_tok;                    // [N*G, out_rows] token id per output row
  unsigned long long* link_free;   // [1 + N] ns at which each link is free
  WarpEvent* events;               // [C, warps, max_events]
  int* event_count;                // [C, warps] events produced (may exceed max_events)
  int* status;                     // [4]: code, channel, warp, chunk of the first failure
  int T, S, C, N, G, K, R, NS, NF, NR, out_rows, max_events;
  float ib_bytes_per_ns, nvl_bytes_per_ns;  // <= 0: unlimited
  unsigned long long timeout_ns;
  unsigned int min_wait_ns;
};

namespace {

__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ __forceinline__ unsigned smid() {
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}

__device__ __forceinline__ int ld_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void st_release(int* p, int v) {
  asm volatile("st.release.gpu.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ int ld_status(const DispatchParams& p) {
  return *reinterpret_cast<volatile int*>(p.status);
}

// Per-warp context: lane 0 owns the event log.
struct Warp {
  const DispatchParams& p;
  int lane, warp, channel;
  unsigned char role;
  unsigned short sm;
  int n_events;

  __device__ void record(unsigned char kind, unsigned long long t0, unsigned long long t1,
                         int chunk, int node, int gpu, unsigned long long bytes) {
    if (lane != 0) return;
    if (kind != kBusy && t1 - t0 < p.min_wait_ns) return;  // like the fixture: short waits dropped
    if (n_events < p.max_events) {
      WarpEvent e;
      e.t0_ns = t0; e.t1_ns = t1; e.bytes = bytes; e.chunk = chunk;
      e.node = (short)node; e.gpu = (short)gpu; e.smid = sm; e.role = role; e.kind = kind;
      e.warp = (unsigned char)warp; e.channel = (unsigned char)channel; e.pad[0] = e.pad[1] = 0;
      p.events[((size_t)channel * (p.NS + 1 + p.NF + p.NR) + warp) * p.max_events + n_events] = e;
    }
    ++n_events;
  }

  __device__ void fail(int code, int chunk) {
    if (lane == 0 && atomicCAS(p.status, kOk, code) == kOk) {
      p.status[1] = channel; p.status[2] = warp; p.status[3] = chunk;
    }
  }

  // Spin until *flag >= target (acquire). Records the wait; false on timeout / abort.
  __device__ bool wait_geq(const int* flag, int target, unsigned char kind, int chunk, int node,
                           int gpu) {
    int ok = 1;
    if (lane == 0) {
      const unsigned long long t0 = gtime();
      const unsigned long long deadline = t0 + p.timeout_ns;
      unsigned long long now = t0;
      for (unsigned iter = 0; ld_acquire(flag) < target; ++iter) {
        if (ld_status(p) != kOk) { ok = 0; break; }
        now = gtime();
        if (now > deadline || iter == 0xffffffffu) { fail(kErrTimeout, chunk); ok = 0; break; }
      }
      now = gtime();
      record(kind, t0, now, chunk, node, gpu, 0);
    }
    ok = __shfl_sync(kFull, ok, 0);
    __syncwarp();
    return ok != 0;
  }

  // Reserve `bytes` on link `l` (lane 0): the reservation starts when the link is free
  // and lasts bytes / rate. Returns its end time (0 = no limit).
  __device__ unsigned long long reserve_link(int l, float bytes_per_ns, unsigned long long bytes) {
    if (lane != 0 || bytes_per_ns <= 0.f || bytes == 0) return 0;
    const unsigned long long dur = (unsigned long long)ceilf((float)bytes / bytes_per_ns);
    unsigned long long* slot = p.link_free + l;
    const unsigned long long now = gtime();
    unsigned long long seen = *reinterpret_cast<volatile unsigned long long*>(slot);
    for (int tries = 0; tries < (1 << 20); ++tries) {
      const unsigned long long start = seen > now ? seen : now;
      const unsigned long long prev = atomicCAS(slot, seen, start + dur);
      if (prev == seen) return start + dur;
      seen = prev;
    }
    return now + dur;  // heavy contention: still charge the transfer time
  }

  // Spin until the reservation ends (the copy itself ran meanwhile); false on abort.
  __device__ bool hold_until(unsigned long long end, int chunk) {
    int ok = 1;
    if (lane == 0 && end != 0) {
      if (end > gtime() + p.timeout_ns) { fail(kErrTimeout, chunk); ok = 0; }
      while (ok && gtime() < end) {
        if (ld_status(p) != kOk) ok = 0;
      }
    }
    ok = __shfl_sync(kFull, ok, 0);
    return ok != 0;
  }

  // Publish: make this warp's copies visible, then release-store the counter.
  __device__ void publish(int* flag, int value) {
    __threadfence();
    __syncwarp();
    if (lane == 0) st_release(flag, value);
    __syncwarp();
  }
};

// Copy one S-byte token with the whole warp; L2-only loads/stores because ring slots are
// rewritten while other warps of the same SM read them.
__device__ __forceinline__ void copy_token(uint8_t* dst, const uint8_t* src, int S, int lane) {
  const int n16 = S >> 4;
  const int4* s = reinterpret_cast<const int4*>(src);
  int4* d = reinterpret_cast<int4*>(dst);
  for (int i = lane; i < n16; i += 32) __stcg(d + i, __ldcg(s + i));
}

__device__ __forceinline__ int tokens_in_channel(const DispatchParams& p, int c, int* begin) {
  const long long b = (long long)c * p.T / p.C, e = (long long)(c + 1) * p.T / p.C;
  *begin = (int)b;
  return (int)(e - b);
}

__device__ void run_sender(Warp& w, int sender) {
  const DispatchParams& p = w.p;
  const int c = w.channel;
  int begin;
  const int n_tok = tokens_in_channel(p, c, &begin);
  const int n_chunks = (n_tok + p.K - 1) / p.K;
  const unsigned long long node_bits = (p.G >= 64) ? ~0ull : ((1ull << p.G) - 1ull);
  for (int k = sender; k < n_chunks; k += p.NS) {
    const int slot = k % p.R;
    const int t_lo = begin + k * p.K;
    const int t_hi = min(t_lo + p.K, begin + n_tok);
    for (int n = 0; n < p.N; ++n) {
      const int cn = c * p.N + n;
      if (!w.wait_geq(p.rdma_head + cn, k - p.R + 1, kWaitRdmaSpace, k, n, -1)) return;
      const unsigned long long t0 = gtime();
      const size_t ring_slot = (size_t)cn * p.R + slot;
      // Pass 1: how many tokens of this chunk go to node n (sizes the link reservation).
      int total = 0;
      for (int base = t_lo; base < t_hi; base += 32) {
        const int t = base + w.lane;
        total += __popc(__ballot_sync(kFull, t < t_hi && ((p.mask[t] >> (n * p.G)) & node_bits)));
      }
      const unsigned long long bytes = (unsigned long long)total * p.S;
      const unsigned long long until = n != 0 ? w.reserve_link(0, p.ib_bytes_per_ns, bytes) : 0;
      // Pass 2: copy them into the slot, in token order.
      int cnt = 0;
      for (int base = t_lo; base < t_hi; base += 32) {
        const int t = base + w.lane;
        const bool mine = t < t_hi && ((p.mask[t] >> (n * p.G)) & node_bits) != 0;
        const unsigned ballot = __ballot_sync(kFull, mine);
        if (mine) p.rdma_tok[ring_slot * p.K + cnt + __popc(ballot & ((1u << w.lane) - 1u))] = t;
        for (unsigned b = ballot; b; b &= b - 1) {
          const int i = __ffs(b) - 1, q = cnt + __popc(ballot & ((1u << i) - 1u));
          copy_token(p.rdma_ring + (ring_slot * p.K + q) * p.S, p.x + (size_t)(base + i) * p.S,
                     p.S, w.lane);
        }
        cnt += __popc(ballot);
      }
      if (!w.hold_until(until, k)) return;
      if (w.lane == 0) p.rdma_count[ring_slot] = cnt;
      w.publish(p.rdma_done + ring_slot, k + 1);
      w.record(kBusy, t0, gtime(), k, n, -1, n != 0 ? bytes : 0);
    }
  }
}

__device__ void run_coordinator(Warp& w) {
  const DispatchParams& p = w.p;
  const int c = w.channel;
  int begin;
  const int n_chunks = (tokens_in_channel(p, c, &begin) + p.K - 1) / p.K;
  for (int k = 0; k < n_chunks; ++k) {
    for (int n = 0; n < p.N; ++n) {
      const int cn = c * p.N + n;
      if (!w.wait_geq(p.rdma_done + (size_t)cn * p.R + k % p.R, k + 1, kWaitSenders, k, n, -1))
        return;
      const unsigned long long t0 = gtime();
      w.publish(p.rdma_tail + cn, k + 1);
      w.record(kBusy, t0, gtime(), k, n, -1, 0);
    }
  }
}

__device__ void run_forwarder(Warp& w, int fwd) {
  const DispatchParams& p = w.p;
  const int c = w.channel;
  int begin;
  const int n_chunks = (tokens_in_channel(p, c, &begin) + p.K - 1) / p.K;
  for (int k = 0; k < n_chunks; ++k) {
    const int slot = k % p.R;
    for (int n = fwd; n < p.N; n += p.NF) {
      const int cn = c * p.N + n;
      if (!w.wait_geq(p.rdma_tail + cn, k + 1, kWaitRdmaData, k, n, -1)) return;
      const size_t rslot = (size_t)cn * p.R + slot;
      const int cnt = __ldcg(p.rdma_count + rslot);
      for (int g = 0; g < p.G; ++g) {
        const int cng = cn * p.G + g;
        if (!w.wait_geq(p.nvl_head + cng, k - p.R + 1, kWaitNvlSpace, k, n, g)) return;
        const unsigned long long t0 = gtime();
        const size_t nslot = (size_t)cng * p.R + slot;
        const unsigned long long gbit = 1ull << (n * p.G + g);
        int total = 0;  // pass 1: tokens of the slot that GPU g needs
        for (int base = 0; base < cnt; base += 32) {
          const int i = base + w.lane;
          total += __popc(__ballot_sync(
              kFull, i < cnt && (p.mask[__ldcg(p.rdma_tok + rslot * p.K + i)] & gbit)));
        }
        const unsigned long long bytes = (unsigned long long)total * p.S;
        // g == 0: the forwarder's own GPU (source local index 0), a local copy
        const unsigned long long until =
            g == 0 ? 0ull : w.reserve_link(1 + n, p.nvl_bytes_per_ns, bytes);
        int m = 0;  // pass 2: copy them into the NVL ring slot
        for (int base = 0; base < cnt; base += 32) {
          const int i = base + w.lane;
          const int t = i < cnt ? __ldcg(p.rdma_tok + rslot * p.K + i) : 0;
          const bool mine = i < cnt && (p.mask[t] & gbit);
          const unsigned ballot = __ballot_sync(kFull, mine);
          if (mine) p.nvl_tok[nslot * p.K + m + __popc(ballot & ((1u << w.lane) - 1u))] = t;
          for (unsigned b = ballot; b; b &= b - 1) {
            const int j = __ffs(b) - 1, q = m + __popc(ballot & ((1u << j) - 1u));
            copy_token(p.nvl_ring + (nslot * p.K + q) * p.S,
                       p.rdma_ring + (rslot * p.K + base + j) * p.S, p.S, w.lane);
          }
          m += __popc(ballot);
        }
        if (!w.hold_until(until, k)) return;
        if (w.lane == 0) p.nvl_count[nslot] = m;
        w.publish(p.nvl_tail + cng, k + 1);
        w.record(kBusy, t0, gtime(), k, n, g, bytes);
      }
      w.publish(p.rdma_head + cn, k + 1);  // slot free for the senders again
    }
  }
}

__device__ void run_receiver(Warp& w, int recv) {
  const DispatchParams& p = w.p;
  const int c = w.channel;
  int begin;
  const int n_chunks = (tokens_in_channel(p, c, &begin) + p.K - 1) / p.K;
  int written[64];  // rows written so far per destination (n*G+g <= 64 by construction)
  for (int d = 0; d < 64; ++d) written[d] = 0;
  for (int k = 0; k < n_chunks; ++k) {
    const int slot = k % p.R;
    for (int n = 0; n < p.N; ++n) {
      for (int g = recv; g < p.G; g += p.NR) {
        const int cng = (c * p.N + n) * p.G + g, d = n * p.G + g;
        if (!w.wait_geq(p.nvl_tail + cng, k + 1, kWaitNvlData, k, n, g)) return;
        const unsigned long long t0 = gtime();
        const size_t nslot = (size_t)cng * p.R + slot;
        const int m = __ldcg(p.nvl_count + nslot);
        const int row0 = p.out_offset[c * p.N * p.G + d] + written[d];
        for (int i = 0; i < m; ++i) {
          copy_token(p.out + ((size_t)d * p.out_rows + row0 + i) * p.S,
                     p.nvl_ring + (nslot * p.K + i) * p.S, p.S, w.lane);
        }
        for (int i = w.lane; i < m; i += 32)
          p.out_tok[(size_t)d * p.out_rows + row0 + i] = __ldcg(p.nvl_tok + nslot * p.K + i);
        written[d] += m;
        w.publish(p.nvl_head + cng, k + 1);
        w.record(kBusy, t0, gtime(), k, n, g, (unsigned long long)m * p.S);
      }
    }
  }
}

// Up to 32 warps per block: cap registers so a full 1024-thread block still fits an SM.
__global__ void __launch_bounds__(1024, 1) warp_dispatch_kernel(const DispatchParams p) {
  const int warp = threadIdx.x >> 5;
  Warp w{p, (int)(threadIdx.x & 31), warp, (int)blockIdx.x, 0, (unsigned short)smid(), 0};
  if (warp < p.NS) {
    w.role = 0;
    run_sender(w, warp);
  } else if (warp == p.NS) {
    w.role = 1;
    run_coordinator(w);
  } else if (warp < p.NS + 1 + p.NF) {
    w.role = 2;
    run_forwarder(w, warp - p.NS - 1);
  } else {
    w.role = 3;
    run_receiver(w, warp - p.NS - 1 - p.NF);
  }
  if (w.lane == 0) p.event_count[blockIdx.x * (p.NS + 1 + p.NF + p.NR) + warp] = w.n_events;
}

}  // namespace

// Returns a cudaError_t (0 = launched) or -kErrBadConfig for parameters the kernel cannot
// run with. The caller synchronizes and reads p.status.
extern "C" int launch_warp_dispatch(const DispatchParams* params, cudaStream_t stream) {
  const DispatchParams& p = *params;
  const int warps = p.NS + 1 + p.NF + p.NR;
  if (p.NS < 1 || p.NF < 1 || p.NR < 1 || warps > 32 || p.C < 1 || p.C > 255 || p.N < 1 ||
      p.G < 1 || p.N * p.G > 64 || p.K < 1 || p.R < 2 || p.S < 16 || (p.S & 15) != 0 ||
      p.T < 0 || p.max_events < 0)
    return -kErrBadConfig;
  warp_dispatch_kernel<<<p.C, 32 * warps, 0, stream>>>(p);
  return (int)cudaGetLastError();
}

extern "C" int warp_dispatch_params_size() { return (int)sizeof(DispatchParams); }
extern "C" int warp_event_size() { return (int)sizeof(WarpEvent); }
