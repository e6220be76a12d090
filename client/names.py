"""Every public name of the served contract, declared once: tensors, models, config parameters.

The exporter writes configs with these names, the Triton models read them, and the client sends
them; nothing else spells them. Family-specific tensors (a reference image's ``REF_L``) are
declared by the family's geometry, not here.
"""

from __future__ import annotations

# --- tensors shared by families (per request; the batch axis comes first) ------------------------
L = "L"  # FP32 [1, S, S]: CIE L in [0, 100], the photograph at the network's input size
AB = "AB"  # FP32 [2, S, S]: CIE a*, b* in Lab units
TOKENS = "TOKENS"  # INT64 [T]: caption token ids, 0 = padding
FEATURES = "FEATURES"  # caption families: encoder -> fusion
MODULATED = "MODULATED"  # caption families: fusion -> decoder

# --- the bytes endpoint ----------------------------------------------------------------------------
COLORIZE_MODEL = "colorize"  # a one-step ensemble over IMPL_SUFFIX's model: Triton then counts its failures
IMPL_SUFFIX = "_impl"  # "<public model>_impl": the Python model behind a public one (colorize, a driven family)
IMAGE = "IMAGE"  # BYTES [1]: one encoded JPEG, PNG or TIFF file
MODEL = "MODEL"  # BYTES [1], optional: the family colouring that image; absent = the default family
FORMAT = "FORMAT"  # BYTES [1], optional: "png" (default) or "jpeg", the encoding of COLORIZED
COLORIZED = "COLORIZED"  # BYTES [1]: the colorized image at the input's resolution, its L the input's
NOTES = "NOTES"  # BYTES [1]: JSON list of notes on how the inputs were read (ignored words, ...)
# A family's user inputs (InputField) arrive as optional BYTES [1] tensors named InputField.tensor_name
# (the field name upper-cased: CAPTION, REFERENCE, ...).

# --- config parameters -------------------------------------------------------------------------------
PARAM_ROLE = "role"  # which part of the langcolor backend a model runs: "stage", "chain", "colorize", "pipeline"
PARAM_INTRA_OP_THREADS = "intra_op_threads"  # onnxruntime threads per instance; THREADS_ALL_CORES: every usable core
THREADS_ALL_CORES = 0  # counted when the model loads (client/runtime.py resolve_threads)
PARAM_ONNX_FILE = "onnx_file"
PARAM_RANGE_PREFIX = "input_range."  # "input_range.L" = "0 100": inclusive bounds checked per request
PARAM_WEIGHTS_SHA256 = "weights_sha256"
PARAM_ASSETS = "assets"  # JSON {file: sha256} of the conditioner's files in the ensemble's version folder
PARAM_TOKENIZER_SHA256 = "tokenizer_sha256"  # older repositories: the one asset, a caption tokenizer
PARAM_GEOMETRY = "geometry"  # JSON of ModelGeometry
PARAM_ENSEMBLE = "ensemble"  # colorize: the family a request without MODEL goes to
PARAM_FAMILIES = "families"  # colorize: the families MODEL may name, comma-separated
PARAM_MAX_PIXELS = "max_pixels"
PARAM_WEIGHTS_PREFIX = "weights_sha256."  # colorize: "weights_sha256.<family>" for every family it serves
PARAM_STAGE_MODELS = "stage_models"  # chain: the stage models whose model.onnx files it runs, in order

BACKEND = "langcolor"  # the Python-based Triton backend every Python model of the repository names
