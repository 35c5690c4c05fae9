// Aligned attention on CUDA: the fallback where Triton is missing. Online softmax (flash-style),
// never an N x M buffer: each thread owns one query row (forward, dq) or one key row (dk, dv),
// keeps its q/k row and its accumulators in registers, and the block streams tiles of the other
// side through shared memory. The value columns are tiled kDvTile at a time (grid z for the
// forward and dv; a loop for dq and dk). Accumulation in float32 (float64 for float64 inputs).
//   out[b, n] = sum_m softmax_m(scale * q[b, n] . k[b / rk, m]) v[b / rv, m]
// Backward recomputes the probabilities from the saved row log-sum-exp: dq over query rows, dk over
// the key rows of each key batch looping over the rk query batches sharing it, dv likewise over
// each value batch's rv query batches (no atomics: each gradient row has one owner thread).
// Compiled (nvcc) in this project's CI; not run there (no GPU).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

#include "kernels_cuda.h"

namespace hafsvg::cuda {
namespace {

constexpr int kRows = 64;    // threads per block, one row each
constexpr int kTile = 16;    // rows of the other side per shared-memory tile
constexpr int kDvTile = 32;  // value columns per thread

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

struct Strides {
  int64_t s0, s1, s2;
};

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

struct Dims {
  int64_t N, M, D, Dv, rk, rv;
};

template <typename T, typename A, int DMAX>
__global__ void __launch_bounds__(kRows)
    fwd_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ v,
               Strides sv, T* __restrict__ out, Strides so, A* __restrict__ lse, Dims dm, A scale) {
  __shared__ A Ks[kTile][DMAX];
  __shared__ A Vs[kTile][kDvTile];
  const int64_t b = blockIdx.x;
  const int64_t n = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const int64_t c0 = int64_t(blockIdx.z) * kDvTile;
  const bool active = n < dm.N;
  const T* kb = k + (b / dm.rk) * sk.s0;
  const T* vb = v + (b / dm.rv) * sv.s0;
  A qr[DMAX];
#pragma unroll
  for (int d = 0; d < DMAX; ++d)
    qr[d] = (active && d < dm.D) ? scale * static_cast<A>(q[b * sq.s0 + n * sq.s1 + d * sq.s2]) : A(0);
  A acc[kDvTile];
#pragma unroll
  for (int c = 0; c < kDvTile; ++c) acc[c] = A(0);
  A m = -INFINITY, l = A(0);
  for (int64_t m0 = 0; m0 < dm.M; m0 += kTile) {
    for (int e = threadIdx.x; e < kTile * DMAX; e += kRows) {
      const int j = e / DMAX, d = e % DMAX;
      Ks[j][d] = (m0 + j < dm.M && d < dm.D) ? static_cast<A>(kb[(m0 + j) * sk.s1 + d * sk.s2]) : A(0);
    }
    for (int e = threadIdx.x; e < kTile * kDvTile; e += kRows) {
      const int j = e / kDvTile, c = e % kDvTile;
      Vs[j][c] = (m0 + j < dm.M && c0 + c < dm.Dv) ? static_cast<A>(vb[(m0 + j) * sv.s1 + (c0 + c) * sv.s2]) : A(0);
    }
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
template <typename T, typename A, int DMAX>
__global__ void __launch_bounds__(kRows)
    dq_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ v,
              Strides sv, const T* __restrict__ dout, Strides sd, const A* __restrict__ lse,
              const A* __restrict__ delta, T* __restrict__ dq, Dims dm, A scale) {
  __shared__ A Ks[kTile][DMAX];
  __shared__ A Vs[kTile][kDvTile];
  const int64_t b = blockIdx.x;
  const int64_t n = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const bool active = n < dm.N;
  const T* kb = k + (b / dm.rk) * sk.s0;
  const T* vb = v + (b / dm.rv) * sv.s0;
  A qr[DMAX], dqa[DMAX];
#pragma unroll
  for (int d = 0; d < DMAX; ++d) {
    qr[d] = (active && d < dm.D) ? scale * static_cast<A>(q[b * sq.s0 + n * sq.s1 + d * sq.s2]) : A(0);
    dqa[d] = A(0);
  }
  const A L = active ? lse[b * dm.N + n] : A(0);
  const A Dl = active ? delta[b * dm.N + n] : A(0);
  for (int64_t m0 = 0; m0 < dm.M; m0 += kTile) {
    for (int e = threadIdx.x; e < kTile * DMAX; e += kRows) {
      const int j = e / DMAX, d = e % DMAX;
      Ks[j][d] = (m0 + j < dm.M && d < dm.D) ? static_cast<A>(kb[(m0 + j) * sk.s1 + d * sk.s2]) : A(0);
    }
    __syncthreads();
    const int64_t nk = dm.M - m0 < kTile ? dm.M - m0 : kTile;
    A p[kTile], dp[kTile];
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      A dot = A(0);
#pragma unroll
      for (int d = 0; d < DMAX; ++d) dot += qr[d] * Ks[j][d];
      p[j] = (active && j < nk) ? dexp(dot - L) : A(0);
      dp[j] = A(0);
    }
    for (int64_t c0 = 0; c0 < dm.Dv; c0 += kDvTile) {
      for (int e = threadIdx.x; e < kTile * kDvTile; e += kRows) {
        const int j = e / kDvTile, c = e % kDvTile;
        Vs[j][c] = (m0 + j < dm.M && c0 + c < dm.Dv) ? static_cast<A>(vb[(m0 + j) * sv.s1 + (c0 + c) * sv.s2]) : A(0);
      }
      __syncthreads();
      A dor[kDvTile];
#pragma unroll
      for (int c = 0; c < kDvTile; ++c)
        dor[c] = (active && c0 + c < dm.Dv) ? static_cast<A>(dout[b * sd.s0 + n * sd.s1 + (c0 + c) * sd.s2]) : A(0);
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
#pragma unroll
        for (int c = 0; c < kDvTile; ++c) dp[j] += dor[c] * Vs[j][c];
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const A ds = p[j] * (dp[j] - Dl);
#pragma unroll
      for (int d = 0; d < DMAX; ++d) dqa[d] += ds * Ks[j][d];
    }
    __syncthreads();
  }
  if (active) {
#pragma unroll
    for (int d = 0; d < DMAX; ++d)
      if (d < dm.D) dq[(b * dm.N + n) * dm.D + d] = static_cast<T>(scale * dqa[d]);
  }
}

// Loads query rows [n0, n0 + kTile) of batch b (zero past N) and their lse / delta into shared memory.
template <typename T, typename A, int DMAX>
__device__ __forceinline__ void load_query_tile(A (*Qs)[DMAX], A* Ls, A* Dls, const T* q, Strides sq, const A* lse,
                                                const A* delta, int64_t b, int64_t n0, const Dims& dm) {
  for (int e = threadIdx.x; e < kTile * DMAX; e += kRows) {
    const int i = e / DMAX, d = e % DMAX;
    Qs[i][d] = (n0 + i < dm.N && d < dm.D) ? static_cast<A>(q[b * sq.s0 + (n0 + i) * sq.s1 + d * sq.s2]) : A(0);
  }
  for (int i = threadIdx.x; i < kTile; i += kRows) {
    const bool in = n0 + i < dm.N;
    Ls[i] = in ? lse[b * dm.N + n0 + i] : A(0);
    if (Dls) Dls[i] = in ? delta[b * dm.N + n0 + i] : A(0);
  }
}

// dout rows [n0, n0 + kTile) of batch b, columns [c0, c0 + kDvTile), zero outside.
template <typename T, typename A>
__device__ __forceinline__ void load_dout_tile(A (*Os)[kDvTile], const T* dout, Strides sd, int64_t b, int64_t n0,
                                               int64_t c0, const Dims& dm) {
  for (int e = threadIdx.x; e < kTile * kDvTile; e += kRows) {
    const int i = e / kDvTile, c = e % kDvTile;
    Os[i][c] = (n0 + i < dm.N && c0 + c < dm.Dv) ? static_cast<A>(dout[b * sd.s0 + (n0 + i) * sd.s1 + (c0 + c) * sd.s2])
                                                 : A(0);
  }
}

// dk[g, m] = scale * sum over the query rows of batches [g rk, (g + 1) rk) of ds q; one thread per key row.
template <typename T, typename A, int DMAX>
__global__ void __launch_bounds__(kRows)
    dk_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ v,
              Strides sv, const T* __restrict__ dout, Strides sd, const A* __restrict__ lse,
              const A* __restrict__ delta, T* __restrict__ dk, Dims dm, A scale) {
  __shared__ A Qs[kTile][DMAX];
  __shared__ A Ls[kTile], Dls[kTile];
  __shared__ A Os[kTile][kDvTile];
  const int64_t g = blockIdx.x;
  const int64_t j = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const bool active = j < dm.M;
  A kr[DMAX], dka[DMAX];
#pragma unroll
  for (int d = 0; d < DMAX; ++d) {
    kr[d] = (active && d < dm.D) ? scale * static_cast<A>(k[g * sk.s0 + j * sk.s1 + d * sk.s2]) : A(0);
    dka[d] = A(0);
  }
  for (int64_t b = g * dm.rk; b < (g + 1) * dm.rk; ++b) {
    const T* vrow = v + (b / dm.rv) * sv.s0 + j * sv.s1;
    for (int64_t n0 = 0; n0 < dm.N; n0 += kTile) {
      load_query_tile<T, A, DMAX>(Qs, Ls, Dls, q, sq, lse, delta, b, n0, dm);
      __syncthreads();
      const int64_t nq = dm.N - n0 < kTile ? dm.N - n0 : kTile;
      A p[kTile], dp[kTile];
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
        A dot = A(0);
#pragma unroll
        for (int d = 0; d < DMAX; ++d) dot += kr[d] * Qs[i][d];
        p[i] = (active && i < nq) ? dexp(dot - Ls[i]) : A(0);
        dp[i] = A(0);
      }
      for (int64_t c0 = 0; c0 < dm.Dv; c0 += kDvTile) {
        load_dout_tile<T, A>(Os, dout, sd, b, n0, c0, dm);
        __syncthreads();
        A vr[kDvTile];
#pragma unroll
        for (int c = 0; c < kDvTile; ++c)
          vr[c] = (active && c0 + c < dm.Dv) ? static_cast<A>(vrow[(c0 + c) * sv.s2]) : A(0);
#pragma unroll
        for (int i = 0; i < kTile; ++i) {
#pragma unroll
          for (int c = 0; c < kDvTile; ++c) dp[i] += Os[i][c] * vr[c];
        }
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
        const A ds = p[i] * (dp[i] - Dls[i]);
#pragma unroll
        for (int d = 0; d < DMAX; ++d) dka[d] += ds * Qs[i][d];
      }
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
template <typename T, typename A, int DMAX>
__global__ void __launch_bounds__(kRows)
    dv_kernel(const T* __restrict__ q, Strides sq, const T* __restrict__ k, Strides sk, const T* __restrict__ dout,
              Strides sd, const A* __restrict__ lse, T* __restrict__ dv, Dims dm, A scale) {
  __shared__ A Qs[kTile][DMAX];
  __shared__ A Ls[kTile];
  __shared__ A Os[kTile][kDvTile];
  const int64_t g = blockIdx.x;
  const int64_t j = int64_t(blockIdx.y) * kRows + threadIdx.x;
  const int64_t c0 = int64_t(blockIdx.z) * kDvTile;
  const bool active = j < dm.M;
  A dva[kDvTile];
#pragma unroll
  for (int c = 0; c < kDvTile; ++c) dva[c] = A(0);
  for (int64_t b = g * dm.rv; b < (g + 1) * dm.rv; ++b) {
    A kr[DMAX];
    const T* krow = k + (b / dm.rk) * sk.s0 + j * sk.s1;
#pragma unroll
    for (int d = 0; d < DMAX; ++d) kr[d] = (active && d < dm.D) ? scale * static_cast<A>(krow[d * sk.s2]) : A(0);
    for (int64_t n0 = 0; n0 < dm.N; n0 += kTile) {
      load_query_tile<T, A, DMAX>(Qs, Ls, nullptr, q, sq, lse, nullptr, b, n0, dm);
      load_dout_tile<T, A>(Os, dout, sd, b, n0, c0, dm);
      __syncthreads();
      const int64_t nq = dm.N - n0 < kTile ? dm.N - n0 : kTile;
#pragma unroll
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

// Calls f(std::integral_constant<int, DMAX>) with the smallest instantiated DMAX >= D (two, to
// bound compile time: d_qk is 8..64 in SVG's models; smaller ones run zero-padded).
template <typename F>
void with_head_dim(int64_t D, F&& f) {
  if (D <= 16) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 64>{});
  }
}

unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(),
              "hafsvg cuda attention: q, k, v must be on one CUDA device");
  const auto st = q.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "hafsvg cuda attention: unsupported dtype ", st);
  TORCH_CHECK(k.scalar_type() == st && v.scalar_type() == st, "hafsvg cuda attention: q, k, v must have one dtype");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "hafsvg cuda attention: q, k, v must be 3-D");
  TORCH_CHECK(k.size(2) == q.size(2) && v.size(1) == k.size(1), "hafsvg cuda attention: shape mismatch");
  TORCH_CHECK(q.size(0) % k.size(0) == 0 && q.size(0) % v.size(0) == 0,
              "hafsvg cuda attention: k's and v's batch must divide q's");
  TORCH_CHECK(q.size(2) <= kMaxHeadDim, "hafsvg cuda attention: d_qk must be <= ", kMaxHeadDim);
  TORCH_CHECK(q.numel() > 0 && k.numel() > 0 && v.numel() > 0, "hafsvg cuda attention: empty input");
}

Dims dims_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return Dims{q.size(1), k.size(1), q.size(2), v.size(2), q.size(0) / k.size(0), q.size(0) / v.size(0)};
}

at::ScalarType acc_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

// float16 / bfloat16 inputs are computed on float32 copies (the kernels are instantiated for
// float32 and float64 only, which bounds compile time; Triton is the fast path for half types).
std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, double scale,
                                                     const c10::optional<at::Tensor>& out_opt) {
  check_inputs(q_in, k_in, v_in);
  c10::cuda::CUDAGuard guard(q_in.device());
  const auto acc = acc_type(q_in.scalar_type());
  const at::Tensor q = q_in.to(acc), k = k_in.to(acc), v = v_in.to(acc);
  const Dims dm = dims_of(q, k, v);
  const int64_t B = q.size(0);
  if (out_opt.has_value()) {
    TORCH_CHECK(out_opt->sizes() == at::IntArrayRef({B, dm.N, dm.Dv}) && out_opt->scalar_type() == q_in.scalar_type() &&
                    out_opt->device() == q.device(),
                "hafsvg cuda attention: out must match (B, N, d_v), q's dtype and device");
  }
  const bool direct = out_opt.has_value() && out_opt->scalar_type() == acc;
  at::Tensor out = direct ? *out_opt : at::empty({B, dm.N, dm.Dv}, q.options());
  at::Tensor lse = at::empty({B, dm.N}, q.options());
  const dim3 grid(static_cast<unsigned>(B), ceil_div(dm.N, kRows), ceil_div(dm.Dv, kDvTile));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "hafsvg_cuda_attention_forward", [&] {
    using T = scalar_t;
    with_head_dim(dm.D, [&](auto dmax) {
      constexpr int DM = decltype(dmax)::value;
      fwd_kernel<T, T, DM><<<grid, kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), v.const_data_ptr<T>(),
          strides_of(v), out.data_ptr<T>(), strides_of(out), lse.data_ptr<T>(), dm, static_cast<T>(scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (out_opt.has_value() && !direct) return {out_opt->copy_(out), lse};
  return {out.to(q_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& dout, const at::Tensor& q_in,
                                                                  const at::Tensor& k_in, const at::Tensor& v_in,
                                                                  const at::Tensor& out, const at::Tensor& lse,
                                                                  double scale) {
  check_inputs(q_in, k_in, v_in);
  c10::cuda::CUDAGuard guard(q_in.device());
  const auto acc = acc_type(q_in.scalar_type());
  const at::Tensor q = q_in.to(acc), k = k_in.to(acc), v = v_in.to(acc);
  const Dims dm = dims_of(q, k, v);
  const int64_t B = q.size(0), Bk = k.size(0), Bv = v.size(0);
  TORCH_CHECK(lse.scalar_type() == acc && lse.sizes() == at::IntArrayRef({B, dm.N}),
              "hafsvg cuda attention backward: lse must be (B, N) in the accumulation dtype");
  const at::Tensor dO = dout.to(acc);
  const at::Tensor lsec = lse.contiguous();
  const at::Tensor delta = (dO * out.to(acc)).sum(-1).contiguous();
  at::Tensor dq = at::empty({B, dm.N, dm.D}, q.options());
  at::Tensor dk = at::empty({Bk, dm.M, dm.D}, q.options());
  at::Tensor dv = at::empty({Bv, dm.M, dm.Dv}, q.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "hafsvg_cuda_attention_backward", [&] {
    using T = scalar_t;
    const T s = static_cast<T>(scale);
    with_head_dim(dm.D, [&](auto dmax) {
      constexpr int DM = decltype(dmax)::value;
      dq_kernel<T, T, DM><<<dim3(B, ceil_div(dm.N, kRows)), kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), v.const_data_ptr<T>(),
          strides_of(v), dO.const_data_ptr<T>(), strides_of(dO), lsec.const_data_ptr<T>(), delta.const_data_ptr<T>(),
          dq.data_ptr<T>(), dm, s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dk_kernel<T, T, DM><<<dim3(Bk, ceil_div(dm.M, kRows)), kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), v.const_data_ptr<T>(),
          strides_of(v), dO.const_data_ptr<T>(), strides_of(dO), lsec.const_data_ptr<T>(), delta.const_data_ptr<T>(),
          dk.data_ptr<T>(), dm, s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dv_kernel<T, T, DM><<<dim3(Bv, ceil_div(dm.M, kRows), ceil_div(dm.Dv, kDvTile)), kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), dO.const_data_ptr<T>(),
          strides_of(dO), lsec.const_data_ptr<T>(), dv.data_ptr<T>(), dm, s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  const auto st = q_in.scalar_type();
  return {dq.to(st), dk.to(st), dv.to(st)};
}

}  // namespace hafsvg::cuda
