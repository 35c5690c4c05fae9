"""``hafsvg.train``, the import path of :mod:`hafsvg.training.train` before the package was
grouped by role (``hafsvg.train.load_checkpoint`` and the rest): the same module object."""

import sys

from .training import train

sys.modules[__name__] = train
