"""`cnnlab evaluate RUN --data DIR`: a transfer or segmentation run scored on a labelled folder of new images.

Nothing here classifies or segments on its own: a transfer run's images go through `cnnlab.tasks.predict.view_logits`
(the run's preprocessing record, each of its recorded views, the engine's inference path: what its own test pass ran
and, averaged over the views, what `cnnlab predict` gives), and the scores are `classification_test_report`'s, the
test report's. A segmentation run's images go through `cnnlab.tasks.segment_predict.segment_image`, the masks
`cnnlab predict` writes, scored by `cnnlab.report.segmentation.MaskScores`, the test pass's scores. (An MNIST run is
scored on the MNIST test set by `cnnlab.tasks.mnist.evaluate_mnist`.)
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import json
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.folder import (
    IMAGE_EXTENSIONS,
    bytes_digest,
    check_listable,
    describe_skipped,
    file_digest,
    scan_folder,
)
from cnnlab.data.paths import check_output_outside_data
from cnnlab.data.split import PART_NAMES, SPLIT_DIGESTS, read_split_digests
from cnnlab.errors import CnnlabError, listed, why_not_a_folder
from cnnlab.files import PATH_BYTES, write_text_whole, written_then_renamed
from cnnlab.layers.views import ViewAverage
from cnnlab.report.classification import classification_summary, classification_test_report
from cnnlab.tasks.predict import load_predictor, view_logits
from cnnlab.tasks.run_precision import precision_line, precisions

__all__ = ["evaluate_folder", "evaluation_lines", "evaluation_notes"]


def evaluate_folder(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    progress: bool = False,
    exclude_trained: bool = False,
) -> dict[str, Any]:
    """Score a saved transfer run on `data`, a folder with one sub-folder of images per class, or a saved
    segmentation run on an image + mask folder (``images/``, ``masks/``, ``classes.json``, as `train segment --data`
    reads).

    Args:
        run: the run directory (or its ``model.json`` / ``model.safetensors``).
        data: the labelled images; a transfer run's class folders must be classes of the run (a subset will do), a
            segmentation folder's ``classes.json`` must name the run's classes in its order.
        output_dir: where ``evaluation.json`` and the figures (and a transfer run's ``predictions.csv``) go; default
            ``<run>/evaluation``.
        device: evaluation device.
        batch_size: images per forward pass of a transfer run (each view of each).
        progress: a progress bar over the images on stderr (on a terminal only).
        exclude_trained: score without the images whose bytes equal those of an image the run trained on or chose
            its weights by (``trained_copies`` counts them either way).

    Returns:
        What ``evaluation.json`` holds. A transfer run: accuracy and balanced accuracy with the run's test-time
        averaging and (for a run of several views) with the identity view alone, per-class precision/recall/F1/
        support, the confusion matrix and the classes without images. A segmentation run: pixel accuracy, mIoU (with
        and without the background), per-class IoU, boundary F1 and the confusion matrix of the pixels, and the
        images with the most wrong pixels (drawn in worst_images.png). Both: the files skipped, the paths written,
        and ``trained_copies``: how many images are byte-identical to the run's training and validation images (its
        ``split_digests.json``, or for a run made before it, its training files where they still are; None when
        neither is there).

    Raises:
        CnnlabError: a run of another task, a `data` that is not such a folder (a class folder the run does not
            know, other classes, no usable image), an `output_dir` that cannot be written or lies inside `data`;
            with `exclude_trained`, a run whose training images cannot be told, or a folder of them alone.
    """
    from cnnlab.train.saved import DIGIT_SEGMENTER, IMAGE_CLASSIFIER, SEGMENTER, saved_meta, spec_path

    meta = saved_meta(run)  # in today's layout, whose kind says what the model takes (ARCHITECTURE.md)
    task, kind = meta.get("task", "mnist"), meta.get("kind")
    if kind == SEGMENTER:
        return _evaluate_segmentation(run, data, output_dir, device, progress, exclude_trained)
    if kind != IMAGE_CLASSIFIER:
        canvases = kind == DIGIT_SEGMENTER  # trained on MNIST canvases: no record of how to prepare other images
        raise CnnlabError(
            f"{run} is {'an MNIST' if task == 'mnist' else f'a {task}'} run: --data scores a `cnnlab train "
            "transfer` or `train segment --data` run on a folder of labelled images; "
            + (
                "an MNIST run is scored on the MNIST test set (leave out --data; --data-dir names the MNIST root)"
                if task == "mnist"
                else f"its own test set was scored once, in {spec_path(run).parent / 'report.md'}"
                + (
                    f" (it was trained on MNIST canvases: `cnnlab evaluate {spec_path(run).parent}`, without --data, "
                    "scores it again on its test canvases, made again from MNIST)"
                    if canvases
                    else ""
                )
            )
        )
    run_dir = spec_path(run).parent
    root = Path(data)
    if not root.is_dir():
        raise CnnlabError(
            f"--data {data} {why_not_a_folder(data)}; pass a folder with one sub-folder of images per class, named "
            f"as the run's classes ({listed(list(meta.get('classes', [])), 10)})"
        )
    check_listable(root)
    _refuse_unlabelled(run, root, list(meta.get("classes", [])))
    _refuse_split_folder(root, list(meta.get("classes", [])))
    out = _output_folder(run_dir, output_dir, root)
    trained = _trained_images(run_dir, exclude_trained)
    predictor = load_predictor(str(run), device)
    assert predictor.cfg is not None  # a transfer run records its preprocessing (load_predictor checks)
    images = scan_folder(root, min_per_class=0, known_classes=predictor.classes)
    if not len(images):
        found = f" ({describe_skipped([s.reason for s in images.skipped])})" if images.skipped else ""
        raise CnnlabError(f"--data {data} holds no usable image in its class folders{found}")
    # the scan read every file's bytes and kept their digests: a copy of a training image under any name is known
    digests = [images.digests.get(path) for path in images.paths]
    copies = None if trained is None else {**trained.copies(digests), "excluded": exclude_trained}
    if exclude_trained and trained is not None:
        new = [i for i, digest in enumerate(digests) if trained.part_of(digest) is None]
        if not new:
            raise CnnlabError(_all_trained(data, len(images), "images"))
        images = dataclasses.replace(images.subset(new), skipped=images.skipped)
    network = predictor.model.model if isinstance(predictor.model, ViewAverage) else predictor.model
    per_view = view_logits(
        network,
        predictor.views,
        images,
        predictor.cfg,
        device=next(network.parameters()).device,
        batch_size=batch_size,
        channels_last=predictor.channels_last,  # the memory format of the run's test pass (load_predictor reads it)
        progress=progress,
    )
    logits = per_view.mean(1)
    targets = torch.tensor(images.labels)
    classes = images.classes
    with _published_together(out) as staged:
        scores = classification_test_report(
            logits, targets, images.paths, classes, staged, title=f"{root.name} (evaluate)"
        )
        counts = images.class_counts()
        result: dict[str, Any] = {
            "run": str(run_dir),
            "task": "transfer",
            "data": str(root),
            "views": list(predictor.views),
            **precisions(run_dir),
            **scores,
            "absent_classes": [name for name, count in counts.items() if count == 0],
            "in_run_split": _in_run_split(run_dir, images.paths),
            "split_folder_gone": _split_folder_gone(run_dir),
            "trained_copies": copies,
            "skipped": [dataclasses.asdict(entry) for entry in images.skipped],
        }
        if len(predictor.views) > 1:
            single = classification_summary(targets.tolist(), per_view[:, 0].argmax(1).tolist(), classes)
            result["single_view"] = {key: single[key] for key in ("accuracy", "balanced_accuracy")}
        probabilities = logits.softmax(1)
        predictions = out / "predictions.csv"
        with (
            written_then_renamed(staged / predictions.name) as partial,
            open(partial, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as f,
        ):
            writer = csv.writer(f)
            writer.writerow(["path", "label", "predicted", *classes])
            for path, label, row in zip(images.paths, images.labels, probabilities.tolist(), strict=True):
                writer.writerow([path, classes[label], classes[max(range(len(row)), key=row.__getitem__)], *row])
        result["files"] = {
            "evaluation": str(out / "evaluation.json"),
            "predictions": str(predictions),
            "confusion_matrix": str(out / "confusion_matrix.png"),
            "highest_loss": str(out / "highest_loss.png"),
        }
        write_text_whole(staged / "evaluation.json", json.dumps(result, indent=1))
    return result


def _refuse_unlabelled(run: str | os.PathLike[str], root: Path, classes: list[str]) -> None:
    """Refuse a folder of images without a class sub-folder, naming `cnnlab predict`, which classifies unlabelled
    images: "has no class sub-folder; put each image in a sub-folder" left a user who has no labels nowhere to go."""
    entries = [entry for entry in os.scandir(root) if not entry.name.startswith(".")]
    images = sorted(
        entry.name for entry in entries if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if images and not any(entry.is_dir() for entry in entries):
        command = f"cnnlab predict --model {shlex.quote(str(run))} {shlex.quote(str(root))}"
        raise CnnlabError(
            f"--data {root} holds {len(images)} image(s) ({listed(images, 3)}) but no class sub-folder, so nothing "
            f"says what they show: to score the run, put each in a sub-folder named after its class "
            f"({listed(classes, 10)}); to classify them, `{command}`"
        )


def _refuse_split_folder(root: Path, classes: list[str]) -> None:
    """Refuse a split folder (``train/``, ``val/``, ``test/``, each of class sub-folders), naming its test part: the
    folder a run was trained on was refused as "test, train, val are not classes of the model; name each sub-folder
    after the class of its images", which sent users to rename the parts."""
    parts = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and entry.name.lower() in PART_NAMES and entry.name not in classes
    )
    test = next((root / name for name in parts if PART_NAMES[name.lower()] == "test"), None)
    if test is None or not any(entry.is_dir() and entry.name in classes for entry in os.scandir(test)):
        return
    raise CnnlabError(
        f"--data {root} is a split folder ({', '.join(f'{name}/' for name in parts)}), whose parts are not classes of "
        f"the run: pass --data {test} to score the run on its test images"
    )


@contextlib.contextmanager
def _published_together(out: Path) -> Iterator[Path]:
    """A hidden folder in `out` for an evaluation's files, moved into `out` when the block finishes (evaluation.json
    last) and removed when it does not. A stop while they were written left the new confusion matrix beside an
    earlier evaluation's evaluation.json and predictions.csv, whose numbers it did not show."""
    staged = out / ".evaluation.partial"
    shutil.rmtree(staged, ignore_errors=True)  # what an evaluation killed outright (SIGKILL) left
    staged.mkdir(parents=True)
    try:
        yield staged
        for name in sorted(os.listdir(staged), key=lambda name: name == "evaluation.json"):
            os.replace(staged / name, out / name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _split_rows(run_dir: Path) -> list[tuple[str, str]] | None:
    """The (path, part) rows of the run's split.csv, as written; None when it cannot be read (no manifest: a run of
    another layout, or one not as `write_manifest` writes it)."""
    try:
        with open(run_dir / "split.csv", newline="", encoding="utf-8-sig", errors=PATH_BYTES) as f:
            return [(row["path"], row["split"]) for row in csv.DictReader(f)]
    except (OSError, KeyError, csv.Error):
        return None


def _in_run_split(run_dir: Path, paths: list[str]) -> dict[str, int]:
    """How many of the evaluated `paths` the run's split.csv lists, by part (train, val, test; the parts with none
    left out), matched by resolved path: a --data that is the run's own folder scores images it trained on."""
    rows = _split_rows(run_dir)
    if rows is None:  # no manifest (a run of another layout): nothing to say
        return {}
    parts = dict(rows)
    counts = collections.Counter(parts.get(str(Path(path).resolve())) for path in paths)
    return {part: counts[part] for part in ("train", "val", "test") if counts[part]}


def _split_folder_gone(run_dir: Path) -> str | None:
    """The folder holding the images the run's split.csv lists (by absolute path) when none of them is there any
    more (the data folder moved, or the run was copied to another machine), else None: `_in_run_split` then cannot
    tell a run's own images from new ones, and said nothing, as if the scores were of new data."""
    rows = _split_rows(run_dir)
    if rows is None:
        return None
    listed = [path for path, _ in rows]
    if not listed or any(os.path.lexists(path) for path in listed):
        return None
    common = os.path.commonpath(listed)
    return common if len(listed) > 1 else os.path.dirname(common)


@dataclasses.dataclass
class _TrainedImages:
    """The content digests of a run's training and validation images, and where they came from."""

    parts: dict[str, set[bytes]]  # train, val
    source: str
    unchecked: int  # training and validation images split.csv lists that could not be read (a run before the record)

    def part_of(self, digest: bytes | None) -> str | None:
        """The part (train, val) whose images include one with this digest, or None."""
        return next((part for part, digests in self.parts.items() if digest in digests), None)

    def copies(self, digests: list[bytes | None]) -> dict[str, Any]:
        """How many of the images with these digests are copies of training and of validation images."""
        counts = collections.Counter(self.part_of(digest) for digest in digests)
        return {
            "train": counts["train"],
            "val": counts["val"],
            "of": len(digests),
            "from": self.source,
            "unchecked": self.unchecked,
        }


def _trained_images(run_dir: Path, needed: bool) -> _TrainedImages | None:
    """The digests of the run's training and validation images: its split_digests.json, else (a run made before it
    was written) its training and validation files that split.csv lists, read where they still are; None when
    neither is there (`needed`: then refused, for --exclude-trained). A copy of the run's training folder, or a test
    folder with some of its images mixed in, was scored as new data, matched by path alone."""
    recorded = read_split_digests(run_dir / SPLIT_DIGESTS)
    if recorded is not None:
        return _TrainedImages({part: recorded[part] for part in ("train", "val")}, SPLIT_DIGESTS, 0)
    parts: dict[str, set[bytes]] = {"train": set(), "val": set()}
    unchecked = 0
    for path, part in _split_rows(run_dir) or []:
        if part in parts:
            try:
                parts[part].add(file_digest(path))
            except OSError:  # moved or deleted since the run
                unchecked += 1
    if any(parts.values()):
        return _TrainedImages(parts, "training files", unchecked)
    if needed:
        raise CnnlabError(
            f"--exclude-trained: which images {run_dir} trained on cannot be told: it has no {SPLIT_DIGESTS} (a run "
            "made before it was recorded) and the training images its split.csv lists are not there to read; "
            "leave out --exclude-trained"
        )
    return None


def _all_trained(data: str | os.PathLike[str], count: int, unit: str) -> str:
    """The refusal of a --data whose every image the run trained on, with --exclude-trained."""
    return (
        f"--data {data}: all {count} usable {unit} are byte-identical to images the run trained on or chose its "
        "weights by, so --exclude-trained leaves none to score"
    )


def _seen_line(result: dict[str, Any], unit: str) -> list[str]:
    """A line saying how many evaluated images the run trained on or chose its weights by (none when none): by
    content (byte-identical copies under any name) where more are found so than by path."""
    parts = result.get("in_run_split", {})
    seen = parts.get("train", 0) + parts.get("val", 0)
    copies = result.get("trained_copies")
    copied = copies["train"] + copies["val"] if copies else 0
    lines = []
    if copies and copies["unchecked"]:
        lines.append(
            f"{copies['unchecked']} of the run's training and validation images are no longer where its split.csv "
            f"lists them, so copies of them cannot be recognised here (the run predates its {SPLIT_DIGESTS})"
        )
    if copies and copied and (copied > seen or copies["excluded"]):
        images = unit if unit == "images" else f"{unit}' images"
        where = f", {seen} of them at the paths its split.csv lists" if seen else ""
        scored = (
            "left out of the scores below (--exclude-trained)"
            if copies["excluded"]
            else "the scores below include them (--exclude-trained leaves them out)"
        )
        return [
            f"{copied} of {copies['of']} {images} are byte-identical to images the run trained on "
            f"({copies['train']}) or chose its weights by ({copies['val']}){where}: {scored}",
            *lines,
        ]
    if not seen and copies is None and result.get("split_folder_gone"):
        return [
            f"whether the run trained on any of these {unit} is not known: its split.csv lists images under "
            f"{result['split_folder_gone']}, no longer there (moved?): these scores may include images it trained on"
        ]
    if not seen:
        return lines
    test = f"; its {parts['test']} test {unit} among them alone are new to it" if parts.get("test") else ""
    return [
        f"{seen} of these {result['count']} {unit} are the run's own training ({parts.get('train', 0)}) and "
        f"validation ({parts.get('val', 0)}) {unit} (its split.csv): these scores are not of new data{test}",
        *lines,
    ]


def _classes_difference(named: list[str], run_classes: list[str]) -> str:
    """How a folder's classes.json differs from the run's classes, for a message: the lists alone, cut after ten
    classes, read alike where the two differed past the tenth ("background, 0, ..., 8 and 2 more")."""
    added = [name for name in named if name not in run_classes]
    lacking = [name for name in run_classes if name not in named]
    parts = [f"{listed(added, 5)} {'is' if len(added) == 1 else 'are'} not the run's"] if added else []
    parts += [f"it lacks the run's {listed(lacking, 5)}"] if lacking else []
    pairs = enumerate(zip(named, run_classes, strict=False))
    if not parts and (index := next((i for i, (name, run_name) in pairs if name != run_name), None)) is not None:
        parts = [f"in another order: class {index} is {named[index]} there, {run_classes[index]} in the run"]
    elif not parts:  # the same names in the same order, one named twice
        parts = [f"{len(named)} classes there, a name repeated; {len(run_classes)} in the run"]
    return "; ".join(parts)


def _check_masks_given(root: Path, run: str | os.PathLike[str]) -> None:
    """A one-line refusal of a --data folder without masks to score against (no masks/, or no PNG in it), naming
    predict for the masks of unlabelled images."""
    masks = root / "masks"
    if masks.is_dir():
        check_listable(masks)
    if masks.is_dir() and any(path.suffix.lower() == ".png" for path in masks.iterdir()):
        return  # SegmentationFolder says what else is wrong
    where = "a folder holding images/ and masks/ (and classes.json), as `cnnlab train segment --data` reads"
    if not any(root.iterdir()):
        raise CnnlabError(f"--data {root} is empty; pass {where}")
    images = root / "images" if (root / "images").is_dir() else root
    why = "has no masks/ folder" if not masks.is_dir() else f"has no PNG mask in {masks}"
    raise CnnlabError(
        f"--data {root} {why}: evaluate scores the run's masks against true ones, so it needs {where}; for the masks "
        f"of images without any, run `cnnlab predict --model {run} {images} --output DIR`"
    )


def _output_folder(run_dir: Path, output_dir: str | os.PathLike[str] | None, root: Path) -> Path:
    """Where the evaluation's files go, checked before any image is read."""
    from cnnlab.train.saved import evaluation_folder

    out = Path(output_dir) if output_dir is not None else run_dir / "evaluation"
    check_output_outside_data(out, root)  # the figures would be read as images of the folder next time
    return evaluation_folder(run_dir, out)


def _evaluate_segmentation(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str],
    output_dir: str | os.PathLike[str] | None,
    device: str,
    progress: bool,
    exclude_trained: bool,
) -> dict[str, Any]:
    """`evaluate_folder` of a `train segment --data` run: each image segmented as `segment_image` segments it, at
    its own size (downscaled first, and the logits brought back, for a run trained with ``--max-side``: the mask
    predict writes). A ``--max-side`` run is scored at the size its test pass scored too (``at_max_side``: the
    logits' own argmax against the mask downscaled by nearest neighbour, as training reads it), so its own test
    pairs give results.json's test scores there."""
    import numpy as np
    from PIL import Image

    from cnnlab.data.folder import SkippedFile
    from cnnlab.data.segmentation import (
        IGNORE_INDEX,
        EdgeOnlyValues,
        ForegroundAs255,
        SegmentationFolder,
        check_mask_classes,
        downscale_mask,
    )
    from cnnlab.report.plots import plot_confusion_matrix
    from cnnlab.report.segmentation import MaskScores, save_overlays
    from cnnlab.tasks.segment_folder import BOUNDARY_TOLERANCE, WORST_IMAGES, describe_edge_only, describe_untrained
    from cnnlab.tasks.segment_predict import class_map, image_runner, load_segmenter, segment_logits
    from cnnlab.train.progress import ProgressBar
    from cnnlab.train.saved import saved_meta, spec_path

    run_dir = spec_path(run).parent
    root = Path(data)
    if not root.is_dir():
        raise CnnlabError(
            f"--data {data} {why_not_a_folder(data)}; pass a folder with images/ and masks/ (and classes.json), as "
            "`cnnlab train segment --data` reads"
        )
    check_listable(root)
    _check_masks_given(root, run)
    out = _output_folder(run_dir, output_dir, root)
    trained = _trained_images(run_dir, exclude_trained)
    segmenter = load_segmenter(run, device)
    classes = segmenter.classes
    recorded = saved_meta(run).get("colours")  # the colours its masks had (None: class-index masks)
    # at full size (segment_image gives masks at the image's size); without a classes.json, by the run's classes
    folder = SegmentationFolder(
        root, skip_bad=True, classes=classes, colours=None if recorded is None else np.array(recorded)
    )
    if folder.class_names is not None and folder.class_names != classes:
        # a run trained on index masks without a classes.json has no classes.json to give: its classes are named so
        remedy = (
            "remove it (the run was trained on class-index masks without a classes.json)"
            if classes == [f"class {i}" for i in range(len(classes))]
            else "give the folder the run's classes.json (the masks' indices and colours are read through it)"
        )
        raise CnnlabError(
            f"{root / 'classes.json'} names the classes {listed(folder.class_names, 10)}; the run's are "
            f"{listed(classes, 10)} ({_classes_difference(folder.class_names, classes)}): {remedy}"
        )
    runner = image_runner(segmenter)  # in the memory format of the run's test pass (load_segmenter reads it)
    scores = MaskScores(len(classes), IGNORE_INDEX, BOUNDARY_TOLERANCE)
    # a --max-side run's scores at the size its test pass scored (results.json's), beside predict's full-size masks'
    at_max_side = None if segmenter.max_side is None else MaskScores(len(classes), IGNORE_INDEX, BOUNDARY_TOLERANCE)
    scored: list[str] = []
    values = torch.zeros(256, dtype=torch.int64)  # the scored masks' pixels per value, checked as training checks them
    mixed = ForegroundAs255()  # 0/255 masks among masks of class indices: refused, as training refuses them
    edge_only = EdgeOnlyValues()  # every mask read, scored or not: a fringe value beyond the classes skips its pair
    # the image, mask and prediction of the WORST_IMAGES images with the most wrong pixels so far, for the overlays
    # the run's test pass draws (test_worst.png): every image's would hold the whole folder in memory
    kept: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    digests: list[bytes | None] = []  # of the images scored, or left out as the run's (--exclude-trained)
    with ProgressBar(len(folder.images), f"segmenting {len(folder.images)} images", enabled=progress) as bar:
        for index, path in enumerate(folder.images):
            if index:  # the one before is scored or skipped
                bar.advance()
            # digested before the decode only to leave a trained image undecoded; the bytes digested are those decoded
            # (each image scored was read twice: for its digest, then for its decode)
            data = folder.image_bytes(index) if exclude_trained and trained is not None else None
            if data is not None and trained is not None and trained.part_of(digest := bytes_digest(data)) is not None:
                digests.append(digest)
                continue
            try:
                image, mask = folder.read(index, data)
            except CnnlabError as error:
                folder.skip_unreadable(index, error)
                continue
            digest = folder.digests.get(path) if trained is not None else None  # of the bytes `read` decoded
            edge_only.add(index, mask)
            labelled = mask[mask != IGNORE_INDEX]
            if labelled.numel() and int(labelled.max()) >= len(classes):
                reason = f"its mask has class index {int(labelled.max())}; the run has {len(classes)} classes"
                folder.skipped.append(SkippedFile(str(path), "", reason))
                continue
            picture = Image.fromarray(image.permute(1, 2, 0).numpy())
            logits = segment_logits(segmenter, picture, runner)
            predicted = class_map(logits, picture.height, picture.width)  # segment_image's mask
            scores.add(predicted.long(), mask.long())
            if at_max_side is not None:
                small = torch.from_numpy(downscale_mask(mask.numpy(), segmenter.max_side))
                at_max_side.add(logits.argmax(1)[0].cpu(), small.long())
            values += (counts := torch.bincount(mask.flatten().long(), minlength=256))
            mixed.add(folder.masks[index], counts)
            scored.append(str(path))
            digests.append(digest)
            kept[len(scored) - 1] = (image, mask, predicted)
            if len(kept) > WORST_IMAGES:  # the fewest wrong pixels leave, the later of a tie first
                del kept[max(kept, key=lambda i: (-scores.errors[i], i))]
    if not scored and digests:
        raise CnnlabError(_all_trained(data, len(digests), "image + mask pairs"))
    if not scored:
        found = f" ({describe_skipped([s.reason for s in folder.skipped])})" if folder.skipped else ""
        raise CnnlabError(f"--data {data} holds no usable image + mask pair{found}")
    # 0/255 masks (255 means unlabelled) scored the background alone: every score 1.0, where training refuses them
    check_mask_classes(values, root, folder.class_names, "only that class would be scored", one_class=True)
    mixed.check("their objects would be left out of the scores")
    folder.palettes.check(root / "classes.json", classes)  # palette masks in their own orders: classes read as others
    report = scores.report(classes, segmenter.background)
    with _published_together(out) as staged:
        plot_confusion_matrix(scores.matrix, staged / "confusion_matrix.png", classes, f"{root.name} pixels (evaluate)")
        worst = sorted(kept, key=lambda i: (-scores.errors[i], i))
        # The worst images were listed in evaluation.json only: drawn as the run's test pass draws its own
        # (segment_folder's test_worst.png), with the folder's colours as predict paints its masks.
        save_overlays(
            [kept[i][0] for i in worst],
            [kept[i][1] for i in worst],
            [kept[i][2] for i in worst],
            staged / "worst_images.png",
            classes,
            max_images=WORST_IMAGES,
            titles=[f"{Path(scored[i]).name}: {scores.errors[i]:.1%} wrong" for i in worst],
            background=segmenter.background,
            colours=folder.colours,
        )
        result: dict[str, Any] = {
            "run": str(run_dir),
            "task": "segment",
            "data": str(root),
            "count": len(scored),
            "max_side": segmenter.max_side,
            "classes_from": "classes.json" if (root / "classes.json").is_file() else "run",
            **precisions(run_dir),
            **report,
            **({} if at_max_side is None else {"at_max_side": at_max_side.report(classes, segmenter.background)}),
            "worst_images": [{"image": scored[i], "pixel_error": scores.errors[i]} for i in worst],
            "in_run_split": _in_run_split(run_dir, scored),
            "split_folder_gone": _split_folder_gone(run_dir),
            "trained_copies": None if trained is None else {**trained.copies(digests), "excluded": exclude_trained},
            # the lines training says of its folder (results.json's), of this one: the run's classes no scored mask
            # has, and mask values found only at edges (JPEG or smooth-resize artefacts?); None when not so
            "classes_without_pixels": describe_untrained(values, classes, None, scored_in=root),
            "edge_only_values": describe_edge_only(folder, edge_only.values()),
            "skipped": [dataclasses.asdict(entry) for entry in folder.skipped],
            "files": {
                "evaluation": str(out / "evaluation.json"),
                "confusion_matrix": str(out / "confusion_matrix.png"),
                "worst_images": str(out / "worst_images.png"),
            },
        }
        write_text_whole(staged / "evaluation.json", json.dumps(result, indent=1))
    return result


def evaluation_lines(result: dict[str, Any]) -> list[str]:
    """What `cnnlab evaluate RUN --data DIR` prints of `evaluate_folder`'s result, scores to four places."""
    unit = "image + mask pairs" if result["task"] == "segment" else "images"
    lines = [f"{result['run']} on {result['data']}: {result['count']} {unit}", *_notes_on_the_data(result)]
    if result["task"] == "segment":
        return lines + _segmentation_notes(result) + _segmentation_lines(result)
    views = result["views"]
    averaged = f"averaged over {len(views)} views ({', '.join(views)})" if len(views) > 1 else "one view"
    lines.append(f"accuracy {result['accuracy']:.4f}, balanced accuracy {result['balanced_accuracy']:.4f} ({averaged})")
    if "single_view" in result:
        single = result["single_view"]
        lines.append(
            f"accuracy {single['accuracy']:.4f}, balanced accuracy {single['balanced_accuracy']:.4f} "
            "(the identity view alone, no averaging)"
        )
    width = max(len("class"), *(len(name) for name in result["per_class"]))
    lines.append(f"{'class':<{width}}  precision  recall  f1      support")
    for name, row in result["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:.4f}     {row['recall']:.4f}  {row['f1']:.4f}  {row['support']}"
        )
    lines += _absent_classes_line(result)
    files = result["files"]
    lines.append(f"confusion matrix: {files['confusion_matrix']}")
    lines.append(f"highest loss:     {files['highest_loss']}")
    lines.append(f"predictions:      {files['predictions']}")
    lines.append(f"evaluation:       {files['evaluation']}")
    return lines


def evaluation_notes(result: dict[str, Any]) -> list[str]:
    """The notes among `evaluation_lines`: what the scores rest on (images the run trained on, files skipped, the
    precision, classes absent or read by the run's own classes), without the scores and the files written. `cnnlab
    evaluate --data DIR --json` prints them on stderr, as its help says, where they were dropped with the text."""
    task_notes = _segmentation_notes(result) if result["task"] == "segment" else _absent_classes_line(result)
    return _notes_on_the_data(result) + task_notes


def _notes_on_the_data(result: dict[str, Any]) -> list[str]:
    """The images the run trained on among those scored, the files skipped, and the precision scored in."""
    lines = _seen_line(result, "pairs" if result["task"] == "segment" else "images")
    lines += [f"skipped {entry['path']}: {entry['reason']}" for entry in result["skipped"]]
    if result["skipped"]:
        lines.append(describe_skipped([entry["reason"] for entry in result["skipped"]]))
    return lines + precision_line(result)


def _absent_classes_line(result: dict[str, Any]) -> list[str]:
    """A classifier's classes with no image in the folder, which are not scored."""
    if not result["absent_classes"]:
        return []
    return [f"no images of {listed(result['absent_classes'], 10)} in {result['data']} (support 0: not scored)"]


def _segmentation_notes(result: dict[str, Any]) -> list[str]:
    """How a segmentation folder's masks were read: by the run's classes, and any class or value they lack."""
    lines = []
    if result["classes_from"] == "run":
        lines.append(f"{result['data']} has no classes.json: its masks were read by the run's classes (model.json)")
    return lines + [line for line in (result["classes_without_pixels"], result["edge_only_values"]) if line]


def _segmentation_lines(result: dict[str, Any]) -> list[str]:
    from cnnlab.report.segmentation import boundary_f1_text

    which = "every class" if result["miou_includes_background"] else "the background left out"
    lines = [
        f"mIoU {result['miou']:.4f} ({which}), mIoU with background {result['miou_with_bg']:.4f}, pixel accuracy "
        f"{result['pixel_accuracy']:.4f}, boundary F1 {boundary_f1_text(result['boundary_f1'])} "
        f"({result['boundary_tolerance_px']} px)"
    ]
    if "at_max_side" in result:
        small = result["at_max_side"]
        lines.append(
            f"scored at each image's own size, as predict's masks are; the run saw each image downscaled to a longer "
            f"side of at most {result['max_side']} px (--max-side), and its test pass scored there, as here: mIoU "
            f"{small['miou']:.4f}, mIoU with background {small['miou_with_bg']:.4f}, pixel accuracy "
            f"{small['pixel_accuracy']:.4f}, boundary F1 {boundary_f1_text(small['boundary_f1'])} "
            "(results.json's test scores, for its own test pairs)"
        )
    width = max(len("class"), *(len(name) for name in result["iou_per_class"]))
    lines.append(f"{'class':<{width}}  IoU")
    for name, iou in result["iou_per_class"].items():
        lines.append(f"{name:<{width}}  {'-' if iou is None else f'{iou:.4f}'}")
    lines.append(f"confusion matrix: {result['files']['confusion_matrix']}")
    lines.append(f"worst images:     {result['files']['worst_images']}")
    lines.append(f"evaluation:       {result['files']['evaluation']}")
    return lines
