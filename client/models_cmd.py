"""``langcolor models``: what each model family takes, and what the shipped (or served) ones know.

For every registered family: what it does, the inputs a user gives it beside the photo, and, where
its model is in the repository (or on ``--server``): the image size, its condition tensors, the
weights hash and what its conditioner describes of itself (a caption family's tokenizer, the words
it knows, the colour words it can act on).
"""

from __future__ import annotations

import argparse
import json

from . import families


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-repository", default=None, metavar="DIR",
                   help="model repository (default: the shipped model_repository/, or $LANGCOLOR_MODEL_REPOSITORY)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def describe(name: str, repository) -> dict:
    from .errors import ModelNotFoundError
    from .runtime import ModelBundle

    record = families.get(name)
    doc: dict = {
        "family": name,
        "default": name == families.DEFAULT_FAMILY,
        "title": record.title,
        "summary": record.summary,
        "inputs": [{"name": f.name, "kind": f.kind, "required": f.required, "help": f.help} for f in record.inputs],
        "configs": list(record.configs),
    }
    try:
        bundle = ModelBundle.load(repository, name, stages=False)
    except ModelNotFoundError as e:
        doc["available"] = False
        doc["why_not"] = str(e)
        return doc
    g = bundle.geometry
    doc.update({
        "available": True,
        "config": bundle.manifest.config,
        "image_size": g.image_size,
        "conditions": [{"name": t.name, "dtype": t.dtype, "shape": list(t.dims),
                        "range": list(t.value_range) if t.value_range else None} for t in g.request_inputs],
        "outputs": [t.name for t in g.request_outputs],
        "weights_sha256": bundle.manifest.weights_sha256,
        **bundle.conditioner.describe(),
    })
    return doc


def _text(doc: dict) -> list[str]:
    head = f"{doc['family']}{' (default)' if doc['default'] else ''}: {doc['summary']}"
    lines = [head, f"  paper: {doc['title']}"]
    inputs = ", ".join(f"--{i['name']}" + ("" if i["required"] else " (optional)") for i in doc["inputs"])
    lines.append(f"  inputs beside the photo: {inputs or 'none'}")
    if not doc["available"]:
        lines.append(f"  not in the model repository: {doc['why_not']}")
        return lines
    conds = ", ".join(f"{c['name']} {c['dtype']} {c['shape']}" for c in doc["conditions"]) or "none"
    lines.append(f"  model: config {doc['config'] or '?'}, {doc['image_size']} px, conditions {conds}, "
                 f"weights {doc['weights_sha256'][:12]}")
    if "tokenizer" in doc:
        lines.append(f"  tokenizer: {doc['tokenizer']}, at most {doc['max_tokens']} tokens, vocabulary {doc['vocab_size']}")
    if doc.get("colour_words"):
        lines.append(f"  colour words it acts on: {' '.join(doc['colour_words'])}")
    if doc.get("known_words"):
        lines.append(f"  every word it knows ({len(doc['known_words'])}): {' '.join(doc['known_words'])}")
    for key in ("notes",):
        if doc.get(key):
            lines.append(f"  {doc[key]}")
    return lines


def run(args: argparse.Namespace) -> int:
    docs = [describe(name, args.model_repository) for name in families.names()]
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    for doc in docs:
        print("\n".join(_text(doc)))
        print()
    return 0
