"""Multi-digit MNIST segmentation set (deterministic, disjoint sources, mask values) and PNG folder datasets."""

from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.paths import resolve_data_dir
from cnnlab.data.segmentation import (
    IGNORE_INDEX,
    INK_THRESHOLD,
    TEST_ID_OFFSET,
    SegmentationFolder,
    make_canvases,
    make_digit_segmentation,
    save_segmentation_folder,
)
from cnnlab.errors import CnnlabError
from read_counts import read_bytes_noting


def _mnist_available() -> bool:
    root = resolve_data_dir(None)
    return any((root / sub / "train-images-idx3-ubyte").is_file() for sub in ("MNIST/raw", "mnist", ""))


needs_mnist = pytest.mark.skipif(not _mnist_available(), reason="MNIST IDX files not found ($CNNLAB_DATA)")


def _pool(count: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic 'digits': a filled 10x10 square of ink in a 28x28 frame, labels 0..9."""
    digits = torch.zeros(count, 1, 28, 28, dtype=torch.uint8)
    digits[:, :, 9:19, 9:19] = 200
    digits[:, :, 8, 9:19] = INK_THRESHOLD - 1  # faint ink: in the image, not in the mask
    return digits, torch.arange(count) % 10, torch.arange(count) + 1000


def test_mask_is_background_or_digit_plus_one_where_ink_is():
    digits, labels, ids = _pool()
    canvases = make_canvases(digits, labels, ids, 30, size=(64, 96), seed=1)
    assert canvases.images.shape == (30, 1, 64, 96) and canvases.masks.shape == (30, 64, 96)
    assert canvases.masks.dtype == torch.uint8 and int(canvases.masks.max()) <= 10
    ink = canvases.images[:, 0] >= INK_THRESHOLD
    assert torch.equal(canvases.masks > 0, ink)  # every ink pixel labelled, nothing else
    for canvas in range(30):
        used = [int(i) - 1000 for i in canvas_ids(canvases, canvas)]
        assert set(canvases.masks[canvas].unique().tolist()) <= {0} | {int(labels[u]) + 1 for u in used}
        assert 1 <= len(used) <= 5


def canvas_ids(canvases, index: int) -> list[int]:
    return [int(i) for i in canvases.source_ids[index] if i >= 0]


def test_generation_is_deterministic_and_seed_dependent():
    digits, labels, ids = _pool()
    first = make_canvases(digits, labels, ids, 10, size=64, seed=5)
    again = make_canvases(digits, labels, ids, 10, size=64, seed=5)
    other = make_canvases(digits, labels, ids, 10, size=64, seed=6)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert torch.equal(first.source_ids, again.source_ids)
    assert not torch.equal(first.images, other.images)


def test_rejects_canvases_smaller_than_a_digit():
    with pytest.raises(CnnlabError, match="smaller than a 28x28 digit"):
        make_canvases(*_pool(), 1, size=20)


@needs_mnist
def test_splits_use_disjoint_mnist_digits_and_test_only_the_test_file():
    data = make_digit_segmentation(sizes=(300, 100, 100), canvas_size=64)
    sources = {name: set(getattr(data, name).source_ids.flatten().tolist()) - {-1} for name in ("train", "val", "test")}
    assert sources["train"].isdisjoint(sources["val"])
    assert sources["train"].isdisjoint(sources["test"]) and sources["val"].isdisjoint(sources["test"])
    assert min(sources["test"]) >= TEST_ID_OFFSET and max(sources["train"] | sources["val"]) < TEST_ID_OFFSET
    pool_digits, pool_labels, pool_ids = data.train_digits  # what encoder pretraining may use
    pool = set(pool_ids.tolist())
    assert len(pool) == len(pool_digits) == len(pool_labels) == 55_000 and sources["train"] <= pool
    assert pool.isdisjoint(sources["val"]) and pool.isdisjoint(sources["test"])
    again = make_digit_segmentation(sizes=(300, 100, 100), canvas_size=64)
    assert torch.equal(data.train.images, again.train.images) and torch.equal(data.test.masks, again.test.masks)
    labels_seen = set(data.train.masks.unique().tolist())
    assert labels_seen == set(range(11))


def test_a_small_mnist_still_gives_disjoint_pools_and_one_too_small_is_named(tmp_path):
    """An MNIST of fewer than 5,000 training digits (a subset for tests) failed with numpy's "high <= 0": the fixed
    5,000 validation digits left none for the training pool."""
    from test_mnist_idx import write_fake_mnist  # noqa: PLC0415 - sibling test module

    data = make_digit_segmentation(write_fake_mnist(tmp_path / "small", train=120, test=30), sizes=(6, 4, 4))
    sources = {name: set(getattr(data, name).source_ids.flatten().tolist()) - {-1} for name in ("train", "val", "test")}
    assert len(data.train_digits[2]) == 110 and sources["train"] <= set(data.train_digits[2].tolist())
    assert sources["val"] and sources["val"].isdisjoint(data.train_digits[2].tolist())  # a twelfth held out: 10
    assert min(sources["test"]) >= TEST_ID_OFFSET
    with pytest.raises(CnnlabError, match=r"holds 1 MNIST training and 30 test digits; the canvases need at least 2"):
        make_digit_segmentation(write_fake_mnist(tmp_path / "one", train=1, test=30), sizes=(1, 1, 1))


def test_the_test_canvases_are_made_again_alone_whatever_the_other_splits_sizes(tmp_path):
    """`cnnlab evaluate` of a canvas run makes its test canvases again from the MNIST test file alone: the same pixels
    and masks as the run's, whatever its train and val sizes, and another MNIST gives another digest."""
    from test_mnist_idx import write_fake_mnist  # noqa: PLC0415 - sibling test module

    from cnnlab.data.segmentation import canvases_digest, make_test_canvases

    mnist = write_fake_mnist(tmp_path / "mnist", train=60, test=30)
    made = make_digit_segmentation(mnist, sizes=(5, 3, 4), canvas_size=40).test
    again = make_test_canvases(mnist, 4, canvas_size=40)
    assert torch.equal(again.images, made.images) and torch.equal(again.masks, made.masks)
    assert torch.equal(
        again.source_ids, make_digit_segmentation(mnist, sizes=(2, 1, 4), canvas_size=40).test.source_ids
    )
    assert canvases_digest(again) == canvases_digest(made)
    other = make_test_canvases(write_fake_mnist(tmp_path / "other", train=60, test=30, seed=1), 4, canvas_size=40)
    assert canvases_digest(other) != canvases_digest(made)


def test_folder_round_trip_with_colour_map(tmp_path):
    canvases = make_canvases(*_pool(), 4, size=(40, 50), seed=0)
    save_segmentation_folder(canvases.images, canvases.masks, tmp_path)
    classes = json.loads((tmp_path / "classes.json").read_text())
    assert classes[0]["name"] == "background" and classes[0]["color"] == [0, 0, 0]
    dataset = SegmentationFolder(tmp_path, grayscale=True)
    assert len(dataset) == 4
    image, mask = dataset[2]
    assert image.shape == (1, 40, 50) and mask.dtype == torch.int64
    assert torch.equal(mask, canvases.masks[2].long())
    assert torch.allclose(image[0] * 255, canvases.images[2, 0].float(), atol=0.5)


def test_folder_with_index_masks_and_without_colour_map(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((8, 9, 3), 100, dtype=np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.arange(72, dtype=np.uint8).reshape(8, 9) % 3).save(tmp_path / "masks" / "a.png")
    image, mask = SegmentationFolder(tmp_path)[0]
    assert image.shape == (3, 8, 9) and mask.tolist()[0][:4] == [0, 1, 2, 0]


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(CnnlabError, match="images/ and masks/"):
        SegmentationFolder(tmp_path)
    canvases = make_canvases(*_pool(), 1, size=32, seed=0)
    save_segmentation_folder(canvases.images, canvases.masks, tmp_path)
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(tmp_path / "masks" / "00000.png")
    with pytest.raises(CnnlabError, match=r"colour \(7, 7, 7\)"):
        SegmentationFolder(tmp_path)[0]
    (tmp_path / "masks" / "00000.png").unlink()
    with pytest.raises(CnnlabError, match="has no mask"):
        SegmentationFolder(tmp_path)


def _one_pair(root, mask: Image.Image, classes: list[dict] | None = None) -> None:
    (root / "images").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((*mask.size[::-1], 3), dtype=np.uint8)).save(root / "images" / "a.png")
    mask.save(root / "masks" / "a.png")
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))


def test_index_masks_are_named_by_a_classes_json_without_colours(tmp_path):
    """Index masks with a classes.json (for the names) were refused: 'has colour (1, 1, 1), which classes.json does
    not list'."""
    indices = np.array([[0, 1, 255], [1, 1, 0]], dtype=np.uint8)
    _one_pair(tmp_path, Image.fromarray(indices), [{"name": "sky"}, {"name": "roof"}])
    folder = SegmentationFolder(tmp_path)
    assert folder.class_names == ["sky", "roof"] and folder.colours is None
    assert folder.read(0)[1].tolist() == indices.tolist()
    Image.fromarray(indices * 2).save(tmp_path / "masks" / "a.png")
    with pytest.raises(CnnlabError, match=r"class index 2 but .*classes.json lists 2 classes \(0 to 1; 255 means"):
        folder.read(0)
    (tmp_path / "classes.json").write_text(json.dumps([{"name": "sky", "color": [0, 0, 0]}, {"name": "roof"}]))
    with pytest.raises(CnnlabError, match="a colour to some classes but not to 'roof'"):
        SegmentationFolder(tmp_path)


def test_a_classes_json_saved_with_a_byte_order_mark_is_read_and_one_not_utf8_is_named_so(tmp_path):
    """A classes.json saved by Windows Notepad (UTF-8 with a byte-order mark) was refused as "must be a list of
    {'name': str, 'color': [r, g, b]} ... (Unexpected UTF-8 BOM ...)"; one saved in Latin-1 was told the same."""
    indices = np.array([[0, 1, 255], [1, 1, 0]], dtype=np.uint8)
    _one_pair(tmp_path, Image.fromarray(indices))
    text = json.dumps([{"name": "ciel"}, {"name": "café"}], ensure_ascii=False)
    (tmp_path / "classes.json").write_text(text, encoding="utf-8-sig")
    assert SegmentationFolder(tmp_path).class_names == ["ciel", "café"]
    (tmp_path / "classes.json").write_text(text, encoding="latin-1")
    with pytest.raises(CnnlabError, match=r"classes.json is not UTF-8 text \(byte 32\); save it as UTF-8"):
        SegmentationFolder(tmp_path)


def test_a_masks_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
    """masks/ without read permission (chmod 000; simulated, as the tests may run as root) stopped the folder's scan
    with a PermissionError traceback."""
    _one_pair(tmp_path, Image.fromarray(np.zeros((2, 3), dtype=np.uint8)))
    listing = os.scandir

    def refused(path="."):
        if Path(path).name == "masks":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(CnnlabError, match=r"^cannot read the folder \S+masks \(Permission denied\); make it readable$"):
        SegmentationFolder(tmp_path)


def test_a_palette_masks_index_255_is_unlabelled_with_a_colour_classes_json(tmp_path):
    """Pascal VOC's palette masks, with classes.json listing their colours, were all skipped: index 255 (unlabelled)
    is the palette's (224, 224, 192), "a colour classes.json does not list". Another unlisted colour is still one."""
    indices = np.array([[0, 1, 255], [1, 255, 0]], dtype=np.uint8)
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
    classes = [{"name": "background", "color": [0, 0, 0]}, {"name": "plane", "color": [128, 0, 0]}]
    _one_pair(tmp_path, mask, classes)
    assert SegmentationFolder(tmp_path).read(0)[1].tolist() == indices.tolist()
    mask.putpixel((0, 0), 3)  # index 3: (9, 9, 9), listed nowhere
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 0, 0, 9, 9, 9] + [0, 0, 0] * 251 + [224, 224, 192])
    mask.save(tmp_path / "masks" / "a.png")
    with pytest.raises(CnnlabError, match=re.escape("has colour (9, 9, 9), which")):
        SegmentationFolder(tmp_path).read(0)


def test_palette_masks_each_in_its_own_palette_order_are_refused_not_read_with_classes_swapped(tmp_path):
    """Colour or grey index masks re-saved with a palette built from each one's pixels (Pillow's quantize, pngquant)
    were read by their palette indices, which name other colours from mask to mask: classes swapped without a word.
    Palettes that paint one colour as two indices refuse the folder (one line naming two masks); a grey palette that
    paints an index in the grey level of another of its indices skips its mask; palettes that paint one index in two
    colours (grey 1 and a binary mask's white) read as before, and with classes.json colours masks are read by
    colour."""
    colours = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0)], dtype=np.uint8)
    labels = [np.zeros((12, 12), dtype=np.uint8) for _ in range(3)]
    labels[0][:3], labels[0][6:] = 1, 2
    labels[1][:2] = 1
    labels[2][:4] = 2

    def folder(name: str, masks: list[Image.Image]) -> Path:
        for kind in ("images", "masks"):
            (tmp_path / name / kind).mkdir(parents=True)
        for i, mask in enumerate(masks):
            Image.fromarray(np.full((12, 12), i, dtype=np.uint8)).save(tmp_path / name / "images" / f"{i}.png")
            mask.save(tmp_path / name / "masks" / f"{i}.png")
        return tmp_path / name

    quantized = folder("colours", [Image.fromarray(colours[m]).quantize() for m in labels])
    with pytest.raises(
        CnnlabError,
        match=r"^\S+0.png paints \(255, 0, 0\) as class index 1 but \S+1.png as 0: "
        r"palette masks are read by their indices .*list each class's colour in \S+classes.json",
    ):
        SegmentationFolder(quantized, skip_bad=True).read_all()
    classes = [{"name": name, "color": colour.tolist()} for name, colour in zip("bfg", colours, strict=True)]
    (quantized / "classes.json").write_text(json.dumps(classes))
    pairs = SegmentationFolder(quantized, skip_bad=True).read_all()
    assert [pairs[i][1].tolist() for i in range(3)] == [m.tolist() for m in labels]
    with pytest.raises(CnnlabError, match=r"0.png paints \(1, 1, 1\) as class index 1 but \S+1.png as 0"):
        SegmentationFolder(folder("greys", [Image.fromarray(m).quantize() for m in labels]), skip_bad=True).read_all()
    # one such mask among single-channel ones: indices 0, 1 painted grey 2, 0 (its classes 2 and 0, read as 0 and 1)
    root = folder("one", [Image.fromarray(labels[0]), Image.fromarray(labels[2]).quantize()])
    found = SegmentationFolder(root, skip_bad=True)
    assert sorted(found.read_all()) == [0]
    assert [s.reason.split("(")[1].split(")")[0] for s in found.skipped] == ["0 grey 2, 1 grey 0"]
    binary = []
    for mask in labels:
        binary.append(Image.fromarray((mask > 0).astype(np.uint8), mode="P"))
        binary[-1].putpalette([0, 0, 0, 255, 255, 255])
    agreeing = [Image.fromarray(m).convert("P") for m in labels] + binary
    pairs = SegmentationFolder(folder("agree", agreeing), skip_bad=True).read_all()
    assert [pairs[i][1].tolist() for i in range(6)] == [m.tolist() for m in labels] + [(m > 0).tolist() for m in labels]


def test_palette_masks_in_their_own_orders_scored_by_a_run_are_told_to_name_the_runs_classes(tmp_path):
    """`cnnlab evaluate` of a run trained on class-index masks, on palette masks each in its own palette order, said
    to list the colours in classes.json as [{"name": "background", ...}]; that classes.json was then refused for
    naming classes that are not the run's ("class 0", "class 1", ...)."""
    from cnnlab.data.segmentation import PaletteColours

    palettes = PaletteColours()
    labels = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    palettes.add(tmp_path / "a.png", [0, 0, 0, 255, 0, 0], labels)
    palettes.add(tmp_path / "b.png", [255, 0, 0, 0, 0, 0], labels)
    with pytest.raises(CnnlabError, match=r"colour in \S+classes.json \(\[\{\"name\": \"background\""):
        palettes.check(tmp_path / "classes.json")
    named = r"classes.json, under the run's class names \(class 0, class 1\) \(\[\{\"name\": \"class 0\", \"color\""
    with pytest.raises(CnnlabError, match=named):
        palettes.check(tmp_path / "classes.json", ["class 0", "class 1"])


@pytest.mark.parametrize(
    ("hidden", "message"),
    [
        ((0, 0, 0), None),  # transparent background, black beneath (GIMP): the background, as it was
        (
            (255, 0, 0),
            r"has transparent pixels \(alpha 0\) whose hidden colours read as the classes 'x', "
            "'a', which do not show; flatten the mask",
        ),
        ((255, 255, 255), r"hides colour \(255, 255, 255\), which \S+ does not list, under transparent .*flatten"),
    ],
)
@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_colour_masks_are_read_by_the_colours_they_show_not_those_hidden_under_transparent_pixels(
    tmp_path, hidden, message, mode
):
    """An RGBA colour mask's transparent pixels (alpha 0) were read by the colour beneath them: a region erased in a
    painting program, the colour left beneath, trained as the class the user had erased; a transparent background
    with white beneath was refused as "has colour (255, 255, 255)", a colour no pixel shows. Transparent pixels that
    hide one class
    read as it; more than one, or an unlisted colour there, are refused in one line saying to flatten the mask.
    A palette mask's transparent indices (its tRNS chunk) were read by their hidden colours, as RGBA's were, and Pillow
    warned "Palette images with Transparency expressed in bytes should be converted to RGBA images" for each."""
    colours = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0)], dtype=np.uint8)
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:2], labels[6:] = 1, 2
    rgb = colours[labels]
    alpha = np.where(labels == 0, 0, 255).astype(np.uint8)
    rgb[2:4] = hidden  # under the transparent background: an erased stroke of the first class, or white
    classes = [{"name": name, "color": colour.tolist()} for name, colour in zip("xab", colours, strict=True)]
    mask = Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")
    if mode == "P":  # index 0 the transparent background, 3 the transparent stroke: tRNS alpha 0 for both
        indices = labels.copy()
        indices[2:4] = 3
        mask = Image.fromarray(indices, mode="P")
        mask.putpalette([*colours.ravel().tolist(), *hidden])
        mask.info["transparency"] = bytes([0, 255, 255, 0])
    _one_pair(tmp_path, mask, classes)
    if message is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert SegmentationFolder(tmp_path).read(0)[1].tolist() == labels.tolist()
        return
    with pytest.raises(CnnlabError, match=f"^{re.escape(str(tmp_path))}/masks/a.png {message}"):
        SegmentationFolder(tmp_path).read(0)


def _grey_png(path: Path, values: np.ndarray, bit_depth: int) -> None:
    """`values` written as a grey PNG of `bit_depth` bits a sample (Pillow writes grey at 1, 8 or 16 bits only)."""
    per_byte = 8 // bit_depth
    rows = b""
    for row in values:
        padded = np.concatenate([row, np.zeros(-len(row) % per_byte, dtype=row.dtype)]).reshape(-1, per_byte)
        packed = [sum(int(v) << (bit_depth * (per_byte - 1 - i)) for i, v in enumerate(group)) for group in padded]
        rows += b"\0" + bytes(packed)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], bit_depth, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.mark.parametrize("bit_depth", [2, 4, 8])
def test_a_low_bit_depth_grey_mask_is_read_as_its_stored_values_as_a_bilevel_one_is(tmp_path, bit_depth):
    """A 4-bit grey PNG of class indices 0, 1, 2 was read as classes 0, 17 and 34 (Pillow shows a 4-bit sample as a
    grey level, 17 a step; 85 for 2 bits): a head of 35 classes trained without a word. 2- and 4-bit grey masks are
    read as their stored values, as bilevel ones are; an 8-bit mask of 0, 17 and 34 stays as it is."""
    values = np.zeros((3, 5), dtype=np.uint8)
    values[0, 1:], values[2, :2] = 1, 2
    if bit_depth == 8:
        values *= 17
    _one_pair(tmp_path, Image.fromarray(values))
    _grey_png(tmp_path / "masks" / "a.png", values, bit_depth)
    assert Image.open(tmp_path / "masks" / "a.png").mode == "L"
    assert SegmentationFolder(tmp_path).read(0)[1].tolist() == values.tolist()


def test_a_jpeg_mask_under_a_png_name_is_skipped_not_read_with_classes_its_compression_made(tmp_path):
    """Index masks 0-2 saved as JPEG under .png names trained as 4 classes ("class 3" from the edges' artefacts)."""
    indices = np.zeros((16, 16), dtype=np.uint8)
    indices[4:12, 4:12] = 2
    _one_pair(tmp_path, Image.fromarray(indices))
    Image.fromarray(indices).save(tmp_path / "masks" / "a.png", format="JPEG", quality=75)
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    with pytest.raises(CnnlabError, match=re.escape("a.png holds a JPEG image, whose lossy compression")):
        folder.read(0)


def test_index_masks_with_a_colour_classes_json_say_how_to_name_classes(tmp_path):
    indices = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    _one_pair(
        tmp_path, Image.fromarray(indices), [{"name": "bg", "color": [0, 0, 0]}, {"name": "fg", "color": [255, 0, 0]}]
    )
    with pytest.raises(CnnlabError, match=r"single-channel mask \(value 1\) .* for class-index masks list the names"):
        SegmentationFolder(tmp_path).read(0)
    # grey colours listed in classes.json still map a single-channel mask by colour
    (tmp_path / "classes.json").write_text(
        json.dumps([{"name": "bg", "color": [0] * 3}, {"name": "fg", "color": [1] * 3}])
    )
    assert SegmentationFolder(tmp_path).read(0)[1].tolist() == indices.tolist()


def test_bilevel_masks_read_as_class_indices_0_and_1(tmp_path):
    """A mode "1" mask was refused as if it had colours: 'is an 1 mask but classes.json is missing'."""
    bits = np.array([[False, True], [True, False]])
    _one_pair(tmp_path, Image.fromarray(bits))
    assert Image.open(tmp_path / "masks" / "a.png").mode == "1"
    assert SegmentationFolder(tmp_path).read(0)[1].tolist() == bits.astype(np.uint8).tolist()


@pytest.mark.parametrize(
    ("values", "classes", "message"),
    [
        ([0, 255], None, r"every pixel class 0 except 50.0% that are 255 \(unlabelled\), .* save it as 1"),
        ([255, 255], None, r"every pixel of the masks in .* is 255 \(unlabelled\); if 255 marks the foreground"),
        ([0, 0], [{"name": "sky"}, {"name": "roof"}], r"is class 0 \('sky'\), so a model would learn one class"),
    ],
)
def test_masks_with_fewer_than_two_classes_are_refused_with_the_likely_cause(tmp_path, values, classes, message):
    """Binary masks saved as 0/255 trained on background alone and reported mIoU 0.0000, every class 1.0000."""
    _one_pair(tmp_path, Image.fromarray(np.array([values, values], dtype=np.uint8)), classes)
    with pytest.raises(CnnlabError, match=message):
        SegmentationFolder(tmp_path).read_all()
    Image.fromarray(np.array([[0, 1], [255, 0]], dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    assert len(SegmentationFolder(tmp_path).read_all()) == 2  # another mask labels a second class


def test_masks_saved_0_255_among_masks_of_class_indices_are_refused_naming_one_of_each(tmp_path):
    """A folder of 0/1 masks and 0/255 ones trained the 255 objects as unlabelled, without a word."""
    _one_pair(tmp_path, Image.fromarray(np.array([[0, 255], [0, 255]], dtype=np.uint8)))
    for name, mask in (("b", [[0, 1], [0, 1]]), ("c", [[0, 255], [255, 255]])):
        Image.fromarray(np.array(mask, dtype=np.uint8)).save(tmp_path / "masks" / f"{name}.png")
        Image.fromarray(np.full((2, 2, 3), ord(name), dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
    with pytest.raises(CnnlabError) as refused:
        SegmentationFolder(tmp_path).read_all()
    assert str(refused.value) == (
        f"{tmp_path / 'masks' / 'a.png'} holds only 0 and 255 (255 on 50.0% of its pixels), as do c.png, while other "
        "masks (b.png) hold class indices 1 and up and no 255: 255 means unlabelled, so their objects would be left "
        "out of training; if 255 marks the object there, save it as its class index (1 for one object class); if it "
        "marks pixels left unlabelled (a scribble), label the object's pixels in that mask too, or leave the pair out"
    )
    # a folder whose masks use 255 for unlabelled pixels beside classes (scribbles, VOC): a 0/255 mask is a mask
    Image.fromarray(np.array([[0, 1], [255, 1]], dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    assert len(SegmentationFolder(tmp_path).read_all()) == 3


def test_a_scribble_of_255_in_one_of_many_0_1_masks_is_named_with_its_share_and_both_remedies(tmp_path):
    """One mask of 0/1 masks given a 255 scribble (unlabelled pixels) and no object pixel was refused for the whole
    run saying only how to save 255 as an object: the refusal now names every such mask, the share of 255 in the
    first (a thin scribble, not an object), and the remedy for unlabelled pixels, which then passes."""
    square = np.zeros((16, 16), dtype=np.uint8)
    square[4:12, 4:12] = 1
    scribble = np.zeros((16, 16), dtype=np.uint8)
    scribble[8, 2:14] = 255  # a 1 px stroke: 12 of 256 pixels
    _one_pair(tmp_path, Image.fromarray(square))
    for name, mask in (("b", square), ("c", scribble), ("d", square), ("e", scribble)):
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
        Image.fromarray(np.full((16, 16, 3), ord(name), dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
    with pytest.raises(CnnlabError) as refused:
        SegmentationFolder(tmp_path).read_all()
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'masks' / 'c.png'} holds only 0 and 255 (255 on 4.7% of its pixels), as "
                              "do e.png, while other masks (a.png) hold class indices 1 and up and no 255")  # fmt: skip
    assert message.endswith("if it marks pixels left unlabelled (a scribble), label the object's pixels in that mask "
                            "too, or leave the pair out")  # fmt: skip
    scribble[2:6, 2:6] = 1  # the remedy: the object labelled beside the scribble
    Image.fromarray(scribble).save(tmp_path / "masks" / "c.png")
    assert len(SegmentationFolder(tmp_path).read_all()) == 5


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (
            [("bg", [0, 0, 0]), ("fg", [255, 0, 0]), ("fg2", [255, 0, 0])],
            r"'fg' and 'fg2' the same colour \(255, 0, 0\)",
        ),
        ([("bg", [0, 0, 0]), ("fg", [255, 0, 0]), ("fg", [0, 255, 0])], "the class name 'fg' twice"),
    ],
)
def test_classes_json_with_a_repeated_colour_or_name_is_refused(tmp_path, classes, message):
    """A repeated colour was accepted and every pixel of it became the last class listing it (fg2, never fg)."""
    _one_pair(
        tmp_path, Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)), [{"name": n, "color": c} for n, c in classes]
    )
    with pytest.raises(CnnlabError, match=message):
        SegmentationFolder(tmp_path)


@pytest.mark.parametrize("crop", [16, 48])  # smaller than the image (crops) and larger (padded)
def test_joint_transform_keeps_image_and_mask_aligned(crop):
    from torchvision.transforms import v2

    from cnnlab.data.segmentation import IGNORE_INDEX, SegmentationSamples, joint_train_transform

    generator = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 6, (37, 29), generator=generator, dtype=torch.uint8)
    mask[:3] = IGNORE_INDEX
    # The image is drawn from the mask: any misalignment, or a mask resampled other than by nearest neighbours,
    # breaks image == 40 * mask (7 where the mask is unlabelled; padding is 0 in the image, 255 in the mask).
    image = torch.where(mask == IGNORE_INDEX, 7, mask * 40).expand(3, -1, -1).clone()
    transform = v2.Compose([joint_train_transform(crop, hflip=True), v2.RandomAffine(degrees=30, scale=(0.7, 1.3))])
    samples = SegmentationSamples([(image, mask)], transform)
    for _ in range(20):
        out_image, out_mask = samples[0]
        assert out_image.shape == (3, crop, crop) and out_mask.shape == (crop, crop)
        labelled = out_mask != IGNORE_INDEX
        assert torch.equal(out_image[0][labelled], out_mask[labelled] * 40)
        assert set(out_image[0][~labelled].unique().tolist()) <= {0, 7}


def test_pad_collate_pads_masks_with_the_ignore_index():
    from cnnlab.data.segmentation import IGNORE_INDEX, pad_collate

    batch = [
        (torch.ones(3, 5, 7, dtype=torch.uint8), torch.ones(5, 7, dtype=torch.uint8)),
        (torch.ones(3, 9, 4, dtype=torch.uint8), torch.zeros(9, 4, dtype=torch.uint8)),
    ]
    images, masks = pad_collate(batch)
    assert images.shape == (2, 3, 9, 7) and masks.shape == (2, 9, 7)
    assert int(images[0, :, 5:].sum()) == 0 and bool((masks[0, 5:] == IGNORE_INDEX).all())
    assert bool((masks[1, :, 4:] == IGNORE_INDEX).all()) and int((masks[1, :, :4]).sum()) == 0


def test_a_broken_mask_is_skipped_with_its_reason(tmp_path):
    """A PNG mask with a damaged chunk raises SyntaxError in Pillow, not OSError: `train segment` ended in a
    traceback ("SyntaxError: broken PNG file") instead of listing the pair in skipped.json."""
    canvases = make_canvases(*_pool(), 3, size=32, seed=0)
    save_segmentation_folder(canvases.images, canvases.masks, tmp_path)
    data = bytearray((tmp_path / "masks" / "00001.png").read_bytes())
    data[33:37] = (10).to_bytes(4, "big")  # the IDAT chunk's length: the next chunk is read from its middle
    (tmp_path / "masks" / "00001.png").write_bytes(bytes(data))
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    with pytest.raises(CnnlabError, match="00001.png cannot be read as a mask"):
        folder.read(1)
    assert sorted(folder.read_all()) == [0, 2]
    assert "cannot be read as a mask" in folder.skipped[0].reason


def test_a_truncated_image_is_skipped_naming_its_path_once(tmp_path):
    """`train segment --data` printed "skipped P: P: corrupt or truncated (...)": the reason repeated the path its
    entry gives (evaluate stripped it; train segment, skipped.json and the "no usable pair" error did not)."""
    canvases = make_canvases(*_pool(), 3, size=32, seed=0)
    save_segmentation_folder(canvases.images, canvases.masks, tmp_path)
    image = tmp_path / "images" / "00001.png"
    image.write_bytes(image.read_bytes()[:50])  # cut in its pixel data
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    with pytest.raises(CnnlabError, match=f"^{re.escape(str(image))}: corrupt or truncated"):
        folder.read(1)  # a lone read still names the file
    assert sorted(folder.read_all()) == [0, 2]
    assert [(s.path, s.reason.split(" (")[0]) for s in folder.skipped] == [(str(image), "corrupt or truncated")]


def test_an_image_over_pillows_pixel_guard_is_told_to_be_downscaled_with_its_mask(tmp_path, monkeypatch):
    """Its reason said "downscale it first" (evaluate --data and train segment --data list it): the image downscaled
    alone was then refused, its mask no longer the same size. The remedy names the pair."""
    _one_pair(tmp_path, Image.fromarray(np.zeros((60, 60), dtype=np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3,600 pixels: over twice the guard, refused
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert folder.read_all() == {}
    assert folder.skipped[0].reason == (
        "too many pixels to decode safely (more than 2,000, Pillow's guard against decompression bombs); downscale it "
        "and its mask a.png to one size first (the mask by nearest neighbour, so that its values stay classes)"
    )


def test_a_mask_over_pillows_pixel_guard_is_told_to_be_downscaled_by_nearest_neighbour(tmp_path, monkeypatch):
    """A mask's reason said "downscale it first": downscaled by Pillow's default or a photo editor's filter, its
    class values were blended into values that are no class (or another class) at every region's edge."""
    _one_pair(tmp_path, Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6) % 2))  # two classes
    Image.fromarray(np.ones((6, 6, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")  # not a's copy
    Image.fromarray(np.zeros((60, 60), dtype=np.uint8)).save(tmp_path / "masks" / "b.png")  # 3,600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice the guard: refused
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert sorted(folder.read_all()) == [0]
    assert folder.skipped[0].reason.endswith(
        "too many pixels to decode safely (more than 2,000, Pillow's guard against decompression bombs); downscale it "
        "and its image to one size first (the mask by nearest neighbour, so that its values stay classes))"
    ), folder.skipped[0].reason


def test_a_pair_over_pillows_pixel_guard_is_counted_too_large_to_decode_not_unreadable(tmp_path, monkeypatch):
    """evaluate --data's summary line counted a pair whose image (or mask) is over the guard as "unreadable": its
    reason ends with the pair's remedy, not "downscale it first", as a classifier folder's now says."""
    from cnnlab.data.folder import describe_skipped

    _one_pair(tmp_path, Image.fromarray(np.zeros((60, 60), dtype=np.uint8)))
    Image.fromarray(np.zeros((6, 6, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    Image.fromarray(np.zeros((60, 60), dtype=np.uint8)).save(tmp_path / "masks" / "b.png")  # its mask over it
    Image.fromarray(np.ones((6, 6, 3), dtype=np.uint8)).save(tmp_path / "images" / "c.png")
    (tmp_path / "masks" / "c.png").write_bytes(b"not a png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3,600 pixels: over twice the guard, refused
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert folder.read_all() == {}
    reasons = [skipped.reason for skipped in folder.skipped]
    assert describe_skipped(reasons) == "3 files skipped: 1 unreadable, 2 too large to decode", reasons


def test_a_folder_reads_every_image_format_the_other_commands_read(tmp_path):
    """A .webp image with its mask was left out of `train segment --data` without a word (its list of extensions was
    shorter than every other command's), and macOS's hidden ._a.png was listed as an unreadable image."""
    _one_pair(tmp_path, Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2))
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.webp", lossless=True)
    Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2).save(tmp_path / "masks" / "b.png")
    (tmp_path / "images" / "._a.png").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert [path.name for path in folder.images] == ["a.png", "b.webp"]
    assert folder.skipped == []


def test_a_mask_with_a_capital_png_extension_is_found(tmp_path):
    """masks/a.PNG was not found for images/a.JPG ("has no mask masks/a.png") on a case-sensitive file system."""
    _one_pair(tmp_path, Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2))
    (tmp_path / "images" / "a.png").rename(tmp_path / "images" / "a.JPG")
    (tmp_path / "masks" / "a.png").rename(tmp_path / "masks" / "a.PNG")
    folder = SegmentationFolder(tmp_path)
    assert [path.name for path in folder.masks] == ["a.PNG"]
    assert folder[0][1].tolist()[0] == [0, 1, 0, 1, 0]


def test_an_image_with_two_masks_of_its_stem_is_left_out_naming_both(tmp_path):
    """masks/a.PNG beside masks/a.png: two masks for images/a.png, and a.png's was trained on, a.PNG never said."""
    _one_pair(tmp_path, Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2))
    Image.fromarray(np.zeros((4, 5), dtype=np.uint8)).save(tmp_path / "masks" / "a.PNG")
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    Image.fromarray(np.ones((4, 5), dtype=np.uint8)).save(tmp_path / "masks" / "b.png")
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert [path.name for path in folder.images] == ["b.png"]
    assert [entry.reason for entry in folder.skipped] == [
        f"{tmp_path / 'masks'} holds a.PNG and a.png, two masks for it; remove the wrong one"
    ]
    with pytest.raises(CnnlabError, match=r"images/a.png: \S+masks holds a.PNG and a.png, two masks for it"):
        SegmentationFolder(tmp_path)


def test_a_mask_of_the_stored_pixels_of_a_turned_photo_is_refused_naming_the_exif_orientation(tmp_path):
    """A phone photo stored 40x30 with EXIF orientation 6 is read upright, 30x40; its mask drawn on the stored pixels
    was refused as "is 40x30 but its image is 30x40", although both files are 40x30."""
    _one_pair(tmp_path, Image.fromarray(np.arange(1200, dtype=np.uint8).reshape(30, 40) % 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.jpg", exif=exif.tobytes())
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(
        CnnlabError, match=r"is 40x30 but its image is 30x40 as shown \(stored 40x30, turned by its EXIF"
    ):
        SegmentationFolder(tmp_path)[0]
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(tmp_path / "masks" / "a.png")  # no turn makes it fit
    with pytest.raises(CnnlabError, match=r"is 30x20 but its image is 30x40; masks must match"):
        SegmentationFolder(tmp_path)[0]


def test_two_images_of_one_stem_are_left_out_since_their_mask_fits_only_one(tmp_path):
    """images/a.jpg and images/a.png were both paired with masks/a.png: one of them trained (or scored) on another
    image's mask, without a word when their sizes agreed."""
    _one_pair(tmp_path, Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2))
    Image.fromarray(np.full((4, 5, 3), 200, dtype=np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / "images" / "b.png")
    Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2).save(tmp_path / "masks" / "b.png")
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert [path.name for path in folder.images] == ["b.png"]
    others = {Path(skipped.path).name: skipped.reason.split(" in ")[0] for skipped in folder.skipped}
    assert others == {"a.jpg": "a.png", "a.png": "a.jpg"}
    with pytest.raises(CnnlabError, match=r"a.jpg: a.png in .* has the same stem, so .*a.png may be the mask of"):
        SegmentationFolder(tmp_path)


def test_a_copy_of_an_image_stands_in_when_the_first_pair_cannot_be_read(tmp_path):
    """A byte-identical copy was set aside as "a copy of X; the first is kept", then X was skipped for its mask:
    both were lost, although the copy had a mask that read."""
    canvases = make_canvases(*_pool(), 3, size=32, seed=0)
    save_segmentation_folder(canvases.images, canvases.masks, tmp_path)
    (tmp_path / "images" / "00003.png").write_bytes((tmp_path / "images" / "00001.png").read_bytes())
    (tmp_path / "masks" / "00003.png").write_bytes((tmp_path / "masks" / "00001.png").read_bytes())
    Image.new("L", (20, 20)).save(tmp_path / "masks" / "00001.png")  # another size than its image
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    pairs = folder.read_all()
    assert sorted(pairs) == [0, 1, 2] and folder.images[1].name == "00003.png"
    assert torch.equal(pairs[1][1], canvases.masks[1])
    assert [(Path(s.path).name, "20x20" in s.reason) for s in folder.skipped] == [("00001.png", True)]


def test_each_image_is_read_once_even_when_a_file_of_its_size_and_first_bytes_may_be_its_copy(tmp_path, monkeypatch):
    """Copy detection hashed every image before `read` decoded it: each image file was read twice. Only images that
    share their size and first bytes with another are hashed, and `read` decodes the bytes hashed (an image with a
    copy, and two same-size BMPs alike in their first 4 KiB, were read twice); copies are found as before: a
    byte-identical copy is set aside, the two BMPs, which differ after their first 4 KiB, are both kept."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, side in (("a", 8), ("b", 12), ("c", 16)):  # PNGs of other sizes
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "images" / "d.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # 12 KiB uncompressed, stored bottom row first
    Image.fromarray(pixels).save(tmp_path / "images" / "e.bmp")
    pixels[0] = 255 - pixels[0]  # the top row: the last bytes of the file
    Image.fromarray(pixels).save(tmp_path / "images" / "f.bmp")
    for image in (tmp_path / "images").iterdir():
        labels = np.zeros(Image.open(image).size[::-1], dtype=np.uint8)
        labels[:4] = 1
        Image.fromarray(labels).save(tmp_path / "masks" / f"{image.stem}.png")
    reads: list[str] = []
    monkeypatch.setattr(Path, "read_bytes", read_bytes_noting(tmp_path / "images", reads))
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert len(folder.read_all()) == 5
    assert [path.name for path in folder.images] == ["a.png", "b.png", "c.png", "e.bmp", "f.bmp"]
    assert [(Path(s.path).name, s.reason.split(" of ")[-1]) for s in folder.skipped] == [
        ("d.png", f"{tmp_path / 'images' / 'a.png'}; the first is kept")
    ]
    assert sorted(reads) == ["a.png", "b.png", "c.png", "d.png", "e.bmp", "f.bmp"]
    assert not folder._read_ahead  # the bytes kept for the decode are let go once decoded
    reads.clear()
    monkeypatch.setattr("cnnlab.data.segmentation._READ_AHEAD_BYTES", 0)  # no room to keep them: read again, as before
    SegmentationFolder(tmp_path, skip_bad=True).read_all()
    assert sorted(reads) == ["a.png", "a.png", "b.png", "c.png", "d.png", "e.bmp", "e.bmp", "f.bmp", "f.bmp"]


def test_a_link_to_no_file_among_the_images_is_skipped_not_a_traceback(tmp_path):
    """A link whose target is gone (git-annex's link to content not fetched) has no size, so it was hashed as a
    possible copy: the hash raised FileNotFoundError out of the scan. It is skipped as missing; the rest is read."""
    canvases = make_canvases(*_pool(), 2, size=32, seed=0)
    save_segmentation_folder(canvases.images, canvases.masks, tmp_path)
    (tmp_path / "images" / "00002.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "masks" / "00002.png").write_bytes((tmp_path / "masks" / "00001.png").read_bytes())
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    assert sorted(folder.read_all()) == [0, 1]
    assert [(Path(s.path).name, s.reason) for s in folder.skipped] == [("00002.png", "no such file")]


def test_the_decoded_size_is_known_from_the_file_headers_before_decoding(tmp_path, monkeypatch):
    """What `read_all` will hold, so that a folder too large for memory is refused before minutes of decoding."""
    canvases = make_canvases(*_pool(), 3, size=(40, 50), seed=0)
    save_segmentation_folder(canvases.images, canvases.masks, tmp_path)
    (tmp_path / "images" / "00001.png").write_bytes(b"not a png")  # read_all skips it: it counts nothing
    folder = SegmentationFolder(tmp_path, skip_bad=True)
    held = sum(
        image.numel() + mask.numel() for image, mask in SegmentationFolder(tmp_path, skip_bad=True).read_all().values()
    )
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("a pixel was decoded"))
    assert folder.decoded_bytes() == held == 2 * 40 * 50 * (3 + 1)


def test_max_side_reads_a_larger_pair_smaller_with_its_mask_values_exact(tmp_path):
    """A 12 MP phone photo was held and trained on whole: --max-side reads it downscaled, the image antialiased (a
    1-px checkerboard turns grey, not black or white) and the mask by nearest neighbour (no class invented at an
    edge, 255 kept); a pair that fits is read as it is."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    labels = np.zeros((80, 120), dtype=np.uint8)
    labels[:, 40:80], labels[:, 80:], labels[:20] = 1, 2, IGNORE_INDEX
    checkerboard = (np.indices((80, 120)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([checkerboard] * 3, -1)).save(tmp_path / "images" / "big.png")
    Image.fromarray(labels).save(tmp_path / "masks" / "big.png")
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(tmp_path / "images" / "small.png")
    Image.fromarray(labels[30:40, :20]).save(tmp_path / "masks" / "small.png")
    folder = SegmentationFolder(tmp_path, max_side=30)
    (image, mask), (small_image, small_mask) = folder.read(0), folder.read(1)
    assert image.shape == (3, 20, 30) and mask.shape == (20, 30)
    assert torch.equal(mask, torch.from_numpy(labels[2::4, 2::4]))  # the label under each new pixel's centre
    assert set(mask.unique().tolist()) == {0, 1, 2, IGNORE_INDEX}
    assert int(image.min()) > 100 and int(image.max()) < 155
    assert small_image.shape == (3, 10, 20) and torch.equal(small_mask, torch.from_numpy(labels[30:40, :20]))
    assert folder.decoded_bytes(30) == (30 * 20 + 20 * 10) * 4 and folder.decoded_bytes() == (120 * 80 + 20 * 10) * 4


def _count_decodes(monkeypatch) -> list[tuple[str, tuple]]:
    """(name, configuration) of every decoder PIL starts from now on, one per decode of a file."""
    import PIL.Image

    started, decoder = [], PIL.Image._getdecoder

    def counted(mode, decoder_name, args=None, extra=()):
        started.append((decoder_name, tuple(extra)))
        return decoder(mode, decoder_name, args, extra)

    monkeypatch.setattr(PIL.Image, "_getdecoder", counted)
    return started


@pytest.mark.parametrize("colours", [True, False])
def test_each_file_of_a_pair_is_decoded_once_and_the_mask_values_stay_exact(tmp_path, monkeypatch, colours):
    """Each file was decoded twice (checked, then loaded) and the mask held as int64: 1.3 s and over 1 GB at the peak
    for a 12 MP pair. Colour masks are mapped to the same class indices, and 255 stays unlabelled in index masks."""
    labels = np.zeros((80, 120), dtype=np.uint8)
    labels[:, 40:80], labels[:, 80:] = 1, 2
    if colours:
        palette = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10]], dtype=np.uint8)
        classes = [{"name": name, "color": colour.tolist()} for name, colour in zip("abc", palette, strict=True)]
        _one_pair(tmp_path, Image.fromarray(palette[labels]), classes)
    else:
        labels[:20] = IGNORE_INDEX
        _one_pair(tmp_path, Image.fromarray(labels))
    started = _count_decodes(monkeypatch)
    image, mask = SegmentationFolder(tmp_path).read(0)
    assert len(started) == 2  # the image's file and the mask's
    assert image.shape == (3, 80, 120) and mask.dtype == torch.uint8 and torch.equal(mask, torch.from_numpy(labels))
    image, mask = SegmentationFolder(tmp_path, max_side=30).read(0)
    assert len(started) == 4 and torch.equal(mask, torch.from_numpy(labels[2::4, 2::4]))


def test_max_side_training_pixels_are_the_ones_predict_and_explain_feed_the_model(tmp_path):
    """Training read a JPEG at a reduced scale (PIL's draft) while predict, explain and an export's record downscale
    the image decoded at full size: the model saw other pixels (up to 16 grey levels) in training than in use. A
    photo stored 160x120 with EXIF orientation 6 is shown 120x160."""
    from cnnlab.data.folder import load_image
    from cnnlab.data.segmentation import downscale

    rows, columns = np.indices((120, 160))
    stored = np.stack([rows * 2, columns, (rows * columns) % 256], -1).astype(np.uint8)
    _one_pair(tmp_path, Image.fromarray((np.indices((160, 120)).sum(0) // 50 % 3).astype(np.uint8)))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "images" / "a.jpg", exif=exif.tobytes(), quality=90)
    (tmp_path / "images" / "a.png").unlink()
    image, mask = SegmentationFolder(tmp_path, max_side=40).read(0)
    in_use = torch.from_numpy(np.asarray(downscale(load_image(tmp_path / "images" / "a.jpg"), 40)).copy())
    assert image.shape == (3, 40, 30) and mask.shape == (40, 30)
    assert torch.equal(image.permute(1, 2, 0), in_use)


@pytest.mark.parametrize("colour", [[256, 0, 0], [-1, 0, 0], [10, 10], [1.5, 0, 0], "red"])
def test_a_class_colour_that_no_pixel_can_have_is_refused(tmp_path, colour):
    """[256, 0, 0] was taken without a word and matched no pixel (the class was never labelled); three classes of
    [r, g] were reshaped into two colours."""
    classes = [{"name": "a", "color": [0, 0, 0]}, {"name": "b", "color": colour}, {"name": "c", "color": [9, 9, 9]}]
    if colour == [10, 10]:
        classes = [{**c, "color": [5 * i, 5 * i]} for i, c in enumerate(classes)]
    _one_pair(tmp_path, Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)), classes)
    with pytest.raises(CnnlabError, match=r"classes.json must be a list .*'[ab]' has color .*not three integers 0-255"):
        SegmentationFolder(tmp_path)


def test_a_mask_under_another_name_or_format_is_named_where_the_image_is_skipped(tmp_path):
    """A mask saved as masks/a.jpg.png (after the image's whole name), masks/b.tif or masks/c.png for images/C.png
    (matched on a case-insensitive file system, macOS's or Windows', not on Linux) was read as no mask at all: "no
    mask masks/a.png", with the file the user had made sitting beside it unsaid. A .tif was told "masks must be PNG,
    a lossless format", as if TIFF were lossy: only a JPEG's loss is named."""
    _one_pair(tmp_path, Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2))
    for stem, mask_name in (("a2", "a2.jpg.png"), ("b", "b.tif"), ("C", "c.png"), ("d", "d.JPG")):
        Image.new("RGB", (5, 4)).save(tmp_path / "images" / f"{stem}.{'jpg' if stem == 'a2' else 'png'}")
        Image.new("L", (5, 4)).save(tmp_path / "masks" / mask_name)
    reasons = {Path(s.path).name: s.reason for s in SegmentationFolder(tmp_path, skip_bad=True).skipped}
    assert reasons["a2.jpg"].endswith(
        "(a2.jpg.png is there: a mask is named after the image's stem, a2.png; rename it)"
    )
    assert reasons["b.png"].endswith("(b.tif is there: masks are read from PNG files only; save it as b.png)")
    assert reasons["d.png"].endswith(
        "(d.JPG is there: masks are read from PNG files only, and a JPEG's lossy compression changes class "
        "indices at the edges; save it as d.png)"
    )
    assert reasons["C.png"].endswith(
        "(c.png is there: a mask is named after its image's stem, capitals too, C.png; rename it)"
    )
    (tmp_path / "images" / "a.png").unlink()
    (tmp_path / "images" / "C.png").unlink()
    with pytest.raises(CnnlabError, match=r"a2.jpg has no mask .*a2.png \(a2.jpg.png is there: .*; every image"):
        SegmentationFolder(tmp_path)
    with pytest.raises(CnnlabError, match=r"no image in .* \(masks/<image stem>.png; for a2.jpg, a2.png \(a2.jpg.png "):
        SegmentationFolder(tmp_path, skip_bad=True)


def test_images_in_sub_folders_of_images_are_named_not_left_out_unsaid(tmp_path):
    """images/batch2/*.png were never read (only images/ itself is): left out of training without a word, or, with
    every image in sub-folders, refused as "holds no images"."""
    from cnnlab.data.segmentation import NestedImagesWarning

    _one_pair(tmp_path, Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5) % 2))
    (tmp_path / "images" / "batch2" / "deeper").mkdir(parents=True)
    Image.new("RGB", (5, 4)).save(tmp_path / "images" / "batch2" / "deeper" / "b.png")
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (5, 4)).save(tmp_path / "images" / ".ipynb_checkpoints" / "a-checkpoint.png")
    with pytest.warns(NestedImagesWarning) as caught:
        assert len(SegmentationFolder(tmp_path)) == 1
    (message,) = [str(w.message) for w in caught]
    assert message.endswith(
        "its sub-folder(s) batch2 hold images, but only images directly in "
        + (f"{tmp_path / 'images'} are read (masks/<stem>.png beside them); they are left out")
    )
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(CnnlabError, match="holds no images .*; its sub-folder.* batch2 hold images, but only"):
        SegmentationFolder(tmp_path)


def test_a_grey_rgb_index_mask_reads_as_its_indices_and_a_coloured_one_is_still_refused(tmp_path):
    """An index mask saved with three equal channels (OpenCV's imwrite of a 3-channel array) was refused as "an RGB
    mask but classes.json lists no colours", although its grey levels are the indices classes.json names."""
    indices = np.arange(20, dtype=np.uint8).reshape(4, 5) % 3
    _one_pair(tmp_path, Image.fromarray(np.stack([indices] * 3, axis=-1)), [{"name": n} for n in ("a", "b", "c")])
    assert SegmentationFolder(tmp_path)[0][1].numpy().tolist() == indices.tolist()
    Image.fromarray(np.stack([indices, indices, indices, np.full_like(indices, 255)], -1)).save(
        tmp_path / "masks" / "a.png"
    )
    assert SegmentationFolder(tmp_path)[0][1].numpy().tolist() == indices.tolist()
    Image.fromarray(np.stack([indices, indices * 0, indices], axis=-1)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(CnnlabError, match="is an RGB mask but .*classes.json lists no colours"):
        SegmentationFolder(tmp_path)[0]


def test_values_found_only_where_other_classes_meet_are_told_apart_from_regions():
    """A 0/255 mask resized smoothly (or saved as JPEG) has values such as 9 and 168 at the object's edge only: read as
    classes, they trained a head of 208 classes without a word."""
    from cnnlab.data.segmentation import edge_only_values

    mask = torch.zeros(12, 12, dtype=torch.uint8)
    mask[3:9, 3:9] = 1  # a region: 1 is held inside it
    fringe = mask.clone()
    fringe[2, 3:9], fringe[9, 3:9] = 9, 168  # a ring of invented values along its edges
    speck = torch.zeros(12, 12, dtype=torch.uint8)
    speck[0, 0], speck[6, 6] = 7, IGNORE_INDEX  # a stray pixel of 7; unlabelled is never a class
    assert edge_only_values({0: mask, 3: fringe, 4: speck}) == {9: 3, 168: 3, 7: 4}
    assert edge_only_values({0: mask}) == {}
    # a disc and a triangle saved 0/255 and resized smoothly, or saved as JPEG: every value in between is named
    rows, columns = np.mgrid[:40, :40]
    shapes = [((rows - 20) ** 2 + (columns - 17) ** 2 < 120) * 255, (rows > columns) * 255]
    for size in (21, 57, 90):
        resized = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.BILINEAR)) for m in shapes]
        invented = set(np.unique(np.concatenate([m.ravel() for m in resized])).tolist()) - {0, 255}
        found = edge_only_values({i: torch.from_numpy(m.copy()) for i, m in enumerate(resized)})
        assert len(invented) > 20 and set(found) == invented, size
    jpeg = io.BytesIO()
    Image.fromarray(np.kron(shapes[0], np.ones((2, 2))).astype(np.uint8)).save(jpeg, "JPEG", quality=75)
    found = edge_only_values({0: torch.from_numpy(np.asarray(Image.open(jpeg)).copy())})
    assert len(found) > 10 and set(found) <= set(range(1, 255))


def test_thin_objects_of_a_class_are_not_taken_for_fringes():
    """A class drawn 1-2 px wide (a digit's stroke at a small size, a crack, a wire) has no pixel inside a region
    either: `train segment --data` of the demo's digits with --max-side 32 said "mask value 2 lies only in thin
    fringes where other classes meet" of the digit 1's strokes."""
    from cnnlab.data.segmentation import edge_only_values

    lines = torch.zeros(20, 20, dtype=torch.uint8)
    lines[:, 5] = 2  # one pixel wide, to the mask's edges
    lines[range(2, 18), range(2, 18)] = 3  # diagonal: its pixels touch by their corners only
    lines[3:17, 12:14] = 4  # two pixels wide
    lines[10, 14:19] = 5  # a branch of another class off the stroke of 4
    assert edge_only_values({0: lines}) == {}


@needs_mnist
def test_the_demos_digits_downscaled_are_not_taken_for_fringes():
    """`cnnlab data segmentation-demo DIR --count 10`, then `train segment --data DIR --max-side 32`: the digit 1's
    strokes (mask value 2) were named as fringe values a JPEG or a smooth resize invents."""
    from cnnlab.data.mnist import _load_split, find_mnist_dir
    from cnnlab.data.segmentation import downscale_mask, edge_only_values

    digits, labels = _load_split(find_mnist_dir(None), "train")
    canvases = make_canvases(digits, labels, torch.arange(len(labels)), 10, size=64, seed=0)  # the demo's 10 pairs
    masks = {i: torch.from_numpy(downscale_mask(mask.numpy(), 32)) for i, mask in enumerate(canvases.masks)}
    thin = [value for value in range(1, 11) if not any(_has_region(mask, value) for mask in masks.values())]
    assert thin  # some digit has no pixel inside a region of its own at this size
    assert edge_only_values(masks) == {}


def _has_region(mask: torch.Tensor, value: int) -> bool:
    """Whether some pixel of `value` in `mask` has its 4 neighbours of `value`."""
    inner = mask[1:-1, 1:-1] == value
    return bool(
        (
            inner
            & (mask[:-2, 1:-1] == value)
            & (mask[2:, 1:-1] == value)
            & (mask[1:-1, :-2] == value)
            & (mask[1:-1, 2:] == value)
        ).any()
    )
