"""The shipped automatic colorizer meets its acceptance figures on held-out synthetic scenes.

Every threshold is the product's stated target, not a number fitted to the weights:
segmentation mIoU >= 0.85; >= 90% of unimodal instances at their class's colour; the semantic
override moves >= 90% of relabelled instances to the new class's colour and leaves >= 90% of the
other regions where they were; for bimodal classes each colour in 25-75% of the samples while
>= 90% of an instance's pixels share one colour, where independent per-pixel sampling does worse;
seeds reproduce. ``langcolor evaluate --model semantic`` prints the same figures on more scenes.
Causality and export parity of the shipped network are checked here too.

Two targets are missed by the shipped weights (``export/weights/semantic_small.md``): the override
moves 71% of relabelled instances (256 scenes, seed 0; 77% on this file's 96 scenes), and 75% of
bimodal samples are >= 90% pure (92% of pixels on average). Those two asserts are strict xfails
carrying the measured figures, so a better file turns them into failures to be promoted; beside
them the shipped level is asserted as a floor, so a worse file fails.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from langcolor.export.checkpoint import default_weights_path, load_checkpoint  # noqa: E402

NAME = "semantic"
WEIGHTS = default_weights_path(NAME, "small")

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no shipped weights at {WEIGHTS}")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_checkpoint(WEIGHTS).build_model()


@pytest.fixture(scope="module")
def report(model):
    from langcolor.export.families.semantic.evaluation import evaluate

    return evaluate(model, None, scenes=96, seed=1)


@pytest.mark.slow
def test_segmentation_and_class_consistent_colour(report):
    assert report.miou >= 0.85, report.iou
    assert report.class_colour.value >= 0.90 and report.class_colour.count >= 50, report.class_colour_by_class


@pytest.mark.slow
def test_the_semantic_override_leaves_the_other_regions_and_moves_most_relabelled_ones(report):
    assert report.override_moved.count >= 60
    assert report.override_stayed.value >= 0.90, (report.override_stayed, report.override_shift_lab)
    # The shipped level (71% in the model card), not the target: without the override nothing moves.
    assert report.override_moved.value >= 0.65, report.override_moved


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="target missed by the shipped weights: the override moves 71% of relabelled "
                   "instances (model card; 77% here), the colour embedding still pulls the rest to the shape's colour")
def test_the_semantic_override_moves_at_least_nine_relabelled_instances_in_ten(report):
    assert report.override_moved.value >= 0.90, report.override_moved


@pytest.mark.slow
def test_bimodal_classes_are_diverse_across_seeds_and_coherent_within_an_instance(report):
    d, ind = report.diversity, report.independent
    assert d.instances >= 10
    for cls, shares in d.mode_share.items():
        assert all(0.25 <= s <= 0.75 for s in shares.values()), (cls, shares)
    assert d.purity >= 0.90, d  # on average, 90% of an instance's pixels at the colour most of them took
    # Independent per-pixel sampling mixes the two colours inside an instance: the autoregression is what removes it.
    assert ind.pure_samples < d.pure_samples - 0.2 and ind.purity < d.purity, (ind, d)
    # The shipped level (75% of samples >= 90% pure in the model card), not the target below.
    assert d.pure_samples >= 0.70, d
    assert report.reproducible


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="target missed by the shipped weights: 75% of bimodal samples are >= 90% pure "
                   "(model card), the rest switch colour part-way through the instance")
def test_nine_bimodal_samples_in_ten_keep_one_colour_over_nine_tenths_of_the_instance(report):
    assert report.diversity.pure_samples >= 0.90, report.diversity


def test_the_shipped_decoder_is_exactly_causal(model):
    q = model.cfg.chroma_size
    g = torch.Generator().manual_seed(0)
    cond = model.fusion(*model.encoder(torch.rand(1, 1, 4 * q, 4 * q, generator=g) * 100),
                        torch.zeros(1, model.cfg.num_classes, q, q)).detach()
    canvas = (torch.rand(1, 2, q, q, generator=g) - 0.5) * 120
    with torch.no_grad():
        base = model.decoder.full(cond, canvas).flatten(2)
        for p in (0, q + 2, q * q // 2 + 5, q * q - 2):
            moved = canvas.clone()
            moved[0, :, p // q, p % q] *= -1
            diff = (model.decoder.full(cond, moved).flatten(2) - base).abs().amax((0, 1))
            assert diff[: p + 1].max().item() == 0.0 and diff[p + 1 :].max().item() > 1e-4, p


@pytest.mark.slow
def test_the_shipped_weights_export_with_parity_per_stage_and_through_the_loop(tmp_path):
    from langcolor.export.triton_repo import ExportEntry, write_repository

    (exported,) = write_repository([ExportEntry.from_checkpoint(load_checkpoint(WEIGHTS))], tmp_path / "repo")
    worst = exported.parity.worst()
    assert exported.parity.ok, worst
    for key in ("encoder.EMB", "encoder.SEG_LOGITS", "fusion.COND", "decoder.MIX", "driver.AB"):
        assert worst[key] <= exported.parity.tolerances()[key], (key, worst[key])
    assert worst["driver.SEG"] == 0.0
    assert np.isfinite(list(worst.values())).all()
