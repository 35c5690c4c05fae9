"""Video datasets: Moving MNIST (generated or from .npy), BAIR and KTH frame folders, fixed .npz test sets.

Every dataset yields float32 clips (T, C, H, W) in [0, 1]; torch's default collate batches
them to (B, T, C, H, W).
"""

from pathlib import Path

from torch.utils.data import Dataset, Subset

from .digits import font_digits, load_mnist_idx
from .files import FrameFolderDataset, MovingMNISTNpy, bair_dataset, kth_dataset
from .moving_mnist import DEFAULT_FONT_DIGITS, MovingMNIST, Trajectory
from .testset import TESTSET_DATASETS, TESTSET_FORMAT, NpzClips, make_testset

__all__ = [
    "DATASETS",
    "DEFAULT_FONT_DIGITS",
    "FrameFolderDataset",
    "MovingMNIST",
    "MovingMNISTNpy",
    "NpzClips",
    "TESTSET_DATASETS",
    "TESTSET_FORMAT",
    "Trajectory",
    "bair_dataset",
    "font_digits",
    "kth_dataset",
    "load_mnist_idx",
    "make_dataset",
    "make_testset",
]

DATASETS = ("moving-mnist", "kth", "bair")


def _split_root(root: Path, train: bool) -> Path:
    """``root/train`` or ``root/test`` when that split folder exists, else ``root`` itself."""
    split = root / ("train" if train else "test")
    return split if split.is_dir() else root


def make_dataset(
    name: str,
    n_frames: int,
    *,
    path: str | Path | None = None,
    train: bool = True,
    seed: int = 0,
    length: int | None = None,
    num_digits: int = 2,
    deterministic: bool = False,
) -> Dataset:
    """Build a dataset of float32 clips (n_frames, C, 64, 64) in [0, 1] by name.

    Any dataset: a path ending in .npz -> ``NpzClips``, a fixed test set written by
    :func:`make_testset` (or any uint8 (N, T, C, 64, 64) array stored as ``clips``), cut to its
    first n_frames frames (ValueError if its clips are shorter); train, seed, num_digits and
    deterministic are unused.

    "moving-mnist": path None -> generated from the embedded font digits; a path ending in
    .npy -> ``MovingMNISTNpy`` (the fixed set; train, seed, num_digits, deterministic unused);
    any other path -> an MNIST IDX image file (.gz allowed) as the digit source. Generated
    data uses seed 2 * seed for train and 2 * seed + 1 for test, so the splits differ;
    ``length`` is the number of generated clips (default: number of digits).
    "kth" (C=1) / "bair" (C=3): path is a folder of frames: the trees SVG's converters write
    (``KTH/processed/<class>/<video>/image-NNN_<size>x<size>.png``, split by person;
    ``processed_data/{train,test}/<group>/<trajectory>/<i>.png``) or root/<video>/<frame>.png;
    if it has a train/ or test/ sub-folder, the one matching ``train`` is used. Training takes
    every window of n_frames frames; test sets (train=False) the windows n_frames apart, from
    frame 0 of each video (so clips do not overlap).
    For file-backed datasets ``length`` keeps at most the first ``length`` items.
    """
    key = name.lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    dataset: Dataset
    if path is not None and Path(path).suffix.lower() == ".npz":
        dataset = NpzClips(path, n_frames)
    elif key == "moving-mnist" and (path is None or Path(path).suffix.lower() != ".npy"):
        if path is not None and Path(path).is_dir():
            state = "an empty folder" if not any(Path(path).iterdir()) else "a folder"
            raise ValueError(
                f"{path}: is {state}; Moving MNIST --data takes an MNIST IDX image file (train-images-idx3-ubyte"
                "[.gz]), mnist_test_seq.npy or a test set .npz"
            )
        digits = None if path is None else load_mnist_idx(path)
        return MovingMNIST(
            digits,
            n_frames=n_frames,
            num_digits=num_digits,
            deterministic=deterministic,
            length=length,
            seed=2 * seed + (0 if train else 1),
        )
    elif key == "moving-mnist":
        dataset = MovingMNISTNpy(path, n_frames=n_frames)
    elif path is None:
        raise ValueError(
            f"dataset {name!r} needs path=<folder of frames: SVG's converted tree or root/<video>/<frame>.png>"
        )
    else:
        build = kth_dataset if key == "kth" else bair_dataset
        dataset = build(_split_root(Path(path), train), n_frames, train=train, stride=1 if train else n_frames)
    if length is not None and length < len(dataset):
        dataset = Subset(dataset, range(length))
    return dataset
