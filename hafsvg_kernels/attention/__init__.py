from .interface import ATTENTION, aligned_attention
from .reference import aligned_attention_ref

__all__ = ["ATTENTION", "aligned_attention", "aligned_attention_ref"]
