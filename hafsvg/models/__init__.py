from .aligner import FeatureAligner
from .dcgan64 import DCGANDecoder, DCGANEncoder
from .hafsvg import HAFSVG
from .vgg64 import VGGDecoder, VGGEncoder

__all__ = ["FeatureAligner", "DCGANDecoder", "DCGANEncoder", "HAFSVG", "VGGDecoder", "VGGEncoder"]
