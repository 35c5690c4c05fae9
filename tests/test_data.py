"""Tests for hafsvg.data: digit sources, Moving MNIST, file-backed datasets and the factory."""

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from hafsvg.data import (
    FrameFolderDataset,
    MovingMNIST,
    MovingMNISTNpy,
    bair_dataset,
    font_digits,
    kth_dataset,
    load_mnist_idx,
    make_dataset,
)

LIMIT = 64 - 32  # positions stay in [0, LIMIT - 1]


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return font_digits(40, seed=3)[0]


# ---------------------------------------------------------------- font digits


def test_font_digits_shape_range_and_determinism():
    images, labels = font_digits(200, seed=7)
    assert images.shape == (200, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (200,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(10))
    assert images.max() == 255
    ink = (images > 0).mean(axis=(1, 2))
    assert ink.min() > 0.05 and ink.max() < 0.6  # every sample has a digit, none fills the frame
    assert images[:, [0, -1], :].max() == 0 and images[:, :, [0, -1]].max() == 0  # black border
    again, labels_again = font_digits(200, seed=7)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    other, _ = font_digits(200, seed=8)
    assert not np.array_equal(images, other)


def test_font_digits_vary_within_a_label():
    images, labels = font_digits(300, seed=0)
    zeros = images[labels == 0]
    assert len(zeros) >= 2
    assert len({z.tobytes() for z in zeros}) == len(zeros)


def test_font_digits_are_fast():
    start = time.perf_counter()
    font_digits(1000, seed=1)
    assert time.perf_counter() - start < 2.0


def test_font_digits_rejects_empty():
    with pytest.raises(ValueError, match="n must be"):
        font_digits(0)


# ---------------------------------------------------------------- IDX reader


def _idx_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    n, rows, cols = images.shape
    return np.array([magic, n, rows, cols], dtype=">i4").tobytes() + images.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    raw = _idx_bytes(images)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    loaded = load_mnist_idx(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, images)


def test_load_mnist_idx_missing_file(tmp_path):
    path = tmp_path / "nope-idx3-ubyte"
    with pytest.raises(FileNotFoundError) as info:
        load_mnist_idx(path)
    assert str(path) in str(info.value) and "IDX" in str(info.value)


@pytest.mark.parametrize(
    "contents",
    [
        _idx_bytes(np.zeros((2, 28, 28), np.uint8), magic=2049),  # a label file's magic
        _idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1],  # truncated
        _idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"\0",  # trailing data
        _idx_bytes(np.zeros((2, 27, 28), np.uint8)),  # wrong dims
        b"\0\0\x08",  # shorter than the header
        b"\x1f\x8b not really gzip",
    ],
    ids=["magic", "truncated", "trailing", "dims", "short", "bad-gzip"],
)
def test_load_mnist_idx_malformed(tmp_path, contents):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(contents)
    with pytest.raises(ValueError) as info:
        load_mnist_idx(path)
    assert str(path) in str(info.value) and "2051" in str(info.value)


# ---------------------------------------------------------------- Moving MNIST


def test_moving_mnist_shape_range_determinism(digits):
    ds = MovingMNIST(digits, n_frames=10, length=8, seed=5)
    assert len(ds) == 8
    clip = ds[3]
    assert clip.shape == (10, 1, 64, 64) and clip.dtype == torch.float32
    assert clip.min() >= 0 and clip.max() <= 1 and clip.max() > 0.5
    torch.testing.assert_close(MovingMNIST(digits, n_frames=10, length=8, seed=5)[3], clip)
    assert not torch.equal(ds[4], clip)
    assert not torch.equal(MovingMNIST(digits, n_frames=10, length=8, seed=6)[3], clip)
    assert not torch.equal(clip[0], clip[-1])  # the digits move
    with pytest.raises(IndexError):
        ds[8]


def test_moving_mnist_default_font_digits_and_channels():
    ds = MovingMNIST(None, n_frames=4, num_digits=3, length=5, channels=3)
    clip = ds[0]
    assert clip.shape == (4, 3, 64, 64)
    torch.testing.assert_close(clip[:, 0], clip[:, 2])
    assert ds.trajectory(0).positions.shape == (4, 3, 2)


def test_moving_mnist_rejects_bad_digits():
    with pytest.raises(ValueError, match="uint8"):
        MovingMNIST(np.zeros((3, 28, 28), np.float32))


def _bounces(traj):
    """Unclamped next positions and per-axis low/high edge hits, each (T - 1, D, 2)."""
    raw = traj.positions[:-1] + traj.velocities[:-1]
    return raw, raw < 0, raw >= LIMIT


@pytest.mark.parametrize("deterministic", [True, False])
def test_moving_mnist_positions_follow_velocities(digits, deterministic):
    ds = MovingMNIST(digits, n_frames=30, length=20, deterministic=deterministic)
    for i in range(len(ds)):
        traj = ds.trajectory(i)
        assert traj.positions.min() >= 0 and traj.positions.max() <= LIMIT - 1
        assert np.abs(traj.velocities).max() <= 4
        raw, _, _ = _bounces(traj)
        np.testing.assert_array_equal(traj.positions[1:], np.clip(raw, 0, LIMIT - 1))


def test_moving_mnist_deterministic_bounce_negates(digits):
    ds = MovingMNIST(digits, n_frames=30, length=20, deterministic=True)
    n_bounces = 0
    for i in range(len(ds)):
        traj = ds.trajectory(i)
        _, low, high = _bounces(traj)
        hit = low | high
        before, after = traj.velocities[:-1], traj.velocities[1:]
        np.testing.assert_array_equal(after, np.where(hit, -before, before))
        n_bounces += int((hit & (before != 0)).sum())
    assert n_bounces > 0


def test_moving_mnist_stochastic_bounce_redraws_inward(digits):
    ds = MovingMNIST(digits, n_frames=30, length=20, deterministic=False)
    n_bounces = n_redrawn = n_cross = 0
    for i in range(len(ds)):
        traj = ds.trajectory(i)
        _, low, high = _bounces(traj)
        before, after = traj.velocities[:-1], traj.velocities[1:]
        hit = low | high
        calm = ~hit.any(axis=-1, keepdims=True)
        np.testing.assert_array_equal(np.where(calm, after, before), before)
        # SVG checks y then x; an x bounce re-draws dy, so y's sign holds only without one.
        decided = hit.copy()
        decided[..., 1] &= ~hit[..., 0]
        assert (after[low & decided] >= 1).all() and (after[high & decided] <= -1).all()
        n_bounces += int(decided.sum())
        n_redrawn += int((decided & (np.abs(after) != np.abs(before))).sum())
        # A bounce on one axis also re-draws the other axis' velocity from [-4, 4].
        n_cross += int((hit[..., ::-1] & ~hit & (after != before)).sum())
    assert n_bounces > 0 and n_redrawn > 0 and n_cross > 0


def test_moving_mnist_frame_is_union_of_squares():
    squares = np.full((1, 28, 28), 255, np.uint8)  # every digit resizes to a full 32x32 square
    ds = MovingMNIST(squares, n_frames=12, length=4, seed=1)
    for i in range(len(ds)):
        clip, traj = ds[i], ds.trajectory(i)
        expected = torch.zeros(12, 1, 64, 64)
        for t in range(12):
            for x, y in traj.positions[t]:
                expected[t, 0, y : y + 32, x : x + 32] = 1.0
        torch.testing.assert_close(clip, expected, rtol=0, atol=0)


def test_moving_mnist_frame_is_sum_of_placed_digits(digits):
    ds = MovingMNIST(digits, n_frames=6, num_digits=3, length=3, seed=2)
    clip, traj = ds[2], ds.trajectory(2)
    t = 4
    canvas = np.zeros((64, 64), np.float32)
    for d, (x, y) in enumerate(traj.positions[t]):
        source = Image.fromarray(digits[traj.digits[d]]).resize((32, 32), Image.Resampling.BILINEAR)
        canvas[y : y + 32, x : x + 32] += np.asarray(source, np.float32) / 255
    torch.testing.assert_close(clip[t, 0], torch.from_numpy(np.minimum(canvas, 1)))


def test_dataloader_batches_clips(digits):
    ds = MovingMNIST(digits, n_frames=5, length=6, seed=4)
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    assert [b.shape for b in batches] == [(3, 5, 1, 64, 64)] * 2
    torch.testing.assert_close(batches[1][2], ds[5])


# ---------------------------------------------------------------- .npy files


def test_moving_mnist_npy(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=(20, 3, 64, 64), dtype=np.uint8)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, data)
    ds = MovingMNISTNpy(path)
    assert len(ds) == 3
    clip = ds[1]
    assert clip.shape == (20, 1, 64, 64) and clip.dtype == torch.float32
    torch.testing.assert_close(clip[:, 0], torch.from_numpy(data[:, 1] / 255).float())
    copy = pickle.loads(pickle.dumps(ds))  # what DataLoader workers get: the path, not the data
    assert len(pickle.dumps(ds)) < data.nbytes and torch.equal(copy[1], clip)
    short = MovingMNISTNpy(path, n_frames=8)[2]
    torch.testing.assert_close(short, ds[2][:8])
    with pytest.raises(ValueError, match=r"n_frames"):
        MovingMNISTNpy(path, n_frames=21)


def test_moving_mnist_npy_errors(tmp_path):
    missing = tmp_path / "missing.npy"
    with pytest.raises(FileNotFoundError) as info:
        MovingMNISTNpy(missing)
    assert str(missing) in str(info.value) and "(T, N, 64, 64)" in str(info.value)
    for name, array in [
        ("three_d.npy", np.zeros((20, 64, 64), np.uint8)),
        ("floats.npy", np.zeros((20, 2, 64, 64), np.float32)),
        ("small.npy", np.zeros((20, 2, 32, 32), np.uint8)),
    ]:
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError) as info:
            MovingMNISTNpy(tmp_path / name)
        message = str(info.value)
        assert str(array.shape) in message and str(array.dtype) in message
        assert "(T, N, 64, 64)" in message
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="garbage.npy"):
        MovingMNISTNpy(garbage)


# ---------------------------------------------------------------- frame folders


def _colour(video: int, frame: int) -> tuple[int, int, int]:
    return (40 * video + 10, 20 * frame + 5, 200)


def _write_video(folder: Path, video: int, n: int, size=(32, 32), ext=".png") -> None:
    folder.mkdir(parents=True)
    for f in range(n):
        Image.new("RGB", size, _colour(video, f)).save(folder / f"frame_{f:03d}{ext}")


@pytest.fixture
def frames_root(tmp_path) -> Path:
    root = tmp_path / "videos"
    _write_video(root / "a", 0, 5)
    _write_video(root / "b", 1, 3, size=(40, 30))
    _write_video(root / "c", 2, 2)  # too short for 3-frame windows
    (root / "a" / "notes.txt").write_text("ignored")
    return root


def test_frame_folder_windows_and_content(frames_root):
    ds = FrameFolderDataset(frames_root, n_frames=3, image_size=64, channels=3)
    assert len(ds) == 3 + 1
    assert [ds.window(i) for i in range(len(ds))] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    clip = ds[1]
    assert clip.shape == (3, 3, 64, 64) and clip.dtype == torch.float32
    for t in range(3):
        colour = torch.tensor(_colour(0, t + 1), dtype=torch.float32) / 255
        torch.testing.assert_close(clip[t], colour[:, None, None].expand(3, 64, 64))
    last = ds[3]  # video b, resized from 40x30 to 64x64
    torch.testing.assert_close(last[2, :, 10, 10], torch.tensor(_colour(1, 2)) / 255)
    with pytest.raises(IndexError):
        ds[4]


def test_frame_folder_stride_grey_and_jpg(tmp_path, frames_root):
    ds = FrameFolderDataset(frames_root, n_frames=3, image_size=16, channels=1, stride=2)
    assert [ds.window(i) for i in range(len(ds))] == [(0, 0), (0, 2), (1, 0)]
    clip = ds[1]
    assert clip.shape == (3, 1, 16, 16)
    grey = Image.new("RGB", (1, 1), _colour(0, 2)).convert("L").getpixel((0, 0))
    torch.testing.assert_close(clip[0], torch.full((1, 16, 16), grey / 255))
    root = tmp_path / "jpg"
    _write_video(root / "v", 0, 4, ext=".jpg")
    assert kth_dataset(root, n_frames=4)[0].shape == (4, 1, 64, 64)
    assert bair_dataset(root, n_frames=2)[2].shape == (2, 3, 64, 64)


def test_frame_folder_errors(tmp_path, frames_root):
    missing = tmp_path / "absent"
    with pytest.raises(FileNotFoundError) as info:
        FrameFolderDataset(missing, n_frames=2)
    assert str(missing) in str(info.value) and "root/<video>/<frame>.png" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "stray.png").write_bytes(b"")
    with pytest.raises(ValueError) as info:
        FrameFolderDataset(empty, n_frames=2)
    assert str(empty) in str(info.value) and "root/<video>/<frame>.png" in str(info.value)
    with pytest.raises(ValueError) as info:
        FrameFolderDataset(frames_root, n_frames=6)
    assert str(frames_root) in str(info.value) and "longest has 5" in str(info.value)
    with pytest.raises(ValueError, match="channels"):
        FrameFolderDataset(frames_root, n_frames=2, channels=2)


def test_frame_folder_natural_order(tmp_path):
    root = tmp_path / "videos"
    for video in (10, 2, 1):  # folder names sort as strings 1, 10, 2
        folder = root / f"clip{video}"
        folder.mkdir(parents=True)
        for f in range(12):  # 0.png ... 11.png: as strings 0, 1, 10, 11, 2, ...
            Image.new("RGB", (8, 8), (5 * video, 20 * f + 5, 200)).save(folder / f"{f}.png")
    ds = FrameFolderDataset(root, n_frames=12, image_size=8)
    assert [folder.name for folder, _ in ds.videos] == ["clip1", "clip2", "clip10"]
    assert [p.name for p in ds.frame_paths(0)] == [f"{f}.png" for f in range(12)]
    clip = ds[2]
    for t in range(12):
        torch.testing.assert_close(clip[t, :, 0, 0], torch.tensor([50, 20 * t + 5, 200]) / 255)


# ---------------------------------------------------------------- SVG's BAIR and KTH folders


def _write_bair(processed: Path, split: str, trajectories: dict[str, list[int]], n: int = 12) -> None:
    """SVG's convert_bair.py layout: processed/<split>/<group>/<k>/<i>.png, i = 0 ... n - 1 unpadded.

    Frame i of trajectory k is a flat colour (10 * i + 5, 8 * k, 100 if train else 200).
    """
    for group, ks in trajectories.items():
        for k in ks:
            folder = processed / split / group / str(k)
            folder.mkdir(parents=True)
            for i in range(n):
                colour = (10 * i + 5, 8 * k, 100 if split == "train" else 200)
                Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")


@pytest.fixture
def bair_root(tmp_path) -> Path:
    """SVG's --data_dir after convert_bair.py: bair/processed_data/{train,test}/..., tfrecords beside."""
    processed = tmp_path / "bair" / "processed_data"
    _write_bair(processed, "train", {"traj_256_to_511": [2, 1], "traj_0_to_255": [10, 2]})
    _write_bair(processed, "test", {"traj_0_to_255": [3]})
    (tmp_path / "bair" / "softmotion30_44k" / "test").mkdir(parents=True)
    (tmp_path / "bair" / "softmotion30_44k" / "test" / "traj_0_to_255.tfrecords").write_bytes(b"")
    return tmp_path / "bair"


def _bair_pixels(clip: torch.Tensor) -> list[tuple[int, int, int]]:
    return [tuple(round(float(v) * 255) for v in frame[:, 0, 0]) for frame in clip]


def test_bair_svg_layout_order_and_split(bair_root):
    processed = bair_root / "processed_data"
    ds = bair_dataset(processed, n_frames=12, train=True)
    assert ds.root == processed / "train"
    # groups and trajectories in natural order: traj_0 before traj_256, 2 before 10
    names = [folder.relative_to(ds.root).as_posix() for folder, _ in ds.videos]
    assert names == ["traj_0_to_255/2", "traj_0_to_255/10", "traj_256_to_511/1", "traj_256_to_511/2"]
    assert len(ds) == 4
    clip = ds[1]
    assert clip.shape == (12, 3, 64, 64) and clip.dtype == torch.float32
    assert _bair_pixels(clip) == [(10 * i + 5, 80, 100) for i in range(12)]  # 0.png ... 11.png in order
    test = bair_dataset(processed, n_frames=12, train=False)
    assert len(test) == 1 and _bair_pixels(test[0])[0] == (5, 24, 200)
    # the folder holding processed_data (SVG's --data_dir) and a split folder read the same
    assert _bair_pixels(bair_dataset(bair_root, 12, train=False)[0]) == _bair_pixels(test[0])
    assert [f for f, _ in bair_dataset(processed / "train", 12).videos] == [f for f, _ in ds.videos]
    with pytest.raises(ValueError, match="train=True/False"):
        bair_dataset(processed, n_frames=12)


def test_bair_windows_and_make_dataset(bair_root):
    processed = bair_root / "processed_data"
    ds = bair_dataset(processed / "train", n_frames=5, stride=3)
    # every window, start by start, video by video: starts 0, 3, 6 of each 12-frame trajectory
    assert [ds.window(i) for i in range(6)] == [(0, 0), (0, 3), (0, 6), (1, 0), (1, 3), (1, 6)]
    assert len(ds) == 4 * 3
    assert [p[0] for p in _bair_pixels(ds[2])] == [10 * i + 5 for i in range(6, 11)]
    train = make_dataset("bair", 10, path=processed)  # make_dataset picks processed_data/train
    test = make_dataset("bair", 10, path=processed, train=False)
    assert len(train) == 4 * 3 and len(test) == 1  # a test set: windows n_frames apart, from frame 0
    assert [p[0] for p in _bair_pixels(test[0])] == [10 * i + 5 for i in range(0, 10)]
    assert _bair_pixels(test[0])[0][2] == 200 and _bair_pixels(train[0])[0][2] == 100
    with pytest.raises(ValueError, match="longest has 12"):
        bair_dataset(processed, n_frames=13, train=True)


def test_bair_missing_split(tmp_path):
    processed = tmp_path / "processed_data"
    _write_bair(processed, "train", {"traj_0_to_255": [1]})
    with pytest.raises(FileNotFoundError) as info:
        bair_dataset(processed, n_frames=4, train=False)
    assert str(processed / "test") in str(info.value)


_KTH_LEFT, _KTH_RIGHT = (200, 40, 90), (30, 160, 250)


def _kth_colour(side: tuple[int, int, int], frame: int, person: int) -> tuple[int, int, int]:
    return (side[0], side[1] - 2 * frame, side[2] - person)


def _grey(colour: tuple[int, int, int]) -> float:
    """What PIL's RGB -> L conversion gives for ``colour``, in [0, 1]."""
    return Image.new("RGB", (1, 1), colour).convert("L").getpixel((0, 0)) / 255


def _write_kth_video(folder: Path, person: int, n: int, size: int = 128) -> None:
    """convert_kth.lua frames image-001_<size>x<size>.png ...: left half / right half colours."""
    folder.mkdir(parents=True)
    for f in range(n):
        image = Image.new("RGB", (size, size), _kth_colour(_KTH_LEFT, f, person))
        image.paste(_kth_colour(_KTH_RIGHT, f, person), (size // 2, 0, size, size))
        image.save(folder / f"image-{f + 1:03d}_{size}x{size}.png")


@pytest.fixture
def kth_root(tmp_path) -> Path:
    """SVG's KTH folder after download_kth.sh and convert_kth.lua (128x128 frames)."""
    kth = tmp_path / "data" / "KTH"
    for cls in ("boxing", "walking"):
        for person in (1, 22):
            _write_kth_video(kth / "processed" / cls / f"person{person:02d}_{cls}_d1", person, 12)
        (kth / "processed" / cls / "train_meta64x64.t7").write_bytes(b"")
        (kth / "raw" / cls).mkdir(parents=True)
        (kth / "raw" / cls / f"person01_{cls}_d1_uncomp.avi").write_bytes(b"")
    return kth


def test_kth_svg_layout_split_grey_and_resize(kth_root):
    processed = kth_root / "processed"
    ds = kth_dataset(processed, n_frames=12, train=True)
    assert [folder.name for folder, _ in ds.videos] == ["person01_boxing_d1", "person01_walking_d1"]
    assert len(ds) == 2
    clip = ds[0]
    assert clip.shape == (12, 1, 64, 64) and clip.dtype == torch.float32
    for t in range(12):  # frames in order, grey, 128 -> 64 with the halves kept apart
        torch.testing.assert_close(clip[t, 0, :, :30], torch.full((64, 30), _grey(_kth_colour(_KTH_LEFT, t, 1))))
        torch.testing.assert_close(clip[t, 0, :, 34:], torch.full((64, 30), _grey(_kth_colour(_KTH_RIGHT, t, 1))))
    test = kth_dataset(processed, n_frames=12, train=False)
    assert [folder.name for folder, _ in test.videos] == ["person22_boxing_d1", "person22_walking_d1"]
    torch.testing.assert_close(test[1][5, 0, 0, 0], torch.tensor(_grey(_kth_colour(_KTH_LEFT, 5, 22))))
    # KTH (holding processed/), the folder holding KTH and one class folder read the same
    assert [f for f, _ in kth_dataset(kth_root, 12, train=False).videos] == [f for f, _ in test.videos]
    assert [f for f, _ in kth_dataset(kth_root.parent, 12, train=True).videos] == [f for f, _ in ds.videos]
    boxing = kth_dataset(processed / "boxing", 12, train=False)
    assert [folder.name for folder, _ in boxing.videos] == ["person22_boxing_d1"]
    with pytest.raises(ValueError, match="persons 1-20"):
        kth_dataset(processed, n_frames=12)
    with pytest.raises(ValueError, match="longest has 12"):
        kth_dataset(processed, n_frames=13, train=True)


def test_kth_one_size_per_video_and_windows(kth_root):
    video = kth_root / "processed" / "boxing" / "person01_boxing_d1"
    for f in range(12):  # converted again with --imageSize 64: these frames are read, as they are
        Image.new("RGB", (64, 64), (f, f, f)).save(video / f"image-{f + 1:03d}_64x64.png")
    ds = kth_dataset(kth_root, n_frames=10, train=True)
    assert [p.name for p in ds.frame_paths(0)] == [f"image-{f:03d}_64x64.png" for f in range(1, 13)]
    assert [p.name for p in ds.frame_paths(1)][-1] == "image-012_128x128.png"
    assert [ds.window(i) for i in range(len(ds))] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    torch.testing.assert_close(ds[2][:, 0, 7, 7], torch.arange(2, 12, dtype=torch.float32) / 255)


def test_kth_split_without_its_persons(tmp_path):
    processed = tmp_path / "processed"
    _write_kth_video(processed / "running" / "person03_running_d2", 3, 4, size=64)
    assert len(kth_dataset(processed, 4, train=True)) == 1
    with pytest.raises(ValueError, match=r"persons 21-25 \(the test split\); found persons \[3\]"):
        kth_dataset(processed, 4, train=False)


@pytest.mark.parametrize("build", [bair_dataset, kth_dataset, FrameFolderDataset])
def test_frame_folders_empty_folder(tmp_path, build):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"")  # hidden files do not count
    with pytest.raises(ValueError) as info:
        build(empty, 4)
    assert str(info.value).startswith(f"{empty}: the folder is empty; expected ")


def test_make_dataset_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("bair", "kth"):
        with pytest.raises(ValueError, match=f"^{empty}: the folder is empty"):
            make_dataset(name, 4, path=empty)
    (tmp_path / "data" / "processed_data").mkdir(parents=True)  # SVG's --data_dir, converter not run
    with pytest.raises(ValueError, match="processed_data: the folder is empty"):
        bair_dataset(tmp_path / "data", 4, train=True)


def test_frame_folders_wrong_layout(bair_root, kth_root):
    tfrecords = bair_root / "softmotion30_44k"  # the download, before convert_bair.py
    with pytest.raises(ValueError) as info:
        make_dataset("bair", 4, path=tfrecords, train=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tfrecords / 'test'}: no folders of frames found")
    assert "processed_data/{train,test}/<group>/<trajectory>/<i>.png" in message
    raw = kth_root / "raw"  # the .avi files, before convert_kth.lua
    with pytest.raises(ValueError) as info:
        kth_dataset(raw, 4, train=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{raw}: no folders of frames found")
    assert "KTH/processed/<class>/personNN_<class>_dN/image-NNN_<size>x<size>.png" in message
    trajectory = bair_root / "processed_data" / "test" / "traj_0_to_255" / "3"  # one video, not a dataset
    with pytest.raises(ValueError, match="it holds frames itself: pass the folder above it"):
        bair_dataset(trajectory, 4)


# ---------------------------------------------------------------- factory


def test_make_dataset_moving_mnist_generated():
    train = make_dataset("moving-mnist", 6, length=4, seed=1)
    test = make_dataset("moving-mnist", 6, length=4, seed=1, train=False)
    assert isinstance(train, MovingMNIST) and len(train) == 4
    assert train.num_digits == 2 and not train.deterministic
    assert train[0].shape == (6, 1, 64, 64)
    assert not torch.equal(train[0], test[0])
    det = make_dataset("moving_mnist", 6, length=2, num_digits=3, deterministic=True)
    assert det.num_digits == 3 and det.deterministic


def test_make_dataset_moving_mnist_from_files(tmp_path):
    images = np.zeros((3, 28, 28), np.uint8)
    images[:, 4:24, 10:18] = 255
    idx = tmp_path / "train-images-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(_idx_bytes(images)))
    ds = make_dataset("moving-mnist", 5, path=idx)
    assert isinstance(ds, MovingMNIST) and len(ds) == 3
    np.testing.assert_array_equal(ds.digits, images)
    npy = tmp_path / "mnist_test_seq.npy"
    np.save(npy, np.zeros((20, 4, 64, 64), np.uint8))
    fixed = make_dataset("moving-mnist", 10, path=npy, length=2)
    assert isinstance(fixed, Subset) and len(fixed) == 2
    assert fixed[1].shape == (10, 1, 64, 64)


def test_make_dataset_frame_folders(tmp_path, frames_root):
    kth = make_dataset("kth", 3, path=frames_root)
    assert isinstance(kth, FrameFolderDataset) and kth[0].shape == (3, 1, 64, 64)
    assert make_dataset("bair", 3, path=frames_root)[0].shape == (3, 3, 64, 64)
    assert len(make_dataset("bair", 2, path=frames_root, length=2)) == 2
    split = tmp_path / "split"
    _write_video(split / "train" / "x", 0, 4)
    _write_video(split / "test" / "y", 1, 2)
    assert len(make_dataset("kth", 2, path=split)) == 3
    assert len(make_dataset("kth", 2, path=split, train=False)) == 1
    with pytest.raises(ValueError, match="folder of frames"):
        make_dataset("bair", 3)
    with pytest.raises(ValueError, match="moving-mnist"):
        make_dataset("ucf101", 3)


def test_moving_mnist_folder_path_says_what_it_takes(tmp_path):
    with pytest.raises(ValueError, match="is an empty folder; Moving MNIST --data takes"):
        make_dataset("moving-mnist", 10, path=tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="is a folder; Moving MNIST --data takes"):
        make_dataset("moving-mnist", 10, path=tmp_path)
