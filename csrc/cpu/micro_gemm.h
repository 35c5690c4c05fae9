// Register-blocked micro-GEMM for small, cache-resident tiles, written with ATen's explicit SIMD
// type at::vec::Vectorized<T>. The build selects its width (CPU_CAPABILITY_AVX512 / _AVX2, or the
// portable DEFAULT one, plain loops that -O3 auto-vectorises); see hafsvg_kernels/_ext.py.
//
//   C (rows x cols) = alpha * A (rows x K) * B (K x cols)   [+ C when accumulate]
//
// A is read one scalar at a time (broadcast), so it may have any strides: element (r, k) is
// A[r * sar + k * sak]; this is how the kernels read transposed tiles (P^T, dS^T) without copying.
// B's rows are read as vectors: row k starts at B + k * ldb and is contiguous. C is row-major with
// leading dimension ldc. No BLAS is called: the tiles are small and the call overhead of a BLAS
// (or of at::mm) per tile would dominate.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace hafsvg::cpu {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Vectors per register block: 4 (x 4 rows = 16 accumulators) where the ISA has 32 vector
// registers (AVX-512), 2 otherwise (AVX2 has 16).
template <typename T>
constexpr int kBlockVecs = sizeof(Vec<T>) >= 64 ? 4 : 2;
constexpr int kBlockRows = 4;

template <typename T, int R, int NV, bool kTail>
inline void micro_kernel(int64_t K, const T* A, int64_t sar, int64_t sak, const T* B, int64_t ldb, T* C, int64_t ldc,
                         int tail, T alpha, bool accumulate) {
  constexpr int W = Vec<T>::size();
  static_assert(!kTail || NV == 1, "a tail block is one vector wide");
  Vec<T> acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) acc[r][c] = Vec<T>(T(0));
  for (int64_t k = 0; k < K; ++k) {
    const T* brow = B + k * ldb;
    Vec<T> b[NV];
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) b[c] = kTail ? Vec<T>::loadu(brow, tail) : Vec<T>::loadu(brow + c * W);
    const T* acol = A + k * sak;
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const Vec<T> a(acol[r * sar]);
#pragma GCC unroll 4
      for (int c = 0; c < NV; ++c) acc[r][c] = at::vec::fmadd(a, b[c], acc[r][c]);
    }
  }
  const Vec<T> va(alpha);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    T* crow = C + r * ldc;
#pragma GCC unroll 4
    for (int c = 0; c < NV; ++c) {
      Vec<T> res = acc[r][c] * va;
      if (kTail) {
        if (accumulate) res = res + Vec<T>::loadu(crow, tail);
        res.store(crow, tail);
      } else {
        if (accumulate) res = res + Vec<T>::loadu(crow + c * W);
        res.store(crow + c * W);
      }
    }
  }
}

template <typename T, int R>
inline void gemm_rows(int64_t cols, int64_t K, const T* A, int64_t sar, int64_t sak, const T* B, int64_t ldb, T* C,
                      int64_t ldc, T alpha, bool accumulate) {
  constexpr int W = Vec<T>::size();
  constexpr int NV = kBlockVecs<T>;
  int64_t c = 0;
  for (; c + NV * W <= cols; c += NV * W)
    micro_kernel<T, R, NV, false>(K, A, sar, sak, B + c, ldb, C + c, ldc, W, alpha, accumulate);
  for (; c + W <= cols; c += W)
    micro_kernel<T, R, 1, false>(K, A, sar, sak, B + c, ldb, C + c, ldc, W, alpha, accumulate);
  if (c < cols)
    micro_kernel<T, R, 1, true>(K, A, sar, sak, B + c, ldb, C + c, ldc, static_cast<int>(cols - c), alpha, accumulate);
}

// C (rows x cols) = alpha * A * B [+ C]; see the file comment for the layouts.
template <typename T>
inline void gemm_tile(int64_t rows, int64_t cols, int64_t K, const T* A, int64_t sar, int64_t sak, const T* B,
                      int64_t ldb, T* C, int64_t ldc, T alpha, bool accumulate) {
  int64_t r = 0;
  for (; r + kBlockRows <= rows; r += kBlockRows)
    gemm_rows<T, kBlockRows>(cols, K, A + r * sar, sar, sak, B, ldb, C + r * ldc, ldc, alpha, accumulate);
  switch (rows - r) {
    case 3:
      gemm_rows<T, 3>(cols, K, A + r * sar, sar, sak, B, ldb, C + r * ldc, ldc, alpha, accumulate);
      break;
    case 2:
      gemm_rows<T, 2>(cols, K, A + r * sar, sar, sak, B, ldb, C + r * ldc, ldc, alpha, accumulate);
      break;
    case 1:
      gemm_rows<T, 1>(cols, K, A + r * sar, sar, sak, B, ldb, C + r * ldc, ldc, alpha, accumulate);
      break;
    default:
      break;
  }
}

// exp with ATen's vectorised implementations: the 20-ulp one for float (enough for a softmax
// checked at 1e-4), the accurate one for double. exp_u20 clamps its argument into
// [ln(FLT_MIN), ln(FLT_MAX)] with min/max, which turns NaN into ln(FLT_MAX) and +inf into a finite
// ~FLT_MAX: both are put back to IEEE exp's results (NaN -> NaN, x > ln(FLT_MAX) -> +inf), so that
// NaN and inf propagate as in torch (sigmoid(NaN) = NaN, not 0; exp(+inf) = inf).
template <typename T>
inline Vec<T> vexp(const Vec<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    constexpr float kLnFltMax = 88.72283935546875f;  // 0x42b17218, exp_u20's upper clamp
    const Vec<T> inf(std::numeric_limits<float>::infinity());
    const Vec<T> e = Vec<T>::blendv(x.exp_u20(), inf, x > Vec<T>(kLnFltMax));
    return Vec<T>::blendv(e, x, x.isnan());
  } else {
    return x.exp();
  }
}

template <typename T>
inline T hsum(const Vec<T>& v) {
  alignas(64) T tmp[Vec<T>::size()];
  v.store(tmp);
  T s = 0;
  for (int i = 0; i < Vec<T>::size(); ++i) s += tmp[i];
  return s;
}

template <typename T>
inline T hmax(const Vec<T>& v) {
  alignas(64) T tmp[Vec<T>::size()];
  v.store(tmp);
  T s = tmp[0];
  for (int i = 1; i < Vec<T>::size(); ++i) s = std::max(s, tmp[i]);
  return s;
}

}  // namespace hafsvg::cpu
