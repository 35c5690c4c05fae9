"""Reference PyTorch SVG-LP and HAF-SVG (Hierarchical Stochastic Video Generation with Aligned
Features): models, ELBO training, sampling of many futures per clip, metrics, data, CLI."""

from .config import HAFSVGConfig
from .models import HAFSVG, FeatureAligner
from .sampling import FastSampler

__all__ = ["HAFSVG", "HAFSVGConfig", "FastSampler", "FeatureAligner"]
__version__ = "0.1.0"
