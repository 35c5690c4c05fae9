// pybind11 bindings shared by the CPU and the CUDA extension modules: both expose the same
// functions (module_cpu.cpp / module_cuda.cpp pass their own kernels), each releasing the GIL.
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

#include "recurrent_step.h"

// The build passes these as identifiers (see hafsvg_kernels/_build_config.py) and they are
// stringified here, which needs no quoting through ninja or a shell.
#ifndef HAFSVG_SOURCE_HASH
#define HAFSVG_SOURCE_HASH src_unknown
#endif
#ifndef HAFSVG_TORCH_VERSION
#define HAFSVG_TORCH_VERSION torch_unknown
#endif
#define HAFSVG_STR_(x) #x
#define HAFSVG_STR(x) HAFSVG_STR_(x)

namespace hafsvg {

using Tensors = std::vector<at::Tensor>;
using AttentionForward = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                double, const c10::optional<at::Tensor>&);
using AttentionBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor> (*)(const at::Tensor&, const at::Tensor&,
                                                                             const at::Tensor&, const at::Tensor&,
                                                                             const at::Tensor&, const at::Tensor&,
                                                                             double);

template <const PointwiseOps& (*Ops)()>
void bind_all(pybind11::module& m, AttentionForward attention_forward, AttentionBackward attention_backward) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("attention_forward", attention_forward, release(), "(q, k, v, scale, out) -> (out, lse)");
  m.def("attention_backward", attention_backward, release(), "(dout, q, k, v, out, lse, scale) -> (dq, dk, dv)");
  m.def(
      "gaussian_step_forward",
      [](const at::Tensor& x, const Tensors& states, const Tensors& weights, const at::Tensor& eps,
         const c10::optional<at::Tensor>& cond, int64_t groups, int64_t layers, bool save) {
        return gaussian_step_forward(Ops(), x, states, weights, eps, cond, groups, layers, save);
      },
      release());
  m.def(
      "gaussian_step_backward",
      [](const at::Tensor& x, const Tensors& states, const Tensors& weights, const at::Tensor& eps,
         const c10::optional<at::Tensor>& cond, const Tensors& new_states, const at::Tensor& z,
         const at::Tensor& logvar, const Tensors& saved, const at::Tensor& dz, const at::Tensor& dmu,
         const at::Tensor& dlogvar, const Tensors& dstates, int64_t groups, int64_t layers) {
        return gaussian_step_backward(Ops(), x, states, weights, eps, cond, new_states, z, logvar, saved, dz, dmu,
                                      dlogvar, dstates, groups, layers);
      },
      release());
  m.def(
      "lstm_step_forward",
      [](const at::Tensor& x, const Tensors& state, const Tensors& weights, int64_t layers, bool save) {
        return lstm_step_forward(Ops(), x, state, weights, layers, save);
      },
      release());
  m.def(
      "lstm_step_backward",
      [](const at::Tensor& x, const Tensors& state, const Tensors& weights, const Tensors& new_state,
         const at::Tensor& out, const Tensors& saved, const at::Tensor& dout, const Tensors& dstate, int64_t layers) {
        return lstm_step_backward(Ops(), x, state, weights, new_state, out, saved, dout, dstate, layers);
      },
      release());
  m.attr("source_hash") = HAFSVG_STR(HAFSVG_SOURCE_HASH);
  m.attr("torch_version") = HAFSVG_STR(HAFSVG_TORCH_VERSION);
}

}  // namespace hafsvg
