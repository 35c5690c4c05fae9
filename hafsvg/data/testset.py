"""Fixed test sets: clips stored once as a uint8 ``.npz``, read back the same on every machine.

Layout (format version 1), every entry a plain array (``numpy.load(path, allow_pickle=False)``):

* ``clips``: uint8 (N, T, C, 64, 64), frame values round(x * 255) of clips x in [0, 1];
* ``dataset`` (str), ``seed`` (int64), ``frames`` (int64, T), ``num_digits`` (int64),
  ``format_version`` (int64, 1), ``description`` (str: how the clips were made),
  ``created_by`` (str: "hafsvg <version>"): metadata, all 0-d arrays.

Only ``clips`` is required to read a file: any uint8 (N, T, C, 64, 64) array under that key is a
test set. :func:`make_testset` writes the file byte for byte the same for the same arguments
(fixed zip timestamps; the clips come from per-clip seeded generators).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import PRESETS
from .moving_mnist import DEFAULT_FONT_DIGITS

__all__ = ["TESTSET_DATASETS", "TESTSET_FORMAT", "NpzClips", "default_frames", "make_testset", "quantize", "write_npz"]

TESTSET_FORMAT = 1
TESTSET_DATASETS = ("moving-mnist",)  # the generated ones; kth / bair come from frame folders
_LAYOUT = "an .npz holding 'clips', a uint8 array (N, T, C, 64, 64) with C = 1 or 3 (see 'hafsvg make-testset')"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamps: same arguments, same bytes


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], compress: bool = True) -> Path:
    """Write ``arrays`` as an ``.npz`` (what ``numpy.savez[_compressed]`` writes, readable by
    ``numpy.load``) whose bytes depend only on the arrays: entry timestamps are fixed. Written to a
    temporary file first and then renamed, so a reader never sees half a file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(tmp, "w", compression=method) as archive:
        for name, value in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())
    tmp.replace(path)
    return path


def _testset_key(name: str) -> str:
    key = name.lower().replace("_", "-")
    if key not in TESTSET_DATASETS:
        raise ValueError(f"cannot generate a test set of {name!r}; generated datasets: {', '.join(TESTSET_DATASETS)}")
    return key


def default_frames(name: str) -> int:
    """Frames per clip of a generated test set by default: the dataset preset's n_past + n_eval."""
    preset = PRESETS[_testset_key(name)]
    return preset["n_past"] + preset["n_eval"]


def make_testset(
    name: str, clips: int, seed: int, frames: int | None = None, path: str | Path = "testset.npz",
    *, num_digits: int = 2,
) -> Path:
    """Write a fixed test set of ``clips`` clips of ``frames`` frames to ``path`` (a ``.npz``).

    "moving-mnist": the clips ``make_dataset("moving-mnist", frames, train=False, seed=seed)``
    generates (embedded font digits, stochastic bounces, ``num_digits`` digits; clip i drawn from
    ``numpy.random.default_rng((2 * seed + 1, i))``), i.e. the clips ``hafsvg evaluate --seed S``
    draws without ``--data`` when it needs ``frames`` frames (a clip's motion depends on its
    length, so a longer set cut to fewer frames differs from that). ``frames`` defaults to the
    moving-mnist preset's n_past + n_eval (30).
    The same arguments give the same bytes. Returns the path.
    """
    from . import make_dataset  # the package imports this module

    key = _testset_key(name)
    frames = default_frames(key) if frames is None else frames
    for label, value in (("clips", clips), ("frames", frames), ("num_digits", num_digits)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path}: a test set file name must end with .npz")
    dataset = make_dataset(key, frames, train=False, seed=seed, length=clips, num_digits=num_digits)
    data = np.stack([quantize(dataset[i]).numpy() for i in range(clips)])
    from .. import __version__

    return write_npz(path, {
        "clips": data,
        "dataset": np.array(key),
        "seed": np.array(seed, np.int64),
        "frames": np.array(frames, np.int64),
        "num_digits": np.array(num_digits, np.int64),
        "format_version": np.array(TESTSET_FORMAT, np.int64),
        "description": np.array(
            f"hafsvg.data.make_testset: {clips} clips of {frames} frames of Moving MNIST generated by "
            f"MovingMNIST(font_digits({DEFAULT_FONT_DIGITS}, seed={2 * seed + 1}), num_digits={num_digits}, "
            f"stochastic bounces, seed={2 * seed + 1}) (the test split of seed {seed}); clip i from "
            f"numpy.random.default_rng(({2 * seed + 1}, i)); uint8 = round(x * 255)"
        ),
        "created_by": np.array(f"hafsvg {__version__}"),
    })


def quantize(x: Tensor) -> Tensor:
    """Frames in [0, 1] -> uint8 round(x * 255) (clamped to [0, 1] first; ties to even)."""
    return torch.round(x.detach().float().clamp(0, 1) * 255).to(torch.uint8)


class NpzClips(Dataset):
    """A fixed test set in an ``.npz`` (see the module doc): item i is clip i's first ``n_frames``
    frames, float32 (n_frames, C, 64, 64) in [0, 1] (uint8 / 255).

    Every problem with the file is one ValueError line naming it (FileNotFoundError if it is
    missing): not an .npz, no ``clips``, wrong dtype or shape, a newer format version, or clips
    shorter than ``n_frames``. The clips are read into memory once.
    """

    def __init__(self, path: str | Path, n_frames: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; expected {_LAYOUT}")
        with open(path, "rb") as f:
            head = f.read(6)
        if head.startswith(b"\x93NUMPY"):
            raise ValueError(f"{path}: a single .npy array, not an .npz archive; expected {_LAYOUT}")
        if not head.startswith(b"PK"):
            raise ValueError(f"{path}: not an .npz archive (no zip header); expected {_LAYOUT}")
        try:
            archive = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            message = " ".join(str(err).split())
            raise ValueError(f"{path}: not a readable .npz test set ({message}); expected {_LAYOUT}") from err
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not an .npz archive; expected {_LAYOUT}")
        try:
            with archive:
                keys = set(archive.files)
                if "clips" not in keys:
                    raise ValueError(f"no 'clips' array (found {', '.join(sorted(keys)) or 'nothing'})")
                data = archive["clips"]
                meta = {k: archive[k] for k in sorted(keys - {"clips"})}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
            message = " ".join(str(err).split())
            raise ValueError(f"{path}: not a readable test set ({message}); expected {_LAYOUT}") from err
        self.metadata = {k: v.item() for k, v in meta.items() if v.ndim == 0}
        version = self.metadata.get("format_version", TESTSET_FORMAT)
        if not isinstance(version, int):
            raise ValueError(f"{path}: 'format_version' is {version!r}, expected an integer")
        if version > TESTSET_FORMAT:
            raise ValueError(f"{path}: test set format version {version}; this hafsvg reads <= {TESTSET_FORMAT}")
        if data.dtype != np.uint8 or data.ndim != 5 or data.shape[2] not in (1, 3) or data.shape[3:] != (64, 64):
            raise ValueError(f"{path}: 'clips' is a {data.dtype} array of shape {data.shape}; expected {_LAYOUT}")
        if len(data) == 0:
            raise ValueError(f"{path}: 'clips' holds no clips; expected {_LAYOUT}")
        total = data.shape[1]
        self.n_frames = total if n_frames is None else n_frames
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        if self.n_frames > total:
            raise ValueError(
                f"{path}: clips have {total} frames but {self.n_frames} are needed (context + predicted); "
                f"make a test set with more frames (hafsvg make-testset --frames {self.n_frames})"
            )
        self.path = path
        self.clips = torch.from_numpy(np.ascontiguousarray(data[:, : self.n_frames]))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Tensor:
        """Clip ``index``: float32 (n_frames, C, 64, 64) in [0, 1]."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        return self.clips[index].float() / 255.0
