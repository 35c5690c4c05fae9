// Aligned attention on CUDA, the host side: checks, dispatch over dtypes and head dims, launches
// of the kernels in attention_kernels.cuh (what they compute and how: see there).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

#include "attention_kernels.cuh"
#include "kernels_cuda.h"

namespace hafsvg::cuda {
namespace {

using namespace attention;

Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

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

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     double scale, const c10::optional<at::Tensor>& out_opt) {
  check_inputs(q, k, v);
  c10::cuda::CUDAGuard guard(q.device());
  const Dims dm = dims_of(q, k, v);
  const int64_t B = q.size(0);
  if (out_opt.has_value()) {
    TORCH_CHECK(out_opt->sizes() == at::IntArrayRef({B, dm.N, dm.Dv}) && out_opt->scalar_type() == q.scalar_type() &&
                    out_opt->device() == q.device(),
                "hafsvg cuda attention: out must match (B, N, d_v), q's dtype and device");
  }
  const dim3 grid(static_cast<unsigned>(B), ceil_div(dm.N, kRows), ceil_div(dm.Dv, kDvTile));
  // `out` may be q itself (hafsvg_kernels/attention/_guards.py lets that through without autograd).
  // With several value tiles (grid z) a block would read q columns that another z-block of the
  // same rows has already overwritten: compute into a new tensor then, and copy.
  const bool via_copy =
      out_opt.has_value() && grid.z > 1 && at::get_overlap_status(*out_opt, q) != at::MemOverlapStatus::No;
  at::Tensor out = out_opt.has_value() && !via_copy ? *out_opt : at::empty({B, dm.N, dm.Dv}, q.options());
  at::Tensor lse = at::empty({B, dm.N}, q.options().dtype(acc_type(q.scalar_type())));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "hafsvg_cuda_attention_forward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    with_head_dim(dm.D, [&](auto dmax) {
      constexpr int DM = decltype(dmax)::value;
      fwd_kernel<T, DM><<<grid, kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), v.const_data_ptr<T>(),
          strides_of(v), out.data_ptr<T>(), strides_of(out), lse.data_ptr<A>(), dm, static_cast<A>(scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  if (via_copy) return {out_opt->copy_(out), lse};
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& dout_in, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& out_in, const at::Tensor& lse,
                                                                  double scale) {
  check_inputs(q, k, v);
  c10::cuda::CUDAGuard guard(q.device());
  const auto acc = acc_type(q.scalar_type());
  const Dims dm = dims_of(q, k, v);
  const int64_t B = q.size(0), Bk = k.size(0), Bv = v.size(0);
  TORCH_CHECK(lse.scalar_type() == acc && lse.sizes() == at::IntArrayRef({B, dm.N}) && lse.device() == q.device(),
              "hafsvg cuda attention backward: lse must be (B, N) in the accumulation dtype, on q's device");
  TORCH_CHECK(dout_in.sizes() == at::IntArrayRef({B, dm.N, dm.Dv}) && out_in.sizes() == dout_in.sizes() &&
                  dout_in.device() == q.device() && out_in.device() == q.device(),
              "hafsvg cuda attention backward: dout and out must be (B, N, d_v) on q's device");
  // (autograd hands dout in the output's dtype, which is q's; anything else is converted once)
  const at::Tensor dout = dout_in.scalar_type() == q.scalar_type() ? dout_in : dout_in.to(q.scalar_type());
  const at::Tensor out = out_in.scalar_type() == q.scalar_type() ? out_in : out_in.to(q.scalar_type());
  const at::Tensor lsec = lse.contiguous();
  at::Tensor delta = at::empty({B, dm.N}, lse.options());
  at::Tensor dq = at::empty({B, dm.N, dm.D}, q.options());
  at::Tensor dk = at::empty({Bk, dm.M, dm.D}, q.options());
  at::Tensor dv = at::empty({Bv, dm.M, dm.Dv}, q.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "hafsvg_cuda_attention_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    const A s = static_cast<A>(scale);
    with_head_dim(dm.D, [&](auto dmax) {
      constexpr int DM = decltype(dmax)::value;
      dq_kernel<T, DM><<<dim3(B, ceil_div(dm.N, kRows)), kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), v.const_data_ptr<T>(),
          strides_of(v), dout.const_data_ptr<T>(), strides_of(dout), out.const_data_ptr<T>(), strides_of(out),
          lsec.const_data_ptr<A>(), delta.data_ptr<A>(), dq.data_ptr<T>(), dm, s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dk_kernel<T, DM><<<dim3(Bk, ceil_div(dm.M, kRows)), kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), v.const_data_ptr<T>(),
          strides_of(v), dout.const_data_ptr<T>(), strides_of(dout), lsec.const_data_ptr<A>(),
          delta.const_data_ptr<A>(), dk.data_ptr<T>(), dm, s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dv_kernel<T, DM><<<dim3(Bv, ceil_div(dm.M, kRows), ceil_div(dm.Dv, kDvTile)), kRows, 0, stream>>>(
          q.const_data_ptr<T>(), strides_of(q), k.const_data_ptr<T>(), strides_of(k), dout.const_data_ptr<T>(),
          strides_of(dout), lsec.const_data_ptr<A>(), dv.data_ptr<T>(), dm, s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dq, dk, dv};
}

}  // namespace hafsvg::cuda
