"""The registry of model families: the one place that knows which families exist.

A family is a package under ``langcolor.export.families`` (``export/families/<name>/``) whose
``__init__`` builds one ``Family`` record and registers it. Families from elsewhere plug in the same
way: a package that registers its record on import, named by a ``langcolor.families`` entry point
or in ``$LANGCOLOR_FAMILY_MODULES`` (comma-separated ``module`` or ``module:function`` entries, the
function called to register; the variable reaches the Triton models of ``langcolor serve`` too). The record is importable without torch:
it holds the family's configs, the inputs a user gives it (a caption, a reference photo, nothing),
how to build its tensor contract and its client-side conditioner. The torch side (network, training
batches and losses, evaluation) lives in submodules of the same package, imported on demand through
``Family.network()``, ``Family.training()`` and ``Family.evaluation()``.

Everything else (training, evaluation, export, serving, the client, the benchmarks, the CLI) reaches
a family only through ``get(name)`` and ``names()``: adding a family adds a package, it edits no
switch statement elsewhere. Tests may ``register`` a throwaway family of their own.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from .errors import ModelNotFoundError
from .spec import ModelGeometry

log = logging.getLogger(__name__)

DEFAULT_FAMILY = "lcode"  # the shipped default: what `langcolor colorize` runs without --model
FAMILIES_PACKAGE = "langcolor.export.families"
ENTRY_POINTS = "langcolor.families"  # entry-point group of families installed from other packages
ENV_MODULES = "LANGCOLOR_FAMILY_MODULES"

TEXT, IMAGE = "text", "image"  # InputField.kind


@dataclass(frozen=True)
class InputField:
    """One thing a user gives a family beside the photograph.

    ``name`` is the command-line flag (``--caption``), the ``Colorizer.colorize`` keyword, the batch
    manifest column and, upper-cased, the ``colorize`` endpoint's optional input (``CAPTION``)."""

    name: str
    kind: str  # TEXT (UTF-8) or IMAGE (an encoded image file: path on the CLI, bytes on the wire)
    help: str
    required: bool = True
    short: str | None = None  # a one-letter command-line alias, e.g. "-c"
    examples: tuple[str, ...] = ()  # text a user might give (the soak test sends these); TEXT fields only

    @property
    def flags(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"),) + ((self.short,) if self.short else ())

    def __post_init__(self) -> None:
        assert self.kind in (TEXT, IMAGE) and self.name.isidentifier() and self.name.islower(), self
        assert not (self.examples and self.kind != TEXT), self

    @property
    def tensor_name(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class Note:
    """Something a user should hear about how their input was read (ignored words, no effect, ...)."""

    kind: str  # a stable identifier: "unknown-words", "split-words", "caption-free", ...
    message: str  # one line, for people
    words: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "words": list(self.words)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Note":
        return cls(str(raw["kind"]), str(raw["message"]), tuple(raw.get("words", ())))


@dataclass(frozen=True)
class Conditioned:
    """One user input turned into the family's condition tensors (per sample, no batch axis)."""

    tensors: Mapping[str, np.ndarray]
    notes: tuple[Note, ...] = ()


class Conditioner(Protocol):
    """Client-side: user inputs (by ``InputField.name``) -> condition tensors + notes.

    Raises ``LangcolorError`` subclasses naming the problem (an empty caption, a gray reference)."""

    def condition(self, values: Mapping[str, Any]) -> Conditioned: ...

    def describe(self) -> dict: ...  # what `langcolor models` shows: tokenizer kind, known words, ...


@dataclass(frozen=True)
class Family:
    """One model family: everything the product needs to know about it, in one record."""

    name: str
    title: str  # the paper it implements
    summary: str  # one line: what it does for a user
    inputs: tuple[InputField, ...]
    configs: Mapping[str, Any]  # config name -> the family's frozen config dataclass (small, full, tiny)
    config_from_dict: Callable[[dict], Any]
    # (config, the conditioner's asset files by name) -> the tensor contract
    geometry: Callable[[Any, Mapping[str, bytes]], ModelGeometry]
    # (geometry, asset files) -> the client-side conditioner
    conditioner: Callable[[ModelGeometry, Mapping[str, bytes]], Conditioner]
    training_options: type | None = None  # frozen dataclass of the family's training knobs (torch-free)
    # How its image is read and its answer written (photo.LabCodec when None): a line-drawing family
    # brings its own. prepare(source, values, geometry) / feeds / finish(prepared, outputs) / encode.
    codec: Any = None
    # A family whose stages run in a loop (a sampler): driver.run(call_stage, feeds, geometry) -> outputs,
    # numpy only; it runs in-process and in the served Python model named like the family.
    driver: Any = None
    commands: Mapping[str, str] = field(default_factory=dict)  # extra `langcolor` subcommands: name -> module
    package: str = ""  # the family's package; network / training / evaluation are its submodules
    parts: Mapping[str, Any] = field(default_factory=dict)  # objects standing in for those submodules, by name

    def __post_init__(self) -> None:
        assert self.name.isidentifier() and self.name.islower(), self.name
        assert "small" in self.configs or "tiny" in self.configs, self.configs

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.inputs)

    @property
    def image_codec(self):
        from .photo import LAB

        return self.codec if self.codec is not None else LAB

    def config(self, name: str) -> Any:
        try:
            return self.configs[name]
        except KeyError as e:
            raise ModelNotFoundError(
                f"family '{self.name}' has no config {name!r}; choose one of {', '.join(self.configs)}"
            ) from e

    def _submodule(self, name: str) -> ModuleType:
        if name in self.parts:
            return self.parts[name]
        try:
            return importlib.import_module(f"{self.package}.{name}")
        except ModuleNotFoundError as e:
            if e.name == "torch":
                raise ModelNotFoundError(
                    f"family '{self.name}': its {name} needs torch; install it with pip install 'langcolor[train]'"
                ) from e
            raise

    def network(self) -> ModuleType:
        """``build(config, geometry) -> nn.Module`` with ``.encoder/.fusion/.decoder`` and ``.geometry``."""
        return self._submodule("network")

    def training(self) -> ModuleType:
        """``make_assets``, ``data_source``, ``losses`` (optional ``scheduler``, ``data_name``)."""
        return self._submodule("training")

    def evaluation(self) -> ModuleType:
        """``evaluate(model, conditioner, scenes, seed) -> report`` (``to_json``, ``summary_lines``)."""
        return self._submodule("evaluation")


_REGISTRY: dict[str, Family] = {}
_discovered = False


def register(family: Family) -> Family:
    """Add ``family`` (its package calls this at import). Registering a name twice is a bug."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family (tests that register a throwaway one clean up with this)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(FAMILIES_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.ispkg:
            importlib.import_module(f"{FAMILIES_PACKAGE}.{info.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        ep.load()
    for entry in filter(None, (m.strip() for m in os.environ.get(ENV_MODULES, "").split(","))):
        module, _, function = entry.partition(":")  # "pkg.mod" registers on import; "pkg.mod:fn" calls fn()
        try:
            loaded = importlib.import_module(module)
        except ImportError as e:
            raise ModelNotFoundError(f"${ENV_MODULES} names {module!r}, which cannot be imported: {e}") from e
        if function:
            getattr(loaded, function)()


def names() -> tuple[str, ...]:
    """Every registered family, the default first."""
    _discover()
    return tuple(sorted(_REGISTRY, key=lambda n: (n != DEFAULT_FAMILY, n)))


def get(name: str) -> Family:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError as e:
        raise ModelNotFoundError(f"unknown model family {name!r}; choose one of {', '.join(names())}") from e


def all_inputs(families: tuple[str, ...] | None = None) -> tuple[InputField, ...]:
    """The union of the inputs of ``families`` (default: every family), one per name, first seen first."""
    seen: dict[str, InputField] = {}
    for name in families or names():
        for f in get(name).inputs:
            seen.setdefault(f.name, f)
    return tuple(seen.values())
