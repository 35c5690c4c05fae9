// Entry points of the CPU extension module (hafsvg_kernels._C); bound in module_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "../common/recurrent_step.h"

namespace hafsvg::cpu {

// Aligned attention, float32/float64. Returns (out, lse); out is written into out_opt when given
// (any strides). lse (B, N) is the row log-sum-exp of the scaled scores, in q's dtype.
std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     double scale, const c10::optional<at::Tensor>& out_opt);

// Returns (dq, dk, dv), shaped like q, k, v (contiguous).
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& dout, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& out, const at::Tensor& lse,
                                                                  double scale);

// The pointwise kernels of the recurrent step (recurrent_cpu.cpp).
const PointwiseOps& pointwise_ops();

}  // namespace hafsvg::cpu
