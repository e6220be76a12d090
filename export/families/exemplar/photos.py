"""Real colour photographs that install offline: the curated list, its splits and its loader.

Sources (nothing is downloaded at training time, and no image is stored with the code):

- scikit-image's bundled samples (``skimage.data``) and scikit-learn's two sample images;
- the photographic wallpapers of the Debian packages ``plasma-workspace-wallpapers`` and
  ``mate-backgrounds``, unpacked with ``dpkg -x`` (no install needed; ``FETCH_HINT`` says how).

Only real colour photographs are listed. The illustrations, renders, abstract art and black-and-white
photos of those packages are rejected, each with its reason (``REJECTED``). Every photo belongs to one
split: ``train`` (training), ``val`` (choosing between variants) or ``test`` (held out from training
and from every choice; the reported figures). ``load_photo`` finds a photo, downsizes it to a
``MAX_SIDE`` long side once and caches the result as ``.npy``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from langcolor.client.errors import LangcolorError

log = logging.getLogger(__name__)

MAX_SIDE = 768  # px: photos are downsized to this long side once (evaluation's "full resolution")
SPLITS = ("train", "val", "test")
PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds")
ROOTS_ENV = "LANGCOLOR_EXEMPLAR_PHOTOS"  # os.pathsep-separated folders holding wallpapers/ and backgrounds/mate/
CACHE_ENV = "LANGCOLOR_EXEMPLAR_CACHE"  # where the downsized photos are cached
_USER_DIR = Path.home() / ".cache" / "langcolor" / "exemplar"
DEFAULT_ROOTS = (Path("/usr/share"), _USER_DIR / "debs" / "extracted" / "usr" / "share")
FETCH_HINT = (
    f"mkdir -p {_USER_DIR}/debs && cd {_USER_DIR}/debs && apt-get download {' '.join(PACKAGES)} "
    "&& for d in *.deb; do dpkg -x \"$d\" extracted/; done"
)


class PhotosMissingError(LangcolorError):
    """A listed photograph cannot be found or decoded; the message says how to get it."""


@dataclass(frozen=True)
class Photo:
    name: str
    source: str  # "skimage", "sklearn", "plasma" or "mate"
    locator: str  # skimage function, sklearn file name, or path under a root
    split: str  # one of SPLITS
    content: str  # what it shows

    @property
    def bundled(self) -> bool:
        """Installed with a Python package (scikit-image, scikit-learn), not from a Debian package."""
        return self.source in ("skimage", "sklearn")


def _plasma(name: str) -> str:
    return f"wallpapers/{name}/contents/images/2560x1600.jpg"


def _mate(name: str) -> str:
    return f"backgrounds/mate/nature/{name}.jpg"


# The test photos cover what the training set lacks (a person, food, a vehicle, buildings, a man-made
# many-coloured scene): a network that memorised its training photos' colours cannot pass them.
PHOTOS: tuple[Photo, ...] = (
    # scikit-image and scikit-learn
    Photo("astronaut", "skimage", "astronaut", "test", "portrait, US flag, white suit"),
    Photo("coffee", "skimage", "coffee", "test", "cup of coffee on a red-brown table"),
    Photo("motorcycle", "skimage", "stereo_motorcycle", "test",
          "motorcycle in a workshop (left view; the reference comes from the right view)"),
    Photo("china", "sklearn", "china.jpg", "test", "temple roof, trees, sky"),
    Photo("chelsea", "skimage", "chelsea", "train", "tabby cat"),
    Photo("rocket", "skimage", "rocket", "val", "rocket on the launch pad, sky, trees"),
    Photo("flower", "sklearn", "flower.jpg", "train", "dahlia-like flower, leaves"),
    # plasma-workspace-wallpapers (LGPLv3; authors in each metadata.json)
    Photo("EveningGlow", "plasma", _plasma("EveningGlow"), "test", "rowing boats on a lake shore at sunset"),
    Photo("ColorfulCups", "plasma", _plasma("ColorfulCups"), "test", "stacked plastic cups, red and blue"),
    Photo("Path", "plasma", _plasma("Path"), "test", "path through a spruce forest"),
    Photo("BytheWater", "plasma", _plasma("BytheWater"), "train", "wooden jetty, lake, sky"),
    Photo("DarkestHour", "plasma", _plasma("DarkestHour"), "train", "lake at dusk, blue"),
    Photo("FallenLeaf", "plasma", _plasma("FallenLeaf"), "val", "autumn leaves, shallow focus"),
    Photo("Kite", "plasma", _plasma("Kite"), "train", "kite in a blue sky with clouds"),
    Photo("OneStandsOut", "plasma", _plasma("OneStandsOut"), "train", "moss from above, one orange tuft"),
    Photo("summer_1am", "plasma", _plasma("summer_1am"), "train", "lake at night, pink and violet sky"),
    # mate-backgrounds, nature set (GPL-2+)
    Photo("LadyBird", "mate", _mate("LadyBird"), "test", "ladybird on a stem, forget-me-nots"),
    Photo("Aqua", "mate", _mate("Aqua"), "train", "water drop splash, blue-gray"),
    Photo("Blinds", "mate", _mate("Blinds"), "train", "green leaf close-up"),
    Photo("Dune", "mate", _mate("Dune"), "train", "dune grass, sea, sky"),
    Photo("FreshFlower", "mate", _mate("FreshFlower"), "train", "orange flower petals"),
    Photo("Garden", "mate", _mate("Garden"), "val", "red-orange marigold, green background"),
    Photo("GreenMeadow", "mate", _mate("GreenMeadow"), "train", "young grass blades"),
    Photo("RainDrops", "mate", _mate("RainDrops"), "train", "rain drops on leaves"),
    Photo("Storm", "mate", _mate("Storm"), "train", "storm clouds over a road"),
    Photo("TwoWings", "mate", _mate("TwoWings"), "train", "dandelion seeds before orange flowers"),
    Photo("Wood", "mate", _mate("Wood"), "train", "weathered pale wood"),
    Photo("YellowFlower", "mate", _mate("YellowFlower"), "train", "yellow flower close-up"),
)

# Candidates looked at and left out, with the reason.
REJECTED: dict[str, str] = {
    "skimage cat": "the same image as chelsea",
    "skimage hubble_deep_field": "astronomical image, almost all black",
    "skimage immunohistochemistry": "microscopy stain, not a scene",
    "skimage retina": "fundus photograph, not a scene",
    "skimage colorwheel, logo": "synthetic graphics",
    "skimage camera, coins, moon, page, text, brick, grass, gravel, clock, cell, ...": "gray: no colour",
    "skimage lily, skin, kidney, eagle, ...": "not bundled (fetched from the internet on demand)",
    "plasma Altai, Canopee, Cascade, Cluster, Elarun, Flow, Honeywave, IceCold, Kay, Kokkini, MilkyWay, "
    "Opal, PastelHills, Patak, Shell": "abstract or low-poly illustrations",
    "plasma Autumn, SafeLanding, FlyingKonqui": "drawn illustrations",
    "plasma Volna": "3D render (low-poly beach)",
    "plasma ColdRipple, Grey": "black-and-white photographs: no colour to learn or score",
    "mate abstract/*": "abstract art (Elephants is a painting)",
    "mate desktop/*": "logos, stripes and blurred light abstractions",
}


def names(split: str) -> list[str]:
    assert split in SPLITS, split
    return [p.name for p in PHOTOS if p.split == split]


def by_name(name: str) -> Photo:
    for p in PHOTOS:
        if p.name == name:
            return p
    raise PhotosMissingError(f"no photo named {name!r}; known: {', '.join(p.name for p in PHOTOS)}")


def roots() -> list[Path]:
    env = os.environ.get(ROOTS_ENV)
    return [Path(r) for r in env.split(os.pathsep) if r] if env else list(DEFAULT_ROOTS)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, _USER_DIR / "photos"))


def _downsize(img: Image.Image, max_side: int) -> np.ndarray:
    """PIL image -> float32 RGB [H, W, 3] in [0, 1] with long side <= max_side (antialiased)."""
    img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, at least the size asked
    img = img.convert("RGB")
    scale = max_side / max(img.size)
    if scale < 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32) / 255.0


def _bundled(photo: Photo, view: int) -> np.ndarray:
    package = "scikit-image" if photo.source == "skimage" else "scikit-learn"
    try:
        if photo.source == "skimage":
            import skimage.data

            arr = getattr(skimage.data, photo.locator)()
            return arr[view] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
        from sklearn.datasets import load_sample_image

        return load_sample_image(photo.locator)
    except ImportError as e:
        raise PhotosMissingError(f"{photo.name}: needs {package} (pip install {package})") from e


def _decode(photo: Photo, max_side: int, view: int) -> np.ndarray:
    if photo.bundled:
        return _downsize(Image.fromarray(_bundled(photo, view)), max_side)
    for root in roots():
        path = root / photo.locator
        if path.is_file():
            try:
                with Image.open(path) as img:
                    return _downsize(img, max_side)
            except OSError as e:
                raise PhotosMissingError(f"{photo.name}: cannot decode {path}: {e}") from e
    package = PACKAGES[0] if photo.source == "plasma" else PACKAGES[1]
    raise PhotosMissingError(
        f"{photo.name}: {photo.locator} is not under {', '.join(map(str, roots()))}; it comes from the Debian "
        f"package {package}. Fetch and unpack both packages (no install needed) with\n  {FETCH_HINT}\n"
        f"or point ${ROOTS_ENV} at a folder holding wallpapers/ and backgrounds/mate/"
    )


def load_photo(name: str, max_side: int = MAX_SIDE, view: int = 0) -> np.ndarray:
    """One photo as float32 RGB [H, W, 3] in [0, 1]; ``view`` 1 is the second stereo view where there is one."""
    photo = by_name(name)
    path = cache_dir() / f"{name}_{view}_{max_side}.npy"
    if path.is_file():
        return np.load(path)
    rgb = _decode(photo, max_side, view)  # [H, W, 3]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rgb)
    except OSError as e:  # a read-only home: decode again next time
        log.warning("cannot cache %s: %s", path, e)
    log.info("loaded %s (%s) -> %dx%d", name, photo.source, rgb.shape[1], rgb.shape[0])
    return rgb


def has_second_view(name: str) -> bool:
    return by_name(name).locator == "stereo_motorcycle"


def load_photos(splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``{name: RGB [H, W, 3]}`` for every photo of ``splits``; ``PhotosMissingError`` lists every gap."""
    out, missing = {}, []
    for p in PHOTOS:
        if p.split not in splits:
            continue
        try:
            out[p.name] = load_photo(p.name)
        except PhotosMissingError as e:
            missing.append(str(e).splitlines()[0])
    if missing:
        raise PhotosMissingError(f"{len(missing)} training photo(s) missing:\n  " + "\n  ".join(missing)
                                 + f"\nFetch the Debian ones with:\n  {FETCH_HINT}\n"
                                 f"(or point ${ROOTS_ENV} at the folder that holds them)")
    return out


def available(split: str) -> tuple[list[str], list[str]]:
    """(names of the split's photos that load here, one line per photo that does not)."""
    ok, missing = [], []
    for name in names(split):
        try:
            load_photo(name)
            if has_second_view(name):
                load_photo(name, view=1)
            ok.append(name)
        except PhotosMissingError as e:
            missing.append(str(e).splitlines()[0])
    return ok, missing
