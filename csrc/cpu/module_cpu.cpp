// The CPU extension module: hafsvg_kernels._C when setup.py prebuilt it, else built at first use
// by hafsvg_kernels/_ext.py. Functions: see ../common/bindings.h.
#include "../common/bindings.h"
#include "kernels.h"

#ifndef HAFSVG_CPU_CAPABILITY
#define HAFSVG_CPU_CAPABILITY DEFAULT
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hafsvg CPU kernels: aligned attention (tiled online softmax) and the fused recurrent step";
  hafsvg::bind_all<hafsvg::cpu::pointwise_ops>(m, &hafsvg::cpu::attention_forward, &hafsvg::cpu::attention_backward);
  m.attr("cpu_capability") = HAFSVG_STR(HAFSVG_CPU_CAPABILITY);
}
