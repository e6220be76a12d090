"""Image decoding and encoding: every mode, orientation, precision, hostile files, metadata."""

import io
import struct
import zlib

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageCms

from langcolor.client.errors import ImageError
from langcolor.client.imageio import encode_image, format_for_path, load_image

ORIENTATION = 0x0112


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header_only(w: int, h: int) -> bytes:
    """A 60-byte PNG that declares a w x h image (a decompression bomb's header)."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skimage.data.astronaut()[:120, :90]  # uint8 [120, 90, 3], portrait


def test_rgb_png_and_path_and_bytes(photo, tmp_path):
    data = _save(Image.fromarray(photo), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for source in (data, path, str(path)):
        img = load_image(source)
        assert img.rgb.dtype == np.float32 and img.rgb.shape == (120, 90, 3)
        assert img.size == (90, 120) and img.format == "PNG" and img.mode == "RGB"
        assert np.array_equal(np.round(img.rgb * 255).astype(np.uint8), photo)
        assert img.pixels.dtype == np.uint8 and np.array_equal(img.pixels, photo)  # 8-bit pixels kept as decoded


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr"])
def test_modes_become_rgb_matching_pil(photo, mode):
    im = Image.fromarray(photo).convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "YCbCr") else "PNG"
    if mode == "YCbCr":
        fmt, im = "JPEG", Image.fromarray(photo)  # JPEG stores YCbCr; PIL decodes it to RGB
    img = load_image(_save(im, fmt))
    assert img.rgb.shape == (120, 90, 3)
    expect = np.asarray(Image.open(io.BytesIO(_save(im, fmt))).convert("RGB")) / 255.0
    assert np.abs(img.rgb - expect).max() < 1e-6
    if mode in ("L", "1"):
        assert img.is_grayscale and np.array_equal(img.rgb[..., 0], img.rgb[..., 2])


def test_rgba_and_la_are_composited_on_white(photo):
    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])  # fully transparent
    rgba[:60, :, 3] = 255  # top half opaque
    img = load_image(_save(Image.fromarray(rgba), "PNG"))
    assert np.allclose(img.rgb[60:], 1.0)  # transparent -> white, not the hidden colour
    assert np.array_equal(np.round(img.rgb[:60] * 255).astype(np.uint8), photo[:60])
    la = Image.fromarray(photo[..., 0]).convert("LA")
    la.putalpha(128)
    img = load_image(_save(la, "PNG"))
    expect = (photo[..., 0].astype(int) * 128 + 255 * 127) / 255 / 255  # alpha 128/255 over white
    assert np.abs(img.rgb[..., 1] - expect).max() < 1.5 / 255


def test_palette_with_transparency_is_composited(photo):
    p = Image.fromarray(photo).convert("P")
    p.info["transparency"] = 0
    data = _save(p, "PNG", transparency=0)
    img = load_image(data)
    hidden = np.asarray(Image.open(io.BytesIO(data))) == 0
    assert hidden.any() and np.allclose(img.rgb[hidden], 1.0)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_keeps_full_precision(fmt):
    ramp = (np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) * 10 + 7).astype(np.uint16)  # not multiples of 257
    img = load_image(_save(Image.fromarray(ramp), fmt))
    assert img.mode.startswith("I") and img.is_grayscale
    assert np.abs(img.rgb[..., 1] - ramp / 65535.0).max() < 1e-6  # 8-bit would be off by up to 1/510
    assert len(np.unique(img.rgb[..., 0])) == ramp.size  # no two levels merged


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_applied_and_reset(photo, fmt):
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: rotate 90 degrees clockwise to display
    exif[0x010F] = "langcolor-test"  # Make: other tags must survive
    data = _save(Image.fromarray(photo), fmt, exif=exif.tobytes(), quality=98)
    img = load_image(data)
    assert img.size == (120, 90) and img.rgb.shape == (90, 120, 3)
    upright = np.rot90(photo, k=-1).astype(int)  # clockwise
    got = np.round(img.rgb * 255).astype(int)
    assert np.abs(got - upright).mean() < (2.5 if fmt == "JPEG" else 1e-9)
    assert np.abs(got - np.rot90(photo, k=1)).mean() > 20  # not the other way round
    kept = Image.Exif()
    kept.load(img.exif)
    assert kept[ORIENTATION] == 1 and kept[0x010F] == "langcolor-test"


def test_icc_profile_is_kept(photo):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = load_image(_save(Image.fromarray(photo), "JPEG", icc_profile=icc))
    assert img.icc == icc and img.exif is None


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        (b"\x89PNG\r\n\x1a\n", "not an image"),
        (_png_header_only(0, 10), ""),
    ],
)
def test_bad_bytes_raise_image_error(data, needle):
    with pytest.raises(ImageError) as e:
        load_image(data)
    assert needle in str(e.value).lower()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_truncated_files_raise_image_error(photo, fmt):
    data = _save(Image.fromarray(skimage.data.astronaut()), fmt)
    with pytest.raises(ImageError, match="truncated|corrupt|decode"):
        load_image(data[: len(data) // 2])


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_pixel_cap_checked_before_decoding(photo):
    bomb = _png_header_only(20_000, 20_000)  # 400 megapixels declared in 60 bytes
    with pytest.raises(ImageError, match="decompression bomb|exceeds"):
        load_image(bomb)
    declared = _png_header_only(8000, 7000)  # 56 MP: over our cap, under PIL's; no pixels in the file
    with pytest.raises(ImageError, match="exceeds the limit of 50000000"):
        load_image(declared)
    small = _save(Image.fromarray(photo), "PNG")
    with pytest.raises(ImageError, match="exceeds the limit of 100"):
        load_image(small, max_pixels=100)
    assert load_image(small, max_pixels=120 * 90).size == (90, 120)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_encode_round_trip_carries_exif_and_icc(photo, fmt):
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    exif[0x010F] = "langcolor-test"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode_image(photo, fmt, exif=exif.tobytes(), icc=icc)
    back = Image.open(io.BytesIO(data))
    assert back.format == fmt and back.size == (90, 120)
    assert back.info.get("icc_profile") == icc
    assert back.getexif().get(0x010F) == "langcolor-test"
    pixels = np.asarray(back.convert("RGB")).astype(int)
    if fmt == "JPEG":  # quality 95, 4:4:4: lossy but close
        assert np.abs(pixels - photo).mean() < 2.5
    else:
        assert np.array_equal(pixels, photo)


def test_encode_rejects_wrong_arrays_and_formats(photo):
    with pytest.raises(ImageError):
        encode_image(photo.astype(np.float32))
    with pytest.raises(ImageError):
        encode_image(photo[..., 0])
    with pytest.raises(ImageError):
        encode_image(photo, "BMP")
    assert format_for_path("x/OUT.JPG") == "JPEG" and format_for_path("a.tif") == "TIFF"
    with pytest.raises(ImageError, match="cannot write"):
        format_for_path("out.gif")


def test_from_array_matches_decoding_a_file(photo):
    from langcolor.client.imageio import from_array

    assert np.array_equal(from_array(photo).rgb, load_image(_save(Image.fromarray(photo), "PNG")).rgb)
    gray = from_array(photo[..., 0])
    assert gray.mode == "L" and np.array_equal(gray.rgb[..., 2], photo[..., 0] / np.float32(255))
    wide = from_array((photo.astype(np.uint16) * 257))
    assert np.abs(wide.rgb - photo / 255.0).max() < 1e-6
    rgba = from_array(np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)]))
    assert np.allclose(rgba.rgb, 1.0)  # transparent -> white, as for files
    for bad in (photo.astype(np.float32), photo[..., :2], photo.astype(np.int64), np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(ImageError):
            from_array(bad)
    with pytest.raises(ImageError, match="exceeds"):
        from_array(photo, max_pixels=10)


def test_png_compression_level_changes_size_not_pixels():
    rgb = skimage.data.coffee()  # [400, 600, 3], a real photo
    files = {level: encode_image(rgb, "PNG", png_compression=level) for level in (0, 1, 6, 9)}
    for data in files.values():
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)  # lossless at every level
    assert len(files[0]) > len(files[1]) > len(files[6]) >= len(files[9])
    assert len(files[0]) > rgb.nbytes  # level 0 stores: the default must not be it
    for bad in (-1, 10):
        with pytest.raises(ImageError, match="0-9"):
            encode_image(rgb, "PNG", png_compression=bad)


def test_jpeg_quality_is_a_parameter():
    rgb = skimage.data.coffee()
    low, high = (encode_image(rgb, "JPEG", jpeg_quality=q) for q in (50, 95))
    assert len(low) < len(high)
    err = [np.abs(np.asarray(Image.open(io.BytesIO(d))).astype(int) - rgb).mean() for d in (low, high)]
    assert err[1] < err[0]
    with pytest.raises(ImageError, match="1-100"):
        encode_image(rgb, "JPEG", jpeg_quality=0)
