"""A real tritonserver (see conftest.py), over gRPC and over HTTP.

What would break here and nowhere else: the generated configs as Triton reads them, the ensemble
wiring, the Python-backend stages and the ``colorize`` BLS model as Triton runs them, dynamic
batching (requests grouped and ungrouped in order), and per-request errors inside a batch.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from langcolor.client import names
from langcolor.client.colorizer import Colorizer
from langcolor.client.errors import TensorError, TokenizerMismatchError
from langcolor.client.lab import lab_to_rgb, rgb_to_lab
from langcolor.client.reconstruct import prepare_l
from langcolor.client.remote import (
    Colorized,
    ModelNotReadyError,
    RemoteStages,
    RequestRejectedError,
    ServerUnavailableError,
)
from langcolor.client.runtime import ModelBundle, OnnxStages
from langcolor.server.launcher import free_port

pytestmark = pytest.mark.server

CAPTIONS = ("a red circle on a blue background", "the green square and a yellow triangle", "a purple diamond")
PARITY_TOL = 1e-3  # Lab units: same ONNX files, same onnxruntime, only batching may differ


@pytest.fixture(scope="module")
def bundle(served_repository) -> ModelBundle:
    return ModelBundle.load(served_repository.path)


@pytest.fixture(scope="module")
def local(bundle) -> OnnxStages:
    return OnnxStages(bundle)


@pytest.fixture()
def remote(server_url, protocol, bundle):
    with RemoteStages(server_url, protocol, assets=bundle.manifest.assets, max_in_flight=32) as r:
        yield r


def _ab(stages, L: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """AB [B, 2, S, S] of a caption family's stages (in-process or served)."""
    return stages.infer({"L": L, "TOKENS": tokens})["AB"]


def _photos() -> list[np.ndarray]:
    """Real photographs as float RGB [H, W, 3] in [0, 1], different sizes and aspect ratios."""
    gray = skimage.data.camera()[:300, :440]
    return [
        np.repeat(gray[..., None], 3, axis=2) / 255.0,
        skimage.data.astronaut()[::2, ::3] / 255.0,
        skimage.data.coffee() / 255.0,
    ]


def _inputs(bundle: ModelBundle, n: int) -> tuple[np.ndarray, np.ndarray]:
    """L [n,1,S,S] from real photos (flipped and shifted for variety) and tokens [n,T] from captions."""
    size = bundle.geometry.image_size
    smalls = [prepare_l(rgb, size)[1] for rgb in _photos()]  # each [1, S, S]
    ls = []
    for i in range(n):
        base = smalls[i % len(smalls)]
        ls.append(np.clip(np.roll(base[:, ::-1] if i % 2 else base, i, axis=-1) + i, 0, 100))
    L = np.stack(ls).astype(np.float32)  # [n, 1, S, S]
    tokens = bundle.tokenizer.encode_batch([CAPTIONS[i % len(CAPTIONS)] for i in range(n)])  # [n, T]
    return L, tokens


def _png(rgb_u8: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_u8).save(buf, "PNG")
    return buf.getvalue()


def _client(protocol: str, url: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module, module.InferenceServerClient(url)


def _stats(protocol: str, url: str, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model`` from Triton's statistics extension."""
    _, client = _client(protocol, url)
    try:
        if protocol == "grpc":
            raw = client.get_inference_statistics(model, as_json=True)
        else:
            raw = client.get_inference_statistics(model)
    finally:
        client.close()
    s = raw["model_stats"][0]
    # gRPC's JSON renders uint64 as strings.
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


# ------------------------------------------------------------------------------ the ensemble
def test_ensemble_matches_in_process(remote, local, bundle):
    # 11 > max_batch_size (8): the client splits the request and the halves run concurrently.
    L, tokens = _inputs(bundle, 11)
    served = _ab(remote, L, tokens)  # [11, 2, S, S]
    expected = _ab(local, L, tokens)
    assert served.shape == expected.shape == (11, 2, bundle.geometry.image_size, bundle.geometry.image_size)
    assert served.dtype == np.float32
    diff = float(np.abs(served - expected).max())
    assert diff <= PARITY_TOL, f"served ab differs from in-process by {diff:.2e}"
    # A network that ignored its inputs would pass the comparison above; make sure it does not.
    assert float(np.abs(expected[0] - expected[1]).max()) > 1e-3


def test_concurrent_requests_are_batched_and_ungrouped_in_order(remote, local, bundle, protocol, server_url):
    # The model that batches a family's requests: its fused chain where the export made one, else its first stage.
    chain = f"{bundle.geometry.family}{names.IMPL_SUFFIX}"
    stage = chain if (bundle.repository / chain).is_dir() else f"{bundle.geometry.family}_encoder"
    n = 32
    L, tokens = _inputs(bundle, n)
    before = _stats(protocol, server_url, stage)
    futures = [remote.submit_infer({"L": L[i : i + 1], "TOKENS": tokens[i : i + 1]}) for i in range(n)]
    served = np.concatenate([f.result(timeout=120)["AB"] for f in futures])  # [32, 2, S, S]
    after = _stats(protocol, server_url, stage)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == n
    assert executions < inferences, f"no dynamic batching: {executions} executions for {inferences} requests"
    # Each answer belongs to its own request: batching must not shuffle or mix samples.
    assert float(np.abs(served - _ab(local, L, tokens)).max()) <= PARITY_TOL


# ------------------------------------------------------------------------------ colorize
def test_colorize_returns_png_with_input_size_and_l(remote, served_repository):
    gray = skimage.data.camera()[:300, :440]  # uint8 [H, W], not square
    png = remote.colorize_bytes(_png(gray), CAPTIONS[0]).data
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (440, 300)
    rgb = np.asarray(out)  # [H, W, 3] uint8
    l_in = rgb_to_lab(np.repeat(gray[..., None], 3, axis=2) / 255.0)[..., 0]
    l_out = rgb_to_lab(rgb / 255.0)[..., 0]
    # 8-bit rounding of three channels moves L by well under one unit; a resized or
    # re-predicted L would be off by several units around every edge.
    assert float(np.abs(l_out - l_in).max()) < 1.0
    assert float(np.abs(l_out - l_in).mean()) < 0.25

    # The same bytes through the in-process pipeline give the same pixels.
    expected = Colorizer(model_repository=served_repository.path).colorize(_png(gray), CAPTIONS[0]).rgb
    assert int(np.abs(rgb.astype(int) - expected.astype(int)).max()) <= 1


def _two_shapes(size: int = 192) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Gray PNG of a circle (left) and a square (right) on a background, and their interiors.

    Luminances say nothing of colours; the interiors leave out edge pixels, where the upsampled
    ab blends object and background.
    """
    yy, xx = (np.mgrid[:size, :size] + 0.5) / size
    dist = np.hypot(yy - 0.5, xx - 0.28)
    cheb = np.maximum(np.abs(yy - 0.5), np.abs(xx - 0.72))
    L = np.full((size, size), 62.0)
    L[dist < 0.17], L[cheb < 0.15] = 40.0, 80.0
    gray = lab_to_rgb(np.stack([L, np.zeros_like(L), np.zeros_like(L)], axis=-1))  # [S, S, 3]
    return _png(np.round(gray * 255).astype(np.uint8)), dist < 0.13, cheb < 0.11


def test_colorize_follows_the_caption(remote, trained_repository):
    """Ordered pairs of four colours on (circle, square), all in flight at once.

    Each pair is also asked swapped on the same gray pixels, so a caption-blind network can be
    right on at most half of the objects; the bar sits well above that.
    """
    from langcolor.export.synthetic import PALETTE

    colours = ["red", "green", "blue", "pink"]
    pairs = [(c1, c2) for c1 in colours for c2 in colours if c1 != c2]
    photo, circle, square = _two_shapes()
    names = list(PALETTE)
    centres = np.array([PALETTE[n] for n in names])  # [K, 2]

    def nearest(png: bytes, mask: np.ndarray) -> str:
        rgb = np.asarray(Image.open(io.BytesIO(png))) / 255.0
        ab = rgb_to_lab(rgb)[..., 1:][mask].mean(axis=0)  # mean (a, b) inside the object
        return names[int(np.argmin(np.linalg.norm(centres - ab, axis=1)))]

    results = remote.colorize_many([(photo, f"a {c1} circle and a {c2} square") for c1, c2 in pairs])
    got = {p: (nearest(r.data, circle), nearest(r.data, square)) for p, r in zip(pairs, results)}
    right = sum((g[0] == p[0]) + (g[1] == p[1]) for p, g in got.items())
    assert right >= 0.85 * 2 * len(pairs), f"{right}/{2 * len(pairs)} objects follow the caption: {got}"


def test_32_concurrent_colorize_requests_all_succeed(remote):
    gray = (skimage.data.camera()[::4, ::4]).astype(np.uint8)  # [128, 128]
    items = [(_png(np.roll(gray, i, axis=1)), CAPTIONS[i % 3]) for i in range(32)]
    results = remote.colorize_many(items)
    assert all(isinstance(r, Colorized) for r in results), [r for r in results if not isinstance(r, Colorized)]
    sizes = {Image.open(io.BytesIO(r.data)).size for r in results}
    assert sizes == {(128, 128)}


def test_colorize_config_declares_optional_model_and_the_families_it_serves(served_repository):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from langcolor.client.names import MODEL as MODEL_NAME
    from langcolor.client.names import PARAM_ENSEMBLE, PARAM_FAMILIES

    cfg = text_format.Parse((served_repository.path / "colorize" / "config.pbtxt").read_text(), mc.ModelConfig())
    inputs = {t.name: t for t in cfg.input}
    assert inputs[MODEL_NAME].data_type == mc.TYPE_STRING and list(inputs[MODEL_NAME].dims) == [1]
    # Only the image is required: a family without a caption needs none.
    assert inputs[MODEL_NAME].optional and not inputs["IMAGE"].optional and inputs["CAPTION"].optional
    families = cfg.parameters[PARAM_FAMILIES].string_value.split(",")
    held = {p.parent.parent.name for p in served_repository.path.glob("*/1/langcolor.json")}
    assert set(families) == held and families[0] == cfg.parameters[PARAM_ENSEMBLE].string_value


def test_colorize_model_lcode_is_the_default(remote):
    photo = _png(skimage.data.astronaut()[::4, ::4])
    absent = np.asarray(Image.open(io.BytesIO(remote.colorize_bytes(photo, CAPTIONS[0]).data)))
    explicit = np.asarray(Image.open(io.BytesIO(remote.colorize_bytes(photo, CAPTIONS[0], model="lcode").data)))
    assert absent.shape == explicit.shape == (128, 128, 3)
    assert np.array_equal(absent, explicit)


def test_requests_with_and_without_model_in_flight_together(remote, served_repository):
    """Triton batches requests with MODEL apart from those without; bad names fail alone."""
    from langcolor.client import families as registry

    families = [name for name in (p.parent.parent.name for p in served_repository.path.glob("*/1/langcolor.json"))
                if "caption" in registry.get(name).input_names]  # the families this request's caption is for
    photo = _png(skimage.data.camera()[::8, ::8])
    models = [None, "lcode", "vgg", *families, "", None, "lcode", "LCODE"] * 2
    futures = [remote.submit_colorize(photo, CAPTIONS[1], m) for m in models]
    pixels = {}
    for m, f in zip(models, futures):
        if m in (None, *families):
            png = f.result(timeout=120).data
            pixels.setdefault(m or "lcode", []).append(np.asarray(Image.open(io.BytesIO(png))))
        else:
            with pytest.raises(RequestRejectedError, match="MODEL.*valid families: .*lcode"):
                f.result(timeout=120)
    for family, images in pixels.items():  # batching together or apart gives the same pixels
        assert all(int(np.abs(im.astype(int) - images[0].astype(int)).max()) <= 1 for im in images), family


# ------------------------------------------------------------------------------ bad requests
def _raw_infer(protocol: str, url: str, model: str, inputs: list[tuple[str, np.ndarray, str]], output: str):
    module, client = _client(protocol, url)
    try:
        tensors = []
        for name, array, dtype in inputs:
            t = module.InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            tensors.append(t)
        return client.infer(model, tensors).as_numpy(output)
    finally:
        client.close()


def _bad_requests(bundle: ModelBundle) -> dict[str, tuple[str, list, str, str]]:
    """case -> (model, inputs, output, what Triton's message must name: the tensor, the bound, the limit)."""
    g = bundle.geometry
    L, tokens = _inputs(bundle, 1)
    gray = _png(skimage.data.camera()[::8, ::8])
    too_long = " ".join(["red", "circle"] * g.max_tokens)
    b = lambda s: np.array([[s]], dtype=np.object_)  # noqa: E731  [1, 1] BYTES
    return {
        "wrong shape": (g.family, [("L", L[:, :, :-1], "FP32"), ("TOKENS", tokens, "INT64")], "AB", "shape"),
        "wrong dtype": (g.family, [("L", L.astype(np.float64), "FP64"), ("TOKENS", tokens, "INT64")], "AB", "FP64"),
        "tokens over T": (
            g.family, [("L", L, "FP32"), ("TOKENS", np.pad(tokens, ((0, 0), (0, 1)), constant_values=1), "INT64")],
            "AB", "TOKENS",
        ),
        "L outside [0,100]": (g.family, [("L", L + 150, "FP32"), ("TOKENS", tokens, "INT64")], "AB", "100"),
        "token id outside vocab": (
            g.family, [("L", L, "FP32"), ("TOKENS", tokens + g.vocab_size, "INT64")], "AB", "TOKENS",
        ),
        "non-image bytes": ("colorize", [("IMAGE", b(b"not an image at all"), "BYTES"), ("CAPTION", b(b"a red circle"), "BYTES")], "COLORIZED", "image"),
        "empty caption": ("colorize", [("IMAGE", b(gray), "BYTES"), ("CAPTION", b(b""), "BYTES")], "COLORIZED", "empty"),
        "caption over T tokens": ("colorize", [("IMAGE", b(gray), "BYTES"), ("CAPTION", b(too_long.encode()), "BYTES")], "COLORIZED", str(g.max_tokens)),
    }


@pytest.mark.parametrize(
    "case",
    ["wrong shape", "wrong dtype", "tokens over T", "L outside [0,100]", "token id outside vocab",
     "non-image bytes", "empty caption", "caption over T tokens"],
)
def test_malformed_request_fails_alone(case, protocol, server_url, bundle, remote):
    from tritonclient.utils import InferenceServerException

    model, inputs, output, word = _bad_requests(bundle)[case]
    with pytest.raises(InferenceServerException) as info:
        _raw_infer(protocol, server_url, model, inputs, output)
    assert word.lower() in info.value.message().lower(), info.value.message()
    # The server is still up and the next good request succeeds.
    L, tokens = _inputs(bundle, 1)
    assert _ab(remote, L, tokens).shape == (1, 2, bundle.geometry.image_size, bundle.geometry.image_size)
    assert remote.colorize_bytes(_png(skimage.data.camera()[::8, ::8]), CAPTIONS[1]).data[:4] == b"\x89PNG"


def test_bad_requests_batched_with_good_ones_fail_alone(remote, bundle):
    gray = _png(skimage.data.camera()[::8, ::8])
    items = [(gray, CAPTIONS[0]) if i % 3 else (b"GIF89a broken", CAPTIONS[0]) for i in range(12)]
    items[4] = (gray, "")  # empty caption in the middle of the batch
    results = remote.colorize_many(items)
    for i, r in enumerate(results):
        if i % 3 == 0 or i == 4:
            assert isinstance(r, RequestRejectedError), (i, r)
            assert "colorize" in str(r)
        else:
            assert isinstance(r, Colorized) and r.data[:4] == b"\x89PNG", (i, r)

    # Ensemble: an out-of-range L among good requests in flight at the same time. Raw requests: the
    # client refuses such an L before sending it (tested below); here the server must refuse it alone.
    from concurrent.futures import ThreadPoolExecutor

    from tritonclient.utils import InferenceServerException

    L, tokens = _inputs(bundle, 8)
    bad = L.copy()
    bad[3] += 200
    family = bundle.geometry.family
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_raw_infer, remote.protocol, remote.url, family,
                               [("L", bad[i : i + 1], "FP32"), ("TOKENS", tokens[i : i + 1], "INT64")], "AB")
                   for i in range(8)]
        for i, f in enumerate(futures):
            if i == 3:
                with pytest.raises(InferenceServerException, match="100"):
                    f.result(timeout=60)
            else:
                assert np.isfinite(f.result(timeout=60)).all()
    with pytest.raises(TensorError, match=r"L: values must lie in \[0, 100\]"):
        remote.infer({"L": bad[3:4], "TOKENS": tokens[3:4]})


# ------------------------------------------------------------------------------ client errors
def test_client_refuses_a_different_tokenizer(server_url, protocol):
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        RemoteStages(server_url, protocol, assets={"tokenizer.json": "0" * 64})


def test_client_reports_model_not_ready(server_url, protocol):
    with pytest.raises(ModelNotReadyError, match="no_such_model"):
        RemoteStages(server_url, protocol, family="no_such_model")


def test_client_reports_unreachable_server_after_retries(protocol):
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ServerUnavailableError, match="unreachable after 3 attempts"):
        RemoteStages(url, protocol, retries=2, backoff_s=0.01)


def test_client_checks_tensors_against_the_served_contract(remote, bundle):
    L, tokens = _inputs(bundle, 2)
    with pytest.raises(TensorError, match="L"):
        _ab(remote, L[:, :, 1:], tokens)


def test_client_retries_through_a_server_restart(served_repository, bundle, protocol, tmp_path):
    """Server gone: a clear error after the retries; server back: the same client carries on."""
    import threading

    from langcolor.server.launcher import TritonServer, free_ports

    http, grpc, metrics = free_ports(3)
    L, tokens = _inputs(bundle, 1)
    # The client keeps its connection open across the stop: do not let Triton wait for it.
    kw = dict(http_port=http, grpc_port=grpc, metrics_port=metrics, log_path=tmp_path / "restart.log", exit_timeout_s=1)
    first = TritonServer(served_repository.path, **kw).start()
    url = first.endpoints.grpc_url if protocol == "grpc" else first.endpoints.http_url
    remote = RemoteStages(url, protocol, assets=bundle.manifest.assets, retries=2, backoff_s=0.05)
    second = TritonServer(served_repository.path, **kw)
    try:
        before = _ab(remote, L, tokens)
        first.stop()
        with pytest.raises(ServerUnavailableError, match="unreachable after 3 attempts"):
            _ab(remote, L, tokens)
        # Back after a moment; enough retries (0.25 s doubling, capped) span the restart.
        remote.retries, remote.backoff_s = 10, 0.25
        starter = threading.Thread(target=second.start)
        starter.start()
        after = _ab(remote, L, tokens)
        starter.join()
        assert float(np.abs(after - before).max()) <= PARITY_TOL
    finally:
        remote.close()
        first.stop()
        second.stop()


def _metric(url: str, name: str, model: str) -> float:
    """The sum of a Prometheus counter over its labels for ``model`` (Triton's /metrics)."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and f'model="{model}"' in line)


def test_rejected_colorize_requests_count_as_failures(triton_server, protocol, server_url):
    """A request the endpoint refuses is a failure in Triton's metrics and statistics, not a success."""
    metrics = triton_server.endpoints.metrics_url
    gray = _png(skimage.data.camera()[::8, ::8])
    b = lambda s: np.array([[s]], dtype=np.object_)  # noqa: E731  [1, 1] BYTES
    success = _metric(metrics, "nv_inference_request_success", "colorize")
    failure = _metric(metrics, "nv_inference_request_failure", "colorize")
    from tritonclient.utils import InferenceServerException

    for _ in range(3):
        with pytest.raises(InferenceServerException, match="empty"):
            _raw_infer(protocol, server_url, "colorize", [("IMAGE", b(gray), "BYTES"), ("CAPTION", b(b""), "BYTES")],
                       "COLORIZED")
    _raw_infer(protocol, server_url, "colorize", [("IMAGE", b(gray), "BYTES"), ("CAPTION", b(CAPTIONS[0].encode()), "BYTES")],
               "COLORIZED")
    # Triton 2.51's ensemble scheduler counts each failed request twice (reason OTHER); at least once each.
    assert _metric(metrics, "nv_inference_request_failure", "colorize") - failure >= 3
    assert _metric(metrics, "nv_inference_request_success", "colorize") - success == 1
