"""``hafsvg.fast_sampling``, the import path of :mod:`hafsvg.sampling.fast_sampler` before the
package was grouped by role: the same module object (not a copy), so patches and private names
behave as there."""

import sys

from .sampling import fast_sampler

sys.modules[__name__] = fast_sampler
