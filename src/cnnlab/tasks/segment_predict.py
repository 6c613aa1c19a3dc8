"""Apply a segmentation run (`cnnlab train segment --data`) to new images: whole-image masks of any size.

`load_segmenter` rebuilds the saved network with its classes, background and normalisation (from ``model.json``);
`predict_masks` runs each image whole through the engine's inference path (the network pads to its stride and crops
back) and writes, per image, a class-index PNG, a colour PNG and an overlay PNG named after it. A run trained with
``--max-side`` sees each image downscaled as in training, and its logits are brought back to the image's own size, so
a mask is always the size of the image given. A path that cannot be read is reported on its own and the other images
are still predicted. Predict replaces a file it did not write only when told to (a user's own ``*_mask.png`` in
the output folder is refused without ``--overwrite``), and the files it wrote, listed in the folder's
``.cnnlab-masks.jsonl``, are not taken as images by a later predict over that folder (`without_written_masks`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.folder import decode_image, to_rgb
from cnnlab.data.segmentation import SegmentationInput, class_colours, downscale
from cnnlab.errors import CnnlabError
from cnnlab.files import check_writable
from cnnlab.report.segmentation import colourise
from cnnlab.tasks.run_precision import run_channels_last
from cnnlab.train import Trainer
from cnnlab.train.progress import ProgressBar

__all__ = [
    "FINISHED_LOG",
    "Segmenter",
    "class_map",
    "class_shares",
    "image_runner",
    "is_segmentation_run",
    "iter_masks",
    "load_segmenter",
    "output_stems",
    "predict_masks",
    "segment_image",
    "segment_logits",
    "without_written_masks",
]

# One JSON line per image whose files are complete, written into the output folder: what `--resume` may keep.
FINISHED_LOG = ".cnnlab-masks.jsonl"
# The files written per image, named <stem><suffix>.
RESULT_SUFFIXES = {"mask": "_mask.png", "colour": "_colour.png", "overlay": "_overlay.png"}


@dataclass
class Segmenter:
    """A trained segmentation network in eval mode and what its outputs mean.

    Attributes:
        model: [N, 3, H, W] normalised images -> [N, classes, H, W] logits.
        classes: class names in output order.
        background: the background class (not painted in overlays), or None.
        mean: per-channel mean subtracted from images in [0, 1].
        std: per-channel standard deviation divided by.
        colours: uint8 [classes, 3], the colour of each class in colour masks.
        source: the run directory.
        weights_sha256: the SHA-256 of the saved weights (what a resumed prediction checks it continues).
        max_side: the longer side, in pixels, that images were downscaled to in training (``--max-side``), and are
            before the model here; None: images are taken at their own size.
        channels_last: run the model in the channels-last memory format, as a run trained with ``--channels-last``
            ran its test pass (`run_channels_last`); predict, evaluate and the lab's Scan page all run it so.
    """

    model: nn.Module
    classes: list[str]
    background: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    colours: np.ndarray
    source: str
    weights_sha256: str = ""
    max_side: int | None = None
    channels_last: bool = False


def _meta(run: str | os.PathLike[str]) -> dict[str, Any] | None:
    from cnnlab.train.saved import saved_meta

    try:
        return saved_meta(run)
    except CnnlabError:  # not a saved model at all: the caller only asks whether it is a segmentation run
        return None


def is_segmentation_run(run: str | os.PathLike[str]) -> bool:
    """Whether `run` is a run directory (or ``model.json``) saved by `cnnlab train segment --data`."""
    from cnnlab.train.saved import SEGMENTER

    meta = _meta(run)  # in the current layout, whichever it was saved in
    return meta is not None and meta.get("kind") == SEGMENTER


def load_segmenter(run: str | os.PathLike[str], device: str | torch.device = "cpu") -> Segmenter:
    """The segmenter saved in `run`.

    Raises:
        CnnlabError: when `run` is not a folder segmentation run.
    """
    from cnnlab.train.saved import load_model_and_digest, spec_path

    if not is_segmentation_run(run):
        raise CnnlabError(f"{run} is not a `cnnlab train segment --data` run directory (its model.json is missing)")
    meta = _meta(run) or {}
    network, digest = load_model_and_digest(run, device=device)  # the weights file read once, for both
    classes = list(meta["classes"])
    colours = np.array(meta["colours"], dtype=np.uint8) if meta.get("colours") else class_colours(len(classes))
    normalisation = meta["normalisation"]
    return Segmenter(
        network.eval(),
        classes,
        meta.get("background"),
        tuple(normalisation["mean"]),
        tuple(normalisation["std"]),
        colours,
        str(run),
        digest,
        meta.get("max_side"),  # absent from runs saved before --max-side: full size, as they were trained
        run_channels_last(spec_path(run).parent),  # the memory format of its test pass
    )


def predict_masks(
    segmenter: Segmenter,
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Predict and save the masks of `paths` into `output`, in input order (`iter_masks`, collected).

    Returns:
        One dict per path: ``{"image", "size": [width, height], "mask", "colour", "overlay" (files written),
        "share": {class: fraction of the pixels}}``, or ``{"image", "error"}`` for a path that is missing or not a
        readable image. Files are named after the image; a second image with the same name (from another folder)
        gets ``-2``, ``-3`` ... so that no result overwrites another.
    """
    return list(iter_masks(segmenter, paths, output, progress))


def iter_masks(
    segmenter: Segmenter,
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    progress: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> Iterator[dict[str, Any]]:
    """`predict_masks`' results one at a time, each image's files written before its result is yielded (with
    `progress`, a bar on stderr).

    Args:
        resume: an image whose three files an earlier (interrupted) run of the same model wrote is not segmented
            again: its result is read back from its mask. The files of an image are written under temporary names
            and renamed once all three are complete, so a run stopped mid-image leaves no file that looks finished;
            then a line in `output`/``.cnnlab-masks.jsonl`` records the image (path, size, modification time), its
            files' stem and the model's weights (SHA-256), and only an image recorded with this model, unchanged
            since, and under the same stem is kept. A line with no model, before the renames, marks the stem's
            files as predict's but unfinished: segmented again, and replaced.
        overwrite: replace a file of an image's result names in `output` that predict did not write (without it,
            one is refused before any image is segmented).
    """
    output = Path(output)
    if not output.exists() and output.suffix.lower() in (".csv", ".json", ".png", ".jpg", ".jpeg", ".txt"):
        raise CnnlabError(  # it made a folder named predictions.csv
            f"--output {output} names a file, but a segmentation run writes three PNGs per image (mask, colour, "
            "overlay) into a folder: name a folder, e.g. predictions/"
        )
    check_writable(output / FINISHED_LOG, shown=str(output))  # a read-only folder: one line naming it, exit 2
    stems = output_stems(paths)
    _refuse_replacing_others(output, stems, paths, overwrite)
    runner = image_runner(segmenter)
    log = output / FINISHED_LOG
    finished = _finished_masks(log, segmenter) if resume else {}
    with ProgressBar(len(paths), "segmenting", enabled=progress) as bar, log.open("a", encoding="utf-8") as record:
        for path, stem in zip(paths, stems, strict=True):
            source = _source(path)  # the image as it is read now, for the match and for the line recording it

            def writing(stem: str = stem) -> None:  # the stem's files are predict's from their first rename on
                record.write(json.dumps({"stem": stem, "model": None}) + "\n")
                record.flush()

            result = _predict_mask(segmenter, runner, path, output, stem, finished.get(stem) == source, writing)
            if "error" not in result and not result.get("resumed"):
                record.write(json.dumps({"stem": stem, "model": segmenter.weights_sha256, **source}) + "\n")
                record.flush()
            bar.advance()
            yield result


def output_stems(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The file stem of each image's results: its own, or for a second image of that name (from another folder)
    ``<stem>-2``, ``-3`` ... skipping every name another image has, so no image's files overwrite another's."""
    own = [Path(path).stem for path in paths]
    taken: set[str] = set()
    stems = []
    for stem in own:
        name, count = stem, 1
        while name in taken or (count > 1 and name in own):
            count += 1
            name = f"{stem}-{count}"
        taken.add(name)
        stems.append(name)
    return stems


def _written_files(folder: Path) -> set[str]:
    """The names of the files that predict recorded writing in `folder` (by any model), from its log."""
    return {stem + suffix for stem, _, _ in _log_entries(folder / FINISHED_LOG) for suffix in RESULT_SUFFIXES.values()}


def _refuse_replacing_others(
    output: Path, stems: list[str], paths: Sequence[str | os.PathLike[str]], overwrite: bool
) -> None:
    """A CnnlabError, before any image is segmented, when a file the `stems` would be written to exists in `output` and
    predict did not write it (a user's own mask, beside the images given with ``-o`` their own folder), unless
    `overwrite`; and, `overwrite` or not, when it is one of the images given (it would be replaced before it is read,
    as `fcn scan` refuses its own image)."""
    if not output.is_dir():
        return
    written = _written_files(output)
    given = {os.path.realpath(path) for path in paths}
    for stem in stems:
        for suffix in RESULT_SUFFIXES.values():
            name = stem + suffix
            if name in written or not (output / name).exists():
                continue
            if not overwrite:
                raise CnnlabError(
                    f"--output {output} holds {name}, which cnnlab predict did not write ({FINISHED_LOG} there does "
                    "not list it): predicting would replace it; give another --output folder, or pass --overwrite to "
                    "replace it"
                )
            if os.path.realpath(output / name) in given:
                raise CnnlabError(
                    f"--output {output} holds {name}, one of the images given, which predicting would replace: give "
                    "another --output folder"
                )


def without_written_masks(paths: Sequence[str]) -> tuple[list[str], int]:
    """`paths` without the files predict wrote (each folder's ``.cnnlab-masks.jsonl`` lists them), so that a predict
    over a folder holding earlier masks does not segment the masks; and how many were left out."""
    written: dict[Path, set[str]] = {}
    kept = []
    for path in paths:
        folder = Path(path).parent
        if folder not in written:
            written[folder] = _written_files(folder)
        if Path(path).name not in written[folder]:
            kept.append(path)
    return kept, len(paths) - len(kept)


def _source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies the image a result was made from: its absolute path, size and modification time."""
    try:
        stat = Path(path).stat()
    except OSError:
        return {"image": str(Path(path).absolute())}
    return {"image": str(Path(path).absolute()), "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}


def _finished_masks(log: Path, segmenter: Segmenter) -> dict[str, dict[str, Any]]:
    """The images whose files `log` says this model finished: stem -> the image's `_source` (the last line of a
    stem wins; a line cut short by a stop, or another model's, is not kept)."""
    finished: dict[str, dict[str, Any]] = {}
    for stem, model, entry in _log_entries(log):
        if model == segmenter.weights_sha256:
            finished[stem] = entry
        else:
            finished.pop(stem, None)
    return finished


def _log_entries(log: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(stem, model, the image's `_source`) of each whole line of `log`; none when there is no log."""
    try:
        text = log.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            stem, model = entry.pop("stem"), entry.pop("model")
        except (ValueError, KeyError, AttributeError, TypeError):
            continue
        if isinstance(stem, str):
            yield stem, model, entry


def _predict_mask(
    segmenter: Segmenter,
    runner: Trainer,
    path: str | os.PathLike[str],
    output: Path,
    stem: str,
    finished: bool = False,
    before_renaming: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """One image's masks written into `output` as `stem`'s files, or why it could not be read; when this model
    `finished` this image's files before (a resumed run), read back from its mask. `before_renaming` is called once
    the files are complete under temporary names, before the first takes its own (`iter_masks` logs them as
    predict's there: a stop after a rename and before the line saying the image finished left files no line listed,
    and `--resume` then refused the folder as holding masks predict had not written)."""
    from PIL import Image

    # decoded once, checked and then converted: check_image and then load_image decoded every image twice
    decoded, _, reason = decode_image(path)
    if reason is not None:
        return {"image": str(path), "error": reason}
    assert decoded is not None
    files = {key: output / f"{stem}{suffix}" for key, suffix in RESULT_SUFFIXES.items()}
    if finished and all(file.is_file() for file in files.values()):
        with Image.open(files["mask"]) as mask:
            labels = np.asarray(mask, dtype=np.uint8)
        if labels.ndim == 2 and labels.max(initial=0) < len(segmenter.classes):
            return {**_mask_result(segmenter, path, labels, files), "resumed": True}
        # changed since (not a mask of this model's classes): segmented again, and overwritten
    image = to_rgb(decoded)
    decoded.close()
    rgb = np.asarray(image, dtype=np.uint8)
    labels = segment_image(segmenter, image, runner)
    overlay = colourise(rgb, labels, segmenter.colours, background=segmenter.background)
    images = {"mask": labels, "colour": segmenter.colours[labels], "overlay": overlay}
    for key, array in images.items():  # complete files under other names first: a stop never leaves a short one
        Image.fromarray(array).save(files[key].with_name(f".{files[key].name}.part"), format="PNG")
    before_renaming()
    for key in images:
        os.replace(files[key].with_name(f".{files[key].name}.part"), files[key])
    return _mask_result(segmenter, path, labels, files)


def image_runner(segmenter: Segmenter) -> Trainer:
    """The engine's inference path for `segmenter`, one image at a time, on its model's device, in the memory format
    of the run's test pass (`Segmenter.channels_last`), as predict, evaluate and the lab's Scan page run it."""
    device = str(next(segmenter.model.parameters()).device)
    return Trainer.for_inference(
        segmenter.model,
        device=device,
        batch_size=1,
        channels_last=segmenter.channels_last,
        eval_transform=SegmentationInput(segmenter.mean, segmenter.std),
    )


def segment_image(segmenter: Segmenter, image: Any, runner: Trainer | None = None) -> np.ndarray:
    """The class of each pixel of an RGB PIL `image`, uint8 [height, width] at the image's own size: the image
    downscaled as the model was trained (``--max-side``), normalised by the run's record, segmented whole, and the
    logits brought back to its size (`class_map`). What `predict_masks` writes and the lab's Scan and segment page
    shows.

    Args:
        runner: the engine's inference path for `segmenter` (made once for many images); None: made here.
    """
    logits = segment_logits(segmenter, image, runner)
    return class_map(logits, image.height, image.width).numpy()


def segment_logits(segmenter: Segmenter, image: Any, runner: Trainer | None = None) -> torch.Tensor:
    """The float32 logits [1, classes, h, w] of an RGB PIL `image` downscaled as the model was trained
    (``--max-side``; h x w: the image's own size otherwise), normalised by the run's record and segmented whole:
    what `segment_image` brings back to the image's size."""
    seen = np.asarray(downscale(image, segmenter.max_side), dtype=np.uint8)  # as the model was trained
    pixels = torch.from_numpy(seen.transpose(2, 0, 1).copy())[None]
    return (runner or image_runner(segmenter)).predict(pixels)


def class_map(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The uint8 class of each pixel of a `height` x `width` image from its [1, classes, h, w] logits, which may be of
    the image downscaled (``--max-side``).

    The logits are upsampled bilinearly and then the argmax taken, rather than the small class map upsampled by
    nearest neighbour: a boundary then runs where the two classes' scores cross between the model's pixels, not in
    stairs of the downscale factor (4 px from 1024 px back to a 12 MP photo), and an argmax is always one of the
    classes. One class at a time, keeping the best score so far: 10 bytes a pixel however many classes, where all
    of them upsampled at once take 4 a pixel per class.
    """
    if tuple(logits.shape[-2:]) == (height, width):
        return logits.argmax(1)[0].to(torch.uint8)

    def upsampled(index: int) -> torch.Tensor:
        score = logits[:, index : index + 1].float()
        return F.interpolate(score, size=(height, width), mode="bilinear", align_corners=False)[0, 0]

    best = upsampled(0)
    labels = torch.zeros(height, width, dtype=torch.uint8)
    for index in range(1, logits.shape[1]):
        score = upsampled(index)
        better = score > best  # ties keep the lower class, as argmax does
        labels[better] = index
        torch.maximum(best, score, out=best)
    return labels


def class_shares(segmenter: Segmenter, labels: np.ndarray) -> dict[str, float]:
    """Each class's share of the pixels of `labels` (`segment_image`'s mask), by class name: what predict reports
    and the lab's Scan and segment page shows."""
    counts = np.bincount(labels.ravel(), minlength=len(segmenter.classes))
    return {name: float(count) / labels.size for name, count in zip(segmenter.classes, counts, strict=True)}


def _mask_result(
    segmenter: Segmenter, path: str | os.PathLike[str], labels: np.ndarray, files: dict[str, Path]
) -> dict[str, Any]:
    return {
        "image": str(path),
        "size": [labels.shape[1], labels.shape[0]],
        **{key: str(value) for key, value in files.items()},
        "share": class_shares(segmenter, labels),
    }
