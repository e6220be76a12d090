"""In-process runtime: model bundle loading and checks, the three onnxruntime stages, the Colorizer.

A toy model repository is written with the ``onnx`` helper API: three real ONNX stages with the
spec's tensor names whose arithmetic is simple enough to recompute in numpy, so the tests check
the wiring exactly (L reaches the encoder, every token reaches the fusion, ab comes back in the
right place and order). Colour *following* is tested on the shipped model in test_colorize_cli.py.
"""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
import skimage.data
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from langcolor.client.colorizer import Colorizer
from langcolor.client.errors import ImageError, LangcolorError, ModelNotFoundError, TensorError, CaptionError
from langcolor.client.lab import AB_SCALE, rgb_to_lab
from langcolor.client.paths import ENV_MODEL_REPOSITORY, default_model_repository, resolve_model_repository
from langcolor.client.runtime import ModelBundle, OnnxStages, stage_path
from langcolor.client.spec import MANIFEST_FILE, TOKENIZER_FILE, ModelGeometry, ModelManifest, caption_geometry, stage_specs
from langcolor.client.tokenizer import CaptionTokenizer

S, T, C, H = 32, 6, 4, 4  # toy geometry: image side, caption length, feature channels, feature side
POOL = S // H
CAPTIONS = ["a red car on green grass", "a blue sky above a yellow house", "purple flowers near a brown dog"]


def _graph_model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "toy", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _value(t) -> onnx.ValueInfoProto:
    elem = TensorProto.FLOAT if t.dtype == "float32" else TensorProto.INT64
    return helper.make_tensor_value_info(t.name, elem, list(t.shape))


def toy_weights(vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 1, (vocab, C)).astype(np.float32)
    emb[0] = 0  # padding contributes nothing
    return {
        "w_enc": rng.normal(0, 1, (1, C, 1, 1)).astype(np.float32),
        "emb": emb,
        "w_dec": rng.normal(0, 1, (2, C, 1, 1)).astype(np.float32),
    }


def toy_reference(L: np.ndarray, tokens: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """What the toy ONNX stages compute, in numpy: L [B,1,S,S], tokens [B,T] -> ab [B,2,S,S]."""
    b = L.shape[0]
    pooled = L.reshape(b, 1, H, POOL, H, POOL).mean(axis=(3, 5)) / 100.0  # [B,1,H,H]
    feats = pooled * w["w_enc"]  # [B,C,H,H]
    cond = w["emb"][tokens].sum(axis=1)[:, :, None, None]  # [B,C,1,1]
    mod = feats + cond  # [B,C,H,H]
    ab = np.einsum("oc,bchw->bohw", w["w_dec"][:, :, 0, 0], mod)  # [B,2,H,H]
    ab = ab.repeat(POOL, axis=2).repeat(POOL, axis=3)  # nearest upsampling [B,2,S,S]
    return np.tanh(ab) * AB_SCALE


def write_toy_repository(root, family: str = "lcode") -> tuple[ModelGeometry, dict[str, np.ndarray]]:
    tok = CaptionTokenizer.train(CAPTIONS, max_tokens=T)
    geom = caption_geometry(family, S, T, tok.vocab_size, (C, H, H))
    specs, w = stage_specs(geom), toy_weights(tok.vocab_size)
    io_ = {k: ([_value(t) for t in s.inputs], [_value(t) for t in s.outputs]) for k, s in specs.items()}
    const = {"inv100": np.array(0.01, np.float32), "axis_t": np.array([1], np.int64), "axes_hw": np.array([2, 3], np.int64),
             "scales": np.array([1, 1, POOL, POOL], np.float32), "ab_scale": np.array(AB_SCALE, np.float32)}
    models = {
        "encoder": _graph_model(
            [helper.make_node("AveragePool", ["L"], ["p"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
             helper.make_node("Mul", ["p", "inv100"], ["q"]),
             helper.make_node("Mul", ["q", "w_enc"], ["FEATURES"])],
            *io_["encoder"], {"w_enc": w["w_enc"], "inv100": const["inv100"]}),
        "fusion": _graph_model(
            [helper.make_node("Gather", ["emb", "TOKENS"], ["e"], axis=0),
             helper.make_node("ReduceSum", ["e", "axis_t"], ["s"], keepdims=0),
             helper.make_node("Unsqueeze", ["s", "axes_hw"], ["c"]),
             helper.make_node("Add", ["FEATURES", "c"], ["MODULATED"])],
            *io_["fusion"], {"emb": w["emb"], "axis_t": const["axis_t"], "axes_hw": const["axes_hw"]}),
        "decoder": _graph_model(
            [helper.make_node("Conv", ["MODULATED", "w_dec"], ["d"]),
             helper.make_node("Resize", ["d", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Tanh", ["u"], ["t"]),
             helper.make_node("Mul", ["t", "ab_scale"], ["AB"])],
            *io_["decoder"], {"w_dec": w["w_dec"], "scales": const["scales"], "ab_scale": const["ab_scale"]}),
    }
    for stage, model in models.items():
        path = stage_path(root, family, stage)
        path.parent.mkdir(parents=True)
        onnx.save(model, str(path))
    ens = root / family / "1"
    ens.mkdir(parents=True)
    tok.save(ens / TOKENIZER_FILE)
    (ens / MANIFEST_FILE).write_text(ModelManifest(geom, "toy", {TOKENIZER_FILE: tok.sha256}, "toy").to_json())
    return geom, w


@pytest.fixture()
def toy_repo(tmp_path):
    geom, w = write_toy_repository(tmp_path / "repo")
    return tmp_path / "repo", geom, w


def _inputs(geom, batch, seed=0):
    rng = np.random.default_rng(seed)
    L = rng.uniform(0, 100, (batch, 1, S, S)).astype(np.float32)
    tokens = np.zeros((batch, T), np.int64)
    for b in range(batch):
        n = rng.integers(1, T + 1)
        tokens[b, :n] = rng.integers(2, geom.vocab_size, n)
    return L, tokens


# ---------------------------------------------------------------- bundle and stages
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_stages_compute_the_model(toy_repo, batch):
    repo, geom, w = toy_repo
    stages = OnnxStages(ModelBundle.load(repo), intra_op_threads=1)
    L, tokens = _inputs(geom, batch, seed=batch)
    ab = stages.infer({"L": L, "TOKENS": tokens})["AB"]
    assert ab.shape == (batch, 2, S, S) and ab.dtype == np.float32
    assert np.abs(ab - toy_reference(L, tokens, w)).max() < 1e-3
    feats = stages.run_stage("encoder", {"L": L})
    assert feats["FEATURES"].shape == (batch, C, H, H)
    modulated = stages.run_stage("fusion", {**feats, "TOKENS": tokens})
    assert np.allclose(stages.run_stage("decoder", modulated)["AB"], ab, atol=1e-5)


def test_bundle_reads_manifest_and_tokenizer(toy_repo):
    repo, geom, _ = toy_repo
    bundle = ModelBundle.load(repo, "lcode")
    assert bundle.geometry == geom and bundle.tokenizer.max_tokens == T
    assert set(bundle.stage_paths) == {"encoder", "fusion", "decoder"}
    assert ModelBundle.load(repo, stages=False).stage_paths == {}


def test_missing_pieces_are_named(toy_repo, tmp_path):
    repo, _, _ = toy_repo
    with pytest.raises(ModelNotFoundError, match="model 'lcoins' not found.*models here: lcode"):
        ModelBundle.load(repo, "lcoins")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ModelBundle.load(tmp_path / "nowhere")
    stage_path(repo, "lcode", "fusion").unlink()
    with pytest.raises(ModelNotFoundError, match="stage 'fusion'"):
        ModelBundle.load(repo)


def test_tokenizer_hash_is_verified(toy_repo):
    repo, _, _ = toy_repo
    path = repo / "lcode" / "1" / TOKENIZER_FILE
    raw = json.loads(path.read_text())
    raw["model"]["vocab"]["red"], raw["model"]["vocab"]["blue"] = raw["model"]["vocab"]["blue"], raw["model"]["vocab"]["red"]
    path.write_text(json.dumps(raw))  # swapped ids: valid JSON, wrong model
    with pytest.raises(ModelNotFoundError, match="sha256"):
        ModelBundle.load(repo)


def test_corrupt_onnx_and_renamed_tensor_are_model_errors(toy_repo):
    repo, _, _ = toy_repo
    path = stage_path(repo, "lcode", "decoder")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(ModelNotFoundError, match="lcode_decoder: cannot load"):
        OnnxStages(ModelBundle.load(repo))
    model = onnx.load_from_string(good)
    for node in model.graph.node:
        node.input[:] = ["input.1" if n == "MODULATED" else n for n in node.input]
    model.graph.input[0].name = "input.1"  # an exporter that never set input_names
    onnx.save(model, str(path))
    with pytest.raises(ModelNotFoundError, match="no input tensor 'MODULATED'"):
        OnnxStages(ModelBundle.load(repo))


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda L, t: (L.astype(np.float64), t), "L: expected dtype float32"),
        (lambda L, t: (L[:, :, :16], t), "L: expected shape"),
        (lambda L, t: (L, t.astype(np.int32)), "TOKENS: expected dtype int64"),
        (lambda L, t: (L, t[:, :3]), "TOKENS: expected shape"),
        (lambda L, t: (np.where(L > 50, np.nan, L).astype(np.float32), t), "NaN"),
        (lambda L, t: (np.full_like(L, np.inf), t), "NaN or infinity"),
        (lambda L, t: (L + 1.0, t), r"\[0, 100\]"),
        (lambda L, t: (L - 1.0, t), r"\[0, 100\]"),
        (lambda L, t: (L, t + 1000), r"TOKENS: values must lie in \[0, "),
        (lambda L, t: (L, t - 5), r"TOKENS: values must lie in \[0, "),
        (lambda L, t: (L, t[:1]), "batch"),
        (lambda L, t: (L[:0], t[:0]), "empty batch"),
    ],
)
def test_bad_tensors_are_rejected_before_running(toy_repo, mutate, needle):
    repo, geom, _ = toy_repo
    stages = OnnxStages(ModelBundle.load(repo))
    L, tokens = _inputs(geom, 2)
    L[0, 0, 0, 0], L[1, 0, 0, 0] = 0.0, 100.0  # the valid range's ends are accepted...
    stages.infer({"L": L, "TOKENS": tokens})
    bad_l, bad_t = mutate(L, tokens)
    with pytest.raises(TensorError, match=needle):  # ...and everything else is refused
        stages.infer({"L": bad_l, "TOKENS": bad_t})


def test_default_repository_and_env_override(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_MODEL_REPOSITORY, raising=False)
    assert default_model_repository().name == "model_repository"
    assert (default_model_repository().parent / "client" / "paths.py").is_file()  # the repository root
    monkeypatch.setenv(ENV_MODEL_REPOSITORY, str(tmp_path / "elsewhere"))
    assert default_model_repository() == tmp_path / "elsewhere"
    with pytest.raises(ModelNotFoundError, match=ENV_MODEL_REPOSITORY):
        resolve_model_repository()


# ---------------------------------------------------------------- Colorizer on the toy model
def test_colorize_keeps_l_and_size_and_follows_tokens(toy_repo):
    repo, geom, w = toy_repo
    col = Colorizer(model_repository=repo)
    photo = skimage.data.camera()[:101, :77]  # grayscale, odd portrait size
    png = io.BytesIO()
    Image.fromarray(photo).save(png, "PNG")
    a = col.colorize(png.getvalue(), "a red car")
    b = col.colorize(png.getvalue(), "a blue sky")
    assert a.rgb.shape == (101, 77, 3) and a.rgb.dtype == np.uint8
    l_in = rgb_to_lab(np.repeat(photo[..., None], 3, axis=2) / 255.0)[..., 0]
    for r in (a, b):
        assert np.abs(rgb_to_lab(r.rgb / 255.0)[..., 0] - l_in).max() < 0.27  # 8-bit rounding, see test_reconstruct
    prepared = col.prepare(png.getvalue())
    tokens = col.tokenizer.encode("a red car").ids[None]
    assert np.abs(a.ab_small - toy_reference(prepared.l_small[None], tokens, w)[0]).max() < 1e-3
    assert np.abs(a.ab_small - b.ab_small).mean() > 1.0  # the caption reaches the network


def test_colorize_many_equals_one_by_one(toy_repo):
    repo, _, _ = toy_repo
    col = Colorizer(model_repository=repo)
    photos = [skimage.data.astronaut()[:50, :60], skimage.data.coffee()[:33, :41], skimage.data.chelsea()[:64, :64]]
    pairs = [(_png(p), {"caption": c}) for p, c in zip(photos, ["a red car", "green grass", "a blue sky above"])]
    together = col.colorize_many(pairs, batch_size=2)  # a full batch and a partial one
    for (src, inputs), r in zip(pairs, together):
        alone = col.colorize(src, **inputs)
        assert np.abs(alone.ab_small - r.ab_small).max() < 1e-4
        assert np.abs(alone.rgb.astype(int) - r.rgb).max() <= 1


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_unknown_words_reported_in_notes(toy_repo):
    repo, _, _ = toy_repo
    col = Colorizer(model_repository=repo)
    r = col.colorize(_png(skimage.data.astronaut()[:40, :40]), "a red zeppelin over green grass")
    assert r.unknown_words == ("zeppelin", "over")
    assert [n.kind for n in r.notes] == ["unknown-words"] and "zeppelin over" in r.notes[0].message
    with pytest.raises(CaptionError, match="no word"):
        col.colorize(_png(skimage.data.astronaut()[:40, :40]), "zeppelin quux")
    with pytest.raises(CaptionError, match="empty"):
        col.colorize(_png(skimage.data.astronaut()[:40, :40]), "  ?! ")


def test_save_carries_exif_and_is_atomic(toy_repo, tmp_path):
    repo, _, _ = toy_repo
    col = Colorizer(model_repository=repo)
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 8, "langcolor-test"  # rotated 90 degrees counter-clockwise
    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()[:30, :50]).save(buf, "JPEG", exif=exif.tobytes())
    r = col.colorize(buf.getvalue(), "a red car")
    assert r.rgb.shape == (50, 30, 3)  # upright
    out = col.save(r, tmp_path / "out.png")
    saved = Image.open(out)
    assert saved.size == (30, 50) and saved.getexif()[0x0112] == 1 and saved.getexif()[0x010F] == "langcolor-test"
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(LangcolorError, match="is a directory"):
        col.save(r, tmp_path / "adir.png")
    with pytest.raises(ImageError, match="cannot write"):
        col.save(r, tmp_path / "out.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png", "out.png", "repo"]  # no temp files left


def test_infer_ab_validates_values_for_both_paths(toy_repo):
    repo, geom, _ = toy_repo
    col = Colorizer(model_repository=repo)
    L, tokens = _inputs(geom, 2)
    with pytest.raises(TensorError, match="L: values must lie"):
        col.infer({"L": L * 2, "TOKENS": tokens})
    with pytest.raises(TensorError, match="needs TOKENS"):
        col.infer({"L": L})


# ---------------------------------------------------------------- a real export (random weights)
@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    """``langcolor.export``'s own repository writer on the real L-CoDe architecture (tiny, random)."""
    triton_repo = pytest.importorskip("langcolor.export.triton_repo", reason="needs torch to export")
    return triton_repo.build_tiny_repository(tmp_path_factory.mktemp("tiny"), backend="python")


def test_runtime_reads_a_real_export(exported_tiny):
    bundle = ModelBundle.load(exported_tiny)
    stages = OnnxStages(bundle, intra_op_threads=1)
    geom = bundle.geometry
    rng = np.random.default_rng(7)
    words = [w for w in bundle.tokenizer.vocabulary if not w.startswith("[")]
    captions = [" ".join(rng.choice(words, size=n)) for n in (1, geom.max_tokens // 2, geom.max_tokens)]
    tokens = bundle.tokenizer.encode_batch(captions)  # [3, T]
    L = rng.uniform(0, 100, (3, 1, geom.image_size, geom.image_size)).astype(np.float32)  # [3, 1, S, S]
    ab = stages.infer({"L": L, "TOKENS": tokens})["AB"]  # [3, 2, S, S]
    assert ab.shape == (3, 2, geom.image_size, geom.image_size) and np.isfinite(ab).all()
    assert np.abs(ab).max() <= AB_SCALE
    for i in range(3):  # batch invariance through the three sessions
        one = stages.infer({"L": L[i : i + 1], "TOKENS": tokens[i : i + 1]})["AB"]
        assert np.abs(one[0] - ab[i]).max() < 1e-4


def test_colorizer_on_a_real_export_keeps_l(exported_tiny):
    col = Colorizer(model_repository=exported_tiny)
    photo = skimage.data.coffee()[:97, :131]
    word = next(w for w in col.tokenizer.vocabulary if not w.startswith("["))
    r = col.colorize(_png(photo), f"{word} zeppelin")
    assert r.rgb.shape == (97, 131, 3) and r.unknown_words == ("zeppelin",)
    assert np.abs(rgb_to_lab(r.rgb / 255.0)[..., 0] - rgb_to_lab(photo / 255.0)[..., 0]).max() < 0.27


def test_numpy_sources_are_accepted(toy_repo):
    repo, _, _ = toy_repo
    col = Colorizer(model_repository=repo)
    photo = skimage.data.astronaut()[:45, :70]
    from_file = col.colorize(_png(photo), "a red car")
    from_pixels = col.colorize(photo, "a red car")
    assert np.array_equal(from_file.rgb, from_pixels.rgb)
    with pytest.raises(ImageError):
        col.colorize(photo.astype(np.float32), "a red car")  # float outside [0, 1]
