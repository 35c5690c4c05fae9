// Pointwise kernels of the fused recurrent step on CUDA (the GEMMs are at::mm / addmm_ = cuBLAS,
// in ../common/recurrent_step.cpp): one launch per cell forward (both biases, the four gate
// nonlinearities, the cell update, tanh(c)), one per cell backward, one for the Gaussian heads'
// biases + reparameterisation and one for its backward. Math in float32 (float64 for float64).
// Compiled (nvcc) in this project's CI; not run there (no GPU).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels_cuda.h"

namespace hafsvg::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dtanh(double x) { return tanh(x); }
template <typename A>
__device__ __forceinline__ A dsigmoid(A x) {
  return A(1) / (A(1) + dexp(-x));
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

template <typename T, typename A>
__global__ void cell_forward_kernel(T* __restrict__ gates, const T* __restrict__ bih, const T* __restrict__ bhh,
                                    const T* __restrict__ c, T* __restrict__ h_new, T* __restrict__ c_new, int64_t B,
                                    int64_t H, bool save) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < B * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    T* g = gates + b * 4 * H + j;
    auto pre = [&](int64_t k) {
      const A v = static_cast<A>(g[k * H]) + static_cast<A>(bih[k * H + j]);
      return bhh ? v + static_cast<A>(bhh[k * H + j]) : v;
    };
    const A gi = dsigmoid(pre(0)), gf = dsigmoid(pre(1)), gg = dtanh(pre(2)), go = dsigmoid(pre(3));
    const A cn = gf * static_cast<A>(c[e]) + gi * gg;
    c_new[e] = static_cast<T>(cn);
    h_new[e] = static_cast<T>(go * dtanh(cn));
    if (save) {
      g[0] = static_cast<T>(gi);
      g[H] = static_cast<T>(gf);
      g[2 * H] = static_cast<T>(gg);
      g[3 * H] = static_cast<T>(go);
    }
  }
}

template <typename T, typename A>
__global__ void cell_backward_kernel(const T* __restrict__ gates, const T* __restrict__ c_prev,
                                     const T* __restrict__ c_new, const T* __restrict__ dh, const T* __restrict__ dc,
                                     T* __restrict__ dgates, T* __restrict__ dc_prev, int64_t B, int64_t H) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < B * H; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / H, j = e % H;
    const T* g = gates + b * 4 * H + j;
    T* dg = dgates + b * 4 * H + j;
    const A gi = g[0], gf = g[H], gg = g[2 * H], go = g[3 * H];
    const A tc = dtanh(static_cast<A>(c_new[e]));
    const A dhv = dh[e];
    const A dct = static_cast<A>(dc[e]) + dhv * go * (A(1) - tc * tc);
    dg[0] = static_cast<T>(dct * gg * gi * (A(1) - gi));
    dg[H] = static_cast<T>(dct * static_cast<A>(c_prev[e]) * gf * (A(1) - gf));
    dg[2 * H] = static_cast<T>(dct * gi * (A(1) - gg * gg));
    dg[3 * H] = static_cast<T>(dhv * tc * go * (A(1) - go));
    dc_prev[e] = static_cast<T>(dct * gf);
  }
}

template <typename T, typename A>
__global__ void reparam_forward_kernel(const T* __restrict__ heads, const T* __restrict__ mu_b,
                                       const T* __restrict__ lv_b, const T* __restrict__ eps, T* __restrict__ z,
                                       T* __restrict__ mu, T* __restrict__ lv, int64_t B, int64_t Z, int64_t Zt,
                                       int64_t col) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < B * Z; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / Z, c = e % Z, o = b * Zt + col + c;
    const A m = static_cast<A>(heads[b * 2 * Z + c]) + static_cast<A>(mu_b[c]);
    const A l = static_cast<A>(heads[b * 2 * Z + Z + c]) + static_cast<A>(lv_b[c]);
    mu[o] = static_cast<T>(m);
    lv[o] = static_cast<T>(l);
    z[o] = static_cast<T>(m + dexp(A(0.5) * l) * static_cast<A>(eps[o]));
  }
}

template <typename T, typename A>
__global__ void reparam_backward_kernel(const T* __restrict__ dz, const T* __restrict__ dmu, const T* __restrict__ dlv,
                                        const T* __restrict__ lv, const T* __restrict__ eps, T* __restrict__ dheads,
                                        T* __restrict__ deps, int64_t B, int64_t Z, int64_t Zt, int64_t col) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < B * Z; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = e / Z, c = e % Z, o = b * Zt + col + c;
    const A sd = dexp(A(0.5) * static_cast<A>(lv[o])), g = dz[o];
    dheads[b * 2 * Z + c] = static_cast<T>(static_cast<A>(dmu[o]) + g);
    dheads[b * 2 * Z + Z + c] = static_cast<T>(static_cast<A>(dlv[o]) + g * static_cast<A>(eps[o]) * A(0.5) * sd);
    deps[o] = static_cast<T>(g * sd);
  }
}

void check_cuda(const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "hafsvg cuda recurrent step: tensors must be on a CUDA device");
}

#define HAFSVG_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

void cell_forward(at::Tensor& gates, const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& c,
                  at::Tensor& h_new, at::Tensor& c_new, bool save) {
  check_cuda(gates);
  c10::cuda::CUDAGuard guard(gates.device());
  const int64_t B = c.size(0), H = c.size(1);
  const at::Tensor bi = b_ih.contiguous(), bh = b_hh.defined() ? b_hh.contiguous() : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  HAFSVG_DISPATCH(gates.scalar_type(), "hafsvg_cuda_cell_forward", [&] {
    cell_forward_kernel<scalar_t, at::opmath_type<scalar_t>><<<blocks_for(B * H), kThreads, 0, stream>>>(
        gates.data_ptr<scalar_t>(), bi.const_data_ptr<scalar_t>(),
        bh.defined() ? bh.const_data_ptr<scalar_t>() : nullptr, c.const_data_ptr<scalar_t>(),
        h_new.data_ptr<scalar_t>(), c_new.data_ptr<scalar_t>(), B, H, save);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cell_backward(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c_new, const at::Tensor& dh,
                   const at::Tensor& dc, at::Tensor& dgates, at::Tensor& dc_prev) {
  check_cuda(gates);
  c10::cuda::CUDAGuard guard(gates.device());
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  HAFSVG_DISPATCH(gates.scalar_type(), "hafsvg_cuda_cell_backward", [&] {
    cell_backward_kernel<scalar_t, at::opmath_type<scalar_t>><<<blocks_for(B * H), kThreads, 0, stream>>>(
        gates.const_data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(), c_new.const_data_ptr<scalar_t>(),
        dh.const_data_ptr<scalar_t>(), dc.const_data_ptr<scalar_t>(), dgates.data_ptr<scalar_t>(),
        dc_prev.data_ptr<scalar_t>(), B, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void reparam_forward(const at::Tensor& heads, const at::Tensor& mu_b, const at::Tensor& lv_b, const at::Tensor& eps,
                     at::Tensor& z, at::Tensor& mu, at::Tensor& lv, int64_t col) {
  check_cuda(heads);
  c10::cuda::CUDAGuard guard(heads.device());
  const int64_t B = heads.size(0), Z = heads.size(1) / 2, Zt = z.size(1);
  const at::Tensor mb = mu_b.contiguous(), lb = lv_b.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  HAFSVG_DISPATCH(heads.scalar_type(), "hafsvg_cuda_reparam_forward", [&] {
    reparam_forward_kernel<scalar_t, at::opmath_type<scalar_t>><<<blocks_for(B * Z), kThreads, 0, stream>>>(
        heads.const_data_ptr<scalar_t>(), mb.const_data_ptr<scalar_t>(), lb.const_data_ptr<scalar_t>(),
        eps.const_data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(), lv.data_ptr<scalar_t>(), B, Z,
        Zt, col);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void reparam_backward(const at::Tensor& dz, const at::Tensor& dmu, const at::Tensor& dlv, const at::Tensor& lv,
                      const at::Tensor& eps, at::Tensor& dheads, at::Tensor& deps, int64_t col) {
  check_cuda(dheads);
  c10::cuda::CUDAGuard guard(dheads.device());
  const int64_t B = dheads.size(0), Z = dheads.size(1) / 2, Zt = dz.size(1);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  HAFSVG_DISPATCH(dheads.scalar_type(), "hafsvg_cuda_reparam_backward", [&] {
    reparam_backward_kernel<scalar_t, at::opmath_type<scalar_t>><<<blocks_for(B * Z), kThreads, 0, stream>>>(
        dz.const_data_ptr<scalar_t>(), dmu.const_data_ptr<scalar_t>(), dlv.const_data_ptr<scalar_t>(),
        lv.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(), dheads.data_ptr<scalar_t>(),
        deps.data_ptr<scalar_t>(), B, Z, Zt, col);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

const PointwiseOps& pointwise_ops() {
  static const PointwiseOps ops{cell_forward, cell_backward, reparam_forward, reparam_backward};
  return ops;
}

}  // namespace hafsvg::cuda
