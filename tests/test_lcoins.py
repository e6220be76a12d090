"""L-CoIns: stage contract, batch and padding invariance, grouping layer, counter-colour loss, ONNX
export with parity, instance scenes, luminance augmentation, training and evaluation of a tiny net."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from langcolor.client.spec import stage_specs
from langcolor.export import instances, synthetic
from langcolor.export.checkpoint import load_checkpoint
from langcolor.export.families.lcoins.config import CONFIGS as LCOINS_CONFIGS
from langcolor.export.families.lcoins.network import LCoIns
from langcolor.export.families.lcoins.training import luminance_augment, recolour

VOCAB = 40


def _tokens(batch: int, T: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCAB, (batch, T), generator=g)  # [B,T]
    lengths = torch.randint(1, T + 1, (batch,), generator=g)
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = 0  # right padding
    return tokens


def _model(name: str = "tiny", seed: int = 0) -> LCoIns:
    torch.manual_seed(seed)
    model = LCoIns(LCOINS_CONFIGS[name], VOCAB)
    model.train()  # non-trivial BatchNorm running statistics, as a trained network has
    with torch.no_grad():
        for _ in range(2):
            S = model.cfg.image_size
            model(torch.rand(4, 1, S, S) * 100, _tokens(4, model.cfg.max_tokens))
    return model.eval()


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_stages_follow_the_declared_tensor_contract(name):
    model = _model(name)
    cfg, specs = model.cfg, stage_specs(model.geometry)
    assert model.geometry.family == "lcoins" and model.geometry.feature_shape == (cfg.patches, cfg.dim)
    L = torch.rand(3, 1, cfg.image_size, cfg.image_size) * 100
    with torch.no_grad():
        feats = model.encoder(L)
        mod = model.fusion(feats, _tokens(3, cfg.max_tokens))
        ab = model.decoder(mod)
    for tensor, spec in ((L, specs["encoder"].inputs[0]), (feats, specs["encoder"].outputs[0]),
                         (mod, specs["fusion"].outputs[0]), (ab, specs["decoder"].outputs[0])):
        spec.validate(tensor.numpy())
    assert ab.abs().max() <= 110.0


def test_full_config_is_the_paper_geometry():
    cfg = LCOINS_CONFIGS["full"]
    assert cfg.image_size == 224 and cfg.patch_size == 16 and cfg.dim == 768 and cfg.patches == 196
    assert cfg.geometry(1000).feature_shape == (196, 768)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_a_sample_does_not_depend_on_its_batch(name):
    model = _model(name)
    S, T = model.cfg.image_size, model.cfg.max_tokens
    L = torch.rand(4, 1, S, S) * 100
    tokens = _tokens(4, T)
    with torch.no_grad():
        together, _ = model(L, tokens)
        for i in range(4):
            alone, _ = model(L[i : i + 1], tokens[i : i + 1])
            assert torch.allclose(alone, together[i : i + 1], atol=1e-3), (i, (alone - together[i]).abs().max())
        other = torch.cat([L[:1], torch.zeros(1, 1, S, S), torch.full((1, 1, S, S), 100.0)])
        mixed, _ = model(other, tokens[:3])
    assert torch.allclose(mixed[:1], together[:1], atol=1e-3)


def test_padding_never_reaches_the_image_tokens():
    model = _model()
    feats = model.encoder(torch.rand(4, 1, 32, 32) * 100)
    tokens = _tokens(4, model.cfg.max_tokens)
    with torch.no_grad():
        before = model.fusion(feats, tokens)
        model.fusion.language.embed.weight[0].normal_(0, 5)  # whatever padding embeds to
        model.fusion.language.pos[0, -1].normal_(0, 5)  # the last position is padding in most rows
        after = model.fusion(feats, tokens)
        changed = tokens.clone()
        changed[:, 0] = (tokens[:, 0] - 1) % (VOCAB - 2) + 2  # another real token in the first slot
        other_word = model.fusion(feats, changed)
    full_rows = (tokens != 0).all(1)
    assert torch.allclose(before[~full_rows], after[~full_rows], atol=1e-5)
    assert (before - other_word).abs().max() > 1e-6  # the words themselves do matter (weakly at init)


def test_a_caption_free_input_ignores_the_padding_and_is_finite():
    model = _model()
    L = torch.rand(2, 1, 32, 32) * 100
    blank = torch.zeros(2, model.cfg.max_tokens, dtype=torch.long)
    with torch.no_grad():
        ab, _ = model(L, blank)
        model.fusion.language.embed.weight[0].normal_(0, 5)
        ab2, _ = model(L, blank)
    assert torch.isfinite(ab).all() and torch.allclose(ab, ab2, atol=1e-5)


def test_grouping_layer_assigns_each_image_token_to_one_group_with_a_gradient():
    model = _model().train()
    img = torch.randn(2, 16, model.cfg.dim, requires_grad=True)
    grp = torch.randn(2, model.cfg.group_tokens, model.cfg.dim)
    merged, hard = model.grouping(img, grp)
    assert torch.all(hard.sum(1) == 1) and set(hard.unique().tolist()) <= {0.0, 1.0}  # one group per column
    merged.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0  # straight-through: gradient flows


def test_counter_colour_loss_is_a_log_likelihood_and_trains_both_halves():
    model = _model().train()
    S, T = model.cfg.image_size, model.cfg.max_tokens
    L = torch.rand(2, 1, S, S) * 100
    tokens = _tokens(4, T)
    ab, ctr, hard = model.forward_train(torch.cat([L, L]), tokens, pair_halves=True)
    assert ab.shape == (4, 2, S, S) and hard.shape == (4, model.cfg.group_tokens, model.cfg.patches)
    assert torch.isfinite(ctr) and ctr.item() <= 0.0  # log of a product of probabilities
    ctr.backward()
    assert model.counter.lag.weight.grad.abs().sum() > 0 and model.grouping.v.weight.grad.abs().sum() > 0


def test_stages_export_to_onnx_and_pass_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    from langcolor.export.onnx_export import export_stages
    from langcolor.export.parity import validate_export

    model = _model()
    geom = model.geometry
    specs = stage_specs(geom)
    modules = {s: getattr(model, s) for s in specs}
    paths = {s: tmp_path / f"{s}.onnx" for s in specs}
    export_stages(modules, specs, paths)
    report = validate_export(modules, specs, paths, geom)  # batches 1, 3, 8; every caption length
    assert report.ok and max(report.worst().values()) < 1e-3


# ------------------------------------------------------------------------------------ data
def test_lcode_scenes_are_bit_identical_to_the_first_generator():
    h = hashlib.sha256()
    for split in ("train", "test", "heldout"):
        for s in synthetic.make_scenes(0, split, 0, 20, 64, 16):
            h.update(s.L.tobytes())
            h.update(s.ab.tobytes())
            h.update(s.masks.tobytes())
            h.update(s.caption.encode())
    # The digest of the generator the shipped lcode_small.pt was trained on.
    assert h.hexdigest() == "4019cf13c310e5322e0a173de45fcac15cd8f02260d99c5f328f8f1e28b41cd6"


def test_instance_scenes_name_two_instances_apart():
    scenes = instances.make_instance_scenes(0, "test", 0, 60, 64, 16)
    again = instances.make_instance_scene(0, "test", 7, 64, 16)
    assert np.array_equal(again.scene.L, scenes[7].scene.L) and again.scene.caption == scenes[7].scene.caption
    for inst in scenes:
        s = inst.scene
        a, b = s.objects[:2]
        assert a.shape == b.shape and a.colour != b.colour and a.mentioned and b.mentioned
        assert len(s.words) <= 16 and all(d in s.words for d in inst.descriptors)
        for (noun, colour) in s.pairs:
            assert s.words[noun] in synthetic.SHAPES + (synthetic.BACKGROUND,) and s.words[colour] in synthetic.COLOURS
        for k in range(2):  # the ground truth of each instance is its own colour
            ab = s.ab[:, s.masks[k]].mean(1)
            assert np.abs(ab - synthetic.PALETTE[s.objects[k].colour]).max() <= synthetic.AB_JITTER + 1e-4
        if inst.descriptors == ("left", "right"):
            assert np.nonzero(s.masks[0])[1].mean() < np.nonzero(s.masks[1])[1].mean()
        if inst.descriptors == ("small", "big"):
            assert s.masks[0].sum() < s.masks[1].sum()
    assert {i.kind for i in scenes} == {"position", "size"}
    share = np.mean([i.contradicts for i in scenes])
    assert 0.3 <= share <= 0.7


def test_instance_gray_levels_follow_or_contradict_the_usual_correlation():
    scenes = instances.make_instance_scenes(0, "test", 0, 200, 64, 16)

    def corr(flag: bool) -> float:
        pairs = [(instances.NATURAL_L[o.colour], float(np.median(i.scene.L[m])))
                 for i in scenes if i.contradicts == flag for o, m in zip(i.scene.objects, i.scene.masks)]
        x, y = np.array(pairs).T
        return float(np.corrcoef(x, y)[0, 1])

    assert corr(False) > 0.8 and corr(True) < -0.8


def test_luminance_augmentation_changes_gray_levels_not_shapes():
    s = instances.make_instance_scene(0, "train", 3, 64, 16).scene
    rng = np.random.default_rng(0)
    outs = [luminance_augment(s.L, s.ab, rng, 3.0) for _ in range(6)]
    for out in outs:
        assert out.shape == s.L.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 100
    means = [float(o[s.masks[0]].mean()) for o in outs]
    assert np.ptp(means) > 5.0  # the instance's gray level moves between draws


def test_recolour_moves_each_named_region_to_the_new_colour():
    s = instances.make_instance_scene(0, "train", 5, 64, 16).scene
    caption, ab = recolour(s, np.random.default_rng(1))
    new_words = caption.split()
    assert len(new_words) == len(s.words) and caption != s.caption
    for k, o in enumerate(s.objects):
        if not o.mentioned:
            assert np.array_equal(ab[:, s.masks[k]], s.ab[:, s.masks[k]])
            continue
        new = next(new_words[c] for n, c in s.pairs if s.words[c] == o.colour)
        mean = ab[:, s.masks[k]].mean(1)
        assert np.abs(mean - synthetic.PALETTE[new]).max() <= synthetic.AB_JITTER + 1e-3


# ------------------------------------------------------------------------------------ training
def test_tiny_lcoins_trains_resumes_and_evaluates(tmp_path):
    from langcolor.export.evaluate import evaluate
    from langcolor.export.families.lcoins.config import TrainingOptions
    from langcolor.export.train import TrainOptions, train

    opts = TrainOptions(family="lcoins", config="tiny", steps=4, batch_size=8, lr=1e-3, checkpoint_every=2,
                        family_options=TrainingOptions(vocab_scenes=100))
    result = train(opts, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.weights)
    assert ckpt.family == "lcoins" and ckpt.tokenizer.wordpiece and np.isfinite(result.loss)
    model = ckpt.build_model()
    assert isinstance(model, LCoIns) and model.geometry.vocab_size == ckpt.tokenizer.vocab_size
    again = train(opts, tmp_path / "run", progress=False)  # resumes at the end: nothing left to do
    assert load_checkpoint(again.weights).sha256 == ckpt.sha256
    report = evaluate(model, ckpt.conditioner(), scenes=4, seed=3)
    assert report.instance.count == 8 and 0.0 <= report.instance.model <= 1.0
    assert report.unknown_words == {}  # WordPiece knows every word of the scenes


# ------------------------------------------------------------------------------------ tokenizer
def test_wordpiece_reads_unseen_words_as_pieces_and_never_refuses_for_vocabulary():
    from langcolor.client.errors import CaptionError
    from langcolor.client.tokenizer import CaptionTokenizer

    tok = CaptionTokenizer.train_wordpiece(["the left square is red", "a small blue circle"] * 20, 24, 100)
    assert tok.wordpiece and tok.vocabulary["[PAD]"] == 0 and tok.vocabulary["[UNK]"] == 1
    enc = tok.encode("The LEFT square is Crimson!")
    assert enc.words == ("the", "left", "square", "is", "crimson") and enc.split == ("crimson",)
    assert enc.unknown == () and enc.length > 5 and 1 not in enc.ids.tolist()  # pieces, never [UNK]
    assert tok.decode(enc.ids) == "the left square is crimson"
    assert tok.encode("zyxwvut qq").length >= 2  # only unseen words: still read, not refused
    assert tok.encode("café").ids.tolist() == tok.encode("cafe").ids.tolist()  # accents stripped
    with pytest.raises(CaptionError, match="word pieces"):
        tok.encode("supercalifragilistic expialidocious")  # more pieces than T = 24: refused, never cut
    again = CaptionTokenizer.from_str(tok.to_str())
    assert again.sha256 == tok.sha256 and again.wordpiece


def test_the_shipped_lcode_tokenizer_is_unchanged():
    from langcolor.client.tokenizer import CaptionTokenizer
    from langcolor.export.checkpoint import default_weights_path

    tok = load_checkpoint(default_weights_path("lcode")).tokenizer
    assert tok.sha256 == "c893df82450db36290f9f83e1720c8512b4fcfda1412a9669ec43e196d4623b6" and not tok.wordpiece
    enc = tok.encode("the left circle is red")
    assert enc.unknown == ("left",) and enc.split == () and enc.length == 5
    assert isinstance(tok, CaptionTokenizer)


def _mean_pairwise_cosine(x: torch.Tensor) -> float:
    """x [N,D] -> mean cosine over the N*(N-1) ordered pairs of distinct rows."""
    x = torch.nn.functional.normalize(x, dim=-1)
    sim = x @ x.T  # [N,N]
    n = x.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def test_caption_tokens_and_group_tokens_start_distinct():
    """The collapse the first shipped weights suffered (model card): at initialisation a caption's
    language tokens had mean pairwise cosine 0.90 and the eight group tokens were one vector."""
    torch.manual_seed(0)
    model = LCoIns(LCOINS_CONFIGS["small"], VOCAB).eval()
    tokens = _tokens(1, model.cfg.max_tokens)
    tokens[0, :7] = torch.arange(3, 10)  # seven distinct words
    tokens[0, 7:] = 0
    with torch.no_grad():
        lag, mask = model.fusion.language(tokens)  # [1,T,D]
    assert _mean_pairwise_cosine(lag[0, :7]) < 0.5
    groups = model.fusion.groups[0] + model.fusion.modal[2]  # [G,D], what the first block sees
    assert _mean_pairwise_cosine(groups) < 0.8
    assert groups.norm(dim=-1).min() > 2.0  # unit scale per dimension, not N(0, 0.02)


def test_fusion_has_no_shared_additive_vectors_to_grow():
    """No bias in the fusion stage and fixed modal-type embeddings, saved with the weights (model card)."""
    model = LCoIns(LCOINS_CONFIGS["tiny"], VOCAB)
    assert [n for n, _ in model.fusion.named_parameters() if n.endswith("bias")] == []
    assert "modal" not in dict(model.fusion.named_parameters())
    assert "fusion.modal" in model.state_dict()  # a persistent buffer: the export and a reload see the same
    other = LCoIns(LCOINS_CONFIGS["tiny"], VOCAB)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.fusion.modal, model.fusion.modal)


def test_grouping_attention_is_cosine_with_a_capped_learnt_scale():
    """The grouping blocks attend by cosine (GroupingBlock docstring): lengthening queries or keys
    changes nothing, the per-head scale is learnt, and it cannot grow past the cap."""
    from langcolor.export.families.lcoins.network import _MAX_LOGIT_SCALE, attend

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    scale = torch.full((3, 1, 1), float(np.log(10.0)))
    out = attend(q, k, v, None, scale)
    torch.testing.assert_close(attend(q * 7.0, k * 0.1, v, None, scale), out)
    assert not torch.allclose(attend(q * 7.0, k * 0.1, v), attend(q, k, v))  # the dot product is not invariant
    huge = torch.full((3, 1, 1), 50.0)
    torch.testing.assert_close(attend(q, k, v, None, huge), attend(q, k, v, None, torch.full((3, 1, 1), float(np.log(_MAX_LOGIT_SCALE)))))
    model = LCoIns(LCOINS_CONFIGS["tiny"], VOCAB)
    scales = [n for n, _ in model.fusion.named_parameters() if n.endswith("logit_scale")]
    assert len(scales) == LCOINS_CONFIGS["tiny"].grouping_blocks
    L = torch.rand(2, 1, 32, 32) * 100
    tokens = torch.randint(1, VOCAB, (2, LCOINS_CONFIGS["tiny"].max_tokens))
    model(L, tokens)[0].square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.fusion.named_parameters() if n.endswith("logit_scale"))
