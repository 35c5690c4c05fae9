// The CUDA extension module: hafsvg_kernels._C_cuda when setup.py prebuilt it, else built at first
// use by hafsvg_kernels/_ext.py. Functions: see ../common/bindings.h.
#include "../common/bindings.h"
#include "kernels_cuda.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hafsvg CUDA kernels: aligned attention and the fused recurrent step (fallback where Triton is missing)";
  hafsvg::bind_all<hafsvg::cuda::pointwise_ops>(m, &hafsvg::cuda::attention_forward, &hafsvg::cuda::attention_backward);
  m.attr("max_head_dim") = hafsvg::cuda::kMaxHeadDim;
}
