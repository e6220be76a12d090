"""Real training data in COCO-Stuff caption form: an image folder and a COCO captions JSON.

    {"images": [{"id": 1, "file_name": "000000000001.jpg"}, ...],
     "annotations": [{"image_id": 1, "caption": "a red car on green grass",
                      "color_object_pairs": [["car", "red"], ["grass", "green"]]}, ...]}

``color_object_pairs`` (object word, colour word) is optional, as in the L-CoDe release's extended
COCO-Stuff annotations; where present it supervises the OCCM, otherwise the OCCM target is empty and
only the ab loss trains. Each (image, caption) pair is one record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from langcolor.client.errors import CaptionError, LangcolorError
from langcolor.client.lab import rgb_to_lab
from langcolor.client.tokenizer import CaptionTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionRecord:
    image_path: Path
    caption: str
    pairs: tuple[tuple[str, str], ...]  # (object word, colour word); empty when not annotated


@dataclass(frozen=True)
class Sample:
    L: np.ndarray  # float32 [1,S,S] in [0,100]
    ab: np.ndarray  # float32 [2,S,S]
    tokens: np.ndarray  # int64 [T]
    occm: np.ndarray  # float32 [T,T]


def load_records(images_dir: str | Path, captions_json: str | Path) -> list[CaptionRecord]:
    """Parse the captions JSON; raise LangcolorError naming the file and the problem."""
    images_dir, captions_json = Path(images_dir), Path(captions_json)
    if not images_dir.is_dir():
        raise LangcolorError(f"image folder not found: {images_dir}")
    try:
        doc = json.loads(captions_json.read_text(encoding="utf-8"))
        files = {int(im["id"]): im["file_name"] for im in doc["images"]}
        annotations = doc["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LangcolorError(f"{captions_json}: not a COCO captions file ({e.__class__.__name__}: {e})") from e
    records = []
    for k, ann in enumerate(annotations):
        try:
            name = files[int(ann["image_id"])]
            caption = str(ann["caption"]).strip()
            pairs = tuple((str(o).lower(), str(c).lower()) for o, c in ann.get("color_object_pairs", []))
        except (KeyError, TypeError, ValueError) as e:
            raise LangcolorError(f"{captions_json}: annotation {k} is malformed ({e})") from e
        records.append(CaptionRecord(images_dir / name, caption, pairs))
    return records


def pair_positions(words: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> list[tuple[int, int]]:
    """Word positions (noun i, colour j) of each annotated pair; the colour nearest the noun wins."""
    found = []
    for obj, colour in pairs:
        nouns = [i for i, w in enumerate(words) if w == obj]
        colours = [j for j, w in enumerate(words) if w == colour]
        if nouns and colours:
            i, j = min(((i, j) for i in nouns for j in colours), key=lambda ij: abs(ij[0] - ij[1]))
            found.append((i, j))
    return found


def load_lab(path: Path, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image -> (L [1,S,S], ab [2,S,S]), resized (area filter) to S x S."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB").resize((image_size, image_size), Image.Resampling.BOX))
    except OSError as e:
        raise LangcolorError(f"cannot read training image {path}: {e}") from e
    lab = rgb_to_lab(rgb.astype(np.float32) / 255.0)  # [S,S,3]
    return lab[None, ..., 0].astype(np.float32), lab[..., 1:].transpose(2, 0, 1).astype(np.float32)


class CocoCaptions:
    """Indexable (image, caption) samples for training: ``len(ds)``, ``ds[i] -> Sample``."""

    def __init__(self, records: list[CaptionRecord], tokenizer: CaptionTokenizer, image_size: int) -> None:
        self.tokenizer, self.image_size = tokenizer, image_size
        self.records: list[CaptionRecord] = []
        for r in records:
            try:
                tokenizer.encode(r.caption)
            except CaptionError as e:
                log.warning("skipping caption of %s: %s", r.image_path.name, e)
                continue
            self.records.append(r)
        if not self.records:
            raise LangcolorError("no usable (image, caption) pair in the data set")

    @classmethod
    def from_folder(cls, images_dir, captions_json, image_size: int, max_tokens: int, tokenizer=None) -> "CocoCaptions":
        """Build the tokenizer from these captions unless one is given."""
        records = load_records(images_dir, captions_json)
        tokenizer = tokenizer or CaptionTokenizer.train([r.caption for r in records], max_tokens)
        return cls(records, tokenizer, image_size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        r = self.records[index]
        L, ab = load_lab(r.image_path, self.image_size)
        encoded = self.tokenizer.encode(r.caption)
        T = self.tokenizer.max_tokens
        occm = np.zeros((T, T), dtype=np.float32)
        for i, j in pair_positions(encoded.words, r.pairs):
            occm[i, j] = 1.0
        return Sample(L, ab, encoded.ids, occm)
