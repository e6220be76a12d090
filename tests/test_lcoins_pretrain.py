"""L-CoIns pretraining stages and grouping diagnostics: the ARI, patch labels, word positions, the
phrases and hidden words of masked-word pretraining, hidden patches, stage chaining (--init, --frozen,
resume) and the instance-contrast augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from langcolor.client.errors import LangcolorError
from langcolor.export import instances, synthetic
from langcolor.export.checkpoint import load_checkpoint
from langcolor.export.families.lcoins import pretrain, training
from langcolor.export.families.lcoins.config import CONFIGS, TrainingOptions
from langcolor.export.families.lcoins.diagnostics import adjusted_rand_index, patch_labels, word_starts
from langcolor.export.families.lcoins.probe import _fit_and_score
from langcolor.export.train import TrainOptions, train


@pytest.fixture(scope="module")
def tokenizer():
    return training.build_tokenizer(CONFIGS["tiny"], 0, 200)


def _opts(steps: int = 3, batch: int = 8, **family) -> TrainOptions:
    return TrainOptions(family="lcoins", config="tiny", steps=steps, batch_size=batch, lr=1e-3, checkpoint_every=2,
                        family_options=TrainingOptions(vocab_scenes=100, **family))


# ------------------------------------------------------------------------------------ diagnostics
def test_adjusted_rand_index_matches_hand_computed_values():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, a) == pytest.approx(1.0)
    assert adjusted_rand_index(a, np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)  # names do not matter
    # Contingency [[1,1,0],[0,1,1],[1,0,1]]-like example: index 0, expected 3*3/15 -> ARI = -0.25.
    assert adjusted_rand_index(a, np.array([0, 1, 1, 2, 2, 0])) == pytest.approx(-0.25)
    # The classic example (Hubert and Arabie): 0.2424...
    x = np.array([0, 0, 0, 1, 1, 1])
    y = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(x, y) == pytest.approx(0.24242424, abs=1e-6)
    rng = np.random.default_rng(0)
    chance = [adjusted_rand_index(rng.integers(0, 3, 64), rng.integers(0, 3, 64)) for _ in range(200)]
    assert abs(np.mean(chance)) < 0.02  # independent labelings score ~0, the point of adjusting


def test_patch_labels_name_what_covers_most_of_each_patch():
    masks = np.zeros((2, 16, 16), bool)
    masks[0, :8, :8] = True  # object 0 fills patch (0, 0)
    masks[1, 8:, 8:13] = True  # object 1 covers 5/8 of patch (1, 1)
    masks[1, :8, 8:11] = True  # and 3/8 of patch (0, 1): background wins there
    assert patch_labels(masks, 8).tolist() == [1, 0, 0, 2]


def test_word_starts_point_at_each_words_first_piece(tokenizer):
    for s in instances.make_instance_scenes(0, "test", 0, 20, 32, 12):
        ids = tokenizer.encode(s.scene.caption).ids
        starts = word_starts(tokenizer, s.scene.words)
        for word, at in zip(s.scene.words, starts):
            assert ids[at] == tokenizer.encode(word).ids[0]
        assert starts == sorted(starts) and starts[-1] < tokenizer.encode(s.scene.caption).length


def test_linear_probe_reads_a_label_that_is_there_and_not_one_that_is_not():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = torch.randn(400, 16, generator=g)
    x[:, :4] += 3.0 * torch.nn.functional.one_hot(y, 4)  # the label is linearly readable
    assert _fit_and_score(x[:300], y[:300], x[300:], y[300:], 4, steps=100) > 0.9
    noise = torch.randn(400, 16, generator=g)
    assert _fit_and_score(noise[:300], y[:300], noise[300:], y[300:], 4, steps=100) < 0.45  # chance is 0.25


# ------------------------------------------------------------------------------------ text stage
def test_pair_phrases_name_one_thing_of_the_caption_and_hide_one_of_its_words():
    rng = np.random.default_rng(0)
    asked_colour, count = 0, 0
    plain = [(s, None) for s in synthetic.make_scenes(0, "train", 0, 60, 64, 16)]
    inst = [(i.scene, i.descriptors) for i in instances.make_instance_scenes(0, "train", 0, 60, 64, 16)]
    for scene, desc in plain + inst:
        named, bg = pretrain.facts(scene, desc)
        if not named and bg is None:
            continue
        facts = set(named) | ({(synthetic.BACKGROUND, bg, None)} if bg else set())
        words, asked = pretrain.question(named, bg, rng)
        colours = [w for w in words if w in synthetic.COLOURS]
        assert len(colours) == 1  # one thing only: no other colour to eliminate the answer with
        fact = next(f for f in facts if f[1] == colours[0])
        assert fact[0] in words and (fact[2] is None or fact[2] in words)  # its own noun and location
        assert asked in words and asked in {w for w in fact if w is not None}
        asked_colour += asked == colours[0]
        count += 1
    assert 0.35 < asked_colour / count < 0.65  # the colour half the time


def test_masked_word_batches_are_deterministic_and_hide_words_worth_binding(tokenizer):
    cfg = CONFIGS["tiny"]
    T = cfg.max_tokens
    content = {tokenizer.encode(w).ids[0] for w in pretrain.CONTENT}
    for pair_rate in (0.0, 1.0):
        opts = _opts(batch=16, stage="pretrain-text", pair_rate=pair_rate)
        batch = pretrain.text_batch(cfg, tokenizer, opts, 5)
        again = pretrain.text_batch(cfg, tokenizer, opts, 5)
        assert all(torch.equal(batch[k], again[k]) for k in batch)  # deterministic per step (resumable)
        tokens, targets, hidden = batch["tokens"], batch["targets"], batch["hidden"]
        assert tokens.shape == (16, 2 * T) and (batch["segments"][:, T:] == 1).all()
        for b in range(16):
            picked = targets[b] >= 0
            assert picked.any() and any(int(t) in content for t in targets[b][picked])
            assert not hidden[b][~picked].any()  # only predicted positions are hidden
            if pair_rate == 1.0:  # the caption is read whole; one word of the phrase after it is asked
                assert not picked[:T].any() and (tokens[b, T:] != 0).any()
            else:
                assert (tokens[b, T:] == 0).all()


def test_masked_word_loss_learns_and_only_touches_the_language_side(tmp_path):
    opts = TrainOptions(**{**_opts(steps=60, batch=32, stage="pretrain-text").__dict__, "lr": 5e-3})
    ckpt = load_checkpoint(train(opts, tmp_path / "text", progress=False).weights)
    fresh = load_checkpoint(train(_opts(steps=1, batch=32, stage="pretrain-text"), tmp_path / "one", progress=False).weights)
    held = pretrain.text_batch(ckpt.config, ckpt.tokenizer, opts, 10_000)  # a batch no run trained on

    def loss(c) -> float:
        with torch.no_grad():
            return float(pretrain.text_losses(c.build_model(), held, opts)["mlm"])

    assert loss(ckpt) < min(loss(fresh), np.log(ckpt.geometry.vocab_size)) - 1.0  # far from a uniform guess
    changed = {k for k in ckpt.state_dict if not torch.equal(ckpt.state_dict[k], fresh.state_dict[k])}
    assert any(k.startswith("fusion.language.") for k in changed)
    assert not any(k.startswith(("encoder.", "decoder.", "fusion.blocks.")) for k in changed)


# ------------------------------------------------------------------------------------ image stage
def test_hidden_patches_are_replaced_before_the_vit_and_predicted_from_their_own_pixels():
    torch.manual_seed(0)
    from langcolor.export.families.lcoins.network import LCoIns

    model = LCoIns(CONFIGS["tiny"], 40).eval()
    L = torch.rand(2, 1, 32, 32) * 100
    hide = torch.zeros(2, 16, dtype=torch.bool)
    hide[0, 5] = True
    with torch.no_grad():
        plain = model.encoder(L)
        hidden = model.encoder(L, hide=(hide, model.pretext.hidden_patch))
        L2 = L.clone()
        L2[0, 0, 8:16, 8:16] = 0.0  # pixels of patch 5 (row 1, column 1) only
        hidden2 = model.encoder(L2, hide=(hide, model.pretext.hidden_patch))
    assert torch.allclose(plain[1], hidden[1]) and not torch.allclose(plain[0], hidden[0])
    assert torch.allclose(hidden, hidden2, atol=1e-6)  # a hidden patch's own pixels never reach the ViT
    truth = pretrain.patch_pixels(L, 8)  # [B,P,64]
    assert torch.allclose(truth[0, 5], ((L[0, 0, 8:16, 8:16] - 50) / 50).reshape(-1))


def test_image_stage_trains_the_vit_and_leaves_the_words_alone(tmp_path):
    result = train(_opts(steps=4, stage="pretrain-image", colour_weight=1.0), tmp_path / "img", progress=False)
    ckpt = load_checkpoint(result.weights)
    fresh = load_checkpoint(train(_opts(steps=1, stage="pretrain-image"), tmp_path / "one", progress=False).weights)
    changed = {k for k in ckpt.state_dict if not torch.equal(ckpt.state_dict[k], fresh.state_dict[k])}
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    assert not any(k.startswith("fusion.language.") for k in changed)


# ------------------------------------------------------------------------------------ chaining
def test_stages_chain_through_init_and_frozen_parts_stay_fixed_across_a_resume(tmp_path, monkeypatch):
    text = train(_opts(steps=2, stage="pretrain-text"), tmp_path / "text", progress=False)
    start = load_checkpoint(text.weights)
    joint_opts = _opts(steps=4, init=str(text.weights), frozen="language")

    import langcolor.export.train as train_module
    from langcolor.export.checkpoint import save_checkpoint

    class Interrupted(Exception):
        pass

    def save_then_die(path, model, assets, step, *args, **kwargs):
        digest = save_checkpoint(path, model, assets, step, *args, **kwargs)
        if step == 2:
            raise Interrupted
        return digest

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupted):
        train(joint_opts, tmp_path / "joint", progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    joint = load_checkpoint(train(joint_opts, tmp_path / "joint", progress=False).weights)
    assert joint.assets == start.assets  # the pretrained words keep their ids
    lang = [k for k in start.state_dict if k.startswith("fusion.language.")]
    assert all(torch.equal(joint.state_dict[k], start.state_dict[k]) for k in lang)
    assert not torch.equal(joint.state_dict["decoder.head.weight"], start.state_dict["decoder.head.weight"])
    with pytest.raises(LangcolorError, match="--config"):
        train(TrainOptions(family="lcoins", config="small", steps=1, batch_size=4,
                           family_options=TrainingOptions(init=str(text.weights))), tmp_path / "bad", progress=False)


def test_bad_stage_or_part_is_refused():
    with pytest.raises(LangcolorError, match="stage"):
        TrainingOptions(stage="pretrain")
    with pytest.raises(LangcolorError, match="frozen"):
        TrainingOptions(frozen="language,grouping")


def test_instance_contrast_keeps_two_instances_apart_in_gray():
    cfg = CONFIGS["small"]

    def gaps(contrast: float) -> np.ndarray:
        opts = TrainOptions(family="lcoins", config="small", batch_size=64, family_options=TrainingOptions(
            instance_rate=1.0, augment_rate=1.0, gamma_max=5.0, instance_contrast=contrast))
        scenes, n_plain = training._scenes(cfg, opts, 3, 64)
        L = training._gray_inputs(scenes, n_plain, opts.family_options, np.random.default_rng(0))
        return np.array([training._instance_gap(L[i, 0], s.masks) for i, s in enumerate(scenes)])

    plain, apart = gaps(0.0), gaps(synthetic.MIN_L_CONTRAST)
    assert (plain < synthetic.MIN_L_CONTRAST).mean() > 0.2  # augmentation alone often makes them alike
    assert (apart >= synthetic.MIN_L_CONTRAST).mean() > 0.95
