"""Training: the loss falls, checkpoints round-trip, resume continues step count and optimizer."""

import json

import pytest
import torch

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.data import make_dataset
from hafsvg.train import BETAS, load_checkpoint, save_checkpoint, train

# Tiny HAF-SVG-4 with only the two coarsest skip levels aligned, on the eager kernels: well under 0.1 s
# per step on a CPU.
SMALL = {"aligned_levels": (2, 3), "batch_size": 2, "n_past": 2, "n_future": 3, "n_eval": 3, "backend": "torch"}


def small_config(**overrides) -> HAFSVGConfig:
    return HAFSVGConfig.preset("tiny", **{**SMALL, **overrides})


def fixed_batch(config: HAFSVGConfig) -> torch.Tensor:
    """(batch_size, n_past + n_future, 1, 64, 64) generated Moving-MNIST clips."""
    dataset = make_dataset("moving-mnist", config.n_past + config.n_future, length=config.batch_size)
    return torch.stack([dataset[i] for i in range(config.batch_size)])


def test_loss_falls_on_a_fixed_batch():
    config = small_config()
    x = fixed_batch(config)
    torch.manual_seed(0)
    model = HAFSVG(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=BETAS)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        total = model.loss(x)["total"]
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_train_writes_log_grid_checkpoint_and_loss_falls(tmp_path):
    messages = []
    summary = train(
        small_config(), steps=16, out_dir=tmp_path, sample_every=8, checkpoint_every=5, progress=False,
        log=messages.append,
    )
    assert summary["step"] == 16 and messages == []
    assert summary["checkpoint"] == str(tmp_path / "checkpoint.pt")
    assert summary["samples"] == str(tmp_path / "samples_000016.png")
    assert {p.name for p in tmp_path.iterdir()} == {
        "checkpoint.pt", "config.json", "metrics.jsonl", "samples_000008.png", "samples_000016.png",
    }
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 17))
    assert set(records[0]) == {"step", "total", "mse", "kl", "kl_groups", "seconds"}
    assert len(records[0]["kl_groups"]) == 4
    first = sum(r["total"] for r in records[:3]) / 3
    last = sum(r["total"] for r in records[-3:]) / 3
    assert last < 0.8 * first, (first, last)  # fresh batches each step: noisier than the fixed-batch test
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(small_config().to_dict()))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    config = small_config()
    x = fixed_batch(config)
    torch.manual_seed(1)
    model = HAFSVG(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=BETAS)
    for _ in range(2):  # non-trivial weights, BatchNorm statistics and Adam moments
        optimizer.zero_grad()
        model.loss(x)["total"].backward()
        optimizer.step()
    path = save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, 2, config)
    loaded, opt_state, step, loaded_config = load_checkpoint(path)
    assert step == 2 and loaded_config == config
    assert opt_state["state"].keys() == optimizer.state_dict()["state"].keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    eps = torch.randn(config.batch_size, x.shape[1] - 1, config.z_dim)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.loss(x, eps)["prediction"], loaded.loss(x, eps)["prediction"])
    a = model.sample(x[:2, : config.n_past], 2, 3, torch.Generator().manual_seed(5))
    b = loaded.sample(x[:2, : config.n_past], 2, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_resume_continues_step_count_and_optimizer_state(tmp_path):
    config = small_config()
    train(config, steps=3, out_dir=tmp_path, sample_every=0, progress=False, log=lambda m: None)
    _, first_state, _, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    messages = []
    summary = train(
        config, steps=2, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt", sample_every=0, progress=False,
        log=messages.append,
    )
    assert summary["step"] == 5
    assert messages == [f"resumed from {tmp_path / 'checkpoint.pt'} at step 3"]
    _, state, step, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert step == 5
    adam_steps = {float(s["step"]) for s in state["state"].values()}
    assert adam_steps == {5.0}  # Adam's bias-correction counters went on from 3, not from 0
    moments_moved = [
        not torch.equal(state["state"][k]["exp_avg"], first_state["state"][k]["exp_avg"]) for k in state["state"]
    ]
    assert any(moments_moved)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a hafsvg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_train_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        train(small_config(), steps=0, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="channels"):
        train(small_config(channels=3), steps=1, out_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def _foreign_files(tmp_path):
    """{kind: path} of files that are not hafsvg checkpoints."""
    import os
    import pickle

    files = {}
    files["random bytes"] = tmp_path / "random.pt"
    files["random bytes"].write_bytes(os.urandom(4096))
    files["text"] = tmp_path / "notes.pt"
    files["text"].write_text("step 100: loss 0.1\n")
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    files["pickle"] = tmp_path / "pickle.pt"
    files["pickle"].write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    files["torch module"] = tmp_path / "module.pt"
    torch.save({"model": torch.nn.Linear(2, 2), "config": {}, "step": 1}, files["torch module"])
    files["torch dict"] = tmp_path / "dict.pt"
    torch.save({"weights": torch.zeros(3)}, files["torch dict"])
    files["bad config"] = tmp_path / "config.pt"
    torch.save({"model": {}, "config": {"no_such_field": 1}, "step": 1}, files["bad config"])
    return files


def test_load_checkpoint_foreign_files_give_one_clean_line(tmp_path, recwarn):
    for kind, path in _foreign_files(tmp_path).items():
        with pytest.raises(ValueError) as err:
            load_checkpoint(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, (kind, message)
        assert "weights_only" not in message and "Weights only" not in message, (kind, message)
        assert "not a readable checkpoint" in message or "not a hafsvg checkpoint" in message, (kind, message)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_load_checkpoint_detects_flipped_bytes(tmp_path):
    """torch's zip reader skips the CRC-32 checks: flipped weight bytes would load silently."""
    config = small_config()
    path = save_checkpoint(tmp_path / "c.pt", HAFSVG(config), None, 1, config)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt checkpoint .*CRC-32|damaged zip archive"):
        load_checkpoint(path)


def test_clear_run_removes_only_a_runs_files(tmp_path):
    from hafsvg.train import clear_run, existing_run

    assert existing_run(tmp_path) == [] and clear_run(tmp_path / "missing") == []
    for name in ("checkpoint.pt", "metrics.jsonl", "config.json", "samples_000010.png", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert existing_run(tmp_path) == ["checkpoint.pt", "metrics.jsonl"]
    assert {p.name for p in clear_run(tmp_path)} == {"checkpoint.pt", "metrics.jsonl", "config.json",
                                                     "samples_000010.png"}  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
