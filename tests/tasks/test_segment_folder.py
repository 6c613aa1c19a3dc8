"""Training, predicting and exporting segmentation from an image + mask folder (`cnnlab train segment --data`)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.segmentation import IGNORE_INDEX, make_canvases, save_segmentation_folder
from cnnlab.errors import CnnlabError
from cnnlab.tasks.segment_folder import train_segmentation_folder
from cnnlab.tasks.segment_predict import load_segmenter, predict_masks
from read_counts import read_bytes_noting

CLASSES = ["background", "bar", "square", "cross"]


def _shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three jittered shapes (a bar, a square, a cross) in 28x28 frames, labels 0..2."""
    generator = torch.Generator().manual_seed(seed)
    digits = torch.zeros(count, 1, 28, 28, dtype=torch.uint8)
    labels = torch.arange(count) % 3
    for i in range(count):
        dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=generator))
        if labels[i] == 0:
            digits[i, 0, 6 + dy : 22 + dy, 12 + dx : 16 + dx] = 255
        elif labels[i] == 1:
            digits[i, 0, 8 + dy : 20 + dy, 8 + dx : 20 + dx] = 255
        else:
            digits[i, 0, 12 + dy : 16 + dy, 6 + dx : 22 + dx] = 255
            digits[i, 0, 6 + dy : 22 + dy, 12 + dx : 16 + dx] = 255
    return digits, labels, torch.arange(count)


def _folder(root, count: int = 48, seed: int = 0, sizes=((32, 32),)):
    """A folder of canvases with one shape each; sizes cycle through `sizes`; a strip of every mask is unlabelled."""
    images, masks = [], []
    for i in range(count):
        canvas = make_canvases(*_shapes(30, seed + i), 1, size=sizes[i % len(sizes)], digits_per_canvas=(1, 1), seed=i)
        image = canvas.images[0].clone()
        image[..., -1, -1] = i % 256  # small canvases repeat; a byte-identical image would be kept once
        images.append(image)
        masks.append(canvas.masks[0])
    (root / "images").mkdir(parents=True, exist_ok=True)
    if len(sizes) == 1:
        save_segmentation_folder(torch.stack(images), torch.stack(masks), root, CLASSES)
    else:
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            save_segmentation_folder(image[None], mask[None], root / "tmp", CLASSES)
            (root / "tmp" / "images" / "00000.png").rename(root / "images" / f"{i:05d}.png")
            (root / "masks").mkdir(exist_ok=True)
            (root / "tmp" / "masks" / "00000.png").rename(root / "masks" / f"{i:05d}.png")
        (root / "tmp" / "classes.json").rename(root / "classes.json")
    return root


def _split_pairs(run_dir, part: str, folder: Path) -> Path:
    """A copy of the image + mask pairs of `part` (train, val, test) of a run's split.csv, in `folder`."""
    import shutil

    rows = [line.split(",") for line in (Path(run_dir) / "split.csv").read_text().splitlines()[1:]]
    for image, mask, _ in (row for row in rows if row[2] == part):
        for path, kind in ((image, "images"), (mask, "masks")):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / kind)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A U-Net trained for a few seconds on 48 32x32 canvases of one shape each."""
    root = _folder(tmp_path_factory.mktemp("data"))
    output = tmp_path_factory.mktemp("runs")
    summary = train_segmentation_folder(
        str(root),
        "unet",
        output=str(output),
        name="t",
        overrides={"epochs": 12, "batch_size": 8, "lr": 1e-2, "channels_last": False},
        crop_size=32,
        progress=False,
    )
    return root, summary


def test_a_tiny_folder_trains_and_beats_predicting_background(trained):
    root, summary = trained
    test = summary["test"]
    matrix = torch.tensor(test["confusion_matrix"])
    background_share = float(matrix[0].sum() / matrix.sum())
    assert test["miou_includes_background"] is False
    assert test["pixel_accuracy"] > background_share  # predicting background everywhere scores exactly this
    assert test["miou"] > 0.0  # and IoU 0 on every shape class
    # A dozen short epochs on 32 images find the shapes (which shape it is takes longer): shape-vs-background IoU.
    found = int(matrix[1:, 1:].sum())
    assert found / (matrix[1:].sum() + matrix[0, 1:].sum()) > 0.5, test
    assert 0.0 < test["boundary_f1"] <= 1.0 and test["boundary_tolerance_px"] == 2
    assert summary["steps"] > 0
    run = Path(summary["run_dir"])
    report = (run / "report.md").read_text()
    assert "| bar |" in report and "test_worst.png" in report and "test_confusion.png" in report
    split = (run / "split.csv").read_text().splitlines()
    assert split[0] == "path,label,split" and len(split) == 1 + 48


def test_evaluate_of_the_runs_test_pairs_gives_its_test_scores(trained, tmp_path, monkeypatch):
    """`cnnlab evaluate RUN --data DIR` of the run's own test pairs (and a broken image) gives results.json's test
    scores: segment_image, the function predict uses, and the test pass's MaskScores. A bar shows its progress (it
    segmented a folder in silence)."""
    import shutil

    import cnnlab.train.progress
    from cli_in_process import run_cnnlab
    from cnnlab.tasks.evaluate import evaluate_folder, evaluation_lines

    bars = []

    class RecordedBar(cnnlab.train.progress.ProgressBar):
        def __init__(self, total, description, enabled=True):
            super().__init__(total, description, enabled=False)
            bars.append([description, enabled])

    monkeypatch.setattr(cnnlab.train.progress, "ProgressBar", RecordedBar)
    import cnnlab.report.plots
    import cnnlab.report.segmentation

    drawn = []  # the overlays' titles: the worst images were listed in evaluation.json only, never drawn
    save_overlays = cnnlab.report.segmentation.save_overlays
    monkeypatch.setattr(
        cnnlab.report.segmentation,
        "save_overlays",
        lambda *args, **kwargs: drawn.append(kwargs["titles"]) or save_overlays(*args, **kwargs),
    )

    root, summary = trained
    run, folder, out = Path(summary["run_dir"]), tmp_path / "new", tmp_path / "out"
    for part in ("images", "masks"):
        (folder / part).mkdir(parents=True)
    rows = [line.split(",") for line in (run / "split.csv").read_text().splitlines()[1:]]
    for image, mask, _ in (row for row in rows if row[2] == "test"):
        shutil.copy(image, folder / "images")
        shutil.copy(mask, folder / "masks")
    shutil.copy(root / "classes.json", folder)
    (folder / "images" / "broken.png").write_bytes(b"not a png")
    shutil.copy(mask, folder / "masks" / "broken.png")
    completed = run_cnnlab("evaluate", str(run), "--data", str(folder), "-o", str(out))
    assert completed.returncode == 0, completed.stderr[-2000:]
    result, test = json.loads((out / "evaluation.json").read_text()), summary["test"]
    assert result["count"] == summary["images"]["test"]
    assert bars == [[f"segmenting {result['count'] + 1} images", True]]  # the broken one too
    for key in ("miou", "miou_with_bg", "pixel_accuracy", "iou_per_class", "boundary_f1", "confusion_matrix"):
        assert result[key] == test[key], key
    assert f"mIoU {test['miou']:.4f} (the background left out)" in completed.stdout
    assert result["precision"] == result["run_precision"] == "fp32" and "autocast" not in completed.stdout
    assert "not of new data" not in completed.stdout  # copies of its test pairs (split.csv is matched by path)
    assert f"skipped {folder / 'images' / 'broken.png'}: not an image PIL can read" in completed.stdout
    assert (out / "confusion_matrix.png").is_file()
    worst = result["worst_images"]
    assert drawn == [[f"{Path(entry['image']).name}: {entry['pixel_error']:.1%} wrong" for entry in worst]]
    assert len(worst) == min(6, result["count"]) and [entry["pixel_error"] for entry in worst] == sorted(
        (entry["pixel_error"] for entry in worst), reverse=True
    )
    assert result["files"]["worst_images"] == str(out / "worst_images.png") in completed.stdout
    assert (out / "worst_images.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in out.iterdir()) == [
        "confusion_matrix.png",
        "evaluation.json",
        "worst_images.png",
    ]
    # Without classes.json the run's record reads the masks (its colour masks were all skipped as unreadable): a
    # colour mask through the run's colours, a single-channel one as class indices.
    (folder / "classes.json").unlink()
    (folder / "images" / "broken.png").unlink()
    colours = json.loads((root / "classes.json").read_text())
    first = sorted((folder / "masks").glob("*.png"))[0]
    rgb = np.asarray(Image.open(first).convert("RGB"))
    indices = np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    for index, entry in enumerate(colours):
        indices[(rgb == entry["color"]).all(-1)] = index
    Image.fromarray(indices, mode="L").save(first)
    from cnnlab.data.segmentation import GreyIndexMaskWarning

    # ... and an index mask saved with three channels (R = G = B = class index) as indices, said: it was skipped,
    # "has colour (1, 1, 1), which the run's record does not list"
    second = sorted((folder / "masks").glob("*.png"))[1]
    rgb = np.asarray(Image.open(second).convert("RGB"))
    indices = np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    for index, entry in enumerate(colours):
        indices[(rgb == entry["color"]).all(-1)] = index
    assert set(np.unique(indices)) == {0, 1}
    Image.fromarray(np.repeat(indices[..., None], 3, axis=-1), mode="RGB").save(second)
    # And a run tested under bf16 autocast (this one, so recorded) is evaluated in float32, as predict runs: said.
    bf16_run = tmp_path / "bf16_run"
    shutil.copytree(run, bf16_run)
    config = (bf16_run / "config.yaml").read_text()
    (bf16_run / "config.yaml").write_text(config.replace("  precision: fp32\n", "  precision: bf16\n", 1))
    with monkeypatch.context() as undrawn:  # its figures are the CLI's above, checked there: half this test's time
        undrawn.setattr(cnnlab.report.segmentation, "save_overlays", lambda *args, **kwargs: None)
        undrawn.setattr(cnnlab.report.plots, "plot_confusion_matrix", lambda *args, **kwargs: None)
        with pytest.warns(
            GreyIndexMaskWarning, match=rf"{re.escape(str(second))} and other grey masks .* read as class"
        ):
            evaluation = evaluate_folder(bf16_run, folder, tmp_path / "bf16_out")
    assert evaluation["confusion_matrix"] == test["confusion_matrix"] and not evaluation["skipped"]
    assert evaluation["precision"] == "fp32" and evaluation["run_precision"] == "bf16"
    shown = "\n".join(evaluation_lines(evaluation))
    assert f"{folder} has no classes.json: its masks were read by the run's classes" in shown
    assert "evaluated in float32, as predict runs; the run's test pass ran under bf16 autocast" in shown
    (folder / "classes.json").write_text(json.dumps([{"name": name} for name in ("background", "ring")]))
    completed = run_cnnlab("evaluate", str(run), "--data", str(folder), "-o", str(out))
    assert completed.returncode == 2 and "names the classes background, ring; the run's are" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    # binary masks saved 0/255 (255 means unlabelled): the background alone was scored, every score 1.0, where
    # training refuses such a folder
    (folder / "classes.json").unlink()
    for path in (folder / "masks").iterdir():
        Image.fromarray(np.asarray(Image.open(path).convert("RGB")).any(-1).astype(np.uint8) * 255).save(path)
    completed = run_cnnlab("evaluate", str(run), "--data", str(folder), "-o", str(out))
    assert completed.returncode == 2 and "(unlabelled), so only that class would be scored; if 255 marks the " in (
        completed.stderr
    )


def test_evaluate_says_which_pairs_the_run_trained_on_and_refuses_a_folder_without_masks(
    trained, tmp_path, monkeypatch
):
    """--data the run's own folder: the pairs of its training and validation split are counted and said (they were
    scored as new data without a word); an empty folder, or images without masks, are refused in one line, naming
    predict for the masks of unlabelled images."""
    from cnnlab.tasks.evaluate import _in_run_split, _seen_line, _split_folder_gone, evaluate_folder

    root, summary = trained
    run = summary["run_dir"]
    counts = _in_run_split(Path(run), [str(path) for path in sorted((root / "images").iterdir())])
    assert counts == summary["images"]  # every pair of the folder, by its part of the split
    assert _seen_line({"count": 48, "in_run_split": counts}, "pairs") == [
        f"{counts['train'] + counts['val']} of these 48 pairs are the run's own training ({counts['train']}) and "
        f"validation ({counts['val']}) pairs (its split.csv): these scores are not of new data; its "
        f"{counts['test']} test pairs among them alone are new to it"
    ]
    assert _seen_line({"count": 3, "in_run_split": {"test": 3}}, "pairs") == []
    # the data folder moved (copied to a laptop beside the run): no split.csv path matched, and evaluate said nothing,
    # as if the pairs it trained on were new data
    assert _split_folder_gone(Path(run)) is None
    shutil.move(root, tmp_path / "moved")
    try:
        gone = _split_folder_gone(Path(run))
        moved = _in_run_split(Path(run), [str(path) for path in sorted((tmp_path / "moved" / "images").iterdir())])
    finally:
        shutil.move(tmp_path / "moved", root)
    assert gone == str((root / "images").resolve()) and moved == {}
    assert _seen_line({"count": 48, "in_run_split": moved, "split_folder_gone": gone}, "pairs") == [
        f"whether the run trained on any of these pairs is not known: its split.csv lists images under {gone}, no "
        "longer there (moved?): these scores may include images it trained on"
    ]

    # some of its training and validation pairs copied and renamed: known by their images' bytes
    # (split_digests.json), where split.csv's paths matched none
    copies = _split_pairs(run, "val", _split_pairs(run, "train", tmp_path / "renamed"))
    rows = [line.split(",") for line in (Path(run) / "split.csv").read_text().splitlines()[1:]]
    kept = {part: [Path(image).name for image, _, row_part in rows if row_part == part] for part in ("train", "val")}
    kept = set(kept["train"][:4] + kept["val"][:2])
    for image in (copies / "images").iterdir():
        for path in (image, copies / "masks" / image.name):
            path.rename(path.with_name(f"copy_{path.name}")) if image.name in kept else path.unlink()
    shutil.copy(root / "classes.json", copies)
    parts = {"train": 4, "val": 2}
    import cnnlab.report.plots
    import cnnlab.report.segmentation

    monkeypatch.setattr(cnnlab.report.plots, "plot_confusion_matrix", lambda *args, **kwargs: None)
    monkeypatch.setattr(cnnlab.report.segmentation, "save_overlays", lambda *args, **kwargs: None)
    reads: list[str] = []  # each image was read twice: its digest, then its decode
    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_bytes", read_bytes_noting(copies / "images", reads))
        result = evaluate_folder(run, copies, tmp_path / "copies")
    assert sorted(reads) == sorted(path.name for path in (copies / "images").iterdir())  # each once
    assert result["in_run_split"] == {} and result["count"] == 6
    assert result["trained_copies"] == {"train": parts["train"], "val": parts["val"], "of": 6,
                                        "from": "split_digests.json", "unchecked": 0, "excluded": False}  # fmt: skip
    assert _seen_line(result, "pairs") == [
        f"6 of 6 pairs' images are byte-identical to images the run trained on ({parts['train']}) or chose its "
        f"weights by ({parts['val']}): the scores below include them (--exclude-trained leaves them out)"
    ]
    with pytest.raises(CnnlabError, match=r"all 6 usable image \+ mask pairs are byte-identical to images the run "):
        evaluate_folder(run, copies, tmp_path / "copies", exclude_trained=True)

    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match=r"^--data \S+empty is empty; pass a folder holding images/ and masks/"):
        evaluate_folder(run, tmp_path / "empty", tmp_path / "out")
    (tmp_path / "unlabelled" / "images").mkdir(parents=True)
    (tmp_path / "unlabelled" / "images" / "a.png").write_bytes((root / "images" / "00000.png").read_bytes())
    for masks, why in ((False, "has no masks/ folder"), (True, "has no PNG mask in")):
        if masks:
            (tmp_path / "unlabelled" / "masks").mkdir()
        with pytest.raises(CnnlabError, match=f"unlabelled {why}.*cnnlab predict --model .*unlabelled/images --output"):
            evaluate_folder(run, tmp_path / "unlabelled", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_exclude_trained_reads_each_image_once(trained, tmp_path, monkeypatch):
    """--exclude-trained digested each image before decoding it, to leave the run's own undecoded: every image it
    scored was read twice (its digest, then its decode). The bytes digested are decoded: each image is read once, a
    byte-identical copy of a new one too (hashed by the scan, set aside)."""
    from cnnlab.tasks.evaluate import evaluate_folder

    root, summary = trained
    run = Path(summary["run_dir"])
    rows = [line.split(",") for line in (run / "split.csv").read_text().splitlines()[1:]]
    chosen = [row for row in rows if row[2] == "test"][:2] + [row for row in rows if row[2] == "train"][:2]
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for image, mask, _ in chosen:
        shutil.copy(image, tmp_path / "data" / "images")
        shutil.copy(mask, tmp_path / "data" / "masks")
    new = Path(chosen[0][0]).name
    shutil.copy(root / "images" / new, tmp_path / "data" / "images" / f"copy_{new}")
    shutil.copy(root / "masks" / new, tmp_path / "data" / "masks" / f"copy_{new}")
    import cnnlab.report.plots
    import cnnlab.report.segmentation

    monkeypatch.setattr(cnnlab.report.plots, "plot_confusion_matrix", lambda *args, **kwargs: None)
    monkeypatch.setattr(cnnlab.report.segmentation, "save_overlays", lambda *args, **kwargs: None)
    reads: list[str] = []
    monkeypatch.setattr(Path, "read_bytes", read_bytes_noting(tmp_path / "data" / "images", reads))
    result = evaluate_folder(run, tmp_path / "data", tmp_path / "out", exclude_trained=True)
    assert result["count"] == 2 and result["trained_copies"]["train"] == 2
    assert sorted(reads) == sorted(path.name for path in (tmp_path / "data" / "images").iterdir())  # each once


def test_evaluate_names_classes_no_mask_has_and_values_only_in_edge_fringes_as_training_does(trained, tmp_path):
    """`cnnlab evaluate` said neither of training's checks of a folder: a class of the run no mask has (left out of
    mIoU, or IoU 0 where predicted) and a mask value found only in thin fringes (a JPEG's or a smooth resize's)."""
    from cnnlab.tasks.evaluate import evaluate_folder, evaluation_lines

    root, summary = trained
    folder = _split_pairs(summary["run_dir"], "test", tmp_path / "new")
    first, *others = sorted((folder / "masks").glob("*.png"))
    for path in others[1:]:
        path.unlink()
        (folder / "images" / path.name).unlink()
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[8:24, 8:24] = 1  # a bar's region ...
    labels[7, 8:24] = labels[24, 8:24] = 3  # ... and a 'cross' only in 1 px fringes round it, as resizing leaves
    Image.fromarray(labels).save(first)
    Image.fromarray((labels == 1).astype(np.uint8)).save(others[0])  # class indices: the run's colours read them so
    evaluation = evaluate_folder(summary["run_dir"], folder, tmp_path / "out")
    untrained = (
        f"no mask in {folder} has a pixel of 'square' (2): it is left out of mIoU (IoU -), or scored IoU 0 where the "
        "model predicts it"
    )
    fringe = f"mask value 3 ({first.name} in {folder / 'masks'}) lies only in thin fringes where other classes meet"
    assert evaluation["classes_without_pixels"] == untrained
    assert evaluation["edge_only_values"].startswith(fringe)
    shown = evaluation_lines(evaluation)
    assert shown.count(untrained) == 1 and [line.startswith(fringe) for line in shown].count(True) == 1
    saved = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert saved["classes_without_pixels"] == untrained and saved["edge_only_values"] == evaluation["edge_only_values"]
    (folder / "masks" / first.name).unlink()  # every class but 'square' in regions: nothing else said
    (folder / "images" / first.name).unlink()
    labels[7, 8:24] = labels[24, 8:24] = 0
    labels[0:6, 0:6] = 3
    Image.fromarray(labels).save(others[0])
    evaluation = evaluate_folder(summary["run_dir"], folder, tmp_path / "out2")
    assert evaluation["edge_only_values"] is None and "'cross'" not in evaluation["classes_without_pixels"]
    # a mask saved 0/255 beside masks of class indices: its object, 255, unlabelled, was left out of the scores
    Image.fromarray((labels == 1).astype(np.uint8) * 255).save(first)
    picture = np.asarray(Image.open(folder / "images" / others[0].name)).copy()
    picture[0, 0] ^= 1  # not a byte-identical copy, which would be read once
    Image.fromarray(picture).save(folder / "images" / first.name)
    refusal = rf"^{re.escape(str(first))} holds only 0 and 255 \(255 on [\d.]+% of its pixels\) while other masks \("
    with pytest.raises(CnnlabError, match=refusal):
        evaluate_folder(summary["run_dir"], folder, tmp_path / "out3")


def test_a_run_started_again_splits_afresh_and_a_resumed_one_keeps_its_split(trained, tmp_path):
    """A run folder's split.csv was read back by any later run there: --overwrite with other fractions or another
    --data kept the old split (or failed on its missing images), a finished run given no flag failed on its split."""
    root, summary = trained
    run = tmp_path / "segment" / "again"
    run.mkdir(parents=True)
    manifest = (Path(summary["run_dir"]) / "split.csv").read_text()
    (run / "split.csv").write_text(manifest)  # as a start that failed after writing its split leaves it
    options = {"output": str(tmp_path), "name": "again", "crop_size": 32, "progress": False}
    second = train_segmentation_folder(
        str(root), overrides={"epochs": 1, "batch_size": 8}, split_seed=5, val_fraction=0.25, **options
    )
    assert second["images"]["val"] == 12 and sum(second["images"].values()) == 48  # 25% of 48, not 15%
    assert (run / "split.csv").read_text() != manifest
    with pytest.raises(CnnlabError, match=re.escape("extra.val_fraction: 0.25 -> 0.15")):
        train_segmentation_folder(str(root), overrides={"epochs": 1, "batch_size": 8}, resume=True, **options)
    with pytest.raises(CnnlabError, match="already holds a finished run; pass --overwrite, --resume"):
        train_segmentation_folder(str(root), overrides={"epochs": 1, "batch_size": 8}, split_seed=5, **options)
    # the run's one session, recorded; the refused commands are not sessions of it
    (session,) = json.loads((run / "sessions.json").read_text())
    assert session["ended"] == "finished" and session["wall_seconds"] > 0 and session["last_epoch"] == 1
    assert second["sessions"] == [session] and "## Sessions" not in (run / "report.md").read_text()


def test_a_finished_run_made_before_split_digests_gets_them_when_read_back(trained, tmp_path):
    """--resume of a finished run made before split_digests.json was recorded left it without one, so every
    `evaluate --data` read its training images again; read back, it is written when all its split's images are there."""
    root, summary = trained
    run = tmp_path / "segment" / "before-digests"
    shutil.copytree(summary["run_dir"], run)
    digests = run / "split_digests.json"
    recorded = digests.read_text()
    digests.unlink()
    options = {"overrides": {"epochs": 12, "batch_size": 8, "lr": 1e-2, "channels_last": False}, "crop_size": 32}
    again = train_segmentation_folder(
        str(root), "unet", output=str(tmp_path), name=run.name, resume=True, progress=False, **options
    )
    assert again["finished_before"] and digests.read_text() == recorded


def test_a_finished_run_whose_split_digests_lack_masks_gets_them_when_read_back(trained, tmp_path):
    """A split_digests.json written before masks were recorded (the images' digests alone) stayed so when its finished
    run was read back, though one written where none was records the masks too. Read back, it gets them when every
    mask is still there and every image is the one it records; its images' digests are kept as they were."""
    root, summary = trained
    run = tmp_path / "segment" / "without-masks"
    shutil.copytree(summary["run_dir"], run)
    digests = run / "split_digests.json"
    recorded = json.loads(digests.read_text())
    assert recorded["masks"]
    digests.write_text(json.dumps({k: v for k, v in recorded.items() if k != "masks"}))
    options = {"overrides": {"epochs": 12, "batch_size": 8, "lr": 1e-2, "channels_last": False}, "crop_size": 32}

    def read_back():
        again = train_segmentation_folder(
            str(root), "unet", output=str(tmp_path), name=run.name, resume=True, progress=False, **options
        )
        assert again["finished_before"]

    with open(run / "split.csv", newline="") as f:
        row = next(csv.DictReader(f))
    image, mask = Path(row["path"]), Path(row["label"])
    mask.rename(tmp_path / "away.png")  # one mask gone: nothing added
    try:
        read_back()
    finally:
        (tmp_path / "away.png").rename(mask)
    assert "masks" not in json.loads(digests.read_text())
    original = image.read_bytes()
    image.write_bytes(original + b"\0")  # an image changed since: its mask now may not be the one it trained on
    try:
        read_back()
    finally:
        image.write_bytes(original)
    assert "masks" not in json.loads(digests.read_text())
    read_back()
    assert json.loads(digests.read_text()) == recorded


def test_figures_deleted_from_a_finished_run_are_drawn_again_when_read_back(trained, tmp_path):
    """--resume of a finished run whose figures were deleted read it back without them, though results.json holds the
    test pixels' confusion matrix and metrics.json the learning curves: both are drawn again as the run drew them.
    test_worst.png shows the model's masks of test images, a test pass: it stays missing, named so in the report."""
    root, summary = trained
    run = tmp_path / "segment" / "figures-deleted"
    shutil.copytree(summary["run_dir"], run)
    drawn = {name: (run / name).read_bytes() for name in ("test_confusion.png", "learning_curves.png")}
    for name in (*drawn, "test_worst.png", "report.md"):
        (run / name).unlink()
    options = {"overrides": {"epochs": 12, "batch_size": 8, "lr": 1e-2, "channels_last": False}, "crop_size": 32}
    again = train_segmentation_folder(
        str(root), "unet", output=str(tmp_path), name=run.name, resume=True, progress=False, **options
    )
    assert again["finished_before"] and not (run / "test_worst.png").exists()
    assert {name: (run / name).read_bytes() for name in drawn} == drawn
    report = (run / "report.md").read_text()
    assert "](test_confusion.png)" in report and "![learning curves](learning_curves.png)" in report
    assert "`test_worst.png` is not in the run folder" in report


def test_an_output_that_is_a_file_is_refused_in_one_line(tmp_path):
    # `train segment --data D -o afile` was an OSError, "afile is a file, where a folder is needed", exit code 1
    (tmp_path / "afile").write_text("kept")
    with pytest.raises(CnnlabError, match=r"^--output .*afile: .*afile is a file, not a folder$"):
        train_segmentation_folder(str(_folder(tmp_path / "data", count=12)), output=str(tmp_path / "afile"))
    assert (tmp_path / "afile").read_text() == "kept"


def test_ignore_index_is_left_out_of_loss_and_metrics(tmp_path):
    root = _folder(tmp_path / "data", count=12)
    for path in (root / "masks").iterdir():  # index masks: the top rows unlabelled
        rgb = np.asarray(Image.open(path).convert("RGB"))
        labels = np.zeros(rgb.shape[:2], dtype=np.uint8)
        labels[rgb.any(-1)] = 1
        labels[:5] = IGNORE_INDEX
        Image.fromarray(labels).save(path)
    (root / "classes.json").unlink()
    summary = train_segmentation_folder(
        str(root),
        output=str(tmp_path),
        name="i",
        overrides={"epochs": 1, "batch_size": 4},
        background=None,
        progress=False,
    )
    assert np.isfinite(summary["val_miou"])  # a target of 255 in the loss would have raised (out of 2 classes)
    # no background class: one mIoU, said once ("mIoU over every class 0.41; over every class 0.41")
    report = (tmp_path / "segment" / "i" / "report.md").read_text()
    assert summary["test"]["miou"] == summary["test"]["miou_with_bg"] and report.count("over every class") == 1
    labelled_pixels = summary["images"]["test"] * 32 * (32 - 5)
    assert int(torch.tensor(summary["test"]["confusion_matrix"]).sum()) == labelled_pixels
    assert list(summary["test"]["iou_per_class"]) == ["class 0", "class 1"]
    # evaluate of a folder naming the classes: "give the folder the run's classes.json", which the run never had
    (root / "classes.json").write_text(json.dumps([{"name": "background"}, {"name": "shape"}]))
    from cnnlab.tasks.evaluate import evaluate_folder

    with pytest.raises(
        CnnlabError,
        match=r"the run's are class 0, class 1 \(background, shape are not the run's; it lacks the run's class 0, "
        r"class 1\): remove it \(the run was trained on class-",
    ):
        evaluate_folder(summary["run_dir"], root, tmp_path / "evaluation")


def test_the_share_of_labelled_pixels_is_said_before_training_and_kept_not_refused(tmp_path, capsys):
    """Scribble masks 99.9% unlabelled (255) trained without a word: a folder whose masks lost their labels looked
    like any other until its metrics, computed on a few pixels, came out."""
    root = _folder(tmp_path / "data", count=12)
    for path in (root / "masks").iterdir():  # one scribbled pixel of background and one of the shape per mask
        rgb = np.asarray(Image.open(path).convert("RGB"))
        labels = np.full(rgb.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        labels[0, 0] = 0
        labels[tuple(np.argwhere(rgb.any(-1))[0])] = 1
        Image.fromarray(labels).save(path)
    (root / "classes.json").unlink()
    summary = train_segmentation_folder(  # as `train segment --data -q` trains: notes on the data, no progress
        str(root), output=str(tmp_path), name="s", overrides={"epochs": 1, "batch_size": 4}, progress=False, notes=True
    )
    said = capsys.readouterr()
    printed = said.out.splitlines()
    assert any(line.startswith("labelled pixels: 0.2% of train") for line in printed), printed
    # the engine's note on the weights tested too (-q silenced it with the progress), and no epoch line
    assert re.fullmatch(r"restored the weights of epoch 1 \(val_miou [0-9.]+\)\n", said.err), said.err
    assert summary["batch"] == {"batch_size": 4, "micro_batch_size": 4, "processes": 1, "oom_events": []}  # --json's
    counts = {part: (2 * images, 32 * 32 * images) for part, images in summary["images"].items()}
    assert summary["labelled_pixels"] == {part: list(pair) for part, pair in counts.items()}
    from cnnlab.tasks.segment_folder import describe_labelled

    line = describe_labelled(counts)
    assert line == (
        f"labelled pixels: 0.2% of train ({counts['train'][0]}), 0.2% of val ({counts['val'][0]}), 0.2% of test "
        f"({counts['test'][0]}); the rest are 255, unlabelled: the loss and the metrics leave them out"
    )
    assert line in printed
    report = (Path(summary["run_dir"]) / "report.md").read_text()
    assert "Labelled pixels: 0.2% of train" in report
    assert describe_labelled({"train": (1024, 1024), "val": (0, 0)}) is None  # every pixel labelled: nothing said
    # no two scribbled classes meet: no boundary to score (0/0), which the boundary F1 gave as 1.0
    not_measurable = "boundary F1 - (not measurable: no class boundary among the labelled mask pixels"
    assert summary["test"]["boundary_f1"] is None and not_measurable in report
    from cnnlab.tasks.evaluate import evaluate_folder, evaluation_lines

    test_pairs = _split_pairs(summary["run_dir"], "test", tmp_path / "test_pairs")
    evaluation = evaluate_folder(summary["run_dir"], test_pairs, tmp_path / "evaluation")
    assert evaluation["boundary_f1"] is None and evaluation["miou"] == summary["test"]["miou"]
    assert any(not_measurable in line for line in evaluation_lines(evaluation))
    assert json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())["boundary_f1"] is None


class _Stop(Exception):
    pass


def test_background_weight_weighs_only_the_background_class(tmp_path, monkeypatch):
    import cnnlab.tasks.segment_folder as segment_folder

    losses = []

    def capture(network, config, *, loss_fn, **kwargs):
        losses.append(loss_fn)
        raise _Stop

    monkeypatch.setattr(segment_folder, "Trainer", capture)
    root = _folder(tmp_path / "data", count=6)
    for background in (0, 2):
        with pytest.raises(_Stop):
            train_segmentation_folder(
                str(root), output=str(tmp_path), background=background, background_weight=0.2, progress=False
            )
    expected = torch.tensor([[0.2, 1, 1, 1], [1, 1, 0.2, 1]])
    torch.testing.assert_close(torch.stack([loss.weight for loss in losses]), expected)
    assert losses[0].ignore_index == IGNORE_INDEX


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"background_weight": 0.0}, "must be positive"),
        ({"background_weight": 0.2, "class_weight": "balanced"}, "choose one"),
        ({"background_weight": 0.2, "background": None}, "needs a background class"),
        # refused by the engine once the pairs were decoded, leaving split.csv and skipped.json in a run folder
        ({"overrides": {"batch_size": 1024, "auto_batch_size": True}}, "--batch-size auto: train segment --data"),
    ],
)
def test_bad_loss_weights_and_batch_options_give_one_line_errors_before_a_run_folder(tmp_path, options, message):
    root = _folder(tmp_path / "data", count=3)
    with pytest.raises(CnnlabError, match=message):
        train_segmentation_folder(str(root), output=str(tmp_path), progress=False, name="bad", **options)
    assert not (tmp_path / "segment" / "bad").exists()


def test_a_batch_size_above_the_training_pairs_is_refused_naming_them(tmp_path):
    # it trained one step of the pairs per epoch while config.yaml and results.json recorded the batch asked for
    root = _folder(tmp_path / "data", count=6)
    with pytest.raises(CnnlabError, match=r"--batch-size 1000 is more than the \d+ training pairs of .*; pass"):
        train_segmentation_folder(str(root), output=str(tmp_path), progress=False, overrides={"batch_size": 1000})


def test_balanced_class_weights_name_a_class_without_training_pixels(tmp_path):
    """The refusal spoke of "training images in every class", from transfer's image counts."""
    root = _folder(tmp_path / "data", count=3)
    classes = json.loads((root / "classes.json").read_text()) + [{"name": "unused", "color": [1, 2, 3]}]
    (root / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(CnnlabError, match="masks have no pixel of .*'unused'; leave --class-weight out"):
        train_segmentation_folder(str(root), output=str(tmp_path), class_weight="balanced", progress=False)


def test_classes_without_training_pixels_are_named_before_training_with_where_index_classes_came_from(
    tmp_path, monkeypatch, capsys
):
    """A class of classes.json that no training mask has, or a stray index 7 in one mask of a folder without
    classes.json (a head of 8 classes, 4 of them never seen), trained without a word."""
    import cnnlab.tasks.segment_folder as segment_folder

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(segment_folder, "Trainer", stop)
    root = _folder(tmp_path / "data", count=6)
    classes = json.loads((root / "classes.json").read_text()) + [{"name": "unused", "color": [1, 2, 3]}]
    (root / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(_Stop):
        train_segmentation_folder(str(root), output=str(tmp_path), name="c", progress=True)
    printed = capsys.readouterr().out.splitlines()
    assert "no training mask has a pixel of 'unused' (4): the model cannot learn it" in printed, printed
    (root / "classes.json").unlink()
    for path in sorted((root / "masks").iterdir()):  # index masks of background and one shape
        rgb = np.asarray(Image.open(path).convert("RGB"))
        labels = rgb.any(-1).astype(np.uint8)
        labels[0, 0] = 7 if path.name == "00000.png" else 0
        Image.fromarray(labels).save(path)
    with pytest.raises(_Stop):
        train_segmentation_folder(str(root), output=str(tmp_path), name="i", progress=True, overwrite=True)
    printed = capsys.readouterr().out.splitlines()
    (line,) = [line for line in printed if line.startswith("no training mask")]
    # the stray 7 is one pixel, where no region holds it: as JPEG compression or a smooth resize invents values
    assert f"mask value 7 (00000.png in {root}/masks) lies only in thin fringes where other classes meet" in (
        "\n".join(printed)
    )
    assert line.startswith("no training mask has a pixel of 'class 2' (2), 'class 3' (3), ")
    assert (
        f"(no classes.json: the classes are 0 to 7, the largest index in the masks, in {root}/masks/00000.png;" in line
    )
    from cnnlab.tasks.segment_folder import describe_untrained

    every = [(torch.zeros(1, 2, 2), torch.tensor([[0, 1], [255, 1]], dtype=torch.uint8))]
    assert describe_untrained(every, ["a", "b"], None) is None


def test_a_max_side_below_the_training_crop_is_refused(tmp_path):
    root = _folder(tmp_path / "data", count=3)
    with pytest.raises(CnnlabError, match="--max-side 32 is smaller than the 64 px training crops"):
        train_segmentation_folder(str(root), output=str(tmp_path), max_side=32, progress=False)
    # --crop-size 0 trained on the default 64 px crops without a word, where -1 and 7 were refused
    with pytest.raises(CnnlabError, match="--crop-size must be at least 8 px, got 0"):
        train_segmentation_folder(str(root), output=str(tmp_path), crop_size=0, progress=False)


def test_an_output_inside_the_data_folder_is_refused_before_anything_is_written(tmp_path):
    """A run written into its own --data folder put files among the user's images (and under images/, the next run
    read its PNGs as images without masks)."""
    root = _folder(tmp_path / "data", count=3)
    before = sorted(root.rglob("*"))
    for output in (root, root / "images" / "runs"):
        with pytest.raises(CnnlabError, match="--output .* is inside --data .*data: the run's files"):
            train_segmentation_folder(str(root), output=str(output), progress=False)
    assert sorted(root.rglob("*")) == before


def test_mixed_and_odd_sizes_train_and_predict_at_the_input_size(tmp_path, monkeypatch):
    """Mixed sizes train, and predict gives each image's size; the test pass segments each image as predict and
    evaluate do, in batches of one size (a batch padded to its largest image segmented the others' edges from that
    padding: evaluate of the run's test pairs scored other masks)."""
    import cnnlab.tasks.segment_folder
    from cnnlab.data.segmentation import pad_collate

    whole_batches = []  # the image sizes of each batch of whole images (validation's, then the test pass's)
    monkeypatch.setattr(
        cnnlab.tasks.segment_folder,
        "pad_collate",
        lambda batch: whole_batches.append([tuple(mask.shape) for _, mask in batch]) or pad_collate(batch),
    )
    sizes = ((29, 41), (37, 37), (50, 33))
    root = _folder(tmp_path / "data", count=12, sizes=sizes)
    summary = train_segmentation_folder(
        str(root),
        output=str(tmp_path),
        name="m",
        crop_size=32,
        class_weight="balanced",
        overrides={"epochs": 1, "batch_size": 4},
        progress=False,
    )
    assert summary["images"]["train"] + summary["images"]["val"] + summary["images"]["test"] == 12
    test_batches = whole_batches[(summary["images"]["val"] + 7) // 8 :]  # after one epoch's validation, 8 at once
    assert sum(map(len, test_batches)) == summary["images"]["test"], whole_batches
    assert all(len(set(sizes)) == 1 for sizes in test_batches), whole_batches
    segmenter = load_segmenter(summary["run_dir"])
    paths = [root / "images" / f"{i:05d}.png" for i in range(3)]
    results = predict_masks(segmenter, [*paths, tmp_path / "missing.png"], tmp_path / "out")
    for result, (height, width) in zip(results, sizes, strict=False):
        assert result["size"] == [width, height]
        for key in ("mask", "colour", "overlay"):
            with Image.open(result[key]) as written:
                assert written.size == (width, height)
        assert sum(result["share"].values()) == pytest.approx(1.0)
    assert results[-1]["error"] == "no such file"
    # the same file name in two folders: both results are kept
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / paths[0].name).write_bytes(paths[1].read_bytes())
    first, second = predict_masks(segmenter, [paths[0], twin / paths[0].name], tmp_path / "twins")
    assert first["mask"] != second["mask"] and Path(second["mask"]).name == f"{paths[0].stem}-2_mask.png"
    with Image.open(second["mask"]) as mask, Image.open(paths[1]) as image:
        assert mask.size == image.size
    with pytest.raises(CnnlabError, match="names a file, but a segmentation run writes three PNGs per image"):
        predict_masks(segmenter, paths[:1], tmp_path / "predictions.csv")  # it made a folder of that name
    assert not (tmp_path / "predictions.csv").exists()
    # an output folder that cannot be made is one line naming it (was an OSError on ".cnnlab-masks.jsonl", exit 1)
    with pytest.raises(CnnlabError, match=rf"--output {re.escape(str(paths[0]))}/out: .*00000.png is a file, not a"):
        predict_masks(segmenter, paths[:1], paths[0] / "out")


def test_a_run_trained_with_max_side_predicts_downscaled_and_returns_masks_at_the_image_size(tmp_path):
    """--max-side reads 48x64 pairs at 24x32: predict gives the model the same scale and the mask at 48x64, the
    export's record says how, and resuming under another --max-side (or none) is refused like the other options."""
    import shutil

    from cnnlab.tasks.export import export_model

    root = _folder(tmp_path / "data", count=12, sizes=((48, 64),))
    options = dict(output=str(tmp_path), name="s", crop_size=16, overrides={"epochs": 1, "batch_size": 4})
    summary = train_segmentation_folder(str(root), max_side=32, progress=False, **options)
    assert summary["max_side"] == 32 and "at most 32 px" in (Path(summary["run_dir"]) / "report.md").read_text()
    segmenter = load_segmenter(summary["run_dir"])
    seen = []
    segmenter.model.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    result = predict_masks(segmenter, [root / "images" / "00000.png"], tmp_path / "out")[0]
    assert seen == [(24, 32)] and result["size"] == [64, 48]
    for key in ("mask", "colour", "overlay"):
        with Image.open(result[key]) as written:
            assert written.size == (64, 48)
    record = json.loads(Path(export_model(summary["run_dir"], "torchscript")["preprocessing"]).read_text())
    assert record["max_side"] == 32 and "longer side is above 32 px to exactly 32 px" in record["resize"]
    # used without cnnlab, from its record alone, an export gives predict's masks: downscaled, upsampled back
    from exported_outside import exported_runner, read_record, segment_mask

    images = []
    for size in ((77, 41), (23, 30)):  # another aspect ratio to downscale; one within --max-side, kept as it is
        generator = torch.Generator().manual_seed(1)
        pixels = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(tmp_path / f"{size[0]}x{size[1]}.png")
        images.append(tmp_path / f"{size[0]}x{size[1]}.png")
    results = [result, *predict_masks(segmenter, images, tmp_path / "out")]  # the 48x64 image's, and these
    images = [root / "images" / "00000.png", *images]
    expected = [np.asarray(Image.open(result["mask"])) for result in results]
    model_file = Path(summary["run_dir"]) / "model.pt"  # ONNX: test_onnx_export_matches_pytorch_at_unseen_sizes
    record = read_record(model_file)
    # mean/std where every kind keeps them (a segmenter's were at the top, a classifier's under "record")
    normalisation = {"mean": list(segmenter.mean), "std": list(segmenter.std)}
    assert record["kind"] == "segmenter" and record["normalisation"] == normalisation and "mean" not in record
    meta = json.loads((Path(summary["run_dir"]) / "model.json").read_text())["meta"]
    assert (meta["kind"], meta["normalisation"]) == ("segmenter", normalisation) and "model" not in meta
    assert meta["recipe"] == json.loads((Path(summary["run_dir"]) / "results.json").read_text())["model"]
    run = exported_runner(model_file, record)
    for path, mask in zip(images, expected, strict=True):
        np.testing.assert_array_equal(segment_mask(record, run, path), mask, err_msg=path.name)
    # evaluate scores predict's full-size masks, and at the size the test pass scored: results.json's test scores
    from cnnlab.tasks.evaluate import evaluate_folder, evaluation_lines

    test_pairs = _split_pairs(summary["run_dir"], "test", tmp_path / "test_pairs")
    evaluation = evaluate_folder(summary["run_dir"], shutil.copy(root / "classes.json", test_pairs) and test_pairs)
    assert evaluation["at_max_side"] == summary["test"]
    assert sum(map(sum, evaluation["confusion_matrix"])) == 48 * 64 * summary["images"]["test"]  # full size
    assert sum(map(sum, summary["test"]["confusion_matrix"])) == 24 * 32 * summary["images"]["test"]
    shown = "\n".join(evaluation_lines(evaluation))
    assert "downscaled to a longer side of at most 32 px" in shown
    assert f"pixel accuracy {summary['test']['pixel_accuracy']:.4f}, boundary F1" in shown.splitlines()[2]
    for other, shown in ((24, "24"), (None, "not given")):
        with pytest.raises(CnnlabError, match=f"extra.max_side: 32 -> {shown}"):
            train_segmentation_folder(str(root), max_side=other, resume=True, progress=False, **options)


@pytest.mark.parametrize("max_side", [256, 1000, 1024])
def test_the_exports_record_says_how_the_shorter_side_of_a_downscaled_image_is_rounded(max_side):
    """The record said 'exactly 256 px on that side, keeping the aspect ratio': a 3000x2000 photo downscaled by
    hand with the shorter side truncated (170 px, not predict's 171) gave a mask 0.25% of whose pixels differed."""
    from cnnlab.data.segmentation import downscaled_size
    from cnnlab.tasks.export import _segmenter_resize

    resize = _segmenter_resize(max_side)
    width, height = downscaled_size(3000, 2000, max_side)
    assert f"round(shorter side x {max_side} / longer side) px" in resize
    assert f"3000x2000 px becomes {width}x{height}" in resize and width == max_side
    assert height == round(2000 * max_side / 3000)


def test_a_resume_under_other_options_is_refused_before_a_pair_is_decoded(tmp_path, monkeypatch, capsys):
    """--resume --max-side 24 of a run trained at 32 decoded the whole folder (minutes for a folder of photos) before
    the engine refused it; the refusal comes first now, with the engine's message. Without classes.json the classes
    come from the masks, known only once they are decoded: the same options are not refused for them."""
    from cnnlab.data.segmentation import SegmentationFolder

    root = _folder(tmp_path / "data", count=12)
    colour_masks = SegmentationFolder(root)
    for index, path in enumerate(colour_masks.masks):  # class-index masks, no classes.json
        Image.fromarray(colour_masks.read(index)[1].numpy()).save(path)
    (root / "classes.json").unlink()
    options = dict(output=str(tmp_path), name="r", overrides={"epochs": 1, "batch_size": 4}, progress=False)
    finished = train_segmentation_folder(str(root), crop_size=16, max_side=32, **options)
    run = tmp_path / "segment" / "r"
    report = (run / "report.md").read_text()

    def read(*args):
        raise _Stop

    monkeypatch.setattr(SegmentationFolder, "read", read)
    for changed, message in (
        ({"crop_size": 16, "max_side": 24}, "extra.max_side: 32 -> 24"),
        ({"crop_size": 24, "max_side": 32}, "extra.crop_size: 16 -> 24"),
        ({"crop_size": 16, "max_side": 32, "val_fraction": 0.25}, "extra.val_fraction: 0.15 -> 0.25"),
    ):
        with pytest.raises(CnnlabError, match=rf"cannot resume .*segment/r with different options \({message}\)"):
            train_segmentation_folder(str(root), resume=True, **changed, **options)
    # the same options: the finished run is read back, not decoded and tested again (a second session); stopped
    # between its results.json and its report.md, that report alone is written, from what the run saved
    (run / "report.md").unlink()
    sessions = (run / "sessions.json").read_text()
    said = {**options, "progress": True}
    again = train_segmentation_folder(str(root), resume=True, crop_size=16, max_side=32, **said)
    assert again == {**finished, "finished_before": True}  # which the CLI says, as transfer's; and a line says
    assert capsys.readouterr().out == f"{run} is already finished; its report was missing, written from its " + (
        f"results.json: {run / 'report.md'}\n"
    )
    assert (run / "sessions.json").read_text() == sessions
    written = re.compile(r"- written: [^,]*,")  # when the report was written: the rest is the first one's
    assert written.sub("", (run / "report.md").read_text()) == written.sub("", report)
    # ... and renamed since: the report written back was titled with the name config.yaml recorded
    run.rename(run.with_name("renamed"))
    (run.with_name("renamed") / "report.md").unlink()
    # said without progress too (the CLI's -q, which drops progress alone)
    train_segmentation_folder(
        str(root), resume=True, crop_size=16, max_side=32, notes=True, **{**options, "name": "renamed"}
    )
    renamed = run.with_name("renamed")
    assert capsys.readouterr().out == f"{renamed} is already finished; its report was missing, written from its " + (
        f"results.json: {renamed / 'report.md'}\n"
    )
    title = (run.with_name("renamed") / "report.md").read_text().splitlines()[0]
    assert title == "# Segmentation run `renamed`", title
    run.with_name("renamed").rename(run)
    (run / "results.json").unlink()  # not finished: decoding starts
    with pytest.raises(_Stop):
        train_segmentation_folder(str(root), resume=True, crop_size=16, max_side=32, **options)


def test_explain_gives_a_max_side_run_its_images_downscaled_as_predict_does(tmp_path):
    """`cnnlab explain` ran a --max-side run on the image at full size, a scale it never saw, and refused a photo
    above 4 MP that the run reads at a fraction of that."""
    from cnnlab.tasks.explain import load_subject

    root = _folder(tmp_path / "data", count=6, sizes=((48, 64),))
    options = dict(output=str(tmp_path), name="s", crop_size=16, overrides={"epochs": 1, "batch_size": 4})
    summary = train_segmentation_folder(str(root), max_side=32, progress=False, **options)
    subject = load_subject(summary["run_dir"])
    assert subject.preprocess(Image.new("RGB", (64, 48))).shape == (3, 24, 32)
    subject.check_size(Image.new("RGB", (3000, 2000)), "photo.jpg")  # 6 MP, explained at 32x21


def test_explain_gives_a_max_side_run_the_class_shares_of_predicts_full_size_mask(trained, tmp_path):
    """`cnnlab explain` printed the shares of the pixels at the downscaled size (56.00%) where `cnnlab predict`,
    whose mask is the image's size, gave 55.74%."""
    import shutil

    from cnnlab.tasks.explain import explain_image, load_subject

    root, summary = trained  # it finds the shapes (a 1-epoch run finds only background); read at 24 px of 32
    run = shutil.copytree(summary["run_dir"], tmp_path / "run")
    record = json.loads((run / "model.json").read_text())
    record["meta"]["max_side"] = 24
    (run / "model.json").write_text(json.dumps(record))
    image = sorted((root / "images").iterdir())[0]
    predicted = predict_masks(load_segmenter(run), [image], tmp_path / "masks")[0]["share"]
    explained = dict(explain_image(run, image, tmp_path / "explained").top)
    assert len(explained) > 1 and explained == {k: pytest.approx(v) for k, v in predicted.items() if v > 0}
    subject = load_subject(str(run))
    with Image.open(image) as opened:
        downscaled = subject.probabilities(subject.preprocess(opened.convert("RGB")))  # 24x24: what it printed
    assert any(abs(float(downscaled[CLASSES.index(k)]) - v) > 1e-3 for k, v in predicted.items())


def test_upsampled_logits_give_the_class_map_of_all_classes_upsampled_at_once():
    """`class_map` upsamples one class at a time to bound its memory; the map is the argmax of them all."""
    from cnnlab.tasks.segment_predict import class_map

    logits = torch.randn(1, 5, 6, 9, generator=torch.Generator().manual_seed(0))
    reference = torch.nn.functional.interpolate(logits, size=(25, 31), mode="bilinear", align_corners=False)
    assert torch.equal(class_map(logits, 25, 31).long(), reference.argmax(1)[0])
    assert torch.equal(class_map(logits, 6, 9).long(), logits.argmax(1)[0])


def test_train_segment_help_names_max_side():
    from typer.testing import CliRunner

    from cnnlab.cli import app

    result = CliRunner().invoke(app, ["train", "segment", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert "--max-side" in result.output and "the longer side is at most N px" in result.output


def test_predict_prints_the_classes_found_largest_first_and_json_every_class(trained, tmp_path):
    """It printed one line per class, most of them 0.00%, in the classes' order."""
    import json

    from typer.testing import CliRunner

    from cnnlab.cli import app

    root, summary = trained
    image = str(sorted((root / "images").iterdir())[0])
    arguments = ["predict", "--model", summary["run_dir"], image, "-o", str(tmp_path / "out")]
    shares = json.loads(CliRunner().invoke(app, [*arguments, "--json"]).stdout)["predictions"][0]["share"]
    assert len(shares) == 4  # background and three shapes
    printed = CliRunner().invoke(app, arguments)
    assert printed.exit_code == 0, printed.output
    found = sorted((share, name) for name, share in shares.items() if share > 0)[::-1]
    lines = printed.stdout.splitlines()[1:]
    assert [line.split()[0] for line in lines[: len(found)]] == [name for _, name in found]
    if len(found) < 4:
        other = 4 - len(found)
        plural = "class" if other == 1 else "classes"
        assert lines[len(found)] == f"  ({other} other {plural}: no pixels; --json lists every class)"


def test_predict_says_one_other_class_not_classes(capsys):
    from cnnlab.cli.predict import _class_shares

    _class_shares(
        {"image": "a.png", "size": [4, 2], "mask": "a_mask.png", "share": {"sky": 0.75, "roof": 0.25, "x": 0}}
    )
    assert capsys.readouterr().out.splitlines()[-1] == "  (1 other class: no pixels; --json lists every class)"


def test_loading_a_segmenter_reads_its_weights_file_once(trained, monkeypatch):
    """model.safetensors was read twice: once to load the weights, once more to hash them for --resume's record."""
    import hashlib

    import safetensors.torch

    from cnnlab.train.saved import load_model

    _, summary = trained
    weights = Path(summary["run_dir"]) / "model.safetensors"
    expected_digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    reads: list[str] = []
    read_bytes, load_file = Path.read_bytes, safetensors.torch.load_file

    def counted_read_bytes(path: Path) -> bytes:
        reads.extend(["read_bytes"] if path.name == weights.name else [])
        return read_bytes(path)

    def counted_load_file(filename, device="cpu"):
        reads.append("load_file")
        return load_file(filename, device=device)

    monkeypatch.setattr(Path, "read_bytes", counted_read_bytes)
    monkeypatch.setattr(safetensors.torch, "load_file", counted_load_file)
    segmenter = load_segmenter(summary["run_dir"])
    assert len(reads) == 1, reads
    assert segmenter.weights_sha256 == expected_digest
    saved = load_model(summary["run_dir"]).state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in segmenter.model.state_dict().items())


def test_an_interrupted_predict_shows_the_masks_it_wrote(trained, tmp_path, monkeypatch, capsys):
    """Ctrl+C printed nothing of the images already segmented, whose masks were on disk."""
    import sys

    import cnnlab.tasks.segment_predict
    from cnnlab.cli import main
    from cnnlab.data.folder import decode_image

    root, summary = trained
    images = [str(path) for path in sorted((root / "images").iterdir())[:5]]
    seen, interrupting = [], [True]

    def interrupted_at_the_4th(path):
        seen.append(path)
        if interrupting and len(seen) == 4:
            raise KeyboardInterrupt
        return decode_image(path)

    monkeypatch.setattr(cnnlab.tasks.segment_predict, "decode_image", interrupted_at_the_4th)
    monkeypatch.setattr(sys, "argv", ["cnnlab", "predict", "-m", summary["run_dir"], "-o", str(tmp_path), *images])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130
    out, err = capsys.readouterr()
    assert f"stopped after 3 of 5 images; {tmp_path} holds their masks" in err
    assert [line.split(" ")[0] for line in out.splitlines() if not line.startswith(" ")] == images[:3]
    assert sorted(path.name for path in tmp_path.glob("*_mask.png")) == [f"{Path(p).stem}_mask.png" for p in images[:3]]
    assert not list(tmp_path.glob(".*.part"))  # each file is complete under a temporary name, then renamed

    # --resume segments only the two images left; what it reads back from the masks is what segmenting gives
    from cnnlab.tasks.segment_predict import iter_masks, load_segmenter, predict_masks

    interrupting.clear()
    monkeypatch.setattr(sys, "argv", [*sys.argv, "--resume"])
    with pytest.raises(SystemExit) as finished:
        main()
    assert finished.value.code == 0
    out, err = capsys.readouterr()
    assert "resumed: 3 images already segmented" in err
    assert [line.split(" ")[0] for line in out.splitlines() if not line.startswith(" ")] == images[3:]
    assert len(list(tmp_path.glob("*_overlay.png"))) == 5
    segmenter = load_segmenter(summary["run_dir"])
    read_back = list(iter_masks(segmenter, images, tmp_path, resume=True))
    assert all(result.get("resumed") for result in read_back)
    fresh = predict_masks(segmenter, images, tmp_path / "fresh")
    assert [result["share"] for result in read_back] == [result["share"] for result in fresh]


def test_predict_decodes_each_image_once_with_the_masks_it_gave_decoded_twice(trained, tmp_path, monkeypatch):
    """check_image and then load_image decoded every image twice (as classifier predict did); once, the masks and
    shares are those of the image loaded as load_image gives it."""
    from cnnlab.data.folder import load_image
    from cnnlab.tasks.segment_predict import segment_image

    root, summary = trained
    segmenter = load_segmenter(summary["run_dir"])
    images = sorted((root / "images").iterdir())[:2]
    expected = [segment_image(segmenter, load_image(path)) for path in images]
    opened: list[object] = []
    original_open = Image.open

    def counting_open(source, *args, **kwargs):
        opened.append(source)
        return original_open(source, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    results = predict_masks(segmenter, images, tmp_path / "out")
    monkeypatch.undo()
    assert len(opened) == len(images), opened
    for result, labels in zip(results, expected, strict=True):
        with Image.open(result["mask"]) as mask:
            assert np.array_equal(np.asarray(mask), labels)


def test_a_predict_stopped_between_an_images_renames_is_resumed_not_refused(trained, tmp_path, monkeypatch):
    """Stopped after an image's mask took its name and before the log said the image was finished, `--resume`
    refused the folder: "holds x_mask.png, which cnnlab predict did not write"."""
    import os

    from cnnlab.tasks.segment_predict import iter_masks, load_segmenter

    root, summary = trained
    images = [str(path) for path in sorted((root / "images").iterdir())[:3]]
    segmenter = load_segmenter(summary["run_dir"])
    renames, replace = [], os.replace

    def stopped_at_the_5th(source, target):  # the 2nd image's colour file: its mask is already in place
        renames.append(target)
        if len(renames) == 5:
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(os, "replace", stopped_at_the_5th)
    with pytest.raises(KeyboardInterrupt):
        list(iter_masks(segmenter, images, tmp_path))
    monkeypatch.undo()
    second = Path(images[1]).stem
    assert (tmp_path / f"{second}_mask.png").is_file() and not (tmp_path / f"{second}_colour.png").is_file()
    resumed = list(iter_masks(segmenter, images, tmp_path, resume=True))
    assert [result.get("resumed", False) for result in resumed] == [True, False, False]
    assert sorted(path.name for path in tmp_path.glob("*.png")) == sorted(
        f"{Path(image).stem}_{kind}.png" for image in images for kind in ("colour", "mask", "overlay")
    )
    assert not list(tmp_path.glob(".*.part"))


def test_images_of_one_name_never_share_result_files(trained, tmp_path):
    """x-2.png, a/x.png and b/x.png: a/x.png was given x-2's files (the second x), overwriting x-2.png's mask."""
    import dataclasses

    from cnnlab.tasks.segment_predict import load_segmenter, output_stems, predict_masks

    assert output_stems(["x-2.png", "a/x.png", "b/x.png", "c/x.jpg"]) == ["x-2", "x", "x-3", "x-4"]
    root, summary = trained
    sizes = {"x-2.png": (37, 21), "a/x.png": (30, 40), "b/x.png": (25, 19)}
    paths = []
    for name, size in sizes.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(next((root / "images").iterdir())).convert("RGB").resize(size).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    segmenter = load_segmenter(summary["run_dir"])
    results = predict_masks(segmenter, paths, tmp_path / "out")
    assert len({result["mask"] for result in results}) == 3
    for result, size in zip(results, sizes.values(), strict=True):
        assert Image.open(result["mask"]).size == size

    # --resume keeps only what this model made of these images: another model's, or a changed image, is redone
    kept = [result.get("resumed", False) for result in predict_masks_resumed(segmenter, paths, tmp_path / "out")]
    assert kept == [True, True, True]
    Image.new("RGB", (30, 40)).save(tmp_path / "a/x.png")
    kept = [result.get("resumed", False) for result in predict_masks_resumed(segmenter, paths, tmp_path / "out")]
    assert kept == [True, False, True]
    other = dataclasses.replace(segmenter, weights_sha256="another model")
    kept = [result.get("resumed", False) for result in predict_masks_resumed(other, paths, tmp_path / "out")]
    assert kept == [False, False, False]
    kept = [result.get("resumed", False) for result in predict_masks_resumed(segmenter, paths, tmp_path / "out")]
    assert kept == [False, False, False]  # the files are the other model's now
    kept = [result.get("resumed", False) for result in predict_masks_resumed(segmenter, paths[1:], tmp_path / "out")]
    assert kept == [True, False]  # b/x.png is x-2 now, whose files are another image's


def test_predict_into_the_images_folder_never_replaces_a_users_mask_nor_segments_its_own(
    trained, tmp_path, monkeypatch, capsys
):
    """-o the image folder replaced the user's x_mask.png; a second predict over it segmented the masks it wrote."""
    from cnnlab.cli import main

    root, summary = trained
    first, second = sorted((root / "images").iterdir())[:2]
    (tmp_path / "x.png").write_bytes(first.read_bytes())
    (tmp_path / "y.png").write_bytes(second.read_bytes())
    (tmp_path / "x_mask.png").write_bytes(b"the user's own mask")

    def predict(*options: str, images: tuple[str, ...] = (str(tmp_path),)) -> tuple[int, str, str]:
        monkeypatch.setattr(
            sys, "argv", ["cnnlab", "predict", "-m", summary["run_dir"], *images, "-o", str(tmp_path), *options]
        )
        with pytest.raises(SystemExit) as exit_code:
            main()
        return exit_code.value.code, *capsys.readouterr()

    code, out, err = predict()
    assert code == 2 and f"--output {tmp_path} holds x_mask.png, which cnnlab predict did not write" in err
    assert err.endswith("or pass --overwrite to replace it\n")
    assert err.count("\n") == 1 and (tmp_path / "x_mask.png").read_bytes() == b"the user's own mask"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["x.png", "x_mask.png", "y.png"]  # nothing written
    code, out, err = predict("--overwrite")  # an image given (x_mask.png, in the folder) is never replaced
    assert code == 2 and "holds x_mask.png, one of the images given, which predicting would replace" in err
    code, out, err = predict("--overwrite", images=(str(tmp_path / "x.png"),))  # replaced when asked, as fcn scan's
    assert code == 0 and Image.open(tmp_path / "x_mask.png").size == Image.open(tmp_path / "x.png").size
    for _ in range(2):  # the second time, the six files the first wrote are not images to segment
        code, out, err = predict()
        assert code == 0
        assert [line.split(" ")[0] for line in out.splitlines() if not line.startswith(" ")] == [
            str(tmp_path / "x.png"),
            str(tmp_path / "y.png"),
        ]
    assert "left out 6 files cnnlab predict wrote" in err
    assert len(list(tmp_path.glob("*.png"))) == 2 + 6


def predict_masks_resumed(segmenter, paths, output):
    from cnnlab.tasks.segment_predict import iter_masks

    return list(iter_masks(segmenter, paths, output, resume=True))


def test_onnx_export_matches_pytorch_at_unseen_sizes(trained, tmp_path):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from cnnlab.layers.normalize import Normalize
    from cnnlab.tasks.export import export_model

    _, summary = trained
    result = export_model(summary["run_dir"], "onnx", tmp_path / "m.onnx")
    assert result["max_abs_difference"] < 1e-4
    segmenter = load_segmenter(summary["run_dir"])
    reference = torch.nn.Sequential(Normalize(segmenter.mean, segmenter.std), segmenter.model).eval()
    images = torch.rand(1, 3, 57, 23)
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    with torch.inference_mode():
        expected = reference(images)
    assert exported.shape == expected.shape == (1, 4, 57, 23)
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=0)
    # used without cnnlab, from its record alone, it gives predict's masks
    from exported_outside import exported_runner, read_record, segment_mask

    root = trained[0]
    images = [root / "images" / "00000.png", root / "images" / "00007.png"]
    results = predict_masks(segmenter, images, tmp_path / "masks")
    record = read_record(tmp_path / "m.onnx")
    run = exported_runner(tmp_path / "m.onnx", record)
    for path, result in zip(images, results, strict=True):
        np.testing.assert_array_equal(segment_mask(record, run, path), np.asarray(Image.open(result["mask"])))


def test_pt2_export_matches_pytorch_at_sizes_it_was_not_traced_at(trained, tmp_path):
    """It was refused: torch.export could not prove the padding to the stride for every height and width (the padded
    size as a remainder, the crop as a slice whose layout depends on whether it keeps whole rows)."""
    import json

    from cnnlab.layers.normalize import Normalize
    from cnnlab.tasks.export import export_model

    _, summary = trained
    result = export_model(summary["run_dir"], "pt2", tmp_path / "m.pt2")
    assert result["max_abs_difference"] < 1e-5
    segmenter = load_segmenter(summary["run_dir"])
    stride = segmenter.model.output_stride
    reference = torch.nn.Sequential(Normalize(segmenter.mean, segmenter.std), segmenter.model).eval()
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    for shape in [(1, 3, 57, 23), (3, 3, 2 * stride, 5 * stride), (1, 3, stride + 1, stride + 1)]:
        images = torch.rand(shape)
        with torch.inference_mode():
            expected, exported = reference(images), program(images)
        assert exported.shape == expected.shape == (shape[0], 4, *shape[2:])
        torch.testing.assert_close(exported, expected, atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "m.pt2.preprocessing.json").read_text())
    assert f"H and W of at least {stride + 1}" in record["input"] and record["input_shape"] == ["N", 3, "H", "W"]


def test_bad_files_are_listed_and_skipped(tmp_path, capsys):
    """Each is listed in skipped.json and named before training (the console said only "5 skipped" at the end).
    And test_worst.png paints the classes in classes.json's colours: it painted them, legend included, in the
    default palette, so a class the masks (and `cnnlab predict`'s colour PNGs) show pure blue was shown red."""
    from cnnlab.data.segmentation import class_colours

    root = _folder(tmp_path / "data", count=10)
    chosen = np.array([[0, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0]], dtype=np.uint8)
    for path in (root / "masks").iterdir():  # the same classes, in colours of the user's
        rgb = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(chosen[np.argmax((rgb[:, :, None] == class_colours(4)).all(-1), -1)]).save(path)
    classes = [{"name": name, "color": colour} for name, colour in zip(CLASSES, chosen.tolist(), strict=True)]
    (root / "classes.json").write_text(json.dumps(classes))
    (root / "masks" / "00000.png").unlink()  # image without mask
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(root / "masks" / "00001.png")  # wrong size
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(root / "masks" / "00002.png")  # unknown colour
    (root / "images" / "00003.png").write_bytes(b"not a png")  # undecodable
    (root / "images" / "00009.png").write_bytes((root / "images" / "00004.png").read_bytes())  # a copy: kept once
    summary = train_segmentation_folder(
        str(root), output=str(tmp_path), name="b", overrides={"epochs": 1, "batch_size": 2}, progress=True
    )
    assert summary["skipped"] == 5
    named = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped ")]
    assert (
        len(named) == 5 and named[0].startswith(f"skipped {root / 'images' / '00000.png'}: ") and "no mask" in named[0]
    )
    skipped = json.loads((tmp_path / "segment" / "b" / "skipped.json").read_text())
    reasons = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in skipped}
    assert "no mask" in reasons["00000.png"]
    assert "20x20" in reasons["00001.png"]
    assert "(7, 7, 7)" in reasons["00002.png"]
    assert "00003.png" in reasons
    assert reasons["00009.png"].startswith(f"a byte-identical copy of {root / 'images' / '00004.png'}")
    split = (tmp_path / "segment" / "b" / "split.csv").read_text()
    assert "00000.png" not in split and "00004.png" in split and "00009.png" not in split
    figure = np.asarray(Image.open(tmp_path / "segment" / "b" / "test_worst.png").convert("RGB")).reshape(-1, 3)
    present = {tuple(colour) for colour in figure.tolist()}
    assert all(tuple(colour) in present for colour in chosen[1:].tolist())  # the legend's patches
    assert not any(tuple(colour) in present for colour in class_colours(4)[1:].tolist())


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist; pass a folder with images/ and masks/"),
        ("empty", "needs images/ and masks/"),
        ("a-file", "is a file; pass a folder"),
        ("no-masks", "has a mask"),
        ("all-bad", r"no usable image\+mask pair"),
    ],
)
def test_bad_folders_give_one_line_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "empty":
        root.mkdir()
    if layout == "a-file":
        root.write_text("not a folder")
    if layout not in ("missing", "empty", "a-file"):
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "images" / "a.png")
    if layout == "all-bad":
        Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(root / "masks" / "a.png")
    with pytest.raises(CnnlabError, match=message) as error:
        train_segmentation_folder(str(root), output=str(tmp_path), progress=False)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("available", "refused"), [(60_000, True), (62_000, False), (None, False)])
def test_a_folder_too_large_for_memory_is_refused_before_it_is_decoded(
    tmp_path, monkeypatch, capsys, available, refused
):
    """A few hundred phone photos were decoded for minutes, whole, until the process was killed for memory without
    a word. 12 pairs of 32x32 take 49,152 bytes (RGB + mask); at most 80% of the memory available may go to them;
    where the system does not say what is available (macOS, Windows) the pairs are read."""
    import cnnlab.tasks.segment_folder as segment_folder
    from cnnlab.data.segmentation import SegmentationFolder

    def read(*args):
        raise _Stop

    root = _folder(tmp_path / "data", count=12)
    monkeypatch.setattr(segment_folder, "available_memory_bytes", lambda: available)
    monkeypatch.setattr(SegmentationFolder, "read", read)
    if refused:
        with pytest.raises(
            CnnlabError, match=r"data holds 12 image\+mask pairs, about 49 kB decoded, more than 80% of the 60 kB"
        ) as error:
            train_segmentation_folder(str(root), output=str(tmp_path), progress=True)
        assert "\n" not in str(error.value)
    else:
        with pytest.raises(_Stop):  # decoding started
            train_segmentation_folder(str(root), output=str(tmp_path), progress=True)
    shown = "" if available is None else f" of the {available // 1000} kB available"
    assert capsys.readouterr().out.splitlines()[0] == f"decoding 12 image+mask pairs: about 49 kB in memory{shown}"


@pytest.mark.parametrize(("available", "refused"), [(700_000, False), (300_000, True)])
def test_whole_image_validation_runs_fewer_images_at_once_or_is_refused_before_training(
    tmp_path, monkeypatch, capsys, available, refused
):
    """Validation and test ran whole images 2 x --batch-size at a time with no estimate: a folder of 12 MP photos
    trained its first epoch, then tried 32 photos at once (about 140 GB for the U-Net) and was killed. A 32x32 image
    takes the U-Net about 380 kB whole (traced on the meta device): with 560 kB to use, 1 at a time; with 240 kB, the
    image is refused before training."""
    import cnnlab.tasks.segment_folder as segment_folder
    import cnnlab.train.trainer as engine

    root = _folder(tmp_path / "data", count=12)
    monkeypatch.setattr(segment_folder, "available_memory_bytes", lambda: available)
    options = dict(output=str(tmp_path), crop_size=16, val_fraction=0.25, test_fraction=0.25, progress=True)
    overrides = {"epochs": 1, "batch_size": 4, "device": "cpu"}
    if refused:
        monkeypatch.setattr(engine.Trainer, "fit", lambda *args: pytest.fail("trained"))
        with pytest.raises(
            CnnlabError, match=r"data/images/\d+\.png \(32x32 px, a (validation|test) image\) takes about"
        ) as e:
            train_segmentation_folder(str(root), overrides=overrides, **options)
        assert "of memory free on cpu; downscale it" in str(e.value)
        return
    summary = train_segmentation_folder(str(root), overrides=overrides, **options)
    assert summary["images"]["val"] == 3 and summary["images"]["test"] == 3
    assert "validation and test segment whole images 1 at a time, not 8" in capsys.readouterr().out


def test_the_test_phase_keeps_only_the_worst_images_predictions(tmp_path, monkeypatch):
    """Every test image's prediction was held to the end (int64 views of their padded batches: 96 MB or more for each
    12 MP photo) to draw the 6 worst; only those 6 are kept now, and they are still the 6 worst."""
    import weakref

    import cnnlab.tasks.segment_folder as segment_folder

    root = _folder(tmp_path / "data", count=24)
    scored, alive = [], []

    class RecordingScores(segment_folder.MaskScores):  # the test pass scores each image's prediction through it
        def add(self, predicted, target):
            scored.append(weakref.ref(predicted))
            alive.append(sum(ref() is not None for ref in scored))
            return super().add(predicted, target)

    monkeypatch.setattr(segment_folder, "MaskScores", RecordingScores)
    summary = train_segmentation_folder(
        str(root), output=str(tmp_path), crop_size=16, test_fraction=0.5, overrides={"epochs": 1}, progress=False
    )
    assert summary["images"]["test"] == 12 and len(alive) == 12
    assert max(alive) <= segment_folder.WORST_IMAGES + 1  # those kept and the one being scored
    errors = [image["pixel_error"] for image in summary["worst_test_images"]]
    assert len(errors) == segment_folder.WORST_IMAGES and errors == sorted(errors, reverse=True)


def test_a_refusal_for_memory_names_a_max_side_that_fits_and_the_estimate_uses_it(tmp_path, monkeypatch, capsys):
    import cnnlab.tasks.segment_folder as segment_folder

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.new("RGB", (600, 450)).save(root / "images" / "a.png")
    Image.new("L", (600, 450)).save(root / "masks" / "a.png")
    monkeypatch.setattr(segment_folder, "available_memory_bytes", lambda: 1_000_000)
    message = r"about 1.1 MB decoded, .*; pass --max-side 512 to downscale each as it is read \(about 0.8 MB\)$"
    with pytest.raises(CnnlabError, match=message):  # 512 x 384 x 4 bytes: within 80% of 1 MB
        train_segmentation_folder(str(root), output=str(tmp_path), progress=False)
    with pytest.raises(CnnlabError, match="every pixel of the masks"):  # read, downscaled: then refused for its mask
        train_segmentation_folder(str(root), output=str(tmp_path), max_side=300, progress=True)
    shown = "decoding 1 image+mask pair (longer side at most 300 px): about 0.3 MB in memory of the 1.0 MB available"
    assert capsys.readouterr().out.splitlines()[0] == shown
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: each process holds its own copy, and the line says so
    with pytest.raises(CnnlabError, match="every pixel of the masks"):
        train_segmentation_folder(str(root), output=str(tmp_path), max_side=300, progress=True)
    shown = "about 0.5 MB in memory (2 processes x 0.3 MB) of the 1.0 MB available"
    assert capsys.readouterr().out.splitlines()[0].endswith(shown)
    with pytest.raises(CnnlabError, match=r"about 2.2 MB decoded \(2 processes x 1.1 MB\), more than"):
        train_segmentation_folder(str(root), output=str(tmp_path), progress=False)


@pytest.mark.parametrize("options", [["--data", "nowhere"], ["--model", "unet-lite0"], ["--background-weight", "0"]])
def test_the_command_line_reports_a_bad_folder_on_one_line(tmp_path, monkeypatch, capsys, options):
    stderr = _refused(tmp_path, monkeypatch, capsys, options)
    assert stderr.startswith("error: ") and stderr.count("\n") == 1


def _refused(tmp_path, monkeypatch, capsys, options: list[str]) -> str:
    """What `cnnlab train segment OPTIONS`, run in `tmp_path`, prints on stderr; it must exit with code 2."""
    from cnnlab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnnlab", "train", "segment", *options])
    with pytest.raises(SystemExit) as exit_code:
        main()
    assert exit_code.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--data", "pairs", "--upsample", "bilinear"], "error: --upsample: for the MNIST canvases only"),
        (["--data", "pairs", "--recipe", "accurate", "--pretrain-epochs", "2"], "--recipe, --pretrain-epochs: for the"),
        # each says what it is for: all ended "a folder run (--data) chooses its network with --model"
        (["--data", "pairs", "--train-canvases", "9"], "(--train-canvases: how many canvases are made to train on,"),
        (["--data", "pairs", "--pretrain-epochs", "1"], "(--pretrain-epochs: pretrains the canvas U-Net's encoder"),
        (["--crop-size", "32", "--hflip"], "error: --crop-size, --hflip: for a folder run only; add --data DIR"),
        (["--split-seed", "0"], "--split-seed: for a folder run only"),  # typed, even at its default value
        (["--max-side", "1024"], "--max-side: for a folder run only"),
    ],
)
def test_an_option_of_the_other_kind_of_run_is_refused(tmp_path, monkeypatch, capsys, options, message):
    """A folder run ignored --upsample, --recipe ... and a canvas run --crop-size, --hflip ... without a word."""
    stderr = _refused(tmp_path, monkeypatch, capsys, options)
    assert message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("model", ["unet-lite0", "fcn8s-lite0"])
def test_pretrained_encoder_models_train_and_keep_the_weights_normalisation(tmp_path, model):
    from cnnlab.models import create_model

    root = _folder(tmp_path / "data", count=9)
    summary = train_segmentation_folder(
        str(root), model, output=str(tmp_path), name=model, overrides={"epochs": 1, "batch_size": 4}, progress=False
    )
    assert summary["pretrained"] is True
    record = create_model("efficientnet_lite0", pretrained=True).pretrained_cfg
    segmenter = load_segmenter(summary["run_dir"])
    assert segmenter.mean == tuple(record.mean) and segmenter.std == tuple(record.std)
    result = predict_masks(segmenter, [root / "images" / "00000.png"], tmp_path / "out")[0]
    with Image.open(result["mask"]) as mask:
        assert mask.size == (32, 32)


def test_resume_of_a_run_that_never_started_is_refused_before_its_folder_is_made(tmp_path):
    root = _folder(tmp_path / "data", count=12)
    with pytest.raises(CnnlabError, match="--resume: there is no run at .*never-started"):
        train_segmentation_folder(
            str(root), output=str(tmp_path / "runs"), name="never-started", resume=True, progress=False
        )
    assert not (tmp_path / "runs" / "segment" / "never-started").exists()  # split.csv was written there


def test_explain_a_segmentation_run_shows_its_largest_shape_class_at_the_decoders_stride_4(trained, tmp_path):
    """`cnnlab explain` refused a segmentation run ("not a classifier")."""
    from typer.testing import CliRunner

    from cnnlab.cli import app
    from cnnlab.report.explain import spatial_layers
    from cnnlab.tasks.explain import explain_image, load_subject

    root, summary = trained
    image = sorted((root / "images").iterdir())[0]
    result = explain_image(summary["run_dir"], image, tmp_path / "out")
    assert sorted(result.files) == ["feature_maps", "filters", "gradcam"]
    assert all(path.is_file() for path in result.files.values())
    assert result.scores == "pixel share" and sum(share for _, share in result.top) == pytest.approx(1.0)
    shares = dict(result.top)
    others = {name: share for name, share in shares.items() if name != "background"}
    if others:  # the background is explained only when nothing else is found
        assert result.label == max(others, key=others.get) and result.probability == pytest.approx(others[result.label])
    subject = load_subject(summary["run_dir"])
    with Image.open(image) as opened:
        layers = spatial_layers(subject.model, subject.preprocess(opened.convert("RGB")))
    names = [name for name, _ in layers]
    bottleneck = max(i for i, (_, (_, h, w)) in enumerate(layers) if h * w == min(h * w for _, (_, h, w) in layers))
    height, width = layers[-1][1][1:]
    assert names.index(result.cam_layer) > bottleneck  # in the decoder, at a quarter of the image's side
    assert dict(layers)[result.cam_layer][1:] == (-(-height // 4), -(-width // 4))
    printed = CliRunner().invoke(app, ["explain", summary["run_dir"], str(image), "-o", str(tmp_path / "cli")])
    assert printed.exit_code == 0, printed.output
    assert "of the pixels" in printed.output and "classes by their share of the pixels" in printed.output
    # its model.json and weights file, which predict takes, were refused as "not a classifier; use cnnlab predict"
    for saved in ("model.json", "model.safetensors"):
        assert load_subject(str(Path(summary["run_dir"]) / saved)).kind == "segment"


def test_a_process_other_than_rank_zero_writes_nothing_in_the_run(tmp_path, monkeypatch):
    # Under torchrun every process wrote split.csv, skipped.json and the saved model into the same folder at once.
    root = _folder(tmp_path / "data", count=12)
    monkeypatch.setenv("RANK", "1")  # what torchrun sets; with no process group, is_main_process() reads it
    summary = train_segmentation_folder(
        str(root), output=str(tmp_path / "runs"), name="r1", overrides={"epochs": 1, "batch_size": 4}, progress=False
    )
    run_dir = tmp_path / "runs" / "segment" / "r1"
    assert summary == {"run_dir": str(run_dir)}
    assert [p for p in run_dir.rglob("*") if p.is_file()] == []


def test_a_run_interrupted_in_its_first_epoch_resumes(tmp_path, monkeypatch):
    # Ctrl+C said "continue with the same command and --resume", which then failed: "--resume: no checkpoint at
    # .../checkpoint.pt; start the run without --resume" (the split had been written, no epoch had finished).
    import cnnlab.train.trainer as engine

    root = _folder(tmp_path / "data", count=12)
    options = dict(output=str(tmp_path / "runs"), name="i", overrides={"epochs": 1, "batch_size": 4}, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine.Trainer, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_segmentation_folder(str(root), **options)
    # a run started before split_digests.json was recorded: a resume kept its split and never wrote them, so each
    # `evaluate --data` of it read every training image again to know copies of them
    digests = tmp_path / "runs" / "segment" / "i" / "split_digests.json"
    recorded = digests.read_text()
    digests.unlink()
    # Stopped while the test figures were drawn (SIGKILL landed there in 3 of 4 kills of benchmarks/kill_resume.py):
    # the session had already been recorded as finished, with a wall time that left out its end, though the run had
    # no results and the next session tested it again.
    import cnnlab.report.plots as plots

    with monkeypatch.context() as patch:
        patch.setattr(plots, "plot_confusion_matrix", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_segmentation_folder(str(root), resume=True, **options)
    # Stopped after the pairs were read and split, while the model was built: that session was not recorded
    import cnnlab.models

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(cnnlab.models, "create_model", interrupted)
        train_segmentation_folder(str(root), resume=True, **options)
    sessions = json.loads((tmp_path / "runs" / "segment" / "i" / "sessions.json").read_text())
    assert [session["ended"] for session in sessions] == ["interrupted"] * 3
    assert sessions[2]["preparing"] == "setting up the run" and sessions[2]["wall_seconds"] > 0
    summary = train_segmentation_folder(str(root), resume=True, **options)
    assert summary["epochs"] == 1
    assert [session["ended"] for session in summary["sessions"]] == ["interrupted"] * 3 + ["finished"]
    assert digests.read_text() == recorded


def test_a_resume_refuses_images_whose_bytes_changed_since_its_split(tmp_path, monkeypatch):
    """An image of the split overwritten since (still a usable pair) was trained on by the resume without a word:
    split_digests.json was never compared. It is refused, naming how many changed; a run made before the record has
    nothing to compare and goes on."""
    import cnnlab.models
    import cnnlab.train.trainer as engine

    root = _folder(tmp_path / "data", count=12)
    options = dict(output=str(tmp_path / "runs"), name="c", overrides={"epochs": 1, "batch_size": 4}, progress=False)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(engine.Trainer, "train_step", interrupted)
        train_segmentation_folder(str(root), **options)
    image = root / "images" / "00003.png"
    pixels = np.array(Image.open(image))
    pixels[0, 0] = 255 - pixels[0, 0]  # another image, the same size, its mask still fits
    Image.fromarray(pixels).save(image)
    message = r"^1 image\(s\) of .*split.csv changed since the run's split was made \(first: .*00003.png: its bytes"
    with pytest.raises(CnnlabError, match=message):
        train_segmentation_folder(str(root), resume=True, **options)
    (tmp_path / "runs" / "segment" / "c" / "split_digests.json").unlink()  # a run made before it was recorded
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # past its split: the model is built
        patch.setattr(cnnlab.models, "create_model", interrupted)
        train_segmentation_folder(str(root), resume=True, **options)


def test_a_resume_refuses_masks_relabelled_since_its_split_each_mask_read_once(tmp_path, monkeypatch):
    """A mask of the split relabelled since (its image unchanged, still a usable pair) was trained on by the resume
    without a word: split_digests.json recorded the images alone, so the run's first epochs learnt one label and the
    rest another. It is refused, naming how many changed and the first, from the digests of the decode (each mask is
    read once); a record made before the masks were in it compares the images alone and the run goes on."""
    import cnnlab.models
    import cnnlab.train.trainer as engine
    from cnnlab.data.split import read_split_digests

    root = _folder(tmp_path / "data", count=12)
    options = dict(output=str(tmp_path / "runs"), name="m", overrides={"epochs": 1, "batch_size": 4}, progress=False)
    digests = tmp_path / "runs" / "segment" / "m" / "split_digests.json"
    mask_reads: list[str] = []
    counted_read_bytes = read_bytes_noting(root / "masks", mask_reads)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(engine.Trainer, "train_step", interrupted)
        patch.setattr(Path, "read_bytes", counted_read_bytes)
        train_segmentation_folder(str(root), **options)
    assert sorted(mask_reads) == sorted(path.name for path in (root / "masks").iterdir())  # each once
    parts = read_split_digests(digests)  # evaluate's reader: the images' digests, as before
    assert parts is not None and sum(len(found) for found in parts.values()) == 12
    colours = [tuple(c["color"]) for c in json.loads((root / "classes.json").read_text())]
    mask = root / "masks" / "00003.png"
    pixels = np.array(Image.open(mask))
    shape = np.isin(pixels.reshape(-1, 3) @ [65536, 256, 1], [r * 65536 + g * 256 + b for r, g, b in colours[1:]])
    shape = shape.reshape(pixels.shape[:2])
    pixels[shape] = colours[2] if not (pixels == colours[2]).all(-1).any() else colours[3]  # the shape relabelled
    Image.fromarray(pixels).save(mask)
    message = (
        r"^1 mask\(s\) of .*split.csv changed since the run's split was made \(first: .*masks/00003.png, the mask of "
        r"(train|val|test) image .*images/00003.png: its bytes are not those split_digests.json records for it\)"
    )
    mask_reads.clear()
    with monkeypatch.context() as patch, pytest.raises(CnnlabError, match=message):
        patch.setattr(Path, "read_bytes", counted_read_bytes)
        train_segmentation_folder(str(root), resume=True, **options)
    assert len(mask_reads) == 12
    record = json.loads(digests.read_text())
    del record["masks"]  # a run recorded before masks were: it resumes as before
    digests.write_text(json.dumps(record))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # past its split: the model is built
        patch.setattr(cnnlab.models, "create_model", interrupted)
        train_segmentation_folder(str(root), resume=True, **options)
    # its masks' digests added, as they are now (the sessions from here on keep them), its images' kept as they were
    assert json.loads(digests.read_text()) == {**record, "masks": json.loads(digests.read_text())["masks"]}
    assert len(json.loads(digests.read_text())["masks"]) == 12


def test_the_best_epoch_is_saved_and_tested_across_a_resume(tmp_path, monkeypatch):
    """The last epoch's weights were saved and tested while report.md said "Best val_miou at epoch N"; a resumed run
    must end on the best epoch's weights too, from the copy its checkpoint holds."""
    import cnnlab.tasks.segment_folder as task
    from cnnlab.train.config import environment_record
    from cnnlab.train.saved import load_model

    def with_a_gpu() -> dict:
        record = environment_record()
        return {**record, "hardware": {**record["hardware"], "cuda": "A GPU"}}

    monkeypatch.setattr(task, "environment_record", with_a_gpu)
    from worse_last_epoch import WorseLastEpoch

    root = _folder(tmp_path / "data", count=12)
    record = WorseLastEpoch(stop_before=2)  # interrupted after 2 of its 3 epochs, then resumed
    options = dict(
        output=str(tmp_path / "runs"),
        name="b",
        overrides={"epochs": 3, "batch_size": 4, "lr": 1e-2, "channels_last": False},
        crop_size=32,
        progress=False,
        callbacks=[record],
    )
    with pytest.raises(KeyboardInterrupt):
        train_segmentation_folder(str(root), **options)
    summary = train_segmentation_folder(str(root), resume=True, **options)
    run = Path(summary["run_dir"])
    history = json.loads((run / "metrics.json").read_text())
    scores = [row["val_miou"] for row in history]
    best = scores.index(max(scores)) + 1
    assert best < 3 and summary["saved_epoch"] == best and summary["saved_epoch_best"]
    assert summary["val_miou"] == scores[best - 1]
    saved = load_model(run).state_dict()
    assert all(torch.equal(saved[key], value) for key, value in record.weights[best].items())
    assert not all(torch.equal(saved[key], value) for key, value in record.weights[3].items())
    report = (run / "report.md").read_text()
    assert f"holds the weights of epoch {best}, the best val_miou" in report
    # the hardware line names the device trained on (a CPU here), not also the machine's GPU
    assert "A GPU" not in report and "written: " in report
    assert "(1.1 M params); given: epochs 3 (the recipe's 20), batch_size 4 (the recipe's 16)" in report
    table = report.split("| class | IoU |\n")[1].split("\n\n")[0].splitlines()[1:]
    assert table and all(re.fullmatch(r"\| .+ \| (\d\.\d{4}|absent|-) \|", row) for row in table), table  # 4 places


def test_a_resumed_run_whose_split_digests_lack_masks_gets_them(trained, tmp_path):
    """A resumed, unfinished run whose split_digests.json records the images alone (written before masks were) got no
    masks' digests, though a finished one read back gets them: the rest of its sessions could not tell relabelled
    masks. Resumed, the file gets them from the pairs just decoded, every image checked first; its images' kept."""
    from cnnlab.data.segmentation import SegmentationFolder
    from cnnlab.tasks.segment_folder import _split

    root, summary = trained
    shutil.copy(Path(summary["run_dir"]) / "split.csv", tmp_path / "split.csv")
    digests = tmp_path / "split_digests.json"
    recorded = json.loads((Path(summary["run_dir"]) / "split_digests.json").read_text())
    digests.write_text(json.dumps({k: v for k, v in recorded.items() if k != "masks"}))
    folder = SegmentationFolder(root, skip_bad=True)
    pairs = folder.read_all()
    split = _split(folder, pairs, tmp_path / "split.csv", 0.15, 0.15, 0, reuse=True, write=False)
    assert "masks" not in json.loads(digests.read_text())  # a torchrun rank but the first writes nothing
    assert _split(folder, pairs, tmp_path / "split.csv", 0.15, 0.15, 0, reuse=True) == split
    assert json.loads(digests.read_text()) == recorded


def test_a_classes_json_unlike_the_runs_is_refused_naming_the_difference_past_the_tenth_class():
    """`evaluate --data` with a classes.json of one class more or less than the run's eleven named both lists cut after
    ten classes, which read alike ("background, 0, ..., 8 and 2 more"): the difference went unsaid."""
    from cnnlab.tasks.evaluate import _classes_difference

    run = ["background", *(str(digit) for digit in range(10))]
    assert _classes_difference([*run, "x"], run) == "x is not the run's"
    assert _classes_difference(run[:-1], run) == "it lacks the run's 9"
    assert (
        _classes_difference(["BACKGROUND", *run[1:]], run)
        == "BACKGROUND is not the run's; it lacks the run's background"
    )
    reordered = [run[0], *reversed(run[1:])]
    assert _classes_difference(reordered, run) == "in another order: class 1 is 9 there, 0 in the run"
    assert _classes_difference([*run, "5"], run) == "12 classes there, a name repeated; 11 in the run"
