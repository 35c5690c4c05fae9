// Device-agnostic orchestration of the fused recurrent step; see recurrent_step.h.
//
// Training path (autograd: the caller saves what this returns): per LSTM cell the gate
// pre-activations take two GEMMs into one output, inp W_ih^T then += h W_hh^T (at::mm + addmm_,
// beta = 1): the FLOPs of one GEMM of [inp, h] against [W_ih, W_hh]^T without copying the weights
// on every call. The embed of hierarchical group j reads [x, z^{1:j-1}] likewise as two GEMMs.
// Both biases, the four nonlinearities, the cell update and tanh(c) are one pointwise kernel; mu
// and logvar are one GEMM against [mu_w; logvar_w] (a (2Z, H) copy, tiny), and their biases, exp
// and the reparameterisation one pointwise kernel writing the group's columns of z, mu, logvar.
//
// Inference (no autograd, e.g. sampling) runs the training path's forward, saving nothing. The
// weights are read where they are on every call: no cached copy that writes through param.data
// could leave stale.
#include "recurrent_step.h"

namespace hafsvg {
namespace {

constexpr int64_t kCellWeights = 4;  // w_ih, w_hh, b_ih, b_hh

// Embed ([x, prev] when prev is defined) and L cells. Appends the new (h, c) pairs to new_states
// and, with save, h_in and the activated gates to saved. W points at the stack's embed_w.
at::Tensor stack_forward(const PointwiseOps& pw, const at::Tensor& x, const at::Tensor& prev, const at::Tensor* W,
                         const at::Tensor* state, int64_t layers, bool save, std::vector<at::Tensor>& new_states,
                         std::vector<at::Tensor>& saved) {
  const int64_t I = x.size(1);
  at::Tensor inp = at::mm(x, W[0].narrow(1, 0, I).t());  // h_in = [x, prev] embed_w^T + embed_b
  if (prev.defined()) inp.addmm_(prev, W[0].narrow(1, I, prev.size(1)).t());
  inp.add_(W[1]);
  if (save) saved.push_back(inp);
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* cw = W + 2 + l * kCellWeights;
    const at::Tensor& h = state[2 * l];
    const at::Tensor c = state[2 * l + 1].contiguous();
    at::Tensor gates = at::mm(inp, cw[0].t());
    gates.addmm_(h, cw[1].t());
    const at::Tensor& b_ih = cw[2];
    const at::Tensor& b_hh = cw[3];
    at::Tensor h_new = at::empty_like(c);
    at::Tensor c_new = at::empty_like(c);
    pw.cell_forward(gates, b_ih, b_hh, c, h_new, c_new, save);
    if (save) saved.push_back(gates);
    new_states.push_back(h_new);
    new_states.push_back(c_new);
    inp = h_new;
  }
  return inp;
}

// Backward through the L cells; dh is the gradient of the top layer's output h (its state
// gradient included). Writes the (dh, dc) of the previous state to dstates_prev and the cell
// weight gradients to dW (pointing at the stack's slot for w_ih of layer 0). Returns d h_in.
at::Tensor cells_backward(const PointwiseOps& pw, at::Tensor dh, const at::Tensor* W, const at::Tensor* state,
                          const at::Tensor* new_state, const at::Tensor* saved, const at::Tensor* dstate,
                          int64_t layers, at::Tensor* dstates_prev, at::Tensor* dW) {
  for (int64_t l = layers - 1; l >= 0; --l) {
    const at::Tensor* cw = W + 2 + l * kCellWeights;
    const at::Tensor& gates = saved[1 + l];
    const at::Tensor c_prev = state[2 * l + 1].contiguous();
    const at::Tensor& c_new = new_state[2 * l + 1];
    const at::Tensor& inp = l == 0 ? saved[0] : new_state[2 * (l - 1)];
    at::Tensor dgates = at::empty_like(gates);
    at::Tensor dc_prev = at::empty_like(c_prev);
    pw.cell_backward(gates, c_prev, c_new, dh.contiguous(), dstate[2 * l + 1].contiguous(), dgates, dc_prev);
    at::Tensor* g = dW + l * kCellWeights;
    g[0] = at::mm(dgates.t(), inp);
    g[1] = at::mm(dgates.t(), state[2 * l]);
    g[2] = dgates.sum(0);
    g[3] = g[2].clone();
    dstates_prev[2 * l] = at::mm(dgates, cw[1]);
    dstates_prev[2 * l + 1] = dc_prev;
    dh = at::mm(dgates, cw[0]);
    if (l > 0) dh.add_(dstate[2 * (l - 1)]);  // the lower layer's new h is also a state output
  }
  return dh;
}

void check_common(const at::Tensor& x, const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    TORCH_CHECK(t.device() == x.device() && t.scalar_type() == x.scalar_type(),
                "hafsvg recurrent step: all tensors must share x's device and dtype");
  }
}

}  // namespace

std::vector<at::Tensor> gaussian_step_forward(const PointwiseOps& pw, const at::Tensor& x,
                                              const std::vector<at::Tensor>& states,
                                              const std::vector<at::Tensor>& weights, const at::Tensor& eps_in,
                                              const c10::optional<at::Tensor>& cond, int64_t groups, int64_t layers,
                                              bool save) {
  const int64_t per_group = 6 + kCellWeights * layers;
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == groups * per_group, "hafsvg gaussian step: weight count");
  TORCH_CHECK(static_cast<int64_t>(states.size()) == groups * layers * 2, "hafsvg gaussian step: state count");
  check_common(x, states);
  check_common(x, weights);
  const int64_t B = x.size(0), zg = weights[per_group - 4].size(0), ztot = groups * zg;
  const at::Tensor eps = eps_in.contiguous();
  at::Tensor z = at::empty({B, ztot}, x.options());
  at::Tensor mu = at::empty({B, ztot}, x.options());
  at::Tensor lv = at::empty({B, ztot}, x.options());
  std::vector<at::Tensor> new_states, saved;
  for (int64_t j = 0; j < groups; ++j) {
    const at::Tensor* W = weights.data() + j * per_group;
    at::Tensor prev;
    if (j > 0) prev = (cond.has_value() ? *cond : z).narrow(1, 0, j * zg);
    at::Tensor h = stack_forward(pw, x, prev, W, states.data() + j * layers * 2, layers, save, new_states, saved);
    const at::Tensor* hw = W + 2 + kCellWeights * layers;  // mu_w, mu_b, lv_w, lv_b
    at::Tensor heads = at::mm(h, at::cat({hw[0], hw[2]}, 0).t());
    pw.reparam_forward(heads, hw[1], hw[3], eps, z, mu, lv, j * zg);
  }
  std::vector<at::Tensor> res{z, mu, lv};
  res.insert(res.end(), new_states.begin(), new_states.end());
  res.insert(res.end(), saved.begin(), saved.end());
  return res;
}

std::vector<at::Tensor> gaussian_step_backward(const PointwiseOps& pw, const at::Tensor& x,
                                               const std::vector<at::Tensor>& states,
                                               const std::vector<at::Tensor>& weights, const at::Tensor& eps_in,
                                               const c10::optional<at::Tensor>& cond,
                                               const std::vector<at::Tensor>& new_states, const at::Tensor& z,
                                               const at::Tensor& logvar, const std::vector<at::Tensor>& saved,
                                               const at::Tensor& dz, const at::Tensor& dmu, const at::Tensor& dlogvar,
                                               const std::vector<at::Tensor>& dstates, int64_t groups, int64_t layers) {
  const int64_t per_group = 6 + kCellWeights * layers;
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == groups * (1 + layers), "hafsvg gaussian step: saved count");
  TORCH_CHECK(static_cast<int64_t>(dstates.size()) == groups * layers * 2, "hafsvg gaussian step: dstate count");
  const int64_t I = x.size(1), zg = weights[per_group - 4].size(0);
  const at::Tensor eps = eps_in.contiguous(), lv = logvar.contiguous();
  const at::Tensor dmu_c = dmu.contiguous(), dlv_c = dlogvar.contiguous();
  // dz of group j collects the external gradient and, without cond, what groups > j send back
  // through their embed's z^{1:j} inputs: processing groups in reverse completes it in time.
  at::Tensor dz_total = dz.clone(at::MemoryFormat::Contiguous);
  at::Tensor dcond = cond.has_value() ? at::zeros_like(*cond) : at::Tensor();
  at::Tensor dx = at::zeros_like(x);
  at::Tensor deps = at::empty_like(eps);
  std::vector<at::Tensor> dstates_prev(states.size()), dweights(weights.size());
  for (int64_t j = groups - 1; j >= 0; --j) {
    const at::Tensor* W = weights.data() + j * per_group;
    at::Tensor* dW = dweights.data() + j * per_group;
    const at::Tensor* st = states.data() + j * layers * 2;
    const at::Tensor* nst = new_states.data() + j * layers * 2;
    const at::Tensor* dst = dstates.data() + j * layers * 2;
    const at::Tensor* sv = saved.data() + j * (1 + layers);
    const int64_t hi = 2 + kCellWeights * layers;  // mu_w, mu_b, lv_w, lv_b
    at::Tensor dheads = at::empty({x.size(0), 2 * zg}, x.options());
    pw.reparam_backward(dz_total, dmu_c, dlv_c, lv, eps, dheads, deps, j * zg);
    const at::Tensor& h_top = nst[2 * (layers - 1)];
    const at::Tensor dhw = at::mm(dheads.t(), h_top);
    const at::Tensor dhb = dheads.sum(0);
    dW[hi] = dhw.narrow(0, 0, zg).contiguous();
    dW[hi + 1] = dhb.narrow(0, 0, zg).contiguous();
    dW[hi + 2] = dhw.narrow(0, zg, zg).contiguous();
    dW[hi + 3] = dhb.narrow(0, zg, zg).contiguous();
    at::Tensor dh = at::addmm(dst[2 * (layers - 1)], dheads, at::cat({W[hi], W[hi + 2]}, 0));
    at::Tensor dh_in =
        cells_backward(pw, dh, W, st, nst, sv, dst, layers, dstates_prev.data() + j * layers * 2, dW + 2);
    // embed: h_in = [x, prev] embed_w^T + embed_b
    const at::Tensor& ew = W[0];
    dW[0] = at::empty_like(ew);
    dW[0].narrow(1, 0, I).copy_(at::mm(dh_in.t(), x));
    dW[1] = dh_in.sum(0);
    dx.addmm_(dh_in, ew.narrow(1, 0, I));
    if (j > 0) {
      const int64_t P = j * zg;
      const at::Tensor prev = (cond.has_value() ? *cond : z).narrow(1, 0, P);
      dW[0].narrow(1, I, P).copy_(at::mm(dh_in.t(), prev));
      (cond.has_value() ? dcond : dz_total).narrow(1, 0, P).addmm_(dh_in, ew.narrow(1, I, P));
    }
  }
  std::vector<at::Tensor> res{dx};
  res.insert(res.end(), dstates_prev.begin(), dstates_prev.end());
  res.insert(res.end(), dweights.begin(), dweights.end());
  res.push_back(deps);
  res.push_back(dcond);
  return res;
}

std::vector<at::Tensor> lstm_step_forward(const PointwiseOps& pw, const at::Tensor& x,
                                          const std::vector<at::Tensor>& state, const std::vector<at::Tensor>& weights,
                                          int64_t layers, bool save) {
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 4 + kCellWeights * layers, "hafsvg lstm step: weight count");
  TORCH_CHECK(static_cast<int64_t>(state.size()) == layers * 2, "hafsvg lstm step: state count");
  check_common(x, state);
  check_common(x, weights);
  std::vector<at::Tensor> new_state, saved;
  at::Tensor h = stack_forward(pw, x, at::Tensor(), weights.data(), state.data(), layers, save, new_state, saved);
  const at::Tensor* ow = weights.data() + 2 + kCellWeights * layers;  // out_w, out_b
  at::Tensor out = at::addmm(ow[1], h, ow[0].t());
  out.tanh_();
  std::vector<at::Tensor> res{out};
  res.insert(res.end(), new_state.begin(), new_state.end());
  res.insert(res.end(), saved.begin(), saved.end());
  return res;
}

std::vector<at::Tensor> lstm_step_backward(const PointwiseOps& pw, const at::Tensor& x,
                                           const std::vector<at::Tensor>& state, const std::vector<at::Tensor>& weights,
                                           const std::vector<at::Tensor>& new_state, const at::Tensor& out,
                                           const std::vector<at::Tensor>& saved, const at::Tensor& dout,
                                           const std::vector<at::Tensor>& dstate, int64_t layers) {
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == 1 + layers, "hafsvg lstm step: saved count");
  TORCH_CHECK(static_cast<int64_t>(dstate.size()) == layers * 2, "hafsvg lstm step: dstate count");
  const int64_t oi = 2 + kCellWeights * layers;  // out_w, out_b
  std::vector<at::Tensor> dstate_prev(state.size()), dweights(weights.size());
  const at::Tensor dpre = dout * (1 - out * out);
  const at::Tensor& h_top = new_state[2 * (layers - 1)];
  dweights[oi] = at::mm(dpre.t(), h_top);
  dweights[oi + 1] = dpre.sum(0);
  at::Tensor dh = at::addmm(dstate[2 * (layers - 1)], dpre, weights[oi]);
  at::Tensor dh_in = cells_backward(pw, dh, weights.data(), state.data(), new_state.data(), saved.data(), dstate.data(),
                                    layers, dstate_prev.data(), dweights.data() + 2);
  dweights[0] = at::mm(dh_in.t(), x);
  dweights[1] = dh_in.sum(0);
  std::vector<at::Tensor> res{at::mm(dh_in, weights[0])};
  res.insert(res.end(), dstate_prev.begin(), dstate_prev.end());
  res.insert(res.end(), dweights.begin(), dweights.end());
  return res;
}

}  // namespace hafsvg
