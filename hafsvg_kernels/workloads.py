"""The aligner's workloads the kernels must be fast on: the feature levels of the paper's models
(DCGAN-64 on Moving MNIST, VGG-64 on KTH and BAIR) at the sampling batch. One table for the
benchmarks (``benchmarks/``) and the static sm_90 analysis (:mod:`hafsvg_kernels.sm90`)."""

from typing import NamedTuple


class AlignerRow(NamedTuple):
    id: str  # short id, as in the benchmarks' test ids
    name: str  # as in the static report
    n: int  # queries = keys of one feature map: H * W
    c: int  # value channels (d_v)
    d_qk: int  # query / key channels


ALIGNER_ROWS = (
    AlignerRow("dcgan32", "DCGAN 32x32", 1024, 64, 8),
    AlignerRow("dcgan16", "DCGAN 16x16", 256, 128, 16),
    AlignerRow("dcgan8", "DCGAN 8x8", 64, 256, 32),
    AlignerRow("dcgan4", "DCGAN 4x4", 16, 512, 64),
    AlignerRow("vgg64", "VGG 64x64", 4096, 64, 8),
    AlignerRow("vgg32", "VGG 32x32", 1024, 128, 16),
    AlignerRow("vgg16", "VGG 16x16", 256, 256, 32),
    AlignerRow("vgg8", "VGG 8x8", 64, 512, 64),
)

#: The sampling batch: clips, and futures sampled per clip (queries per sample, K/V per clip).
SAMPLING_CLIPS, SAMPLING_SAMPLES = 16, 100
