// Entry points of the CUDA extension module (hafsvg_kernels._C_cuda); bound in module_cuda.cpp.
// The fallback for GPUs / set-ups where Triton is missing: simple, shared-memory-tiled kernels.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "../common/recurrent_step.h"

namespace hafsvg::cuda {

// Largest d_qk the attention kernels take (the query/key rows live in registers; SVG's is 8..64).
constexpr int64_t kMaxHeadDim = 64;

// Aligned attention on CUDA tensors: float32, float64, float16 and bfloat16 kernels (read and
// written in their dtype, float32 arithmetic for the half types). Returns (out, lse) with lse (B, N) in float32 (float64 for float64).
std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     double scale, const c10::optional<at::Tensor>& out_opt);

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& dout, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& out, const at::Tensor& lse,
                                                                  double scale);

const PointwiseOps& pointwise_ops();

}  // namespace hafsvg::cuda
