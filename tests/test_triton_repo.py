"""The generated Triton model repository: layout, every config against its ONNX file, ensemble wiring,
hashes, both targets, atomic replacement, and the generic stage model's per-request checks on a real server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from torch import nn
from tritonclient.grpc import model_config_pb2 as mc

from langcolor.client import names
from langcolor.client.errors import ExportParityError, LangcolorError
from langcolor.client.spec import (
    MANIFEST_FILE,
    STAGES,
    TOKENIZER_FILE,
    ModelGeometry,
    ModelManifest,
    caption_geometry,
    ensemble_spec,
    stage_specs,
)
from langcolor.client.tokenizer import CaptionTokenizer
from langcolor.export.checkpoint import Checkpoint
from langcolor.export.onnx_export import read_signature
from langcolor.client.runtime import resolve_threads
from langcolor.export.triton_config import PARALLEL_CHAIN_MS, Target, retune, serving_threads, stage_config, to_text
from langcolor.export.triton_repo import PARITY_FILE, ExportEntry, build_tiny_repository, write_repository

COLORIZE_MODEL = names.COLORIZE_MODEL

_DTYPES = {"float32": mc.TYPE_FP32, "int64": mc.TYPE_INT64, "float16": mc.TYPE_FP16, "int32": mc.TYPE_INT32}


def parse(path_or_text) -> mc.ModelConfig:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return text_format.Parse(text, mc.ModelConfig())


def config_vs_onnx(config: mc.ModelConfig, onnx_path: Path) -> list[str]:
    """Every disagreement between a config's inputs/outputs and the ONNX graph's (names, dtypes, dims)."""
    sig = read_signature(onnx_path)
    problems = []
    for kind, declared, graph in (("input", config.input, sig.inputs), ("output", config.output, sig.outputs)):
        if [t.name for t in declared] != [t.name for t in graph]:
            problems.append(f"{kind} names {[t.name for t in declared]} vs {[t.name for t in graph]}")
            continue
        for c, g in zip(declared, graph):
            if _DTYPES.get(g.dtype) != c.data_type:
                problems.append(f"{c.name}: {mc.DataType.Name(c.data_type)} vs {g.dtype}")
            if isinstance(g.shape[0], int) or list(c.dims) != list(g.shape[1:]):
                problems.append(f"{c.name}: dims {list(c.dims)} (+ dynamic batch) vs {list(g.shape)}")
    return problems


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("repos")
    return {b: build_tiny_repository(base / b, backend=b) for b in ("python", "onnxruntime")}


@pytest.fixture(scope="module")
def manifest(repos) -> ModelManifest:
    return ModelManifest.load(repos["python"] / "lcode" / "1" / MANIFEST_FILE)


def test_layout_is_complete(repos):
    for backend, root in repos.items():
        folders = sorted(p.name for p in root.iterdir())
        fused = ["lcode" + names.IMPL_SUFFIX] if backend == "python" else []  # the stages in one Python model
        assert folders == sorted(["lcode", "lcode_encoder", "lcode_fusion", "lcode_decoder", COLORIZE_MODEL,
                                  COLORIZE_MODEL + names.IMPL_SUFFIX, *fused])
        for stage in STAGES:
            version = root / f"lcode_{stage}" / "1"
            assert (version / "model.onnx").is_file()
        for name in (MANIFEST_FILE, TOKENIZER_FILE, PARITY_FILE):
            assert (root / "lcode" / "1" / name).is_file()
        # The Python models name the langcolor backend: no copy of a model.py anywhere in the repository.
        assert not list(root.rglob("model.py"))
        assert not list(root.parent.glob(f".{root.name}.*")), "temporary folders left behind"


def test_every_stage_config_agrees_with_its_onnx_file(repos):
    for backend, root in repos.items():
        for stage in STAGES:
            cfg = parse(root / f"lcode_{stage}" / "config.pbtxt")
            assert cfg.name == f"lcode_{stage}"
            assert config_vs_onnx(cfg, root / cfg.name / "1" / "model.onnx") == []
            assert cfg.max_batch_size >= 8
            assert max(cfg.dynamic_batching.preferred_batch_size) <= cfg.max_batch_size
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 0  # a lone request never waits on CPU
            if backend == "python":
                assert cfg.backend == names.BACKEND and not cfg.platform
                assert cfg.parameters[names.PARAM_ROLE].string_value == "stage"
            else:
                assert cfg.platform == "onnxruntime_onnx" and cfg.default_model_filename == "model.onnx"


def test_the_comparison_catches_a_config_from_another_geometry(repos, manifest):
    """A config generated for another caption length must be reported against the real ONNX file."""
    g = manifest.geometry
    other = caption_geometry(g.family, g.image_size, g.max_tokens + 1, g.vocab_size, g.feature_shape)
    stale = parse(to_text(stage_config(stage_specs(other)["fusion"], Target())))
    problems = config_vs_onnx(stale, repos["python"] / "lcode_fusion" / "1" / "model.onnx")
    assert problems and "TOKENS" in problems[0]


def test_ensemble_is_wired_from_the_specs(repos, manifest):
    cfg = parse(repos["onnxruntime"] / "lcode" / "config.pbtxt")
    spec = ensemble_spec(manifest.geometry)
    assert cfg.platform == "ensemble" and cfg.name == "lcode" and cfg.max_batch_size >= 8
    for declared, t in zip((*cfg.input, *cfg.output), (*spec.inputs, *spec.outputs)):
        assert (declared.name, declared.data_type, list(declared.dims)) == (t.name, _DTYPES[t.dtype], list(t.dims))
    # Each step reads only ensemble inputs or earlier steps' outputs; the last produces AB.
    available = {t.name for t in cfg.input}
    specs = stage_specs(manifest.geometry)
    for step, stage in zip(cfg.ensemble_scheduling.step, STAGES):
        assert step.model_name == specs[stage].model_name
        assert set(step.input_map) == set(specs[stage].input_names)
        assert set(step.input_map.values()) <= available, step
        assert set(step.output_map) == set(specs[stage].output_names)
        available |= set(step.output_map.values())
    assert {t.name for t in cfg.output} <= available


def test_python_target_fuses_the_stages_into_one_model(repos, manifest):
    """On the python target the family's model is one step over a Python model that runs the three
    stage files itself; its tensors are the stages' ensemble's, its parameters name the stage models."""
    root = repos["python"]
    public, impl = parse(root / "lcode" / "config.pbtxt"), parse(root / ("lcode" + names.IMPL_SUFFIX) / "config.pbtxt")
    assert public.platform == "ensemble" and [s.model_name for s in public.ensemble_scheduling.step] == [impl.name]
    unfused = parse(repos["onnxruntime"] / "lcode" / "config.pbtxt")
    assert list(public.input) == list(impl.input) == list(unfused.input)
    assert list(public.output) == list(impl.output) == list(unfused.output)
    params = {k: v.string_value for k, v in impl.parameters.items()}
    assert impl.backend == names.BACKEND and params[names.PARAM_ROLE] == "chain"
    assert params[names.PARAM_STAGE_MODELS].split(",") == [s.model_name for s in stage_specs(manifest.geometry).values()]
    assert impl.dynamic_batching.max_queue_delay_microseconds == 0
    # A client checks the public model's parameters: the same as the unfused ensemble's.
    for key in (names.PARAM_ASSETS, names.PARAM_WEIGHTS_SHA256, names.PARAM_GEOMETRY):
        assert public.parameters[key].string_value == unfused.parameters[key].string_value


def test_threads_are_chosen_at_export_from_the_measured_chain(repos, manifest):
    """A fast network keeps one thread per instance (hand-offs cost more than they save); a slow one
    gets every core, counted when the server loads it. The measurement is kept in the manifest."""
    serving = manifest.extra["serving"]
    assert serving["chain_ms_one_thread"] > 0
    assert serving["intra_op_threads"] == serving_threads(serving["chain_ms_one_thread"])
    for name in ("lcode_encoder", "lcode" + names.IMPL_SUFFIX):
        params = parse(repos["python"] / name / "config.pbtxt").parameters
        assert params[names.PARAM_INTRA_OP_THREADS].string_value == str(serving["intra_op_threads"])
    assert serving_threads(PARALLEL_CHAIN_MS / 10) == 1
    assert serving_threads(PARALLEL_CHAIN_MS * 10) == names.THREADS_ALL_CORES
    assert resolve_threads(str(names.THREADS_ALL_CORES), cores=6) == 6 and resolve_threads(None) == 1
    assert resolve_threads("3", cores=6) == 3
    with pytest.raises(LangcolorError):
        resolve_threads("-1")


def test_retune_changes_the_knobs_of_stages_and_chains_only(repos):
    root = repos["python"]
    for name, tunable in (("lcode_encoder", True), ("lcode" + names.IMPL_SUFFIX, True), ("lcode", False),
                          (COLORIZE_MODEL + names.IMPL_SUFFIX, False)):
        cfg = parse(root / name / "config.pbtxt")
        assert retune(cfg, intra_op_threads=2, instances=3, queue_delay_us=500) is tunable, name
        if tunable:
            assert cfg.parameters[names.PARAM_INTRA_OP_THREADS].string_value == "2"
            assert [g.count for g in cfg.instance_group] == [3]
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    cfg = parse(repos["onnxruntime"] / "lcode_encoder" / "config.pbtxt")
    assert retune(cfg, intra_op_threads=2)
    assert cfg.parameters["intra_op_thread_count"].string_value == "2"


def test_an_unfused_python_target_serves_the_stages_ensemble(tmp_path):
    ckpt = Checkpoint.random("lcode", "tiny", seed=0)
    write_repository([ExportEntry.from_checkpoint(ckpt)], tmp_path / "repo", target=Target(fused=False, intra_op_threads=2))
    assert not (tmp_path / "repo" / ("lcode" + names.IMPL_SUFFIX)).exists()
    cfg = parse(tmp_path / "repo" / "lcode" / "config.pbtxt")
    assert [s.model_name for s in cfg.ensemble_scheduling.step] == ["lcode_encoder", "lcode_fusion", "lcode_decoder"]
    assert parse(tmp_path / "repo" / "lcode_fusion" / "config.pbtxt").parameters[names.PARAM_INTRA_OP_THREADS].string_value == "2"


def test_ensemble_parameters_let_a_client_check_assets_weights_and_geometry(repos, manifest):
    root = repos["python"]
    params = {k: v.string_value for k, v in parse(root / "lcode" / "config.pbtxt").parameters.items()}
    tokenizer_bytes = (root / "lcode" / "1" / TOKENIZER_FILE).read_bytes()
    assets = json.loads(params[names.PARAM_ASSETS])
    assert assets == {TOKENIZER_FILE: hashlib.sha256(tokenizer_bytes).hexdigest()} == manifest.assets
    assert assets[TOKENIZER_FILE] == CaptionTokenizer.from_file(root / "lcode" / "1" / TOKENIZER_FILE).sha256
    assert params[names.PARAM_WEIGHTS_SHA256] == manifest.weights_sha256 and len(manifest.weights_sha256) == 64
    geometry = ModelGeometry.from_dict(json.loads(params[names.PARAM_GEOMETRY]))
    assert geometry == manifest.geometry and geometry.vocab_size == CaptionTokenizer.from_str(tokenizer_bytes.decode()).vocab_size
    parity = json.loads((root / "lcode" / "1" / PARITY_FILE).read_text())
    assert parity["ok"] and parity["batch_sizes"] == [1, 3, 8]


def test_colorize_endpoint_config(repos, manifest):
    impl = parse(repos["python"] / (COLORIZE_MODEL + names.IMPL_SUFFIX) / "config.pbtxt")
    assert impl.backend == names.BACKEND and impl.parameters[names.PARAM_ROLE].string_value == "colorize"
    cfg = parse(repos["python"] / COLORIZE_MODEL / "config.pbtxt")
    # The public endpoint is a one-step ensemble over the Python model (so Triton counts its failures).
    assert cfg.platform == "ensemble" and [s.model_name for s in cfg.ensemble_scheduling.step] == [impl.name]
    assert [(t.name, t.optional) for t in cfg.input] == [(t.name, t.optional) for t in impl.input]
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in cfg.input] == [
        (names.IMAGE, mc.TYPE_STRING, [1], False),
        (names.MODEL, mc.TYPE_STRING, [1], True),  # optional: absent means the default family
        (names.FORMAT, mc.TYPE_STRING, [1], True),
        ("CAPTION", mc.TYPE_STRING, [1], True),  # the family's user input, named by the family
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [
        (names.COLORIZED, mc.TYPE_STRING, [1]), (names.NOTES, mc.TYPE_STRING, [1])]
    assert cfg.parameters[names.PARAM_ENSEMBLE].string_value == "lcode"
    assert cfg.parameters[names.PARAM_FAMILIES].string_value == "lcode"  # a one-family repository serves only that family
    assert cfg.parameters[names.PARAM_WEIGHTS_PREFIX + "lcode"].string_value == manifest.weights_sha256


def test_gpu_target_configs_parse_with_tensorrt_fp16(manifest):
    spec = stage_specs(manifest.geometry)["encoder"]
    cfg = parse(to_text(stage_config(spec, Target("onnxruntime", gpu=True, tensorrt=True, fp16=True))))
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    with pytest.raises(AssertionError):
        Target("python", gpu=True)


class _FrozenAtTrace(nn.Module):
    """Exports one behaviour (traced at batch 2) and runs another: parity must refuse it."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, modulated: torch.Tensor) -> torch.Tensor:
        ab = self.decoder(modulated)
        return ab if modulated.shape[0] == 2 else -ab


def test_failed_export_leaves_the_previous_repository_untouched(tmp_path):
    root = build_tiny_repository(tmp_path / "repo")
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    ckpt = Checkpoint.random("lcode", "tiny", seed=3)
    model = ckpt.build_model()
    model.decoder = _FrozenAtTrace(model.decoder)
    with pytest.raises(ExportParityError, match="decoder.AB"):
        write_repository([ExportEntry(model, ckpt.assets, "0" * 64)], root)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"], "temporary folder left behind"


def test_refuses_to_replace_a_folder_that_is_not_a_repository(tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"not mine to delete")
    ckpt = Checkpoint.random("lcode", "tiny", seed=3)
    with pytest.raises(LangcolorError, match="not a model repository"):
        write_repository([ExportEntry.from_checkpoint(ckpt)], target)
    assert (target / "holiday.jpg").read_bytes() == b"not mine to delete"


# ------------------------------------------------------------------ the stage model on a real server
@pytest.mark.server
def test_stage_model_rejects_bad_requests_alone_and_matches_onnxruntime(triton_server, served_repository):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repo = served_repository.path
    geom = ModelManifest.load(repo / "lcode" / "1" / MANIFEST_FILE).geometry
    fusion = stage_specs(geom)["fusion"]
    rng = np.random.default_rng(0)
    feats = np.abs(rng.standard_normal((6, *geom.feature_shape))).astype(np.float32)  # (6, C, h, w)
    tokens = np.zeros((6, geom.max_tokens), np.int64)  # (6, T)
    tokens[:, :3] = rng.integers(2, geom.vocab_size, size=(6, 3))
    bad_tokens = tokens.copy()
    bad_tokens[1, 0] = geom.vocab_size  # one past the vocabulary
    bad_feats = feats.copy()
    bad_feats[4, 0, 0, 0] = np.nan

    def inputs(f: np.ndarray, t: np.ndarray) -> list:
        ins = []
        for spec, array in zip(fusion.inputs, (f, t)):
            ins.append(httpclient.InferInput(spec.name, list(array.shape), spec.client_dtype))
            ins[-1].set_data_from_numpy(array)
        return ins

    client = httpclient.InferenceServerClient(triton_server.endpoints.http_url, concurrency=6)
    try:
        futures = [
            client.async_infer(fusion.model_name, inputs(bad_feats[i : i + 1], bad_tokens[i : i + 1])) for i in range(6)
        ]
        local = ort.InferenceSession(str(repo / fusion.model_name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        for i, future in enumerate(futures):
            if i in (1, 4):
                with pytest.raises(InferenceServerException) as info:
                    future.get_result()
                assert ("TOKENS" if i == 1 else "FEATURES") in info.value.message()
            else:
                got = future.get_result().as_numpy("MODULATED")
                want = local.run(None, {"FEATURES": feats[i : i + 1], "TOKENS": tokens[i : i + 1]})[0]
                np.testing.assert_allclose(got, want, atol=1e-4)
    finally:
        client.close()


def test_shipped_repository_is_the_export_of_the_shipped_weights():
    """The committed model_repository/ is generated: each family's manifest names the shipped weights'
    hash, its configs parse, and no Python model file is copied into it (they name the backend)."""
    from langcolor.client.paths import default_model_repository
    from langcolor.export.checkpoint import load_checkpoint, shipped_weights

    shipped = default_model_repository()
    assert not list(shipped.rglob("model.py")), "a model.py copy in the committed repository"
    for path in shipped_weights():
        ckpt = load_checkpoint(path)
        manifest = ModelManifest.load(shipped / ckpt.family / "1" / MANIFEST_FILE)
        assert manifest.weights_sha256 == ckpt.sha256, f"{ckpt.family}: re-export the repository (langcolor export)"
    for config in shipped.glob("*/config.pbtxt"):
        parse(config)
