// The CUDA attention kernels (csrc/cuda/attention_kernels.cuh) compiled for the CPU: one
// std::thread per CUDA thread, __syncthreads a barrier of the block's threads, __shared__ arrays
// function statics (one copy per kernel instantiation; the blocks of a launch run one after the
// other, so that copy is the running block's shared memory). Slow, and only as faithful as that
// model (no warps, no memory model beyond the barrier), but it runs the kernels' own indexing,
// tiling, staging and masking, so the tests check them on machines without a GPU
// (tests/test_cuda_emulated.py). float32 and float64 entry points, C ABI for ctypes.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim;

// A reusable barrier for the threads of one block. A barrier that some threads never reach (a
// __syncthreads in divergent code, which would hang or corrupt on a GPU) aborts the process with a
// message after 60 s instead of hanging the test run.
class BlockBarrier {
 public:
  explicit BlockBarrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
    } else if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return gen_ != gen; })) {
      std::fprintf(stderr, "attention_emulated: __syncthreads not reached by every thread of a block\n");
      std::abort();
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_, arrived_ = 0;
  int64_t gen_ = 0;
};

BlockBarrier* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->wait(); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#include "cuda/attention_kernels.cuh"

using namespace hafsvg::cuda::attention;

namespace {

template <typename F>
void launch(dim3 grid, F&& body) {
  blockDim = {unsigned(kRows), 1, 1};
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        BlockBarrier barrier(kRows);
        g_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < unsigned(kRows); ++t)
          threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            blockIdx = {x, y, z};
            body();
          });
        for (auto& th : threads) th.join();
      }
}

unsigned cdiv(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

template <typename F>
void with_head_dim(int64_t D, F&& f) {  // as attention_cuda.cu
  if (D <= 16)
    f(std::integral_constant<int, 16>{});
  else
    f(std::integral_constant<int, 64>{});
}

Strides st(const int64_t* s) { return {s[0], s[1], s[2]}; }

// dims: B, N, M, D, Dv, Bk, Bv
template <typename T>
void forward(const T* q, const int64_t* sq, const T* k, const int64_t* sk, const T* v, const int64_t* sv, T* out,
             const int64_t* so, T* lse, const int64_t* d, double scale) {
  const Dims dm{d[1], d[2], d[3], d[4], d[0] / d[5], d[0] / d[6]};
  with_head_dim(dm.D, [&](auto dmax) {
    constexpr int DM = decltype(dmax)::value;
    launch({unsigned(d[0]), cdiv(dm.N, kRows), cdiv(dm.Dv, kDvTile)}, [&] {
      fwd_kernel<T, DM>(q, st(sq), k, st(sk), v, st(sv), out, st(so), lse, dm, T(scale));
    });
  });
}

// dq, dk, dv contiguous; delta (B, N) scratch.
template <typename T>
void backward(const T* dout, const int64_t* sd, const T* q, const int64_t* sq, const T* k, const int64_t* sk,
              const T* v, const int64_t* sv, const T* out, const int64_t* so, const T* lse, T* delta, T* dq, T* dk,
              T* dv, const int64_t* d, double scale) {
  const Dims dm{d[1], d[2], d[3], d[4], d[0] / d[5], d[0] / d[6]};
  with_head_dim(dm.D, [&](auto dmax) {
    constexpr int DM = decltype(dmax)::value;
    launch({unsigned(d[0]), cdiv(dm.N, kRows), 1}, [&] {
      dq_kernel<T, DM>(q, st(sq), k, st(sk), v, st(sv), dout, st(sd), out, st(so), lse, delta, dq, dm, T(scale));
    });
    launch({unsigned(d[5]), cdiv(dm.M, kRows), 1}, [&] {
      dk_kernel<T, DM>(q, st(sq), k, st(sk), v, st(sv), dout, st(sd), lse, delta, dk, dm, T(scale));
    });
    launch({unsigned(d[6]), cdiv(dm.M, kRows), cdiv(dm.Dv, kDvTile)}, [&] {
      dv_kernel<T, DM>(q, st(sq), k, st(sk), dout, st(sd), lse, dv, dm, T(scale));
    });
  });
}

}  // namespace

#define HAFSVG_EMU_EXPORT(T, SUFFIX)                                                                                \
  extern "C" void attention_forward_##SUFFIX(const T* q, const int64_t* sq, const T* k, const int64_t* sk,        \
                                             const T* v, const int64_t* sv, T* out, const int64_t* so, T* lse,    \
                                             const int64_t* d, double scale) {                                    \
    forward<T>(q, sq, k, sk, v, sv, out, so, lse, d, scale);                                                      \
  }                                                                                                               \
  extern "C" void attention_backward_##SUFFIX(const T* dout, const int64_t* sd, const T* q, const int64_t* sq,     \
                                              const T* k, const int64_t* sk, const T* v, const int64_t* sv,        \
                                              const T* out, const int64_t* so, const T* lse, T* delta, T* dq,      \
                                              T* dk, T* dv, const int64_t* d, double scale) {                      \
    backward<T>(dout, sd, q, sq, k, sk, v, sv, out, so, lse, delta, dq, dk, dv, d, scale);                         \
  }

HAFSVG_EMU_EXPORT(float, f32)
HAFSVG_EMU_EXPORT(double, f64)
