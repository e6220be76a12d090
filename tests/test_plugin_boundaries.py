"""Families are plug-ins: nothing outside a family's own package names it.

Allowed to name a family: its own package (``export/families/<name>/``), the registry's shipped
default (``DEFAULT_FAMILY`` in ``client/families.py``), tests, and generated files (the model
repository, benchmark results, docs). Everywhere else a family is reached through the registry,
so these checks read the source: every string literal (Python's own tokenizer, docstrings
included) and every import, plus the shell and container files.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

from langcolor.client import families

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("client", "export", "server_config", "benchmarks")
FAMILIES_DIR = ROOT / "export" / "families"


def _family_names() -> list[str]:
    shipped = {p.name for p in FAMILIES_DIR.iterdir() if (p / "__init__.py").is_file()}
    return sorted(shipped | set(families.names()))


def _sources() -> list[Path]:
    files = []
    for d in SOURCE_DIRS:
        for path in (ROOT / d).rglob("*"):
            if path.is_file() and (path.suffix in (".py", ".sh", ".env", ".toml") or path.name.startswith("Dockerfile")):
                files.append(path)
    return sorted(files)


def _owner(path: Path) -> str | None:
    """The family whose package holds ``path`` (None outside every family package)."""
    try:
        return path.relative_to(FAMILIES_DIR).parts[0]
    except ValueError:
        return None


def _strings(path: Path) -> list[tuple[int, str]]:
    if path.suffix != ".py":
        return list(enumerate(path.read_text().splitlines(), start=1))
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], t.string) for t in tokens if t.type == tokenize.STRING or t.type == getattr(tokenize, "FSTRING_MIDDLE", -1)]


def test_no_family_is_named_outside_its_own_package():
    names = _family_names()
    assert len(names) >= 2, names
    word = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for line, text in _strings(path):
            for name in set(word.findall(text)):
                if _owner(path) == name:
                    continue
                if rel == "client/families.py" and f'DEFAULT_FAMILY = "{name}"' in path.read_text().splitlines()[line - 1]:
                    continue  # the shipped default, named once
                found.append(f"{rel}:{line}: {name!r}")
    assert found == [], "family names outside their packages:\n" + "\n".join(found)


def test_no_family_package_is_imported_outside_itself():
    pattern = re.compile(r"^\s*(from|import)\s+(langcolor\.export\.families\.(\w+)|\.families\.(\w+))", re.M)
    found = []
    for path in _sources():
        if path.suffix != ".py":
            continue
        for m in pattern.finditer(path.read_text()):
            name = m.group(3) or m.group(4)
            if _owner(path) != name:
                found.append(f"{path.relative_to(ROOT)}: imports the {name} family")
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("name", _family_names())
def test_every_shipped_family_is_registered_and_complete(name):
    record = families.get(name)
    assert record.name == name and record.package.endswith(f".{name}")
    assert record.configs and record.title and record.summary
    for part in ("network", "training", "evaluation"):
        assert (FAMILIES_DIR / name / f"{part}.py").is_file(), f"{name} has no {part} module"


def test_family_flags_take_their_choices_from_the_registry():
    import argparse

    from langcolor.client import batch_cmd, colorize_cmd, models_cmd  # noqa: F401
    from langcolor.export import evaluate_cmd, train_cmd

    for module, dest in ((colorize_cmd, "model"), (batch_cmd, "model"), (train_cmd, "family"), (evaluate_cmd, "model")):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        action = next(a for a in parser._actions if a.dest == dest)
        assert tuple(action.choices) == families.names(), module.__name__
