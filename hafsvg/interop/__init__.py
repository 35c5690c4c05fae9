"""Reading other projects' checkpoints: SVG-LP (:mod:`hafsvg.interop.svg`), through an allow-list
unpickler that never runs code from the file (:mod:`hafsvg.interop.safe_pickle`)."""

from .svg import NotSVGCheckpoint, describe_import, load_any_checkpoint, load_svg_checkpoint, svg_config, svg_key

__all__ = [
    "NotSVGCheckpoint",
    "describe_import",
    "load_any_checkpoint",
    "load_svg_checkpoint",
    "svg_config",
    "svg_key",
]
