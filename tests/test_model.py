"""L-CoDe stages: the tensor contract, batch and padding invariance, the caption-free path, ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from langcolor.client.spec import stage_specs
from langcolor.export.families.lcode.config import CONFIGS
from langcolor.export.families.lcode.network import CaptionEncoder, LCoDe

VOCAB = 30


def _model(name: str = "tiny", seed: int = 0) -> LCoDe:
    torch.manual_seed(seed)
    model = LCoDe(CONFIGS[name], VOCAB)
    # Give BatchNorm non-trivial running statistics, as a trained network has.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 1, model.cfg.image_size, model.cfg.image_size) * 100, _tokens(4, model.cfg.max_tokens))
    return model.eval()


def _tokens(batch: int, T: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, VOCAB, (batch, T), generator=g)  # [B,T]
    lengths = torch.randint(1, T + 1, (batch,), generator=g)
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = 0  # right padding
    return tokens


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_stages_follow_the_declared_tensor_contract(name):
    model = _model(name)
    cfg, specs = model.cfg, stage_specs(model.geometry)
    L = torch.rand(3, 1, cfg.image_size, cfg.image_size) * 100  # [B,1,S,S]
    feats = model.encoder(L)
    mod = model.fusion(feats, _tokens(3, cfg.max_tokens))
    ab = model.decoder(mod)
    for tensor, spec in ((L, specs["encoder"].inputs[0]), (feats, specs["encoder"].outputs[0]),
                         (mod, specs["fusion"].outputs[0]), (ab, specs["decoder"].outputs[0])):
        spec.validate(tensor.detach().numpy())
    assert ab.abs().max() <= 110.0


def test_full_config_is_the_paper_geometry():
    cfg = CONFIGS["full"]
    assert cfg.image_size == 224 and cfg.enc_channels == (64, 128, 256, 512) and cfg.enc_convs == (2, 2, 3, 3)
    assert cfg.feature_shape == (512, 14, 14) and cfg.occm_threshold == 0.1
    geom = cfg.geometry(100)
    assert geom.feature_shape == (512, 14, 14) and geom.max_tokens == cfg.max_tokens


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_a_sample_does_not_depend_on_its_batch(name):
    model = _model(name)
    S, T = model.cfg.image_size, model.cfg.max_tokens
    L = torch.rand(4, 1, S, S) * 100
    tokens = _tokens(4, T)
    with torch.no_grad():
        together, occm_together = model(L, tokens)
        for i in range(4):
            alone, occm_alone = model(L[i : i + 1], tokens[i : i + 1])
            assert torch.allclose(alone, together[i : i + 1], atol=1e-3), (i, (alone - together[i]).abs().max())
            assert torch.allclose(occm_alone, occm_together[i : i + 1], atol=1e-5)
        # Different neighbours (a black and a white image) change nothing either.
        other = torch.cat([L[:1], torch.zeros(1, 1, S, S), torch.full((1, 1, S, S), 100.0)])
        mixed, _ = model(other, tokens[:3])
        assert torch.allclose(mixed[:1], together[:1], atol=1e-3)


def test_padding_never_reaches_the_words():
    torch.manual_seed(0)
    enc = CaptionEncoder(VOCAB, 8, 8).eval()
    words = torch.tensor([[5, 9, 3, 7]])
    short = torch.cat([words, torch.zeros(1, 4, dtype=torch.long)], 1)  # T = 8
    long = torch.cat([words, torch.zeros(1, 20, dtype=torch.long)], 1)  # T = 24
    with torch.no_grad():
        w_short, _ = enc(short)
        w_long, mask = enc(long)
    assert torch.allclose(w_short[:, :4], w_long[:, :4], atol=1e-6)
    assert torch.all(w_long[:, 4:] == 0) and mask.sum() == 4
    # Both directions matter: the backward half of word 0 sees the last word.
    with torch.no_grad():
        w_other, _ = enc(torch.tensor([[5, 9, 3, 8, 0, 0, 0, 0]]))
    assert not torch.allclose(w_other[0, 0, 8:], w_short[0, 0, 8:])


def test_fusion_ignores_whatever_the_padding_embedding_holds():
    model = _model()
    feats = model.encoder(torch.rand(4, 1, 32, 32) * 100)
    tokens = _tokens(4, model.cfg.max_tokens)
    with torch.no_grad():
        before = model.fusion(feats, tokens)
        model.fusion.captions.embed.weight[0].normal_(0, 5)
        after = model.fusion(feats, tokens)
        changed = tokens.clone()
        changed[:, 0] = (tokens[:, 0] - 1) % (VOCAB - 2) + 2  # another real word in the first slot
        other_word = model.fusion(feats, changed)
    assert torch.allclose(before, after, atol=1e-6)
    assert not torch.allclose(before, other_word, atol=1e-4)  # the words themselves do matter


def test_caption_free_input_closes_the_gate():
    model = _model()
    feats = model.encoder(torch.rand(2, 1, 32, 32) * 100)  # [B,Dv,H,W]
    blank = torch.zeros(2, model.cfg.max_tokens, dtype=torch.long)
    with torch.no_grad():
        out = model.fusion(feats, blank)
        ab, occm = model(torch.rand(2, 1, 32, 32) * 100, blank)
    mu = feats.mean((2, 3), keepdim=True)
    sigma = torch.sqrt(((feats - mu) ** 2).mean((2, 3), keepdim=True) + 1e-5)
    assert torch.allclose(out, (feats - mu) / sigma, atol=1e-5)  # gamma' = 1, beta' = 0
    assert torch.isfinite(ab).all() and torch.all(occm == 0)


def test_occm_is_a_probability_and_zero_on_padding():
    model = _model()
    tokens = _tokens(4, model.cfg.max_tokens)
    with torch.no_grad():
        _, occm = model(torch.rand(4, 1, 32, 32) * 100, tokens)  # [B,T,T]
    pad = tokens == 0
    assert torch.all((occm >= 0) & (occm <= 1))
    assert torch.all(occm[pad.unsqueeze(2).expand_as(occm)] == 0)
    assert torch.all(occm[pad.unsqueeze(1).expand_as(occm)] == 0)


def test_fusion_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model()
    feats = model.encoder(torch.rand(2, 1, 32, 32) * 100)
    path = tmp_path / "fusion.onnx"
    torch.onnx.export(
        model.fusion, (feats, _tokens(2, model.cfg.max_tokens)), str(path), dynamo=False,
        input_names=["FEATURES", "TOKENS"], output_names=["MODULATED"], opset_version=17,
        dynamic_axes={"FEATURES": {0: "batch"}, "TOKENS": {0: "batch"}, "MODULATED": {0: "batch"}},
    )
    model.eval()  # the legacy exporter may leave modules in training mode
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        f = torch.randn(batch, *model.cfg.feature_shape)
        tk = _tokens(batch, model.cfg.max_tokens, seed=batch)
        with torch.no_grad():
            want = model.fusion(f, tk).numpy()
        got = session.run(["MODULATED"], {"FEATURES": f.numpy(), "TOKENS": tk.numpy()})[0]
        assert np.abs(got - want).max() < 1e-4
