"""Datasets read from local files: the Moving MNIST test .npy and folders of video frames.

``MovingMNISTNpy`` reads ``mnist_test_seq.npy`` (uint8, time-major (T, N, 64, 64)).
``FrameFolderDataset`` reads videos stored as ``root/<video>/<frame>.png`` (or .jpg/.jpeg).
``bair_dataset`` and ``kth_dataset`` also read, as they are, the folders that SVG's converters
write (``processed_data/{train,test}/<group>/<trajectory>/<i>.png`` for BAIR,
``KTH/processed/<class>/<video>/image-<n>_<size>x<size>.png`` for KTH). Frames are ordered by
the numbers in their names (natural order: 2.png before 10.png). All yield float32 clips
(T, C, H, W) in [0, 1].
"""

import bisect
import os
import re
from collections.abc import Sequence
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
    "root/<video>/<frame>.png (or .jpg): one folder of frames per video, frames ordered by the "
    "numbers in their names"
)
_BAIR_LAYOUT = (
    "SVG's convert_bair.py output processed_data/{train,test}/<group>/<trajectory>/<i>.png (pass "
    "processed_data, the folder holding it, or train/test), or root/<video>/<frame>.png"
)
_KTH_LAYOUT = (
    "SVG's convert_kth.lua output KTH/processed/<class>/personNN_<class>_dN/image-NNN_<size>x<size>.png "
    "(pass KTH/processed or KTH), or root/<video>/<frame>.png"
)
_KTH_PERSONS = {True: range(1, 21), False: range(21, 26)}  # SVG's split: train 1-20, test 21-25
_KTH_PERSON = re.compile(r"person(\d+)_", re.IGNORECASE)
_KTH_FRAME = re.compile(r"image-\d+_(\d+)x(\d+)\.", re.IGNORECASE)


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


def _natural_key(name: str) -> tuple:
    """Sort key that orders the numbers in a name by value: 2.png < 10.png, image-9 < image-10.

    Ties (e.g. 1.png and 01.png) are broken by the name itself, so the order is total.
    """
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


def _scan(folder: Path, orders: dict | None = None) -> tuple[list[str], tuple[str, ...]]:
    """(sub-folder names, frame file names) of ``folder``, naturally sorted; hidden names skipped.

    Uses ``os.scandir`` (file types come with the listing, no stat per file). ``orders`` caches
    the frame order by name set across calls, so the thousands of videos holding the same names
    (0.png ... 29.png) are sorted once and share one tuple.
    """
    folders, frames = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(entry.name)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in FRAME_EXTENSIONS:
                frames.append(entry.name)
    names = tuple(sorted(frames))
    ordered = None if orders is None else orders.get(names)
    if ordered is None:
        ordered = tuple(sorted(names, key=_natural_key))
        if orders is not None:
            orders[names] = ordered
    return sorted(folders, key=_natural_key), ordered


def _require_folder(root: Path, layout: str) -> None:
    """FileNotFoundError if ``root`` is not a folder, ValueError if it is empty."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory; expected {layout}")
    with os.scandir(root) as entries:
        if not any(not e.name.startswith(".") for e in entries):
            raise ValueError(f"{root}: the folder is empty; expected {layout}")


_Video = tuple[Path, tuple[str, ...]]  # (folder, frame file names in order)


def _find_videos(root: Path, depth: int) -> list[_Video]:
    """Every folder at most ``depth`` levels below ``root`` that holds frames, as a video.

    A folder holding frames is a video and is not searched further. Videos come in natural
    order of their path below ``root``, frames in natural order of their names.
    """
    videos: list[_Video] = []
    orders: dict[tuple[str, ...], tuple[str, ...]] = {}

    def visit(folder: Path, level: int) -> None:
        folders, frames = _scan(folder, orders)
        if frames and level > 0:
            videos.append((folder, frames))
        elif level < depth:
            for name in folders:
                visit(folder / name, level + 1)

    visit(root, 0)
    return videos


def _no_frames(root: Path, layout: str) -> ValueError:
    """The error for a folder with entries but no videos of frames in the expected places."""
    holds_frames = root.is_dir() and bool(_scan(root)[1])
    hint = " (it holds frames itself: pass the folder above it)" if holds_frames else ""
    return ValueError(f"{root}: no folders of frames found{hint}; expected {layout}")


class FrameFolderDataset(Dataset):
    """Windows of ``n_frames`` consecutive frames of videos stored as ``root/<video>/<frame>.png``.

    Videos are the sub-folders of ``root`` holding .png/.jpg/.jpeg files, and each video's frames
    are those files; both are in natural order (the numbers in a name compare by value, so
    ``2.png`` comes before ``10.png``). ``videos`` gives the (folder, frame names) list instead
    (what :func:`bair_dataset` and :func:`kth_dataset` find); ``layout`` is the text errors quote.

    Items enumerate every window video by video, start by start: window starts 0, stride,
    2 * stride, ... while start + n_frames <= frames in the video. The enumeration is fixed (no
    random start), so train and test sets alike are deterministic; shuffle with the DataLoader.
    Videos shorter than n_frames contribute nothing; if none is long enough, ValueError. Item i
    is float32 (n_frames, channels, image_size, image_size) in [0, 1]: frames converted to RGB
    (channels=3) or greyscale (channels=1, ITU-R 601 luma) and bilinearly resized to a square if
    needed.

    Raises FileNotFoundError if ``root`` is not a folder, ValueError if it is empty or holds no
    folders of frames.
    """

    def __init__(
        self,
        root: str | Path,
        n_frames: int,
        image_size: int = 64,
        channels: int = 3,
        stride: int = 1,
        *,
        videos: Sequence[_Video] | None = None,
        layout: str = _FOLDER_LAYOUT,
    ) -> None:
        root = Path(root)
        for name, value in (("n_frames", n_frames), ("image_size", image_size), ("stride", stride)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if videos is None:
            _require_folder(root, layout)
            videos = _find_videos(root, depth=1)
        if not videos:
            raise _no_frames(root, layout)
        self.root = root
        self.videos: list[_Video] = []
        self._starts: list[int] = []  # cumulative window count before each kept video
        total = 0
        for folder, frames in videos:
            if len(frames) >= n_frames:
                self.videos.append((Path(folder), tuple(frames)))
                self._starts.append(total)
                total += (len(frames) - n_frames) // stride + 1
        if not self.videos:
            longest = max(len(frames) for _, frames in videos)
            raise ValueError(
                f"{root}: no video has {n_frames} frames (longest has {longest}) in {len(videos)} "
                f"folders; expected {layout}"
            )
        self.length = total
        self.n_frames, self.image_size, self.channels, self.stride = (
            n_frames,
            image_size,
            channels,
            stride,
        )

    def frame_paths(self, video: int) -> list[Path]:
        """The frame files of video ``video`` (a number in ``self.videos``), in order."""
        folder, frames = self.videos[video]
        return [folder / name for name in frames]

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
        folder, frames = self.videos[video]
        paths = [folder / name for name in frames[start : start + self.n_frames]]
        clip = np.stack([self._load(p) for p in paths]).astype(np.float32) / 255.0
        return torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()


def bair_dataset(
    root: str | Path, n_frames: int, image_size: int = 64, stride: int = 1, train: bool | None = None
) -> FrameFolderDataset:
    """BAIR robot pushing as RGB frame folders: items (n_frames, 3, image_size, image_size).

    Reads what SVG's ``data/convert_bair.py`` writes, as it is:
    ``processed_data/{train,test}/<group>/<trajectory>/<i>.png``, 30 64x64 RGB frames per
    trajectory numbered 0 ... 29 without zero padding (read in natural order). ``root`` may be
    the folder holding ``processed_data`` (SVG's ``--data_dir``), ``processed_data`` itself (both
    hold the split folders: ``train`` picks train/ or test/ and must then be given), a split
    folder (videos two levels below it) or a group folder; the generic ``root/<video>/<frame>.png``
    layout is read too. Windows as in :class:`FrameFolderDataset` (every start, ``stride`` apart).
    """
    root = Path(root)
    _require_folder(root, _BAIR_LAYOUT)
    if (root / "processed_data").is_dir():
        root = root / "processed_data"
        _require_folder(root, _BAIR_LAYOUT)
    splits = [name for name in ("train", "test") if (root / name).is_dir()]
    if splits:
        if train is None:
            raise ValueError(
                f"{root}: holds the split folder(s) {', '.join(splits)}: pass train=True/False or point at "
                f"one of them; expected {_BAIR_LAYOUT}"
            )
        split = root / ("train" if train else "test")
        if not split.is_dir():
            raise FileNotFoundError(f"{split}: no such directory (the {split.name} split); expected {_BAIR_LAYOUT}")
        root = split
        _require_folder(root, _BAIR_LAYOUT)
    videos = _find_videos(root, depth=2)
    return FrameFolderDataset(
        root, n_frames, image_size=image_size, channels=3, stride=stride, videos=videos, layout=_BAIR_LAYOUT
    )


def _kth_person(video: Path) -> int | None:
    match = _KTH_PERSON.match(video.name)
    return int(match[1]) if match else None


def _kth_videos(root: Path) -> tuple[Path, list[_Video]] | None:
    """(folder, its person-named videos) for the first of root, root/processed, root/KTH/processed
    holding video folders named person<NN>_... one or two levels down; None if none does."""
    for base in (root, root / "processed", root / "KTH" / "processed"):
        if base.is_dir():
            videos = [v for v in _find_videos(base, depth=2) if _kth_person(v[0]) is not None]
            if videos:
                return base, videos
    return None


def _one_size(frames: Sequence[str], image_size: int) -> tuple[str, ...]:
    """The frames of one size from convert_kth.lua's image-NNN_<w>x<h>.png names.

    A folder converted twice (e.g. --imageSize 128 and 64) holds both sizes: keep
    image_size x image_size if present, else the largest. Names without a size: all frames.
    """
    sizes: dict[tuple[int, int], list[str]] = {}
    for name in frames:
        match = _KTH_FRAME.match(name)
        if match:
            sizes.setdefault((int(match[1]), int(match[2])), []).append(name)
    if not sizes:
        return tuple(frames)
    return tuple(sizes.get((image_size, image_size)) or sizes[max(sizes)])


def kth_dataset(
    root: str | Path, n_frames: int, image_size: int = 64, stride: int = 1, train: bool | None = None
) -> FrameFolderDataset:
    """KTH actions as greyscale frame folders: items (n_frames, 1, image_size, image_size).

    Reads what SVG's ``data/convert_kth.lua`` writes, as it is:
    ``KTH/processed/<class>/<video>/image-<n>_<size>x<size>.png`` (ffmpeg's frames at 25 fps,
    numbered from 001; RGB files of a grey video, read as grey and resized to ``image_size``:
    the converter's default 128 is resized to 64, 64 is read as is). ``root`` may be
    ``KTH/processed`` (the folder holding the class folders), ``KTH`` (holding ``processed/``),
    the folder holding ``KTH`` (SVG's ``--data_root``) or one class folder. Videos are split by
    the person in their name (``person01_boxing_d1``) as SVG does: ``train=True`` keeps persons
    1-20, ``train=False`` persons 21-25, and one of them must be given; folders not named
    person<NN>_... are left out. Whole videos are read: SVG's Lua segment lists
    (``<class>/{train,test}_meta<size>x<size>.t7``) are not, so windows (every start, ``stride``
    apart, as in :class:`FrameFolderDataset`) may span the still frames between KTH's action
    segments. Any other tree is read as the generic ``root/<video>/<frame>.png`` layout, all
    videos, ``train`` unused.
    """
    root = Path(root)
    _require_folder(root, _KTH_LAYOUT)
    found = _kth_videos(root)
    if found is None:
        videos = _find_videos(root, depth=1)
        return FrameFolderDataset(
            root, n_frames, image_size=image_size, channels=1, stride=stride, videos=videos, layout=_KTH_LAYOUT
        )
    base, videos = found
    if train is None:
        raise ValueError(
            f"{base}: SVG's KTH layout is split by person (train=True: persons 1-20, train=False: "
            "persons 21-25): pass train"
        )
    persons = _KTH_PERSONS[train]
    kept = [(folder, _one_size(frames, image_size)) for folder, frames in videos if _kth_person(folder) in persons]
    if not kept:
        found_persons = sorted({_kth_person(folder) for folder, _ in videos})
        raise ValueError(
            f"{base}: no video of persons {persons[0]}-{persons[-1]} (the {'train' if train else 'test'} split); "
            f"found persons {found_persons}; expected {_KTH_LAYOUT}"
        )
    return FrameFolderDataset(
        base, n_frames, image_size=image_size, channels=1, stride=stride, videos=kept, layout=_KTH_LAYOUT
    )
