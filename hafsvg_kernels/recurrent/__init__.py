from .fold import fold_embedding
from .fuse import fuse
from .fused import FusedGaussianLSTM, FusedHierarchicalGaussianLSTM, FusedLSTM
from .interface import GAUSSIAN_LSTM_STEP, LSTM_STEP, gaussian_lstm_step, lstm_step
from .modules import LSTM, GaussianLSTM, HierarchicalGaussianLSTM
from .reference import CellWeights, GaussianLSTMWeights, LSTMWeights

__all__ = [
    "GAUSSIAN_LSTM_STEP",
    "LSTM",
    "LSTM_STEP",
    "CellWeights",
    "FusedGaussianLSTM",
    "FusedHierarchicalGaussianLSTM",
    "FusedLSTM",
    "GaussianLSTM",
    "GaussianLSTMWeights",
    "HierarchicalGaussianLSTM",
    "LSTMWeights",
    "fold_embedding",
    "fuse",
    "gaussian_lstm_step",
    "lstm_step",
]
