// Pointwise kernels of the fused recurrent step on the CPU (the GEMMs are in
// ../common/recurrent_step.cpp). One pass over the gates per cell forward (both biases, the
// four nonlinearities, the cell update, tanh(c)) and one per cell backward, vectorised with
// at::vec::Vectorized over the hidden units and parallel over the batch rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "kernels.h"
#include "micro_gemm.h"

namespace hafsvg::cpu {
namespace {

// sigmoid and tanh from one exp each: ATen's 20-ulp exp for float (polynomial, no call; the
// results stay within ~1e-6 absolute, far inside the 1e-4 the equivalence tests allow), the
// accurate exp for double. tanh(x) = 1 - 2 / (exp(2x) + 1) saturates correctly at both ends.
template <typename T>
inline Vec<T> vsigmoid(const Vec<T>& x) {
  const Vec<T> one(T(1));
  return one / (one + vexp<T>(x.neg()));
}

template <typename T>
inline Vec<T> vtanh(const Vec<T>& x) {
  const Vec<T> one(T(1)), two(T(2));
  return one - two / (vexp<T>(x * two) + one);
}

// Rows per parallel chunk: about at::internal::GRAIN_SIZE elements of work.
int64_t row_grain(int64_t row_elems) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, row_elems));
}

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "hafsvg cpp recurrent step: ", what, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "hafsvg cpp recurrent step: float32 or float64 only, got ", t.scalar_type());
}

void cell_forward(at::Tensor& gates, const at::Tensor& b_ih, const at::Tensor& b_hh, const at::Tensor& c,
                  at::Tensor& h_new, at::Tensor& c_new, bool save) {
  check_float(gates, "gates");
  const int64_t B = c.size(0), H = c.size(1);
  const at::Tensor bi = b_ih.contiguous(), bh = b_hh.defined() ? b_hh.contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "hafsvg_cell_forward", [&] {
    using T = scalar_t;
    using V = Vec<T>;
    constexpr int64_t W = V::size();
    T* gp = gates.data_ptr<T>();
    const T* bip = bi.const_data_ptr<T>();
    const T* bhp = bh.defined() ? bh.const_data_ptr<T>() : nullptr;
    const T* cp = c.const_data_ptr<T>();
    T* hp = h_new.data_ptr<T>();
    T* cnp = c_new.data_ptr<T>();
    at::parallel_for(0, B, row_grain(8 * H), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* g = gp + b * 4 * H;
        for (int64_t j = 0; j < H; j += W) {
          const int n = static_cast<int>(std::min<int64_t>(W, H - j));
          auto pre = [&](int64_t k) {
            const V v = V::loadu(g + k * H + j, n) + V::loadu(bip + k * H + j, n);
            return bhp ? v + V::loadu(bhp + k * H + j, n) : v;
          };
          const V gi = vsigmoid<T>(pre(0)), gf = vsigmoid<T>(pre(1)), gg = vtanh<T>(pre(2)), go = vsigmoid<T>(pre(3));
          const V cn = gf * V::loadu(cp + b * H + j, n) + gi * gg;
          cn.store(cnp + b * H + j, n);
          (go * vtanh<T>(cn)).store(hp + b * H + j, n);
          if (save) {
            gi.store(g + j, n);
            gf.store(g + H + j, n);
            gg.store(g + 2 * H + j, n);
            go.store(g + 3 * H + j, n);
          }
        }
      }
    });
  });
}

void cell_backward(const at::Tensor& gates, const at::Tensor& c_prev, const at::Tensor& c_new, const at::Tensor& dh,
                   const at::Tensor& dc, at::Tensor& dgates, at::Tensor& dc_prev) {
  check_float(gates, "gates");
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "hafsvg_cell_backward", [&] {
    using T = scalar_t;
    using V = Vec<T>;
    constexpr int64_t W = V::size();
    const T* gp = gates.const_data_ptr<T>();
    const T* cpp = c_prev.const_data_ptr<T>();
    const T* cnp = c_new.const_data_ptr<T>();
    const T* dhp = dh.const_data_ptr<T>();
    const T* dcp = dc.const_data_ptr<T>();
    T* dgp = dgates.data_ptr<T>();
    T* dcpp = dc_prev.data_ptr<T>();
    at::parallel_for(0, B, row_grain(8 * H), [&](int64_t b0, int64_t b1) {
      const V one(T(1));
      for (int64_t b = b0; b < b1; ++b) {
        const T* g = gp + b * 4 * H;
        T* dg = dgp + b * 4 * H;
        const int64_t r = b * H;
        for (int64_t j = 0; j < H; j += W) {
          const int n = static_cast<int>(std::min<int64_t>(W, H - j));
          const V gi = V::loadu(g + j, n), gf = V::loadu(g + H + j, n), gg = V::loadu(g + 2 * H + j, n),
                  go = V::loadu(g + 3 * H + j, n);
          const V tc = vtanh<T>(V::loadu(cnp + r + j, n));
          const V dhv = V::loadu(dhp + r + j, n);
          const V dct = V::loadu(dcp + r + j, n) + dhv * go * (one - tc * tc);
          (dct * gg * gi * (one - gi)).store(dg + j, n);
          (dct * V::loadu(cpp + r + j, n) * gf * (one - gf)).store(dg + H + j, n);
          (dct * gi * (one - gg * gg)).store(dg + 2 * H + j, n);
          (dhv * tc * go * (one - go)).store(dg + 3 * H + j, n);
          (dct * gf).store(dcpp + r + j, n);
        }
      }
    });
  });
}

void reparam_forward(const at::Tensor& heads, const at::Tensor& mu_b, const at::Tensor& lv_b, const at::Tensor& eps,
                     at::Tensor& z, at::Tensor& mu, at::Tensor& lv, int64_t col) {
  check_float(heads, "heads");
  const int64_t B = heads.size(0), Z = heads.size(1) / 2, Zt = z.size(1);
  const at::Tensor mb = mu_b.contiguous(), lb = lv_b.contiguous();
  AT_DISPATCH_FLOATING_TYPES(heads.scalar_type(), "hafsvg_reparam_forward", [&] {
    using T = scalar_t;
    const T* hp = heads.const_data_ptr<T>();
    const T* mbp = mb.const_data_ptr<T>();
    const T* lbp = lb.const_data_ptr<T>();
    const T* ep = eps.const_data_ptr<T>();
    T *zp = z.data_ptr<T>(), *mp = mu.data_ptr<T>(), *lp = lv.data_ptr<T>();
    at::parallel_for(0, B, row_grain(16 * Z), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t c = 0; c < Z; ++c) {
          const T m = hp[b * 2 * Z + c] + mbp[c], l = hp[b * 2 * Z + Z + c] + lbp[c];
          const int64_t o = b * Zt + col + c;
          mp[o] = m;
          lp[o] = l;
          zp[o] = m + std::exp(T(0.5) * l) * ep[o];
        }
      }
    });
  });
}

void reparam_backward(const at::Tensor& dz, const at::Tensor& dmu, const at::Tensor& dlv, const at::Tensor& lv,
                      const at::Tensor& eps, at::Tensor& dheads, at::Tensor& deps, int64_t col) {
  check_float(dheads, "dheads");
  const int64_t B = dheads.size(0), Z = dheads.size(1) / 2, Zt = dz.size(1);
  AT_DISPATCH_FLOATING_TYPES(dheads.scalar_type(), "hafsvg_reparam_backward", [&] {
    using T = scalar_t;
    const T *dzp = dz.const_data_ptr<T>(), *dmp = dmu.const_data_ptr<T>(), *dlp = dlv.const_data_ptr<T>();
    const T *lp = lv.const_data_ptr<T>(), *ep = eps.const_data_ptr<T>();
    T *dhp = dheads.data_ptr<T>(), *dep = deps.data_ptr<T>();
    at::parallel_for(0, B, row_grain(16 * Z), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t c = 0; c < Z; ++c) {
          const int64_t o = b * Zt + col + c;
          const T sd = std::exp(T(0.5) * lp[o]), g = dzp[o];
          dhp[b * 2 * Z + c] = dmp[o] + g;
          dhp[b * 2 * Z + Z + c] = dlp[o] + g * ep[o] * T(0.5) * sd;
          dep[o] = g * sd;
        }
      }
    });
  });
}

}  // namespace

const PointwiseOps& pointwise_ops() {
  static const PointwiseOps ops{cell_forward, cell_backward, reparam_forward, reparam_backward};
  return ops;
}

}  // namespace hafsvg::cpu
