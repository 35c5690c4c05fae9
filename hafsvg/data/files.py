"""Datasets read from local files: the Moving MNIST test .npy and folders of video frames.

``MovingMNISTNpy`` reads ``mnist_test_seq.npy`` (uint8, time-major (T, N, 64, 64)).
``FrameFolderDataset`` reads videos stored as ``root/<video>/<frame>.png`` (or .jpg/.jpeg;
frames ordered by file name), e.g. BAIR or KTH extracted to frames. Both yield float32
clips (T, C, H, W) in [0, 1].
"""

import bisect
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "FRAME_EXTENSIONS",
    "FrameFolderDataset",
    "MovingMNISTNpy",
    "bair_dataset",
    "kth_dataset",
]

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
_NPY_LAYOUT = (
    "a uint8 .npy array shaped (T, N, 64, 64), time-major, "
    "like mnist_test_seq.npy (20, 10000, 64, 64)"
)
_FOLDER_LAYOUT = (
    "root/<video>/<frame>.png (or .jpg): one folder of frames per video, frames ordered by name"
)


class MovingMNISTNpy(Dataset):
    """The fixed Moving MNIST set in an .npy file: item i is video i, float32 (T, 1, 64, 64).

    Values are in [0, 1]. ``n_frames`` keeps the first n_frames frames (default: all T).
    The file is memory-mapped, and re-mapped in each process it is pickled to (DataLoader
    workers) rather than copied.
    """

    def __init__(self, path: str | Path, n_frames: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; expected {_NPY_LAYOUT}")
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(
                f"{path}: not a readable .npy array ({err}); expected {_NPY_LAYOUT}"
            ) from err
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[2:] != (64, 64):
            raise ValueError(
                f"{path}: found {data.dtype} array of shape {data.shape}; expected {_NPY_LAYOUT}"
            )
        total = data.shape[0]
        self.n_frames = total if n_frames is None else n_frames
        if not 1 <= self.n_frames <= total:
            raise ValueError(
                f"{path}: n_frames must be in [1, {total}] (frames per video), got {n_frames}"
            )
        self.path, self.num_videos, self._data = path, data.shape[1], data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def __len__(self) -> int:
        return self.num_videos

    def __getitem__(self, index: int) -> Tensor:
        """Video ``index``: float32 (n_frames, 1, 64, 64) in [0, 1]."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        if self._data is None:
            self._data = np.load(self.path, mmap_mode="r", allow_pickle=False)
        clip = np.asarray(self._data[: self.n_frames, index], dtype=np.float32) / 255.0
        return torch.from_numpy(clip).unsqueeze(1)


def _frame_files(video: Path) -> list[Path]:
    return sorted(
        p for p in video.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS
    )


class FrameFolderDataset(Dataset):
    """Windows of ``n_frames`` consecutive frames of videos stored as ``root/<video>/<frame>.png``.

    Videos are the sub-folders of ``root`` sorted by name; frames are the .png/.jpg/.jpeg files
    in each, sorted by name. Items enumerate every window video by video, start by start:
    window starts 0, stride, 2 * stride, ... while start + n_frames <= frames in the video.
    Videos shorter than n_frames contribute nothing. Item i is float32
    (n_frames, channels, image_size, image_size) in [0, 1]: frames converted to RGB
    (channels=3) or greyscale (channels=1) and bilinearly resized to a square if needed.
    """

    def __init__(
        self,
        root: str | Path,
        n_frames: int,
        image_size: int = 64,
        channels: int = 3,
        stride: int = 1,
    ) -> None:
        root = Path(root)
        for name, value in (("n_frames", n_frames), ("image_size", image_size), ("stride", stride)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory; expected {_FOLDER_LAYOUT}")
        videos = sorted(p for p in root.iterdir() if p.is_dir())
        if not videos:
            raise ValueError(f"{root}: no video folders found; expected {_FOLDER_LAYOUT}")
        self.videos: list[list[Path]] = []
        self._starts: list[int] = []  # cumulative window count before each kept video
        total = 0
        for video in videos:
            frames = _frame_files(video)
            if len(frames) >= n_frames:
                self.videos.append(frames)
                self._starts.append(total)
                total += (len(frames) - n_frames) // stride + 1
        if not self.videos:
            longest = max(len(_frame_files(v)) for v in videos)
            raise ValueError(
                f"{root}: no video has {n_frames} frames (longest has {longest}) in {len(videos)} "
                f"folders; expected {_FOLDER_LAYOUT}"
            )
        self.length = total
        self.n_frames, self.image_size, self.channels, self.stride = (
            n_frames,
            image_size,
            channels,
            stride,
        )

    def __len__(self) -> int:
        return self.length

    def window(self, index: int) -> tuple[int, int]:
        """(video number in ``self.videos``, first frame) of item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} windows")
        video = bisect.bisect_right(self._starts, index) - 1
        return video, (index - self._starts[video]) * self.stride

    def _load(self, path: Path) -> np.ndarray:
        """One frame: uint8 (image_size, image_size, channels)."""
        size = (self.image_size, self.image_size)
        with Image.open(path) as image:
            frame = image.convert("RGB" if self.channels == 3 else "L")
        if frame.size != size:
            frame = frame.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(frame).reshape(*size, self.channels)

    def __getitem__(self, index: int) -> Tensor:
        """Window ``index``: float32 (n_frames, channels, image_size, image_size) in [0, 1]."""
        video, start = self.window(index)
        paths = self.videos[video][start : start + self.n_frames]
        clip = np.stack([self._load(p) for p in paths]).astype(np.float32) / 255.0
        return torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()


def bair_dataset(
    root: str | Path, n_frames: int, image_size: int = 64, stride: int = 1
) -> FrameFolderDataset:
    """BAIR robot pushing as RGB frame folders: items (n_frames, 3, image_size, image_size)."""
    return FrameFolderDataset(root, n_frames, image_size=image_size, channels=3, stride=stride)


def kth_dataset(
    root: str | Path, n_frames: int, image_size: int = 64, stride: int = 1
) -> FrameFolderDataset:
    """KTH actions as greyscale frame folders: items (n_frames, 1, image_size, image_size)."""
    return FrameFolderDataset(root, n_frames, image_size=image_size, channels=1, stride=stride)
