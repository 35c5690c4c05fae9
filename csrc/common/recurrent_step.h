// The fused recurrent step of SVG-style models (embed Linear -> stacked LSTM cells -> heads),
// device-agnostic part: GEMMs through ATen (at::mm / addmm_, i.e. MKL/oneDNN on the CPU and
// cuBLAS on CUDA) and the pointwise work through a table of device kernels (PointwiseOps) that
// the CPU module and the CUDA module each provide. Compiled into both extension modules.
//
// Layouts (all tensors of one dtype and device):
//   states:  flat, per group, per layer: h, c            (each (B, H))
//   weights: flat, per group: embed_w (H, I_j), embed_b, per layer: w_ih (4H, In), w_hh (4H, H),
//            b_ih, b_hh, then the heads: mu_w (Z, H), mu_b, logvar_w (Z, H), logvar_b
//            (lstm_step: embed_w, embed_b, cells..., out_w (O, H), out_b)
//   saved:   per group: h_in (the embed's output), then per layer the activated gates (B, 4H)
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace hafsvg {

struct PointwiseOps {
  // gates (B, 4H) contiguous, pre-activation without bias; c (B, H) contiguous; the bias added is
  // b_ih + b_hh, or b_ih alone when b_hh is undefined (the inference path passes one summed bias).
  // Writes h_new, c_new (B, H); with save, overwrites gates with the activated i, f, g, o.
  void (*cell_forward)(at::Tensor& gates, const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& c,
                       at::Tensor& h_new, at::Tensor& c_new, bool save);
  // From the activated gates, c_prev, c_new and the incoming dh, dc (all contiguous):
  // dgates (B, 4H) (pre-activation) and dc_prev (B, H).
  void (*cell_backward)(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c_new,
                        const at::Tensor& dh, const at::Tensor& dc, at::Tensor& dgates, at::Tensor& dc_prev);
  // heads (B, 2Z) = h [mu_w; logvar_w]^T without bias. Writes columns [col, col + Z) of
  // mu, logvar and z = mu + exp(logvar / 2) * eps (all (B, Ztot) contiguous).
  void (*reparam_forward)(const at::Tensor& heads, const at::Tensor& mu_b, const at::Tensor& lv_b,
                          const at::Tensor& eps, at::Tensor& z, at::Tensor& mu, at::Tensor& lv, int64_t col);
  // dheads (B, 2Z) = [dmu + dz, dlv + dz * eps * exp(lv / 2) / 2] over columns [col, col + Z) of
  // the (B, Ztot) inputs, and deps[:, col:col+Z] = dz * exp(lv / 2).
  void (*reparam_backward)(const at::Tensor& dz, const at::Tensor& dmu, const at::Tensor& dlv, const at::Tensor& lv,
                           const at::Tensor& eps, at::Tensor& dheads, at::Tensor& deps, int64_t col);
  // out = tanh(out) in place and dpre = dout * (1 - out^2) are left to ATen (one op each).
};

// Returns [z, mu, logvar, new states (G * L * 2)..., saved (G * (1 + L), only when save)...].
std::vector<at::Tensor> gaussian_step_forward(const PointwiseOps& pw, const at::Tensor& x,
                                              const std::vector<at::Tensor>& states,
                                              const std::vector<at::Tensor>& weights, const at::Tensor& eps,
                                              const c10::optional<at::Tensor>& cond, int64_t groups, int64_t layers,
                                              bool save);

// Returns [dx, dstates (G * L * 2)..., dweights (as weights)..., deps, dcond (undefined without cond)].
std::vector<at::Tensor> gaussian_step_backward(const PointwiseOps& pw, const at::Tensor& x,
                                               const std::vector<at::Tensor>& states,
                                               const std::vector<at::Tensor>& weights, const at::Tensor& eps,
                                               const c10::optional<at::Tensor>& cond,
                                               const std::vector<at::Tensor>& new_states, const at::Tensor& z,
                                               const at::Tensor& logvar, const std::vector<at::Tensor>& saved,
                                               const at::Tensor& dz, const at::Tensor& dmu, const at::Tensor& dlogvar,
                                               const std::vector<at::Tensor>& dstates, int64_t groups, int64_t layers);

// Returns [out, new states (L * 2)..., saved (1 + L, only when save)...].
std::vector<at::Tensor> lstm_step_forward(const PointwiseOps& pw, const at::Tensor& x,
                                          const std::vector<at::Tensor>& state, const std::vector<at::Tensor>& weights,
                                          int64_t layers, bool save);

// Returns [dx, dstate (L * 2)..., dweights (as weights)...].
std::vector<at::Tensor> lstm_step_backward(const PointwiseOps& pw, const at::Tensor& x,
                                           const std::vector<at::Tensor>& state, const std::vector<at::Tensor>& weights,
                                           const std::vector<at::Tensor>& new_state, const at::Tensor& out,
                                           const std::vector<at::Tensor>& saved, const at::Tensor& dout,
                                           const std::vector<at::Tensor>& dstate, int64_t layers);

}  // namespace hafsvg
