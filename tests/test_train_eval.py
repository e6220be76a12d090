"""Training (smoke, resumable, hashed checkpoints) and the shipped weights following captions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from langcolor.client.errors import ModelNotFoundError
from langcolor.export.checkpoint import default_weights_path, load_checkpoint, save_checkpoint
from langcolor.export.evaluate import evaluate, psnr, ssim
from langcolor.export.families.lcode.config import TrainingOptions
from langcolor.export.train import TrainOptions, train

TINY = dict(config="tiny", batch_size=8, lr=2e-3, checkpoint_every=3, family_options=TrainingOptions(vocab_scenes=300))


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    opts = TrainOptions(steps=6, **TINY)
    straight = train(opts, tmp_path / "straight", progress=False)
    assert np.isfinite(straight.loss)

    import langcolor.export.train as train_module

    class Interrupted(Exception):
        pass

    def save_then_die(path, model, assets, step, *args, **kwargs):
        digest = save_checkpoint(path, model, assets, step, *args, **kwargs)
        if step == 3:
            raise Interrupted  # as if the process were killed right after the step-3 checkpoint
        return digest

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        train(opts, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    partial = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert partial.step == 3 and partial.optimizer is not None and partial.scheduler is not None
    resumed = train(opts, tmp_path / "resumed", progress=False)
    # Same seed, same deterministic data stream, restored optimizer and schedule: identical weights.
    assert load_checkpoint(resumed.weights).sha256 == load_checkpoint(straight.weights).sha256


def test_checkpoint_carries_config_tokenizer_and_refuses_tampering(tmp_path):
    result = train(TrainOptions(steps=2, **TINY), tmp_path, progress=False)
    ckpt = load_checkpoint(result.weights)
    assert ckpt.config.name == "tiny" and ckpt.step == 2 and ckpt.optimizer is None
    assert ckpt.tokenizer.max_tokens == ckpt.config.max_tokens
    assert ckpt.tokenizer.vocab_size == ckpt.geometry.vocab_size == ckpt.build_model().vocab_size
    model = ckpt.build_model()
    assert not model.training
    raw = torch.load(result.weights, weights_only=True)
    raw["state_dict"]["decoder.head.bias"] += 1.0
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(ModelNotFoundError, match="content hash"):
        load_checkpoint(tmp_path / "tampered.pt")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_training_on_coco_style_data(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(images / "a.png")
    doc = {"images": [{"id": 7, "file_name": "a.png"}],
           "annotations": [{"image_id": 7, "caption": "a red car", "color_object_pairs": [["car", "red"]]}]}
    (tmp_path / "captions.json").write_text(json.dumps(doc))
    coco = TrainingOptions(vocab_scenes=300, coco_images=str(images), coco_captions=str(tmp_path / "captions.json"))
    opts = TrainOptions(steps=2, **{**TINY, "family_options": coco})
    result = train(opts, tmp_path / "out", progress=False)
    ckpt = load_checkpoint(result.weights)
    assert np.isfinite(result.loss) and ckpt.meta["data"] == "coco" and ckpt.tokenizer.vocab_size == 5


def test_ssim_and_psnr_match_the_reference_definitions():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    x = rng.random((32, 40, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert ssim(x, y) == pytest.approx(metrics.structural_similarity(x, y, channel_axis=-1, data_range=1.0), abs=1e-6)
    assert psnr(x, y) == pytest.approx(metrics.peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-6)


@pytest.fixture(scope="module")
def shipped():
    path = default_weights_path()
    if not path.exists():
        pytest.fail(f"shipped weights missing: {path}")
    return load_checkpoint(path)


def test_shipped_weights_follow_the_caption(shipped):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    report = evaluate(shipped.build_model(), shipped.conditioner(), scenes=64, seed=12345)
    # An untrained or caption-blind network scores near chance (1/9) on every line below.
    assert report.seen.model >= 0.90, report.seen
    assert report.heldout.model >= 0.80, report.heldout
    assert report.swap.model >= 0.90, report.swap
    assert report.seen.baseline <= 0.40 and report.seen.model - report.seen.baseline >= 0.45
    assert report.heldout.model - report.heldout.baseline >= 0.40
    assert report.mismatch.model <= report.mismatch.baseline + 0.10
    assert report.psnr.model > report.psnr.baseline and report.ssim.model > report.ssim.baseline
