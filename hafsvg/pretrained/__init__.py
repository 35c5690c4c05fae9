"""The shipped pretrained model and test set (files beside this module; ``MODEL_CARD.md`` says how
they were made and what they score; :mod:`hafsvg.pretrained.card` remakes the card)."""

from pathlib import Path

__all__ = ["CARD", "CHECKPOINT", "CURVE", "HERE", "SCORES", "TESTSET"]

HERE = Path(__file__).resolve().parent
#: HAF-SVG-4 on Stochastic Moving MNIST: weights, config and step only (read with ``weights_only=True``).
CHECKPOINT = HERE / "haf-svg-4-smmnist.pt"
#: 64 test clips of 15 frames (5 context, 10 to predict), written by ``hafsvg make-testset``.
TESTSET = HERE / "smmnist-test-64.npz"
CARD = HERE / "MODEL_CARD.md"
CURVE = HERE / "training_curve.png"
SCORES = HERE / "scores.json"
