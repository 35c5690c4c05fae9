// Aligned attention on CUDA: the fallback where Triton is missing. Online softmax (flash-style),
// never an N x M buffer: each thread owns one query row (forward, dq) or one key row (dk, dv),
// keeps its q/k row and its accumulators in registers (see Registers), and the block streams tiles of the other
// side through shared memory. The value columns are tiled kDvTile at a time (grid z for the
// forward and dv; a loop for dq and dk).
//   out[b, n] = sum_m softmax_m(scale * q[b, n] . k[b / rk, m]) v[b / rv, m]
// Backward recomputes the probabilities from the saved row log-sum-exp: dq over query rows (which
// also computes delta = rowsum(dout * out) for dk), dk over the key rows of each key batch looping
// over the rk query batches sharing it, dv likewise over each value batch's rv query batches (no
// atomics: each gradient row has one owner thread).
//
// Storage types: float32, float64, float16 and bfloat16 are read and written as they are (no
// converted copies); arithmetic in float32 (float64 for float64), `acc_t`.
// Memory access: every tile staged in shared memory is read with consecutive threads on
// consecutive addresses, whichever of its two strides is 1 (`stage`): NCHW features viewed as
// (B, N, C) have stride 1 on N, a contiguous (B, N, C) tensor on C. The per-thread rows (q, dout,
// out in the query kernels; k, v in the key kernels) are read at the row stride, coalesced for
// NCHW views, else one row per thread through L1.
// Registers (nvcc -arch=sm_90a -Xptxas -v, `python -m hafsvg_kernels.sm90_report`): no kernel
// spills, in any of the four dtypes, at DMAX 16 or 64 (before: dq and dk spilled 0.3-8 KB per
// thread in float32, 18 KB in float64). dq and dk compute dp = dout . v first and then, per key
// (query) row of the tile, the score and the gradient update from one read of that row; the dp
// loop reads one dout / v value per channel as it uses it (no kDvTile array) and is not unrolled;
// float64 at DMAX 64 keeps the thread's own q / k row in shared memory (`OwnRow`).
// Header-only and free of ATen, so that the tests can also run these kernels on the CPU, one
// std::thread per CUDA thread (tests/cuda_emulation/attention_emulated.cpp); attention_cuda.cu
// launches them on a GPU.
#pragma once

#include <cmath>
#include <cstdint>

namespace hafsvg::cuda::attention {

constexpr int kRows = 64;    // threads per block, one row each
constexpr int kTile = 16;    // rows of the other side per shared-memory tile
constexpr int kDvTile = 32;  // value columns per thread

// Arithmetic type: float, double for double (float16 and bfloat16 are computed in float).
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

struct Strides {
  int64_t s0, s1, s2;
};

struct Dims {
  int64_t N, M, D, Dv, rk, rv;
};

// The thread's own query / key row (read-only after it is loaded): in registers, or, for 8-byte
// types at DMAX 64 (`kOwnRowShared`), in the thread's row of a shared array: there two 64-wide rows
// of doubles (the own row and an accumulator) alone take 256 registers, and nvcc -Xptxas -v gave
// the float64 kernels 7.7-8 KB of spills per thread with both in registers.
template <typename A, int W, bool SHARED, bool VOLATILE = false>
struct OwnRow {
  A v[W];
  __device__ __forceinline__ explicit OwnRow(A*) {}
  __device__ __forceinline__ A& operator[](int i) { return v[i]; }
};
template <typename A, int W>
struct OwnRow<A, W, true, false> {
  A* v;
  __device__ __forceinline__ explicit OwnRow(A* row) : v(row) {}
  __device__ __forceinline__ A& operator[](int i) { return v[i]; }
};
template <typename A, int W>
struct OwnRow<A, W, true, true> {  // read from shared memory at each use, never kept in registers
  volatile A* v;
  __device__ __forceinline__ explicit OwnRow(A* row) : v(row) {}
  __device__ __forceinline__ volatile A& operator[](int i) { return v[i]; }
};

template <typename A, int DMAX>
constexpr bool kOwnRowShared = sizeof(A) == 8 && DMAX > 16;

// A shared-memory value read again (volatile) where keeping it in a register from an earlier read
// would not fit: the float64 dq / dk kernels at DMAX 64 (a 64-wide row of doubles kept from the
// score's dot for the gradient update, beside the 64-wide accumulator, spilled 8 KB per thread).
template <bool AGAIN, typename A>
__device__ __forceinline__ A reread(const A& x) {
  if constexpr (AGAIN) {
    return *static_cast<const volatile A*>(&x);
  } else {
    return x;
  }
}

// Copies rows [r0, r0 + ROWS) x columns [c0, c0 + COLS) of a strided matrix (row stride rs,
// column stride cs) into shared memory, zero past row nr or column nc. Consecutive threads take
// consecutive addresses: along the rows where rs < cs (NCHW features: stride 1 on N), else along
// the columns. The one column of padding spreads the row-wise stores over the banks.
template <int ROWS, int COLS, typename T, typename A>
__device__ __forceinline__ void stage(A (*dst)[COLS + 1], const T* __restrict__ src, int64_t rs, int64_t cs,
                                      int64_t r0, int64_t nr, int64_t c0, int64_t nc) {
  const bool rows_fast = rs < cs;
  for (int e = threadIdx.x; e < ROWS * COLS; e += blockDim.x) {
    const int i = rows_fast ? e % ROWS : e / COLS;
    const int c = rows_fast ? e / ROWS : e % COLS;
    const int64_t r = r0 + i, col = c0 + c;
    dst[i][c] = (r < nr && col < nc) ? static_cast<A>(src[r * rs + col * cs]) : A(0);
  }
}

// own[d] = scale * row[d * stride] for d < D; 0 past D and for an inactive thread (padding).
template <int DMAX, typename T, typename A, typename Own>
__device__ __forceinline__ void load_own_row(Own& own, const T* row, int64_t stride, bool active, int64_t D,
                                             A scale) {
#pragma unroll
  for (int d = 0; d < DMAX; ++d) own[d] = (active && d < D) ? scale * static_cast<A>(row[d * stride]) : A(0);
}

// dp[r] = own . other[r0 + r] over the Dv value channels, for the kTile rows of a tile of `other`
// (row stride rs, channel stride cs; zero rows past nr), staged kDvTile channels at a time through
// `buf`; `own` is the thread's row (channel stride own_cs), read one value per channel as it is
// used. Its barriers also publish what the block staged before the call (Dv >= 1: at least one).
template <typename T, typename A>
__device__ __forceinline__ void dot_tile_rows(A (&dp)[kTile], A (*buf)[kDvTile + 1], const T* __restrict__ other,
                                              int64_t rs, int64_t cs, int64_t r0, int64_t nr,
                                              const T* __restrict__ own, int64_t own_cs, bool active, int64_t Dv) {
#pragma unroll
  for (int r = 0; r < kTile; ++r) dp[r] = A(0);
  for (int64_t c0 = 0; c0 < Dv; c0 += kDvTile) {
    stage<kTile, kDvTile>(buf, other, rs, cs, r0, nr, c0, Dv);
    __syncthreads();
#pragma unroll 1  // (unrolled: 28-48 B of spills at d_qk 64, float)
    for (int c = 0; c < kDvTile; ++c) {
      const A o = (active && c0 + c < Dv) ? static_cast<A>(own[(c0 + c) * own_cs]) : A(0);
#pragma unroll
      for (int r = 0; r < kTile; ++r) dp[r] += o * buf[r][c];
    }
    __syncthreads();
  }
}

// The gradient of the thread's own row from the kTile staged rows of the other side: per row r,
// the score own . rows[r], ds = exp(score - lse[r * step]) (dp[r] - delta[r * step]) (0 for r >=
// valid or an inactive thread), acc += ds * rows[r]; each staged row read once for both (reading
// the tile in two passes had ptxas keep it all in registers: 255 registers and spills in float32).
// step 0: one lse / delta for all rows (the thread's own query row, dq); 1: one per row (dk).
template <bool AGAIN, int DMAX, typename A, typename Own>
__device__ __forceinline__ void accumulate_ds_rows(A (&acc)[DMAX], Own& own, A (*rows)[DMAX + 1],
                                                   const A (&dp)[kTile], const A* lse, const A* delta, int step,
                                                   bool active, int64_t valid) {
#pragma unroll
  for (int r = 0; r < kTile; ++r) {
    A dot = A(0);
#pragma unroll
    for (int d = 0; d < DMAX; ++d) dot += own[d] * rows[r][d];
    const A ds = (active && r < valid) ? dexp(dot - lse[r * step]) * (dp[r] - delta[r * step]) : A(0);
#pragma unroll
    for (int d = 0; d < DMAX; ++d) acc[d] += ds * reread<AGAIN>(rows[r][d]);
  }
}

template <typename T, int DMAX>
__global__ void __launch_bounds__(kRows)
    fwd_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ v,
               Strides sv, T* __restrict__ out, Strides so, acc_t<T>* __restrict__ lse, Dims dm, acc_t<T> scale) {
  using A = acc_t<T>;
  __shared__ A Ks[kTile][DMAX + 1];
  __shared__ A Vs[kTile][kDvTile + 1];
  const int64_t b = blockIdx.x;
  const int64_t n = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const int64_t c0 = int64_t(blockIdx.z) * kDvTile;
  const bool active = n < dm.N;
  const T* kb = k + (b / dm.rk) * sk.s0;
  const T* vb = v + (b / dm.rv) * sv.s0;
  constexpr bool kShared = kOwnRowShared<A, DMAX>;
  __shared__ A own_rows[kShared ? kRows : 1][kShared ? DMAX + 1 : 1];
  OwnRow<A, DMAX, kShared> qr(&own_rows[kShared ? threadIdx.x : 0][0]);
  load_own_row<DMAX>(qr, q + b * sq.s0 + n * sq.s1, sq.s2, active, dm.D, scale);
  A acc[kDvTile];
#pragma unroll
  for (int c = 0; c < kDvTile; ++c) acc[c] = A(0);
  A m = -INFINITY, l = A(0);
  for (int64_t m0 = 0; m0 < dm.M; m0 += kTile) {
    stage<kTile, DMAX>(Ks, kb, sk.s1, sk.s2, m0, dm.M, 0, dm.D);
    stage<kTile, kDvTile>(Vs, vb, sv.s1, sv.s2, m0, dm.M, c0, dm.Dv);
    __syncthreads();
    const int64_t nk = dm.M - m0 < kTile ? dm.M - m0 : kTile;
    A s[kTile];
    A mx = m;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      A dot = A(0);
#pragma unroll
      for (int d = 0; d < DMAX; ++d) dot += qr[d] * Ks[j][d];
      s[j] = dot;
      if (j < nk && dot > mx) mx = dot;
    }
    const A alpha = dexp(m - mx);  // 0 on the first tile (m = -inf, mx finite)
    l *= alpha;
#pragma unroll
    for (int c = 0; c < kDvTile; ++c) acc[c] *= alpha;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const A p = j < nk ? dexp(s[j] - mx) : A(0);
      l += p;
#pragma unroll
      for (int c = 0; c < kDvTile; ++c) acc[c] += p * Vs[j][c];
    }
    m = mx;
    __syncthreads();
  }
  if (active) {
#pragma unroll
    for (int c = 0; c < kDvTile; ++c)
      if (c0 + c < dm.Dv) out[b * so.s0 + n * so.s1 + (c0 + c) * so.s2] = static_cast<T>(acc[c] / l);
    if (blockIdx.z == 0) lse[b * dm.N + n] = m + dlog(l);
  }
}

// dq[b, n] = scale * sum_m p (dp - delta) k[m], dp = dout[b, n] . v[m]; one thread per query row.
// Computes delta[b, n] = dout[b, n] . out[b, n] first and stores it for dk_kernel (launched after).
template <typename T, int DMAX>
__global__ void __launch_bounds__(kRows)
    dq_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ v,
              Strides sv, const T* __restrict__ dout, Strides sd, const T* __restrict__ out, Strides so,
              const acc_t<T>* __restrict__ lse, acc_t<T>* __restrict__ delta, T* __restrict__ dq, Dims dm,
              acc_t<T> scale) {
  using A = acc_t<T>;
  __shared__ A Ks[kTile][DMAX + 1];
  __shared__ A Vs[kTile][kDvTile + 1];
  const int64_t b = blockIdx.x;
  const int64_t n = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const bool active = n < dm.N;
  const T* kb = k + (b / dm.rk) * sk.s0;
  const T* vb = v + (b / dm.rv) * sv.s0;
  const T* dorow = dout + b * sd.s0 + n * sd.s1;
  A Dl = A(0);
  if (active) {
    const T* orow = out + b * so.s0 + n * so.s1;
    for (int64_t c = 0; c < dm.Dv; ++c) Dl += static_cast<A>(dorow[c * sd.s2]) * static_cast<A>(orow[c * so.s2]);
    delta[b * dm.N + n] = Dl;
  }
  constexpr bool kShared = kOwnRowShared<A, DMAX>;
  __shared__ A own_rows[kShared ? kRows : 1][kShared ? DMAX + 1 : 1];
  OwnRow<A, DMAX, kShared, true> qr(&own_rows[kShared ? threadIdx.x : 0][0]);
  load_own_row<DMAX>(qr, q + b * sq.s0 + n * sq.s1, sq.s2, active, dm.D, scale);
  A dqa[DMAX] = {};
  const A L = active ? lse[b * dm.N + n] : A(0);
  for (int64_t m0 = 0; m0 < dm.M; m0 += kTile) {
    stage<kTile, DMAX>(Ks, kb, sk.s1, sk.s2, m0, dm.M, 0, dm.D);
    const int64_t nk = dm.M - m0 < kTile ? dm.M - m0 : kTile;
    // dp first (its barriers also publish Ks), then the keys' scores and dq's update
    A dp[kTile];
    dot_tile_rows(dp, Vs, vb, sv.s1, sv.s2, m0, dm.M, dorow, sd.s2, active, dm.Dv);
    accumulate_ds_rows<kShared>(dqa, qr, Ks, dp, &L, &Dl, 0, active, nk);
    __syncthreads();
  }
  if (active) {
#pragma unroll
    for (int d = 0; d < DMAX; ++d)
      if (d < dm.D) dq[(b * dm.N + n) * dm.D + d] = static_cast<T>(scale * dqa[d]);
  }
}

// Query rows [n0, n0 + kTile) of batch b (zero past N), and their lse / delta, into shared memory.
template <typename T, typename A, int DMAX>
__device__ __forceinline__ void load_query_tile(A (*Qs)[DMAX + 1], A* Ls, A* Dls, const T* q, Strides sq,
                                                const A* lse, const A* delta, int64_t b, int64_t n0, const Dims& dm) {
  stage<kTile, DMAX>(Qs, q + b * sq.s0, sq.s1, sq.s2, n0, dm.N, 0, dm.D);
  for (int i = threadIdx.x; i < kTile; i += kRows) {
    const bool in = n0 + i < dm.N;
    Ls[i] = in ? lse[b * dm.N + n0 + i] : A(0);
    if (Dls) Dls[i] = in ? delta[b * dm.N + n0 + i] : A(0);
  }
}

// dk[g, m] = scale * sum over the query rows of batches [g rk, (g + 1) rk) of ds q; one thread per key row.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kRows)
    dk_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ v,
              Strides sv, const T* __restrict__ dout, Strides sd, const acc_t<T>* __restrict__ lse,
              const acc_t<T>* __restrict__ delta, T* __restrict__ dk, Dims dm, acc_t<T> scale) {
  using A = acc_t<T>;
  __shared__ A Qs[kTile][DMAX + 1];
  __shared__ A Ls[kTile], Dls[kTile];
  __shared__ A Os[kTile][kDvTile + 1];
  const int64_t g = blockIdx.x;
  const int64_t j = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const bool active = j < dm.M;
  constexpr bool kShared = kOwnRowShared<A, DMAX>;
  __shared__ A own_rows[kShared ? kRows : 1][kShared ? DMAX + 1 : 1];
  OwnRow<A, DMAX, kShared, true> kr(&own_rows[kShared ? threadIdx.x : 0][0]);
  load_own_row<DMAX>(kr, k + g * sk.s0 + j * sk.s1, sk.s2, active, dm.D, scale);
  A dka[DMAX] = {};
  for (int64_t b = g * dm.rk; b < (g + 1) * dm.rk; ++b) {
    const T* vrow = v + (b / dm.rv) * sv.s0 + j * sv.s1;
    for (int64_t n0 = 0; n0 < dm.N; n0 += kTile) {
      load_query_tile<T, A, DMAX>(Qs, Ls, Dls, q, sq, lse, delta, b, n0, dm);
      const int64_t nq = dm.N - n0 < kTile ? dm.N - n0 : kTile;
      // dp first (its barriers also publish Qs, Ls, Dls), then the query rows' scores and dk's update
      A dp[kTile];
      dot_tile_rows(dp, Os, dout + b * sd.s0, sd.s1, sd.s2, n0, dm.N, vrow, sv.s2, active, dm.Dv);
      accumulate_ds_rows<kShared>(dka, kr, Qs, dp, Ls, Dls, 1, active, nq);
      __syncthreads();
    }
  }
  if (active) {
#pragma unroll
    for (int d = 0; d < DMAX; ++d)
      if (d < dm.D) dk[(g * dm.M + j) * dm.D + d] = static_cast<T>(scale * dka[d]);
  }
}

// dv[g, m, c0:c0+kDvTile] = sum over the query rows of batches [g rv, (g + 1) rv) of p dout.
template <typename T, int DMAX>
__global__ void __launch_bounds__(kRows)
    dv_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ dout,
              Strides sd, const acc_t<T>* __restrict__ lse, T* __restrict__ dv, Dims dm, acc_t<T> scale) {
  using A = acc_t<T>;
  __shared__ A Qs[kTile][DMAX + 1];
  __shared__ A Ls[kTile];
  __shared__ A Os[kTile][kDvTile + 1];
  const int64_t g = blockIdx.x;
  const int64_t j = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const int64_t c0 = int64_t(blockIdx.z) * kDvTile;
  const bool active = j < dm.M;
  constexpr bool kShared = kOwnRowShared<A, DMAX>;
  __shared__ A own_rows[kShared ? kRows : 1][kShared ? DMAX + 1 : 1];
  OwnRow<A, DMAX, kShared> kr(&own_rows[kShared ? threadIdx.x : 0][0]);
  A dva[kDvTile];
#pragma unroll
  for (int c = 0; c < kDvTile; ++c) dva[c] = A(0);
  for (int64_t b = g * dm.rv; b < (g + 1) * dm.rv; ++b) {
    load_own_row<DMAX>(kr, k + (b / dm.rk) * sk.s0 + j * sk.s1, sk.s2, active, dm.D, scale);
    for (int64_t n0 = 0; n0 < dm.N; n0 += kTile) {
      load_query_tile<T, A, DMAX>(Qs, Ls, nullptr, q, sq, lse, nullptr, b, n0, dm);
      stage<kTile, kDvTile>(Os, dout + b * sd.s0, sd.s1, sd.s2, n0, dm.N, c0, dm.Dv);
      __syncthreads();
      const int64_t nq = dm.N - n0 < kTile ? dm.N - n0 : kTile;
#pragma unroll 4  // (fully unrolled: 156-188 B of spills, float64 at DMAX 64)
      for (int i = 0; i < kTile; ++i) {
        A dot = A(0);
#pragma unroll
        for (int d = 0; d < DMAX; ++d) dot += kr[d] * Qs[i][d];
        const A p = (active && i < nq) ? dexp(dot - Ls[i]) : A(0);
#pragma unroll
        for (int c = 0; c < kDvTile; ++c) dva[c] += p * Os[i][c];
      }
      __syncthreads();
    }
  }
  if (active) {
#pragma unroll
    for (int c = 0; c < kDvTile; ++c)
      if (c0 + c < dm.Dv) dv[(g * dm.M + j) * dm.Dv + c0 + c] = static_cast<T>(dva[c]);
  }
}

}  // namespace hafsvg::cuda::attention
