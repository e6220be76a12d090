"""ONNX export of the three stages and its parity check against PyTorch (tiny random-weight network)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from langcolor.client.errors import ExportParityError
from langcolor.client.spec import BATCH, STAGES, stage_specs
from langcolor.export.families.lcode.config import CONFIGS
from langcolor.export.families.lcode.network import LCoDe
from langcolor.export.onnx_export import export_stages, read_signature, signature_problems, token_ids
from langcolor.export.parity import BATCH_SIZES, PIPELINE, validate_export

VOCAB = 23


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = LCoDe(CONFIGS["tiny"], VOCAB).eval()
    geom = model.geometry
    specs = stage_specs(geom)
    modules = {s: getattr(model, s) for s in STAGES}
    out = tmp_path_factory.mktemp("onnx")
    paths = export_stages(modules, specs, {s: out / f"{s}.onnx" for s in STAGES})
    return model, geom, specs, modules, paths


def test_every_graph_carries_the_spec_names_dtypes_and_batch_axis(exported):
    _, _, specs, _, paths = exported
    for stage in STAGES:
        sig = read_signature(paths[stage])
        spec = specs[stage]
        assert [t.name for t in sig.inputs] == spec.input_names  # no "input.1" or "onnx::..." names
        assert [t.name for t in sig.outputs] == spec.output_names
        for declared, found in zip((*spec.inputs, *spec.outputs), (*sig.inputs, *sig.outputs)):
            assert found.dtype == declared.dtype
            assert found.shape == declared.shape  # ("batch", fixed dims...): batch dynamic, the rest fixed
            assert found.shape[0] == BATCH
        assert signature_problems(paths[stage], spec) == []


def test_export_leaves_modules_in_eval_mode(exported):
    model = exported[0]
    assert not any(m.training for m in model.modules())


def test_signature_check_names_the_disagreeing_tensor(exported):
    _, _, specs, _, paths = exported
    problems = signature_problems(paths["encoder"], specs["fusion"])
    assert problems and "input names" in problems[0] and "FEATURES" in problems[0]


def test_parity_covers_batches_and_every_caption_length(exported):
    _, geom, specs, modules, paths = exported
    report = validate_export(modules, specs, paths, geom)
    assert report.ok
    worst = report.worst()
    assert set(worst) == {"encoder.FEATURES", "fusion.MODULATED", "decoder.AB", f"{PIPELINE}.AB"}
    assert all(0.0 <= v <= report.tolerances()[k] for k, v in worst.items())
    fusion = [c for c in report.checks if c.stage == "fusion"]
    assert {c.batch for c in fusion} == set(BATCH_SIZES)
    # Row 0 of each batch walks through every caption length 1..T.
    for b in BATCH_SIZES:
        assert sorted(c.caption_lengths[0] for c in fusion if c.batch == b) == list(range(1, geom.max_tokens + 1))
    assert {c.shape for c in report.checks if c.stage == "decoder"} == {
        (b, 2, geom.image_size, geom.image_size) for b in BATCH_SIZES
    }
    raw = json.loads(report.to_json())
    assert raw["ok"] is True and len(raw["checks"]) == len(report.checks)


def test_parity_fails_listing_every_tensor_that_disagrees(exported):
    """Weights changed after export: the encoder and the end-to-end chain must both be named."""
    model, geom, specs, _, paths = exported
    altered = LCoDe(model.cfg, VOCAB).eval()
    altered.load_state_dict(model.state_dict())
    with torch.no_grad():
        altered.encoder.body[0].weight.add_(0.5)
    modules = {s: getattr(altered, s) for s in STAGES}
    with pytest.raises(ExportParityError) as info:
        validate_export(modules, specs, paths, geom, batch_sizes=(1, 3))
    message = str(info.value)
    assert "encoder.FEATURES" in message and f"{PIPELINE}.AB" in message
    assert "fusion.MODULATED" not in message  # fusion got the altered encoder's features on both sides
    assert not info.value.report.ok


class _TraceSpecialised(nn.Module):
    """A decoder whose Python branch on the batch size is frozen by the tracer (a real export bug)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, modulated: torch.Tensor) -> torch.Tensor:
        ab = self.decoder(modulated)
        return ab if modulated.shape[0] == 2 else ab * 0.5


def test_parity_catches_behaviour_frozen_at_the_trace_batch(exported, tmp_path):
    model, geom, specs, modules, _ = exported
    modules = {**modules, "decoder": _TraceSpecialised(model.decoder).eval()}
    paths = export_stages(modules, specs, {s: tmp_path / f"{s}.onnx" for s in STAGES})
    with pytest.raises(ExportParityError, match="decoder.AB"):
        validate_export(modules, specs, paths, geom)


def test_padding_does_not_change_the_exported_fusion_for_the_same_words(exported):
    """Same words, same features: the ONNX fusion output must not depend on the other rows' lengths."""
    _, geom, specs, _, paths = exported
    rng = np.random.default_rng(1)
    sess = ort.InferenceSession(str(paths["fusion"]), providers=["CPUExecutionProvider"])
    feats = np.abs(rng.standard_normal((1, *geom.feature_shape))).astype(np.float32)
    short = token_ids([3], geom.tokens, rng)  # (1, T)
    batch_tokens = np.concatenate([short, token_ids([geom.max_tokens], geom.tokens, rng)])  # (2, T)
    alone = sess.run(None, {"FEATURES": feats, "TOKENS": short})[0]
    together = sess.run(None, {"FEATURES": np.repeat(feats, 2, 0), "TOKENS": batch_tokens})[0]
    np.testing.assert_allclose(together[:1], alone, atol=1e-5)
