// Aligned attention on the CPU: tiled online softmax (flash-style), forward and backward.
//
//   out[b, n] = sum_m softmax_m(scale * q[b, n] . k[b / rk, m]) v[b / rv, m]
//
// Forward: parallel over (query batch, block of kBlockQ queries), tasks handed out dynamically;
// per block it keeps the running row max and row sum and a kBlockQ x Dv accumulator, and walks
// the keys in blocks whose score tile (kBlockQ x key block) stays in cache: no N x M buffer exists,
// memory is O(threads * tile) on top of the inputs and outputs. It saves the row log-sum-exp.
// Backward recomputes the probabilities from the log-sum-exp in one pass, race-free, forming
// dS = P (dO V^T - delta) once per (query, key) pair: parallel over (key batch, slot), where a slot
// is a contiguous range of that key batch's key blocks; per key block the task loops over the rk
// query batches sharing the key batch and their query blocks, sums dK (and dV when rk == rv) of its
// own key rows, and adds dQ^T into the slot's own (B, d, N) buffer (a few slots, only as many as
// keep the threads busy; summed at the end: memory O(slots * N * d)). When rk != rv the dV sums run
// over other query batches than dK's, so dV gets a pass of its own over (value batch, key block).
// All matrix work is the register-blocked micro-GEMM of micro_gemm.h (at::vec::Vectorized, explicit
// SIMD); exps are vectorised (ATen's polynomial exp). q may have any strides; k and v are re-laid
// out once per call (transposed copies, O(inputs)); out may be any strided view, written in place.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels.h"
#include "micro_gemm.h"

namespace hafsvg::cpu {
namespace {

constexpr int64_t kBlockQ = 64;     // query rows per forward task
constexpr int64_t kBlockQKV = 128;  // query rows per step of the backward's tasks
constexpr int64_t kBlockKV = 64;    // key rows per backward key block

// Key block of the forward: the V block it streams should stay in L2.
template <typename T>
int64_t key_block(int64_t M, int64_t Dv) {
  constexpr int64_t W = Vec<T>::size();
  int64_t bk = (int64_t(128) * 1024 / int64_t(sizeof(T))) / std::max<int64_t>(Dv, 1);
  bk = std::clamp<int64_t>(bk, 64, 512);
  bk = (bk / W) * W;
  return std::min(bk, ((M + W - 1) / W) * W);
}

// One row of the online softmax: s[0:nk] holds scores; on return it holds exp(s - m_new); the
// running max m, sum l and the accumulator row o (length Dv) are rescaled to the new max.
template <typename T>
inline void online_softmax_row(T* s, int64_t nk, T& m, T& l, T* o, int64_t Dv) {
  constexpr int64_t W = Vec<T>::size();
  const int64_t nfull = nk - nk % W;
  T mx = -std::numeric_limits<T>::infinity();
  if (nfull) {
    Vec<T> vm = Vec<T>::loadu(s);
    for (int64_t j = W; j < nfull; j += W) vm = at::vec::maximum(vm, Vec<T>::loadu(s + j));
    mx = hmax(vm);
  }
  for (int64_t j = nfull; j < nk; ++j) mx = std::max(mx, s[j]);
  const T m_new = std::max(m, mx);
  const T alpha = std::isinf(m) ? T(0) : std::exp(m - m_new);
  const Vec<T> vmn(m_new);
  Vec<T> vs(T(0));
  for (int64_t j = 0; j < nfull; j += W) {
    const Vec<T> e = vexp<T>(Vec<T>::loadu(s + j) - vmn);
    e.store(s + j);
    vs = vs + e;
  }
  T sum = hsum(vs);
  for (int64_t j = nfull; j < nk; ++j) {
    s[j] = std::exp(s[j] - m_new);
    sum += s[j];
  }
  l = l * alpha + sum;
  if (alpha != T(1)) {
    const Vec<T> va(alpha);
    int64_t c = 0;
    for (; c + W <= Dv; c += W) (Vec<T>::loadu(o + c) * va).store(o + c);
    for (; c < Dv; ++c) o[c] *= alpha;
  }
  m = m_new;
}

// p[0:nk] = exp(s[0:nk] - lse), in place.
template <typename T>
inline void exp_minus(T* s, int64_t nk, T lse) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> vl(lse);
  int64_t j = 0;
  for (; j + W <= nk; j += W) vexp<T>(Vec<T>::loadu(s + j) - vl).store(s + j);
  for (; j < nk; ++j) s[j] = std::exp(s[j] - lse);
}

// ds[0:nk] = p * (dp - delta), written over dp.
template <typename T>
inline void softmax_grad_row(const T* p, T* dp, int64_t nk, T delta) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> vd(delta);
  int64_t j = 0;
  for (; j + W <= nk; j += W) (Vec<T>::loadu(p + j) * (Vec<T>::loadu(dp + j) - vd)).store(dp + j);
  for (; j < nk; ++j) dp[j] = p[j] * (dp[j] - delta);
}

// dst[c * sc] = src[c] * mul for c < n; dst contiguous when sc == 1.
template <typename T>
inline void scaled_store(T* dst, int64_t sc, const T* src, int64_t n, T mul) {
  constexpr int64_t W = Vec<T>::size();
  int64_t c = 0;
  if (sc == 1) {
    const Vec<T> vm(mul);
    for (; c + W <= n; c += W) (Vec<T>::loadu(src + c) * vm).store(dst + c);
  }
  for (; c < n; ++c) dst[c * sc] = src[c] * mul;
}

// Runs task(t) for t in [0, ntasks) on at::parallel_for's threads, handing out tasks one at a time
// from an atomic counter (dynamic scheduling: at::parallel_for alone splits the range statically,
// which leaves a thread idle while another finishes a share slowed down by a busy core). Each
// thread calls make_worker() once for its scratch and gets back the task function.
template <typename MakeWorker>
void parallel_tasks(int64_t ntasks, MakeWorker&& make_worker) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntasks));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto task = make_worker();
    for (int64_t t = next++; t < ntasks; t = next++) task(t);
  });
}

// dst[i * s1 + c * s2] = src[i * Dv + c] * mul[i]: the forward's output block, into any strided
// view. Row-wise when rows are contiguous (s2 == 1); column-wise, contiguous along the rows, when
// out is a transposed view (s1 == 1, the aligner writing into an NCHW [F_d; F_e; Z] buffer).
template <typename T>
inline void store_rows(T* dst, int64_t s1, int64_t s2, const T* src, int64_t rows, int64_t Dv, const T* mul) {
  if (s1 == 1 && s2 != 1) {
    for (int64_t c = 0; c < Dv; ++c)
      for (int64_t i = 0; i < rows; ++i) dst[c * s2 + i] = src[i * Dv + c] * mul[i];
    return;
  }
  for (int64_t i = 0; i < rows; ++i) scaled_store<T>(dst + i * s1, s2, src + i * Dv, Dv, mul[i]);
}

// delta[b, n] = a[b, n] . c[b, n] over the last dim (rows contiguous): the softmax backward's
// row term dO . O, one pass, written into a (B, N) buffer.
template <typename T>
void row_dots(const at::Tensor& a, const at::Tensor& c, T* delta) {
  const int64_t B = a.size(0), N = a.size(1), Dv = a.size(2);
  const T* ap = a.const_data_ptr<T>();
  const T* cp = c.const_data_ptr<T>();
  const int64_t sa0 = a.stride(0), sa1 = a.stride(1), sc0 = c.stride(0), sc1 = c.stride(1);
  at::parallel_for(0, B * N, std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(Dv, 1)),
                   [&](int64_t begin, int64_t end) {
                     constexpr int64_t W = Vec<T>::size();
                     for (int64_t r = begin; r < end; ++r) {
                       const T* x = ap + (r / N) * sa0 + (r % N) * sa1;
                       const T* y = cp + (r / N) * sc0 + (r % N) * sc1;
                       Vec<T> acc(T(0));
                       int64_t j = 0;
                       for (; j + W <= Dv; j += W)
                         acc = at::vec::fmadd(Vec<T>::loadu(x + j), Vec<T>::loadu(y + j), acc);
                       T sum = hsum(acc);
                       for (; j < Dv; ++j) sum += x[j] * y[j];
                       delta[r] = sum;
                     }
                   });
}

struct Shape {
  int64_t B, N, M, D, Dv, rk, rv;
};

template <typename T>
void forward_kernel(const Shape& sh, T scale, const at::Tensor& q, const at::Tensor& kt, const at::Tensor& v,
                    const at::Tensor& out, const at::Tensor& lse) {
  const int64_t B = sh.B, N = sh.N, M = sh.M, D = sh.D, Dv = sh.Dv, rk = sh.rk, rv = sh.rv;
  const T* qp = q.const_data_ptr<T>();
  const int64_t sq0 = q.stride(0), sq1 = q.stride(1), sq2 = q.stride(2);
  const T* ktp = kt.const_data_ptr<T>();  // (Bk, D, M) contiguous
  const T* vp = v.const_data_ptr<T>();    // rows contiguous
  const int64_t sv0 = v.stride(0), sv1 = v.stride(1);
  T* op = out.data_ptr<T>();
  const int64_t so0 = out.stride(0), so1 = out.stride(1), so2 = out.stride(2);
  T* lp = lse.data_ptr<T>();  // (B, N) contiguous
  const int64_t BQ = std::min(kBlockQ, N);
  const int64_t BK = key_block<T>(M, Dv);
  const int64_t nqb = (N + BQ - 1) / BQ;
  parallel_tasks(B * nqb, [&] {
    return [&, S = std::vector<T>(BQ * BK), O = std::vector<T>(BQ * Dv), mrow = std::vector<T>(BQ),
            lrow = std::vector<T>(BQ)](int64_t t) mutable {
      const int64_t b = t / nqb, n0 = (t % nqb) * BQ, nq = std::min(BQ, N - n0);
      const T* Q = qp + b * sq0 + n0 * sq1;
      const T* Kt = ktp + (b / rk) * D * M;
      const T* V = vp + (b / rv) * sv0;
      std::fill(O.begin(), O.end(), T(0));
      std::fill(mrow.begin(), mrow.end(), -std::numeric_limits<T>::infinity());
      std::fill(lrow.begin(), lrow.end(), T(0));
      for (int64_t m0 = 0; m0 < M; m0 += BK) {
        const int64_t nk = std::min(BK, M - m0);
        gemm_tile<T>(nq, nk, D, Q, sq1, sq2, Kt + m0, M, S.data(), BK, scale, false);
        for (int64_t i = 0; i < nq; ++i)
          online_softmax_row<T>(S.data() + i * BK, nk, mrow[i], lrow[i], O.data() + i * Dv, Dv);
        gemm_tile<T>(nq, Dv, nk, S.data(), BK, 1, V + m0 * sv1, sv1, O.data(), Dv, T(1), true);
      }
      for (int64_t i = 0; i < nq; ++i) {
        lp[b * N + n0 + i] = mrow[i] + std::log(lrow[i]);
        lrow[i] = T(1) / lrow[i];
      }
      store_rows<T>(op + b * so0 + n0 * so1, so1, so2, O.data(), nq, Dv, lrow.data());
    };
  });
}

template <typename T>
struct BackwardArgs {
  const T* q;  // rows contiguous (inner stride 1)
  int64_t sq0, sq1;
  const T* kt;    // (Bk, D, M) contiguous
  const T* vt;    // (Bv, Dv, M) contiguous
  const T* dout;  // rows contiguous
  int64_t sd0, sd1;
  const T* lse;    // (B, N)
  const T* delta;  // (B, N)
};

// The backward's main pass, parallel over (key batch g, slot s): slot s of g owns a contiguous
// range of g's key blocks; per key block it sums dK (and dV when rk == rv) over the query rows of
// the rk query batches reading key batch g, and adds their dQ contributions into its own dQ slot
// (dq_slots: `slots` zeroed (B, D, N) buffers of dQ^T, summed afterwards). No two tasks write the same
// memory, and dS is formed once per (query, key) pair.
template <typename T>
void backward_kernel(const Shape& sh, T scale, const BackwardArgs<T>& a, int64_t slots, T* dq_slots, T* dk, T* dv) {
  const int64_t B = sh.B, N = sh.N, M = sh.M, D = sh.D, Dv = sh.Dv, rk = sh.rk, rv = sh.rv;
  const int64_t Bk = B / rk;
  const int64_t BQ = std::min(kBlockQKV, N);
  const int64_t BK = std::min(kBlockKV, M);
  const int64_t nkb = (M + BK - 1) / BK;
  parallel_tasks(Bk * slots, [&] {
    return [&, S = std::vector<T>(BQ * BK), dP = std::vector<T>(BQ * BK), dST = std::vector<T>(BK * BQ),
            accKt = std::vector<T>(D * BK), accV = std::vector<T>(dv ? BK * Dv : 0)](int64_t t) mutable {
      const int64_t g = t / slots, s = t % slots;
      T* dqs = dq_slots + s * B * D * N;
      for (int64_t kb = s * nkb / slots; kb < (s + 1) * nkb / slots; ++kb) {
        const int64_t m0 = kb * BK, nk = std::min(BK, M - m0);
        const T* Kt = a.kt + g * D * M + m0;
        std::fill(accKt.begin(), accKt.end(), T(0));
        std::fill(accV.begin(), accV.end(), T(0));
        for (int64_t b = g * rk; b < (g + 1) * rk; ++b) {
          const T* Vt = a.vt + (b / rv) * Dv * M + m0;
          for (int64_t n0 = 0; n0 < N; n0 += BQ) {
            const int64_t nq = std::min(BQ, N - n0);
            const T* Q = a.q + b * a.sq0 + n0 * a.sq1;
            const T* dO = a.dout + b * a.sd0 + n0 * a.sd1;
            const T* L = a.lse + b * N + n0;
            const T* Dl = a.delta + b * N + n0;
            gemm_tile<T>(nq, nk, D, Q, a.sq1, 1, Kt, M, S.data(), BK, scale, false);
            for (int64_t i = 0; i < nq; ++i) exp_minus<T>(S.data() + i * BK, nk, L[i]);
            if (dv)  // dV += P^T dO
              gemm_tile<T>(nk, Dv, nq, S.data(), 1, BK, dO, a.sd1, accV.data(), Dv, T(1), true);
            // dS = P * (dO V^T - delta); dK^T += Q^T dS; dQ^T += K^T dS^T (scale applied at the
            // end). Transposed products: their wide side (keys, queries) is the vectorised one,
            // where d (8..64) alone would leave the vectors half empty.
            gemm_tile<T>(nq, nk, Dv, dO, a.sd1, 1, Vt, M, dP.data(), BK, T(1), false);
            for (int64_t i = 0; i < nq; ++i) softmax_grad_row<T>(S.data() + i * BK, dP.data() + i * BK, nk, Dl[i]);
            gemm_tile<T>(D, nk, nq, Q, 1, a.sq1, dP.data(), BK, accKt.data(), BK, T(1), true);
            for (int64_t i = 0; i < nq; ++i)
              for (int64_t j = 0; j < nk; ++j) dST[j * BQ + i] = dP[i * BK + j];
            gemm_tile<T>(D, nq, nk, Kt, M, 1, dST.data(), BQ, dqs + b * D * N + n0, N, T(1), true);
          }
        }
        for (int64_t j = 0; j < nk; ++j) {
          T* dkrow = dk + (g * M + m0 + j) * D;
          for (int64_t d = 0; d < D; ++d) dkrow[d] = accKt[d * BK + j] * scale;
          if (dv) scaled_store<T>(dv + (g * M + m0 + j) * Dv, 1, accV.data() + j * Dv, Dv, T(1));
        }
      }
    };
  });
}

// dV alone when V is shared by other query batches than K (rk != rv): parallel over (value batch,
// key block), summing P^T dO over the rv query batches reading each value batch.
template <typename T>
void dv_kernel(const Shape& sh, T scale, const BackwardArgs<T>& a, T* dv) {
  const int64_t B = sh.B, N = sh.N, M = sh.M, D = sh.D, Dv = sh.Dv, rk = sh.rk, rv = sh.rv;
  const int64_t BQ = std::min(kBlockQKV, N);
  const int64_t BK = std::min(kBlockKV, M);
  const int64_t nkb = (M + BK - 1) / BK;
  parallel_tasks((B / rv) * nkb, [&] {
    return [&, S = std::vector<T>(BQ * BK), accV = std::vector<T>(BK * Dv)](int64_t t) mutable {
      const int64_t g = t / nkb, m0 = (t % nkb) * BK, nk = std::min(BK, M - m0);
      std::fill(accV.begin(), accV.end(), T(0));
      for (int64_t b = g * rv; b < (g + 1) * rv; ++b) {
        const T* Kt = a.kt + (b / rk) * D * M + m0;
        for (int64_t n0 = 0; n0 < N; n0 += BQ) {
          const int64_t nq = std::min(BQ, N - n0);
          gemm_tile<T>(nq, nk, D, a.q + b * a.sq0 + n0 * a.sq1, a.sq1, 1, Kt, M, S.data(), BK, scale, false);
          for (int64_t i = 0; i < nq; ++i) exp_minus<T>(S.data() + i * BK, nk, a.lse[b * N + n0 + i]);
          gemm_tile<T>(nk, Dv, nq, S.data(), 1, BK, a.dout + b * a.sd0 + n0 * a.sd1, a.sd1, accV.data(), Dv, T(1),
                       true);
        }
      }
      for (int64_t j = 0; j < nk; ++j) scaled_store<T>(dv + (g * M + m0 + j) * Dv, 1, accV.data() + j * Dv, Dv, T(1));
    };
  });
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "hafsvg cpp attention: tensors must be on the CPU");
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "hafsvg cpp attention: float32 or float64 only, got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "hafsvg cpp attention: q, k, v must have one dtype");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "hafsvg cpp attention: q, k, v must be 3-D");
  TORCH_CHECK(k.size(2) == q.size(2) && v.size(1) == k.size(1), "hafsvg cpp attention: shape mismatch");
  TORCH_CHECK(q.size(0) % k.size(0) == 0 && q.size(0) % v.size(0) == 0,
              "hafsvg cpp attention: k's and v's batch must divide q's");
  TORCH_CHECK(q.numel() > 0 && k.numel() > 0 && v.numel() > 0, "hafsvg cpp attention: empty input");
}

at::Tensor rows_contiguous(const at::Tensor& t) { return (t.stride(2) == 1 || t.size(2) == 1) ? t : t.contiguous(); }

Shape shape_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return Shape{q.size(0), q.size(1), k.size(1), q.size(2), v.size(2), q.size(0) / k.size(0), q.size(0) / v.size(0)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     double scale, const c10::optional<at::Tensor>& out_opt) {
  check_inputs(q, k, v);
  const Shape sh = shape_of(q, k, v);
  at::Tensor out;
  if (out_opt.has_value()) {
    out = *out_opt;
    TORCH_CHECK(out.sizes() == at::IntArrayRef({sh.B, sh.N, sh.Dv}) && out.scalar_type() == q.scalar_type() &&
                    out.device().is_cpu(),
                "hafsvg cpp attention: out must be a CPU ", q.scalar_type(), " tensor of shape (B, N, d_v)");
  } else {
    out = at::empty({sh.B, sh.N, sh.Dv}, q.options());
  }
  const at::Tensor kt = k.transpose(1, 2).contiguous();
  const at::Tensor vr = rows_contiguous(v);
  at::Tensor lse = at::empty({sh.B, sh.N}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hafsvg_attention_forward",
                             [&] { forward_kernel<scalar_t>(sh, static_cast<scalar_t>(scale), q, kt, vr, out, lse); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& dout, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& out, const at::Tensor& lse,
                                                                  double scale) {
  check_inputs(q, k, v);
  const Shape sh = shape_of(q, k, v);
  TORCH_CHECK(dout.sizes() == out.sizes() && out.sizes() == at::IntArrayRef({sh.B, sh.N, sh.Dv}),
              "hafsvg cpp attention backward: dout/out shape mismatch");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({sh.B, sh.N}), "hafsvg cpp attention backward: lse shape mismatch");
  const at::Tensor qr = rows_contiguous(q);
  const at::Tensor dor = rows_contiguous(dout.to(q.scalar_type()));
  const at::Tensor kt = k.transpose(1, 2).contiguous();
  const at::Tensor vt = v.transpose(1, 2).contiguous();
  const at::Tensor lsec = lse.contiguous();
  const at::Tensor outr = rows_contiguous(out.to(q.scalar_type()));
  at::Tensor delta = at::empty({sh.B, sh.N}, q.options());
  at::Tensor dk = at::empty({k.size(0), sh.M, sh.D}, q.options());
  at::Tensor dv = at::empty({v.size(0), sh.M, sh.Dv}, q.options());
  // dQ slots: enough (key batch, slot) tasks for about four per thread, at most 8 slots (each a
  // (B, D, N) buffer) and one per key block.
  const int64_t nkb = (sh.M + kBlockKV - 1) / kBlockKV;
  const int64_t slots =
      std::clamp<int64_t>((4 * at::get_num_threads() + k.size(0) - 1) / k.size(0), 1, std::min<int64_t>(8, nkb));
  at::Tensor dq_slots = at::zeros({slots, sh.B, sh.D, sh.N}, q.options());  // dQ^T per slot
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "hafsvg_attention_backward", [&] {
    using T = scalar_t;
    BackwardArgs<T> a{
        qr.const_data_ptr<T>(),  qr.stride(0),  qr.stride(1),  kt.const_data_ptr<T>(),   vt.const_data_ptr<T>(),
        dor.const_data_ptr<T>(), dor.stride(0), dor.stride(1), lsec.const_data_ptr<T>(), delta.const_data_ptr<T>()};
    row_dots<T>(dor, outr, delta.data_ptr<T>());
    const T s = static_cast<T>(scale);
    const bool shared = sh.rk == sh.rv;
    backward_kernel<T>(sh, s, a, slots, dq_slots.data_ptr<T>(), dk.data_ptr<T>(), shared ? dv.data_ptr<T>() : nullptr);
    if (!shared) dv_kernel<T>(sh, s, a, dv.data_ptr<T>());
  });
  at::Tensor dq = (slots == 1 ? dq_slots[0] : dq_slots.sum(0)).mul_(scale).transpose(1, 2).contiguous();
  return {dq, dk, dv};
}

}  // namespace hafsvg::cpu
