"""Triton kernels run under the interpreter on CPU tensors when there is no GPU: the variable
must be set before Triton is first imported, so it is set here, before any test module loads."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
