"""Image folders and CSVs: bad files are skipped and listed, odd image modes are converted, small classes refused."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.folder import (
    HiddenClassWarning,
    LooseImagesWarning,
    check_image,
    decode_image,
    describe_skipped,
    image_files,
    load_image,
    scan_csv,
    scan_folder,
    thin_image_reason,
    to_rgb,
)
from cnnlab.errors import CnnlabError


def _solid(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _make_folder(root: Path, per_class: int = 5) -> Path:
    for name, (red, green, blue) in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        for i in range(per_class):  # each image its own shade: identical files would be kept once
            _solid(root / name / f"{i}.png", (red, green + i, blue))
    return root


def test_load_image_converts_odd_modes_to_rgb(tmp_path: Path) -> None:
    # Grayscale: replicated into three equal channels.
    Image.new("L", (8, 6), 77).save(tmp_path / "gray.png")
    assert np.asarray(load_image(tmp_path / "gray.png"))[0, 0].tolist() == [77, 77, 77]
    # 16-bit: stretched from 16 bits to 8, not clipped (a naive convert("L") saturates everything above 255).
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024 + 1023).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as written:
        assert written.mode.startswith("I")
    deep = np.asarray(load_image(tmp_path / "deep.png"))[..., 0]
    assert deep.min() < 10 and deep.max() == 255 and len(np.unique(deep)) > 32
    # RGBA: transparent pixels become white, opaque ones keep their colour.
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(tmp_path / "alpha.png")
    pixels = np.asarray(load_image(tmp_path / "alpha.png"))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[1, 1].tolist() == [255, 0, 0]
    # Palette with a transparent index.
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "palette.png", transparency=0)
    pixels = np.asarray(load_image(tmp_path / "palette.png"))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[2, 2].tolist() == [0, 200, 0]
    # CMYK JPEG: converted to RGB (pure cyan -> no red).
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    cyan = np.asarray(load_image(tmp_path / "cmyk.jpg")).reshape(-1, 3).mean(0)
    assert cyan[0] < 40 and cyan[1] > 200 and cyan[2] > 200
    for name in ("gray.png", "deep.png", "alpha.png", "palette.png", "cmyk.jpg"):
        assert load_image(tmp_path / name).mode == "RGB"


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_pngs_transparent_colour_is_composited_on_white_as_its_alpha_would_be(tmp_path: Path, mode: str) -> None:
    # a cut-out (all-or-nothing alpha, the hidden pixels black) that a PNG optimiser stored as one transparent colour
    # (tRNS) instead of an alpha channel: its background was black, where the same image as RGBA or LA gave white
    cutout = np.zeros((8, 8, 4), np.uint8)
    cutout[2:6, 2:6] = (200, 30, 30, 255)
    with_alpha = Image.fromarray(cutout).convert("RGBA" if mode == "RGB" else "LA")
    with_alpha.save(tmp_path / "alpha.png")
    opaque = Image.fromarray(cutout[..., :3]).convert(mode)
    opaque.save(tmp_path / "keyed.png", transparency=(0, 0, 0) if mode == "RGB" else 0)
    with Image.open(tmp_path / "keyed.png") as keyed:
        assert keyed.mode == mode and "transparency" in keyed.info
    loaded = np.asarray(load_image(tmp_path / "keyed.png"))
    assert loaded[0, 0].tolist() == [255, 255, 255]
    assert np.array_equal(loaded, np.asarray(load_image(tmp_path / "alpha.png")))


def test_a_float_image_with_no_data_values_keeps_its_range(tmp_path: Path) -> None:
    # a float TIFF whose "no data" pixels are NaN (and one infinite): min and max were NaN, and the image all black
    ramp = np.linspace(0, 1000, 8 * 8, dtype=np.float32).reshape(8, 8)
    ramp[0, :4] = np.nan
    ramp[0, 4] = np.inf
    Image.fromarray(ramp).save(tmp_path / "map.tif")
    grey = np.asarray(load_image(tmp_path / "map.tif"))[..., 0]
    assert grey[0, :4].tolist() == [0] * 4 and grey[0, 4] == 255 and grey[-1, -1] == 255
    low, high = float(ramp[0, 5]), float(ramp[-1, -1])  # the finite values' range
    assert grey[4, 0] == round((float(ramp[4, 0]) - low) / (high - low) * 255)


def test_a_16_bit_grey_pngs_transparent_colour_is_composited_on_white_and_left_out_of_its_range(tmp_path: Path) -> None:
    # an 8-bit grey PNG's transparent value was composited on white, a 16-bit one's (mode I;16) kept its hidden grey,
    # black here, and that grey stretched the range of a 12-bit scan's shown values
    cutout = np.zeros((8, 8), np.uint16)
    cutout[2:6, 2:6] = 40000
    Image.fromarray(cutout).save(tmp_path / "keyed.png", transparency=0)
    cutout[2:6, 2:6] = np.linspace(1000, 3000, 16).reshape(4, 4)  # 12 bits: stretched from 1000..3000
    Image.fromarray(cutout).save(tmp_path / "keyed12.png", transparency=0)
    with Image.open(tmp_path / "keyed.png") as keyed:
        assert keyed.mode == "I;16" and keyed.info["transparency"] == 0
    loaded = np.asarray(load_image(tmp_path / "keyed.png"))
    assert loaded[0, 0].tolist() == [255, 255, 255] and loaded[3, 3].tolist() == [156] * 3  # 40000 / 65535
    loaded = np.asarray(load_image(tmp_path / "keyed12.png"))[..., 0]
    assert loaded[0, 0] == 255 and loaded[2, 2] == 0 and loaded[5, 5] == 255


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes], key: bytes) -> bytes:
    """A PNG written chunk by chunk: Pillow writes no 16-bit RGB or 2-bit grey file with a transparent colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + row for row in rows))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", key) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("key", [(12345, 23456, 34567), (255, 255, 255), (0x8000, 0x8000, 0x8000)])
def test_a_16_bit_rgb_pngs_transparent_colour_is_composited_on_white(tmp_path: Path, key: tuple[int, ...]) -> None:
    # Pillow decodes a 16-bit RGB PNG to its pixels' high bytes but matched the 16-bit key by its low byte: only a
    # black key or a grey level times 257 was composited, another kept its hidden colour
    pixels = np.empty((6, 6, 3), np.uint16)
    pixels[:] = key
    pixels[2:4, 2:4] = (51400, 7710, 7710)  # 200, 30, 30
    rows = [row.astype(">u2").tobytes() for row in pixels]
    (tmp_path / "keyed.png").write_bytes(_png(6, 6, 16, 2, rows, struct.pack(">HHH", *key)))
    for loaded in (load_image(tmp_path / "keyed.png"), to_rgb(decode_image(tmp_path / "keyed.png")[0])):
        pixels_8 = np.asarray(loaded)
        assert pixels_8[0, 0].tolist() == [255, 255, 255] and pixels_8[2, 2].tolist() == [200, 30, 30]


@pytest.mark.parametrize(("bit_depth", "key", "level"), [(2, 1, 85), (4, 5, 85)])
def test_a_low_bit_grey_pngs_transparent_colour_is_composited_on_white(
    tmp_path: Path, bit_depth: int, key: int, level: int
) -> None:
    # a 2- or 4-bit grey PNG's key (level 1 of 0..3) was compared with the pixels Pillow scales to 8 bits (85)
    values = np.full((4, 8), key, np.uint8)
    values[1:3, 2:6] = 2  # 170 in 2 bits, 34 in 4
    per_byte = 8 // bit_depth
    rows = [
        bytes(
            sum(int(value) << (8 - bit_depth * (i + 1)) for i, value in enumerate(row[start : start + per_byte]))
            for start in range(0, 8, per_byte)
        )
        for row in values
    ]
    (tmp_path / "keyed.png").write_bytes(_png(8, 4, bit_depth, 0, rows, struct.pack(">H", key)))
    with Image.open(tmp_path / "keyed.png") as opened:
        assert np.asarray(opened)[0, 0] == level  # the hidden level, not white, before compositing
    loaded = np.asarray(load_image(tmp_path / "keyed.png"))[..., 0]
    assert loaded[0, 0] == 255 and loaded[1, 2] == 2 * 255 // (2**bit_depth - 1)


def test_load_image_applies_exif_rotation(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    (tmp_path / "rotated.jpg").write_bytes(buffer.getvalue())
    loaded = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert loaded.shape[:2] == (40, 20)  # portrait after rotation
    assert loaded[:5].mean() > 200 and loaded[-5:].mean() < 50  # the white left edge is now on top


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_an_image_whose_exif_block_is_damaged_loads_as_stored(tmp_path: Path, image_format: str) -> None:
    # an EXIF block that is not TIFF data (here its byte-order mark damaged): the pixels decode, so the scan kept the
    # file, and load_image then raised SyntaxError, a traceback in the middle of training or predict
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))
    path = tmp_path / f"damaged.{image_format.lower()}"
    image.save(path, format=image_format, exif=b"Exif\x00\x00\xf2M\x00*\x00\x00\x00\x08", lossless=True)
    assert check_image(path) is None
    loaded = np.asarray(load_image(path))
    assert loaded.shape[:2] == (20, 40) and loaded[:, :5].mean() > 200  # as stored: its orientation is unknown


def test_a_rotated_photo_with_a_damaged_tag_is_turned_and_loads(tmp_path: Path) -> None:
    # orientation 6 readable, another tag a string where a rational belongs: exif_transpose, which writes the EXIF
    # block again for its result, raised TypeError
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x011A] = 72.0  # XResolution, a rational
    data = bytearray(exif.tobytes())
    entry = data.index(b"\x01\x1a")  # the tag's 12-byte entry: its type (5, RATIONAL) made 2, ASCII
    data[entry + 2 : entry + 4] = (2).to_bytes(2, "big" if data[6:8] == b"MM" else "little")
    image.save(tmp_path / "rotated.jpg", exif=bytes(data), quality=95)
    loaded = np.asarray(load_image(tmp_path / "rotated.jpg"))
    assert loaded.shape[:2] == (40, 20) and loaded[:5].mean() > 200  # turned: the white left edge on top


def test_an_image_over_pillows_warning_size_is_read_without_its_warning(tmp_path: Path, monkeypatch) -> None:
    # a 12000x9000 scan (108 MP, over Pillow's 89 MP) printed Pillow's two-line DecompressionBombWarning, which names
    # no file, at each decode; the guard made small here (200 px warned, 400 px refused) to keep the test fast
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    Image.new("RGB", (15, 20), (200, 30, 30)).save(tmp_path / "large.png")
    Image.new("RGB", (20, 21), (200, 30, 30)).save(tmp_path / "huge.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_image(tmp_path / "large.png") is None
        assert load_image(tmp_path / "large.png").size == (15, 20)
        assert "too many pixels" in (check_image(tmp_path / "huge.png") or "")
    assert [str(warning.message) for warning in caught] == []
    # a readable photo over the guard was counted as "1 unreadable" in the scan's and evaluate's summary line
    reasons = [check_image(tmp_path / "huge.png") or "", "zero-byte file"]
    assert describe_skipped(reasons) == "2 files skipped: 1 unreadable, 1 too large to decode"


def test_scan_folder_skips_and_lists_bad_files(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "photos", per_class=5)
    (root / "cat" / "empty.jpg").write_bytes(b"")
    good = (root / "dog" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "notes.jpg").write_text("not an image")
    (root / "dog" / "readme.txt").write_text("ignored: not an image extension")
    images = scan_folder(root, min_per_class=5)
    assert images.classes == ["cat", "dog"]
    assert images.class_counts() == {"cat": 5, "dog": 5}
    reasons = {Path(s.path).name: s.reason for s in images.skipped}
    assert set(reasons) == {"empty.jpg", "truncated.png", "notes.jpg"}
    assert reasons["empty.jpg"] == "zero-byte file"
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert reasons["notes.jpg"] == "not an image PIL can read"
    assert {s.label for s in images.skipped} == {"cat", "dog"}
    assert check_image(root / "cat" / "0.png") is None


def test_a_byte_identical_copy_is_kept_once_so_it_cannot_sit_on_both_sides_of_the_split(tmp_path: Path) -> None:
    import os
    import shutil

    root = _make_folder(tmp_path / "photos", per_class=5)
    shutil.copy(root / "cat" / "0.png", root / "cat" / "zz-copy.png")  # a duplicate within its class
    shutil.copy(root / "cat" / "1.png", root / "dog" / "zz-stray.png")  # the same photo filed under two classes
    os.symlink(root / "dog" / "2.png", root / "dog" / "zz-link.png")
    images = scan_folder(root, min_per_class=4)
    # the photo under two labels is in neither: it was trained as a cat and its copy tested as a dog's
    assert images.class_counts() == {"cat": 4, "dog": 5}
    assert len(set(images.paths)) == len(images.paths) == 9
    reasons = {Path(s.path).name: s.reason for s in images.skipped}
    assert set(reasons) == {"zz-copy.png", "zz-stray.png", "zz-link.png", "1.png"}
    assert reasons["zz-copy.png"].startswith(f"a byte-identical copy of {root / 'cat' / '0.png'}")
    assert reasons["zz-stray.png"].startswith(f"the same image as {root / 'cat' / '1.png'}, labelled 'cat' there")
    assert reasons["1.png"].endswith("labelled 'dog' there; both are left out")
    assert "labelled" not in reasons["zz-link.png"]
    assert scan_folder(root, min_per_class=5, check=False).class_counts() == {"cat": 6, "dog": 7}  # trusted: no check
    (root / "dog" / "zz-broken.png").write_bytes(b"not a png")
    match = r"5 files skipped: 1 unreadable, 2 filed under two labels, 2 byte-identical copies of kept images"
    with pytest.raises(CnnlabError, match=match):
        scan_folder(root, min_per_class=6)  # they were "4 bad files"


def test_image_files_walks_sub_folders_in_order_and_skips_hidden_and_other_files(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", "sub/c.webp", ".hidden.png", ".cache/d.png", "sub/e.tif"):
        _solid(tmp_path / name, (0, 0, 0))
    (tmp_path / "notes.txt").write_text("not an image")
    found = [Path(p).relative_to(tmp_path).as_posix() for p in image_files(tmp_path)]
    assert found == ["a.JPG", "b.png", "sub/c.webp", "sub/e.tif"]


def test_too_few_images_per_class_is_a_clear_error(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "photos", per_class=5)
    (root / "dog" / "4.png").write_bytes(b"")  # a bad file must not count towards the minimum
    with pytest.raises(CnnlabError, match=r"dog has 4 usable images \(1 file skipped: 1 unreadable\); at least 5"):
        scan_folder(root, min_per_class=5)
    # one class's folder passed: it said "has 0 class sub-folder(s) (none); at least 2 are needed", its images unsaid
    with pytest.raises(CnnlabError, match=r"cat holds 5 image file\(s\) \(0.png, 1.png, 2.png and 2 more\) and no cla"):
        scan_folder(root / "cat", min_per_class=1)
    with pytest.raises(CnnlabError, match=rf"; pass its parent, {re.escape(str(root))}, which holds 2 class folders"):
        scan_folder(root / "cat", min_per_class=1)
    alone = tmp_path / "one" / "alone"  # no sibling class folder to name
    _solid(alone / "0.png", (0, 0, 0))
    (tmp_path / "none" / "empty").mkdir(parents=True)
    with pytest.raises(CnnlabError, match=r"put the images in sub-folders named after their classes, at least 2"):
        scan_folder(alone, min_per_class=1)
    with pytest.raises(CnnlabError, match=r"has 0 class sub-folder\(s\) \(none\); at least 2 are needed"):
        scan_folder(tmp_path / "none" / "empty", min_per_class=1)
    # a class folder of no image file at all was told to "lower --min-per-class": it says which files are read
    (root / "fox").mkdir()
    (root / "fox" / "notes.txt").write_text("not an image")
    with pytest.raises(CnnlabError, match=r"photos: fox holds no image files \(cnnlab reads \.jpg, .*\); put the"):
        scan_folder(root, min_per_class=1)
    with pytest.raises(CnnlabError, match="photos/bird does not exist; pass a folder with one sub-folder"):
        scan_folder(root / "bird")
    with pytest.raises(CnnlabError, match="0.png is a file; pass a folder with one sub-folder"):
        scan_folder(root / "cat" / "0.png")


def test_a_folder_without_images_is_named_as_such_and_long_class_lists_are_cut(tmp_path: Path) -> None:
    """A folder of twelve sub-folders holding no image (say, /etc) was listed as "a has 0, b has 0, ..." in full."""
    root = tmp_path / "not-photos"
    for index in range(12):
        (root / f"class{index:02d}").mkdir(parents=True)
        (root / f"class{index:02d}" / "readme.txt").write_text("no image here")
    with pytest.raises(CnnlabError, match=r"none of its 12 classes \(class00, .*, class07 and 4 more\) has a usable"):
        scan_folder(root, min_per_class=1)
    for index in range(12):
        _solid(root / f"class{index:02d}" / "0.png", (index, 0, 0))
    with pytest.raises(CnnlabError) as error:
        scan_folder(root, min_per_class=2)
    assert "class07 has 1 usable images, and 4 more classes are short too; at least 2" in str(error.value)
    assert "class08" not in str(error.value)


def test_scan_csv_resolves_relative_paths_and_skips_missing(tmp_path: Path) -> None:
    _make_folder(tmp_path / "photos", per_class=3)
    rows = ["path,label"] + [f"photos/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    rows.append("photos/dog/missing.png,dog")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    images = scan_csv(tmp_path / "labels.csv", min_per_class=3)
    assert images.class_counts() == {"cat": 3, "dog": 3}
    assert [Path(s.path).name for s in images.skipped] == ["missing.png"]
    assert all(Path(p).is_file() for p in images.paths)
    (tmp_path / "bad.csv").write_text("photos/cat/0.png\n")
    with pytest.raises(CnnlabError, match="path,label"):
        scan_csv(tmp_path / "bad.csv")
    # A spreadsheet's export starts with a byte-order mark: the header is still a header, not a row to check.
    (tmp_path / "excel.csv").write_bytes("\n".join(rows).encode("utf-8-sig"))
    assert scan_csv(tmp_path / "excel.csv", min_per_class=3).class_counts() == {"cat": 3, "dog": 3}
    # Any header naming its columns otherwise was read as a row: a class "species" with one unreadable file.
    (tmp_path / "named.csv").write_text("\n".join(["filename,species", *rows[1:]]) + "\n")
    named = scan_csv(tmp_path / "named.csv", min_per_class=3)
    assert named.class_counts() == {"cat": 3, "dog": 3} and len(named.skipped) == 1  # missing.png alone
    (tmp_path / "latin1.csv").write_bytes("path,label\nphotos/cat/0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CnnlabError, match=r"latin1.csv is not UTF-8 text \(byte \d+\)"):  # was a UnicodeDecodeError
        scan_csv(tmp_path / "latin1.csv")


def test_a_csv_whose_paths_name_no_file_says_where_they_are_read_from(tmp_path: Path) -> None:
    """Paths written relative to another folder than the CSV's: it said "none of its 2 classes has a usable image (6
    files skipped: 6 unreadable)", as if the images were damaged."""
    _make_folder(tmp_path / "photos", per_class=3)
    (tmp_path / "lists").mkdir()
    rows = ["path,label"] + [f"photos/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    (tmp_path / "lists" / "labels.csv").write_text("\n".join(rows) + "\n")
    folder = re.escape(str(tmp_path / "lists"))
    with pytest.raises(
        CnnlabError, match=rf"none of its 6 rows names an existing file .*read from the CSV's folder, {folder}$"
    ):
        scan_csv(tmp_path / "lists" / "labels.csv", min_per_class=1)
    rows.append("photos/dog/missing.png,dog")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(CnnlabError, match=r"dog has 3 usable images \(1 file skipped: 1 missing\); at least 4"):
        scan_csv(tmp_path / "labels.csv", min_per_class=4)


def test_an_image_too_large_to_decode_safely_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was reported as "corrupt or truncated (Image size ... could be decompression bomb DOS attack.)".
    Image.new("L", (20, 20)).save(tmp_path / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses images above twice this
    assert check_image(tmp_path / "wide.png") == (
        "too many pixels to decode safely (more than 200, Pillow's guard against decompression bombs); "
        "downscale it first"
    )


def test_a_data_argument_that_is_nothing_usable_says_what_it_is(tmp_path: Path) -> None:
    """A missing path and a file of another kind both said "is neither a folder, a .csv file nor a built-in dataset"."""
    from cnnlab.data.sources import open_image_source

    with pytest.raises(CnnlabError, match=r"--data '.*photoz' does not exist; give a folder of images, a \.csv"):
        open_image_source(str(tmp_path / "photoz"))
    (tmp_path / "labels.txt").write_text("a.png,cat\n")
    with pytest.raises(CnnlabError, match=r"labels\.txt' is a file other than a \.csv; give a folder .*elpv:binary"):
        open_image_source(str(tmp_path / "labels.txt"))


def test_image_files_walks_linked_sub_folders_once(tmp_path: Path) -> None:
    """A class's sub-folder that is a link (photos kept elsewhere, linked in) was skipped without a word: its images
    were neither trained on nor predicted."""
    _solid(tmp_path / "elsewhere" / "b.png", (0, 0, 0))
    _solid(tmp_path / "cat" / "a.png", (0, 0, 0))
    (tmp_path / "cat" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "cat", target_is_directory=True)  # back up: not again
    found = [Path(p).relative_to(tmp_path).as_posix() for p in image_files(tmp_path / "cat")]
    assert found == ["cat/a.png", "cat/linked/b.png"]


def test_a_macos_zips_metadata_folder_is_not_a_class(tmp_path: Path) -> None:
    """A folder unzipped from a Mac's zip holds __MACOSX/<class>/._<image> beside the classes: it was taken for a
    third class, refused as "__MACOSX has 0 usable images" (with --min-per-class 0, trained as an empty class)."""
    root = _make_folder(tmp_path / "photos", per_class=2)
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")
    assert scan_folder(root, min_per_class=2).classes == ["cat", "dog"]
    assert image_files(root) == image_files(root / "cat") + image_files(root / "dog")
    # a drive's system folders at its root, and Python's cache, were classes of no images too
    for name in ("$RECYCLE.BIN", "System Volume Information", "lost+found", "__pycache__"):
        (root / name).mkdir()
    assert scan_folder(root, min_per_class=2).classes == ["cat", "dog"]


def test_image_files_takes_jpegs_saved_as_jfif_and_avif_photos(tmp_path: Path) -> None:
    """Windows saves a JPEG from the web as .jfif: such files were left out of a class folder without a word."""
    _solid(tmp_path / "a.png", (0, 0, 0))
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jfif", format="JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / "c.JPE", format="JPEG")
    found = [Path(p).name for p in image_files(tmp_path)]
    assert found == ["a.png", "b.jfif", "c.JPE"]
    assert all(check_image(tmp_path / name) is None for name in found)


def test_a_nas_thumbnail_folder_is_not_walked(tmp_path: Path) -> None:
    """A Synology share keeps @eaDir/<photo>/SYNOPHOTO_THUMB_*.jpg beside every photo: the thumbnails were taken for
    more photos of the class, and a test thumbnail of a training photo was scored as unseen."""
    _solid(tmp_path / "cat" / "a.png", (0, 0, 0))
    _solid(tmp_path / "cat" / "@eaDir" / "a.png" / "SYNOPHOTO_THUMB_S.jpg", (1, 1, 1))
    assert [Path(p).name for p in image_files(tmp_path / "cat")] == ["a.png"]


def test_photos_in_formats_cnnlab_does_not_read_are_named_not_left_out_unsaid(tmp_path: Path) -> None:
    """An iPhone's .HEIC photos (and cameras' raw files) in a class folder were left out without a word: only a class
    left with none said anything."""
    from cnnlab.data.folder import UnreadFormatWarning

    _solid(tmp_path / "a.png", (0, 0, 0))
    for name in ("IMG_1.HEIC", "IMG_2.heic", "DSC_3.NEF", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.warns(UnreadFormatWarning) as caught:
        assert [Path(p).name for p in image_files(tmp_path)] == ["a.png"]
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{tmp_path}: 2 .heic, 1 .nef file(s) left out: cnnlab reads .jpg, ")
    assert message.endswith("convert them to JPEG or PNG to use them")


def test_a_copy_of_an_image_filed_under_two_labels_does_not_say_the_first_is_kept(tmp_path: Path) -> None:
    """cat/0.png, its copy cat/zz.png and a copy dog/zz.png: cat/zz.png's reason said "the first is kept", but
    cat/0.png was then left out as filed under two labels."""
    import shutil

    root = _make_folder(tmp_path / "photos", per_class=4)
    shutil.copy(root / "cat" / "0.png", root / "cat" / "zz.png")
    shutil.copy(root / "cat" / "0.png", root / "dog" / "zz.png")
    images = scan_folder(root, min_per_class=3)
    reasons = {str(Path(s.path).relative_to(root)): s.reason for s in images.skipped}
    assert sorted(reasons) == ["cat/0.png", "cat/zz.png", "dog/zz.png"]
    assert reasons["cat/zz.png"] == (
        f"the same image as {root / 'cat' / '0.png'}, which is filed under two labels; every copy is left out"
    )
    assert describe_skipped(list(reasons.values())) == "3 files skipped: 3 filed under two labels"


def test_an_image_too_thin_for_a_classifiers_resize_is_skipped_and_named(tmp_path: Path) -> None:
    """A 1 x 100,000 px strip passed every check; resizing its shorter side to a classifier's 256 px made it
    256 x 25.6 M px (20 GB) before the centre crop. Generated here 1 x 2,000 px: the same aspect, a tiny file."""
    assert thin_image_reason(100_000, 1) == (
        "too thin for a classifier: 100000x1 px, an aspect ratio of 100,000:1, over the 50:1 a classifier takes (it "
        "resizes the shorter side to its input size); crop the image to the part to classify"
    )
    assert thin_image_reason(50, 1) is None and thin_image_reason(4000, 80) is None  # a panorama is fine
    assert thin_image_reason(1, 51) is not None  # tall as well as wide
    root = _make_folder(tmp_path / "photos", per_class=3)
    _solid(root / "dog" / "strip.png", (30, 30, 200), size=(2000, 1))
    images = scan_folder(root, min_per_class=3)
    assert images.class_counts() == {"cat": 3, "dog": 3}
    assert [(Path(s.path).name, s.reason) for s in images.skipped] == [("strip.png", thin_image_reason(2000, 1))]
    assert describe_skipped([s.reason for s in images.skipped]) == "1 file skipped: 1 too thin"
    assert check_image(root / "dog" / "strip.png") is None  # whole-image uses (segmentation) take it as it is


def test_images_beside_the_class_folders_are_named_not_left_out_unsaid(tmp_path: Path) -> None:
    """Images saved in the data folder itself, next to its class sub-folders, were in no class and were left out of
    training without a word."""
    from cnnlab.data.folder import LooseImagesWarning

    root = _make_folder(tmp_path / "photos", per_class=2)
    for name in ("z.png", "a.JPG", "m.webp", "n.bmp"):
        _solid(root / name, (9, 9, 9))
    (root / ".DS_Store").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    with pytest.warns(LooseImagesWarning) as caught:
        assert len(scan_folder(root, min_per_class=2)) == 4
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{root}: 4 image file(s) directly in it, not in a class sub-folder (a.JPG, m.webp, ")
    assert "n.bmp and 1 more), are left out" in message


def test_class_names_alike_but_for_case_or_unicode_form_are_named(tmp_path: Path) -> None:
    """Cat/ and cat/ (and café/ as a Mac writes it beside café/ as typed, which print alike) were trained as separate
    classes without a word: the model was asked to tell a class from itself."""
    from cnnlab.data.folder import SimilarClassesWarning

    for index, name in enumerate(("Cat", "cat", "caf\u00e9", "cafe\u0301", "dog", "dog ")):
        for i in range(2):
            _solid(tmp_path / name / f"{i}.png", (40 * index, i, 0))
    with pytest.warns(SimilarClassesWarning) as caught:
        assert len(scan_folder(tmp_path, min_per_class=2).classes) == 6
    (message,) = [str(w.message) for w in caught]
    alike = (
        "class names 'Cat' and 'cat'; 'cafe\u0301' (decomposed) and 'caf\u00e9'; 'dog' and 'dog ' differ only in "
        "letter case, spaces at the ends or Unicode form"
    )
    assert alike in message


def test_two_class_folders_that_are_one_folder_are_refused_naming_the_link(tmp_path: Path) -> None:
    """azure/ linked to blue/ filed every image under two labels: all were left out, and the run was refused as
    "azure has 0, blue has 0 usable images (12 files skipped: 12 filed under two labels)", the link unnamed."""
    root = _make_folder(tmp_path / "photos", per_class=2)
    (root / "kitten").symlink_to(root / "cat", target_is_directory=True)
    with pytest.raises(CnnlabError, match=r"the class folders cat and kitten are one folder \(kitten is a link to "):
        scan_folder(root, min_per_class=2)


def test_a_class_folder_linked_to_nothing_is_refused_naming_the_link(tmp_path: Path) -> None:
    """A class folder that is a link to a folder gone (an unmounted drive) was left out without a word: the run
    trained and tested the other classes."""
    root = _make_folder(tmp_path / "photos", per_class=2)
    (root / "fox").symlink_to(tmp_path / "usb" / "fox")
    (root / "gone.png").symlink_to(tmp_path / "usb" / "gone.png")  # a loose image's link: not a class
    with pytest.raises(CnnlabError, match=rf"photos: fox is a link to nothing \({re.escape(str(root / 'fox'))} -> "):
        scan_folder(root, min_per_class=1)
    (tmp_path / "usb" / "fox").mkdir(parents=True)
    _solid(tmp_path / "usb" / "fox" / "0.png", (0, 200, 0))
    assert scan_folder(root, min_per_class=1).class_counts() == {"cat": 2, "dog": 2, "fox": 1}


@pytest.mark.parametrize("target", ["root", "other class"])
def test_a_link_inside_a_class_folder_to_the_data_or_another_class_is_named(tmp_path: Path, target: str) -> None:
    """A link in dog/ back up to the data folder (or to cat/) filed cat's images under both labels: refused as "cat
    has 0 usable images (10 filed under two labels)", the link unnamed."""
    root = _make_folder(tmp_path / "photos")
    (root / "dog" / "up").symlink_to(root if target == "root" else root / "cat", target_is_directory=True)
    with pytest.raises(CnnlabError, match=r"dog/up is a link to .*images of cat under it .* two labels"):
        scan_folder(root, min_per_class=1)


def test_a_dot_folder_of_images_is_noted_but_a_tools_folder_is_not(tmp_path: Path) -> None:
    """A class folder named `.bird` (a slip) was dropped without a word; Jupyter's checkpoints or a desktop's
    thumbnails, which hold images too, are no class and say nothing."""
    root = _make_folder(tmp_path / "photos", per_class=2)
    for name in (".ipynb_checkpoints", ".git", ".thumbnails", ".Trash-1000"):
        _solid(root / name / "0.png", (1, 2, 3))
    (root / ".empty").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_folder(root, min_per_class=2).classes == ["cat", "dog"]
    _solid(root / ".bird" / "0.png", (4, 5, 6))
    with pytest.warns(HiddenClassWarning, match=r"photos: \.bird holds images but is not a class.*without the dot"):
        assert scan_folder(root, min_per_class=2).classes == ["cat", "dog"]


@pytest.mark.parametrize("link", ["cat/up", "cat", "cat/loose.png"])
def test_a_link_from_a_class_folder_to_the_loose_images_of_the_data_folder_is_named(tmp_path: Path, link: str) -> None:
    """Scoring a model on one class folder (`known_classes`, as `cnnlab evaluate --data` does) with a link in it back
    to the data folder (or the class folder a link to it) filed the images directly in the data folder under that
    class, and scored them, while a warning said they were left out."""
    root = tmp_path / "photos"
    _solid(root / "loose.png", (9, 9, 9))
    if link != "cat":
        _solid(root / "cat" / "0.png", (200, 30, 30))
    (root / link).symlink_to(root / "loose.png" if link.endswith(".png") else root, target_is_directory=True)
    expected = r"loose\.png, an image directly in .*photos and in no class folder, would be filed under cat"
    with pytest.warns(LooseImagesWarning), pytest.raises(CnnlabError, match=expected):
        scan_folder(root, min_per_class=0, known_classes=["cat", "dog"])


def test_a_class_folder_whose_name_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    """A class folder named in Latin-1 (b'caf\\xe9') was trained, and the run crashed after training, its test report
    unwritten: matplotlib refused the class's name on the confusion matrix ("set_text(): incompatible function
    arguments")."""
    root = _make_folder(tmp_path / "photos", per_class=3)
    os.rename(root / "cat", os.fsencode(root) + b"/caf\xe9")
    expected = r"photos: the class folder name b'caf\\xe9' is not UTF-8 text.*rename it \('café' if it was written in"
    with pytest.raises(CnnlabError, match=expected):
        scan_folder(root, min_per_class=1)
    with pytest.raises(CnnlabError, match=expected):  # scoring a model on the folder, as `cnnlab evaluate` does
        scan_folder(root, min_per_class=0, known_classes=["cat", "dog"])


def test_a_folder_that_cannot_be_listed_is_named_not_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sub-folder of a class without read permission (chmod 000; simulated, as the tests may run as root) had its
    images left out without a word (os.walk skips what it cannot list), a class folder so "holds no image files", and
    a data folder so stopped the scan (and `train transfer`, which looks for a split's parts first) with a
    PermissionError traceback."""
    from cnnlab.data.sources import open_image_source

    root = _make_folder(tmp_path / "photos", per_class=2)
    _solid(root / "dog" / "more" / "9.png", (1, 1, 1))
    listing, unreadable = os.scandir, {"more"}

    def refused(path: str | os.PathLike[str] = ".") -> object:
        if Path(path).name in unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(CnnlabError, match=r"cannot read the folder \S+dog/more \(Permission denied\), so its images"):
        scan_folder(root, min_per_class=1)
    unreadable.add("photos")
    unlisted = r"^cannot read the folder \S+photos \(Permission denied\); make it readable$"
    with pytest.raises(CnnlabError, match=unlisted):
        scan_folder(root, min_per_class=1)
    with pytest.raises(CnnlabError, match=unlisted):  # as `cnnlab train transfer --data` reads it
        open_image_source(str(root), min_per_class=1)


def test_a_class_folder_named_in_another_case_is_refused_saying_which_rename_fixes_it(tmp_path: Path) -> None:
    for name in ("CAT", "dog", "fox"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / name / "a.png")
    with pytest.raises(CnnlabError) as refused:
        scan_folder(tmp_path, min_per_class=0, known_classes=["cat", "dog"])
    message = str(refused.value)
    assert "CAT, fox are not classes of the model (its classes: cat, dog); rename CAT to cat" in message
    assert "name each other sub-folder after the class of its images" in message and "\n" not in message
    (tmp_path / "fox").rename(tmp_path / "Dog")
    with pytest.raises(CnnlabError, match=r"rename CAT to cat, Dog to dog \(a class's name matches in its case too\)$"):
        scan_folder(tmp_path, min_per_class=0, known_classes=["cat", "dog"])
