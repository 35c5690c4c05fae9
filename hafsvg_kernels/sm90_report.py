"""``python -m hafsvg_kernels.sm90_report``: the static sm_90a report of the Triton kernels (see
:mod:`hafsvg_kernels.sm90.report`)."""

import sys

from .sm90.report import main

if __name__ == "__main__":
    sys.exit(main())
