"""Triton kernels run under the interpreter on CPU tensors when there is no GPU: the variable
must be set before Triton is first imported, so it is set here, before any test module loads.

On a GPU, cuDNN convolutions would use TF32 by default (``torch.backends.cudnn.allow_tf32``):
model-level equivalence tests compare an fp32 model on one backend with the same model on
another at SPEC §5's fp32 tolerance, which TF32 convolutions (different rounding on either side)
would not meet. Tests that mean TF32 turn it on themselves."""

import os

import torch

if torch.cuda.is_available():
    torch.backends.cudnn.allow_tf32 = False
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")
