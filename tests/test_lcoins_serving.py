"""The second family beside the first: one repository with lcode and lcoins, in-process and served.

Runs on the served repository (the shipped ``model_repository/`` when it is a python-backend
export); skips when that repository holds no ``lcoins`` family.
"""

from __future__ import annotations

import numpy as np
import pytest

from langcolor.client.colorizer import Colorizer
from langcolor.client.errors import CaptionError
from langcolor.client.runtime import ModelBundle

PHOTO_CAPTION = "the left square is crimson and the right square is blue"


@pytest.fixture(scope="module")
def lcoins_repository(served_repository):
    if not (served_repository.path / "lcoins" / "1" / "langcolor.json").is_file():
        pytest.skip("the served repository has no lcoins family")
    return served_repository.path


def _photo(tmp_path):
    from PIL import Image
    from skimage import data

    path = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()[::4, ::4]).save(path)
    return path


def test_both_families_load_from_one_repository_with_their_own_tokenizers(lcoins_repository):
    lcode = ModelBundle.load(lcoins_repository, family="lcode")
    lcoins = ModelBundle.load(lcoins_repository, family="lcoins")
    assert lcode.tokenizer.sha256 != lcoins.tokenizer.sha256
    assert not lcode.tokenizer.wordpiece and lcoins.tokenizer.wordpiece
    assert len(lcoins.geometry.feature_shape) == 2 and len(lcode.geometry.feature_shape) == 3
    # A word neither model was trained on: lcode ignores it, lcoins reads its word pieces.
    assert lcode.tokenizer.encode(PHOTO_CAPTION).unknown == ("left", "crimson", "right")
    enc = lcoins.tokenizer.encode(PHOTO_CAPTION)
    assert enc.unknown == () and enc.split == ("crimson",) and enc.length > len(enc.words)
    assert lcoins.tokenizer.encode("a red 日本 circle").unknown == ("日本",)  # no letters it knows: ignored
    with pytest.raises(CaptionError):
        lcode.tokenizer.encode("crimson vermilion")  # only unknown words: refused by the word-level model


def test_lcoins_colorizes_in_process_and_keeps_the_photo_luminance(lcoins_repository, tmp_path):
    from langcolor.client.lab import rgb_to_lab

    photo = _photo(tmp_path)
    colorizer = Colorizer(model="lcoins", model_repository=lcoins_repository)
    result = colorizer.colorize(photo, PHOTO_CAPTION)
    prepared = colorizer.prepare(photo)
    assert result.rgb.shape == prepared.l_full.shape + (3,) and result.rgb.dtype == np.uint8
    assert result.unknown_words == ()  # "crimson" is read as word pieces, not ignored
    L_out = rgb_to_lab(result.rgb.astype(np.float32) / 255.0)[..., 0]
    assert np.abs(L_out - prepared.l_full).mean() < 2.0  # the original L is put back


def test_served_lcoins_matches_in_process(lcoins_repository, served_repository, server_url, protocol, tmp_path):
    local = Colorizer(model="lcoins", model_repository=lcoins_repository)
    remote = Colorizer(model="lcoins", server=server_url, protocol=protocol, model_repository=lcoins_repository,
                       via="ensemble")
    rng = np.random.default_rng(0)
    S = local.geometry.image_size
    L = rng.uniform(0, 100, size=(3, 1, S, S)).astype(np.float32)  # [B,1,S,S]
    captions = ["a red circle", "the small square is blue and the big square is green", PHOTO_CAPTION]
    tokens = np.stack([local.condition({"caption": c}).tensors["TOKENS"] for c in captions])  # [B,T]
    want = local.infer({"L": L, "TOKENS": tokens})["AB"]
    got = remote.infer({"L": L, "TOKENS": tokens})["AB"]
    assert got.shape == want.shape == (3, 2, S, S)
    assert np.abs(got - want).max() < 1e-3
    # The default family on the same server is untouched and still answers with its own geometry.
    lcode = Colorizer(server=server_url, protocol=protocol, model_repository=lcoins_repository, via="ensemble")
    assert lcode.geometry.family == "lcode" and lcode.colorize(_photo(tmp_path), "a red circle").rgb.ndim == 3


# ------------------------------------------------------------------------------ colorize: MODEL per request
def _png_bytes(tmp_path) -> bytes:
    return _photo(tmp_path).read_bytes()


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)  # [H, W, 3]


def test_colorize_endpoint_with_model_lcoins_matches_in_process_lcoins(lcoins_repository, server_url, protocol, tmp_path):
    from langcolor.client.remote import RemoteStages

    photo = _png_bytes(tmp_path)
    want = {f: Colorizer(model=f, model_repository=lcoins_repository).colorize(photo, PHOTO_CAPTION).rgb.astype(int)
            for f in ("lcode", "lcoins")}
    assert np.abs(want["lcode"] - want["lcoins"]).max() > 8  # the two families colour differently
    with RemoteStages(server_url, protocol) as remote:
        served = _pixels(remote.colorize_bytes(photo, PHOTO_CAPTION, model="lcoins").data)
        default = _pixels(remote.colorize_bytes(photo, PHOTO_CAPTION).data)
    assert served.shape == want["lcoins"].shape
    assert np.abs(served - want["lcoins"]).max() <= 1  # same ONNX files, tokenizer and S: same pixels
    assert np.abs(default - want["lcode"]).max() <= 1  # no MODEL: the default family, lcode


def test_one_request_may_mix_families_per_image(lcoins_repository, server_url, protocol, tmp_path):
    """MODEL has one name per image: a request of three images and two families, answered in order."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module

    photo = _png_bytes(tmp_path)
    families = ["lcoins", "lcode", "lcoins"]
    b = lambda xs: np.array([[x] for x in xs], dtype=np.object_)  # noqa: E731  [n, 1] BYTES
    inputs = []
    for name, array in (("IMAGE", b([photo] * 3)), ("CAPTION", b([PHOTO_CAPTION.encode()] * 3)),
                        ("MODEL", b([f.encode() for f in families]))):
        t = module.InferInput(name, list(array.shape), "BYTES")
        t.set_data_from_numpy(array)
        inputs.append(t)
    client = module.InferenceServerClient(server_url)
    try:
        out = client.infer("colorize", inputs).as_numpy("COLORIZED").reshape(-1)  # [3] of PNG bytes
    finally:
        client.close()
    for family, png in zip(families, out):
        want = Colorizer(model=family, model_repository=lcoins_repository).colorize(photo, PHOTO_CAPTION).rgb
        assert np.abs(_pixels(bytes(png)) - want.astype(int)).max() <= 1, family
