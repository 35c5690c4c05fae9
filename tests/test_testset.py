"""Fixed test sets: ``make-testset`` / ``make_testset`` write deterministic .npz files that
``make_dataset`` (and so ``--data`` in train, sample, evaluate) reads back; bad files are one-line errors."""

import json

import numpy as np
import pytest
import torch

from hafsvg.cli import main
from hafsvg.data import TESTSET_FORMAT, NpzClips, make_dataset, make_testset

# tiny, eager, 2 context frames: fast CLI round trips
TINY = ["--preset", "tiny", "--set", "backend=torch", "--set", "n_past=2", "--set", "n_future=2", "--set", "n_eval=2",
        "--set", "aligned_levels=3"]
MAKE = ["make-testset", "moving-mnist", "--clips", "3", "--seed", "4", "--frames", "6"]


@pytest.fixture(scope="module")
def testset(tmp_path_factory):
    """A 3-clip, 6-frame Moving MNIST test set written by the CLI."""
    path = tmp_path_factory.mktemp("testset") / "mm.npz"
    assert main([*MAKE, "--out", str(path)]) == 0
    return path


def test_make_testset_is_deterministic_and_documented(testset, tmp_path, capsys):
    again = tmp_path / "again.npz"
    assert main([*MAKE, "--out", str(again)]) == 0
    assert str(again) in capsys.readouterr().out
    assert again.read_bytes() == testset.read_bytes()
    with np.load(testset, allow_pickle=False) as a, np.load(again, allow_pickle=False) as b:
        assert a.files == b.files
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
        clips = a["clips"]
        assert clips.dtype == np.uint8 and clips.shape == (3, 6, 1, 64, 64)
        assert (str(a["dataset"]), int(a["seed"]), int(a["frames"]), int(a["format_version"])) == (
            "moving-mnist", 4, 6, TESTSET_FORMAT
        )
        assert "make_testset" in str(a["description"]) and str(a["created_by"]).startswith("hafsvg ")
    # the test split evaluate --seed 4 would generate, quantized
    generated = make_dataset("moving-mnist", 6, train=False, seed=4, length=3)
    expected = np.stack([np.round(generated[i].numpy() * 255).astype(np.uint8) for i in range(3)])
    assert np.array_equal(clips, expected)
    # a different seed gives different clips; the Python function writes the same file as the CLI
    other = make_testset("moving-mnist", 3, 5, 6, tmp_path / "other.npz")
    with np.load(other, allow_pickle=False) as c:
        assert not np.array_equal(c["clips"], clips)
    assert make_testset("moving-mnist", 3, 4, 6, tmp_path / "py.npz").read_bytes() == testset.read_bytes()


def test_default_frames_is_the_presets_past_plus_eval(tmp_path):
    path = make_testset("moving-mnist", 1, 0, None, tmp_path / "d.npz")
    with np.load(path, allow_pickle=False) as f:
        assert f["clips"].shape == (1, 5 + 25, 1, 64, 64) and int(f["frames"]) == 30


def test_make_dataset_reads_npz(testset):
    data = make_dataset("moving-mnist", 4, path=testset)
    assert isinstance(data, NpzClips) and len(data) == 3 and data.metadata["seed"] == 4
    clip = data[1]
    assert clip.dtype == torch.float32 and clip.shape == (4, 1, 64, 64)
    with np.load(testset, allow_pickle=False) as f:
        raw = f["clips"]
    assert torch.equal(clip, torch.from_numpy(raw[1, :4]).float() / 255)  # first n_frames frames
    assert 0 <= float(clip.min()) and float(clip.max()) <= 1
    assert len(make_dataset("moving-mnist", 6, path=testset, length=2)) == 2
    with pytest.raises(ValueError, match=r"mm\.npz: clips have 6 frames but 7 are needed"):
        make_dataset("moving-mnist", 7, path=testset)


def test_data_npz_in_evaluate_sample_and_train(testset, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", *TINY, "--data", str(testset), "--samples", "2", "--batch-clips", "3",
                 "--out", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["n_clips"] == 3  # default --clips: the whole test set
    assert report["data"] == str(testset) and len(report["data_sha256"]) == 64
    assert main(["sample", *TINY, "--data", str(testset), "--clips", "1", "--samples", "2", "--show", "1",
                 "--out", str(tmp_path / "sample")]) == 0
    assert json.loads((tmp_path / "sample" / "samples.json").read_text())["n_clips"] == 1
    assert main(["train", *TINY, "--data", str(testset), "--steps", "1", "--sample-every", "0",
                 "--out", str(tmp_path / "train")]) == 0
    assert (tmp_path / "train" / "checkpoint.pt").is_file()


def _bad_files(tmp_path):
    good = np.zeros((2, 6, 1, 64, 64), np.uint8)
    files = {}
    files["text.npz"] = lambda p: p.write_text("not an archive\n")
    files["empty.npz"] = lambda p: p.write_bytes(b"")
    files["single-array.npz"] = lambda p: np.save(open(p, "wb"), good)
    files["no-clips.npz"] = lambda p: np.savez(p, frames=good)
    files["float.npz"] = lambda p: np.savez(p, clips=good.astype(np.float32))
    files["4d.npz"] = lambda p: np.savez(p, clips=good[:, :, 0])
    files["small.npz"] = lambda p: np.savez(p, clips=good[..., :32, :32])
    files["short.npz"] = lambda p: np.savez(p, clips=good[:, :3])
    files["objects.npz"] = lambda p: np.savez(p, clips=np.array([good, None], dtype=object))
    files["future.npz"] = lambda p: np.savez(p, clips=good, format_version=np.array(99))
    files["broken-zip.npz"] = lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    paths = []
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "name",
    ["text.npz", "empty.npz", "single-array.npz", "no-clips.npz", "float.npz", "4d.npz", "small.npz", "short.npz",
     "objects.npz", "future.npz", "broken-zip.npz"],
)
def test_bad_npz_is_one_error_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _bad_files(tmp_path)
    assert main(["evaluate", *TINY, "--data", name, "--samples", "1", "--out", "out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and name in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_bad_npz_in_train(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "f.npz", clips=np.zeros((2, 9, 1, 64, 64), np.float32))
    assert main(["train", *TINY, "--data", "f.npz", "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: f.npz: 'clips' is a float32 array") and err.count("\n") == 1


def test_npz_is_read_without_pickle(tmp_path):
    np.savez(tmp_path / "o.npz", clips=np.array([1, None], dtype=object))
    with pytest.raises(ValueError, match="o.npz: not a readable test set"):
        NpzClips(tmp_path / "o.npz")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["make-testset", "moving-mnist", "--clips", "2", "--out", "x.npy"], 1, "x.npy: a test set file name must end"),
        (["make-testset", "kth", "--clips", "2", "--out", "x.npz"], 2, "invalid choice: 'kth'"),
        (["make-testset", "moving-mnist", "--out", "x.npz"], 2, "--clips"),
        (["make-testset", "moving-mnist", "--clips", "0", "--out", "x.npz"], 2, "expected an integer >= 1"),
    ],
)
def test_make_testset_bad_arguments(argv, code, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.iterdir())
