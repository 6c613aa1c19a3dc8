"""Semantic segmentation of your own images: an image + mask folder -> split -> model -> report -> saved segmenter.

1. **Data** (`cnnlab.data.segmentation.SegmentationFolder`): ``images/`` and ``masks/`` with the same stems, colour
   masks mapped through ``classes.json`` or class-index masks; 255 marks unlabelled pixels. Pairs that cannot be used
   (no mask, undecodable, a mask of another size, an unknown colour or class) are listed in ``skipped.json`` and left
   out. The pairs are held in memory decoded, downscaled as they are read with ``--max-side`` (the longer side at
   most N px): their size is estimated from the file headers first, and a folder that would take more than
   `MEMORY_SHARE` of the memory available is refused before anything is decoded, naming a ``--max-side`` that fits.
2. **Split**: seeded train/val/test, written to ``split.csv`` in the run directory (``path,label,split``, the label
   column holding the mask) by `cnnlab.data.split` and read back by any later run there; the images' content digests
   beside it (``split_digests.json``), by which `cnnlab evaluate` knows copies of them, with each image's mask's, by
   which a resume refuses pairs changed since (a relabelled mask). Validation chooses the weights: the epoch of the
   best validation mIoU is saved and tested (`BestWeights`, whose copy of them every checkpoint holds, so a resumed
   run ends on them too); the test images are read once, at the end.
3. **Models** (`MODELS`, ``--model``): the from-scratch U-Net, or a U-Net decoder / FCN-8s head on the zoo's
   ImageNet-pretrained EfficientNet-Lite0, whose weights' record gives the input normalisation.
4. **Training** on random crops transformed jointly with their masks (torchvision v2), cross-entropy that ignores
   255 (optionally class-weighted); validation and test on whole images of any size, padded in the batch with 255
   and by the model to its stride, cropped back: fewer at a time than the evaluation batch where its largest would
   not fit in memory, and an image that alone would not is refused before training (`_whole_image_batch`).
5. **The run folder**: config.yaml, metrics, learning curves, ``results.json``, ``report.md`` (per-class IoU, mIoU,
   pixel accuracy, the confusion matrix, the worst test images), and the model (``model.safetensors`` +
   ``model.json`` with the classes, background, normalisation and ``max_side``) that `cnnlab predict` and
   `cnnlab export` take; predict downscales as training did and returns masks at the size of the image given.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data.folder import LabelledImages
from cnnlab.data.paths import check_output_outside_data
from cnnlab.data.segmentation import (
    IGNORE_INDEX,
    SegmentationFolder,
    SegmentationInput,
    SegmentationSamples,
    downscaled_size,
    edge_only_values,
    joint_train_transform,
    pad_collate,
    same_size_batches,
)
from cnnlab.data.split import (
    SPLIT_DIGESTS,
    add_mask_digests,
    check_fractions,
    check_mask_digests,
    check_split_digests,
    check_split_seed,
    read_manifest,
    stratified_split,
    write_manifest,
    write_missing_split_digests,
    write_split_digests,
)
from cnnlab.errors import CnnlabError
from cnnlab.files import make_folder, write_text_whole
from cnnlab.report.segmentation import MaskScores, MeanIoU, PixelAccuracy, boundary_f1_text, save_overlays
from cnnlab.report.units import file_size
from cnnlab.tasks.recipes import (
    Recipe,
    RecipeBook,
    check_start,
    describe_overrides,
    engine_resumes,
    note_current_run,
    run_name,
    with_overrides,
)
from cnnlab.tasks.segmentation import TASK, chosen_epoch, saved_epoch_line
from cnnlab.tasks.transfer import class_weights
from cnnlab.train import BestWeights, Callback, LoaderBatches, TrainConfig, Trainer
from cnnlab.train.callbacks import SessionEpochs
from cnnlab.train.config import (
    RESUME_FREE_OPTIONS,
    check_options,
    environment_record,
    load_config,
    recorded_environment,
    use_threads,
)
from cnnlab.train.device import available_memory_bytes, resolve_device
from cnnlab.train.finished import is_finished, read_back
from cnnlab.train.records import RunSessions
from cnnlab.train.saved import SEGMENTER, save_model
from cnnlab.train.strategy import is_main_process, main_process_first

__all__ = ["MODELS", "FolderSegmentRecipe", "train_segmentation_folder"]

MANIFEST = "split.csv"
SKIPPED = "skipped.json"
WORST_IMAGES = 6
BOUNDARY_TOLERANCE = 2  # px, as the built-in canvases' report
MEMORY_SHARE = 0.8  # of the memory available, the most the decoded pairs may take: the model and batches need the rest
MAX_SIDE_STEPS = (4096, 2048, 1024, 512, 256)  # the --max-side values a refusal for memory may suggest, largest first
WHOLE_IMAGE_BYTES_PER_PIXEL = 4096  # of input, a bound on what the models' inference takes (they take 290 to 600)


@dataclass(frozen=True)
class FolderSegmentRecipe(Recipe):
    """A segmentation model for image + mask folders: the recipe base plus the encoder's weights and the crop.

    Attributes:
        pretrained: load the encoder's ImageNet weights (their record gives the normalisation).
        crop_size: side of the random training crops (smaller images are padded with unlabelled pixels).
    """

    pretrained: bool = False
    crop_size: int = 64


_TRAIN = dict(
    epochs=20,
    batch_size=16,
    optimizer="adamw",
    weight_decay=1e-4,
    schedule="onecycle",
    warmup_epochs=1.0,
    monitor="val_miou",
    monitor_mode="max",
)
MODELS: RecipeBook[FolderSegmentRecipe] = RecipeBook(
    "segmentation model",
    [
        FolderSegmentRecipe(
            name="unet",
            summary="U-Net 12-24-48-96-192 from scratch (1.1 M params)",
            arch="unet",
            model_kwargs={"widths": (12, 24, 48, 96, 192)},
            train=dict(lr=3e-3, **_TRAIN),
        ),
        FolderSegmentRecipe(
            name="unet-lite0",
            summary="U-Net decoder on an ImageNet-pretrained EfficientNet-Lite0 encoder (5.5 M params)",
            arch="unet_encoder",
            model_kwargs={"encoder": "efficientnet_lite0"},
            pretrained=True,
            train=dict(lr=1e-3, **_TRAIN),
        ),
        FolderSegmentRecipe(
            name="fcn8s-lite0",
            summary="FCN-8s head on an ImageNet-pretrained EfficientNet-Lite0 trunk (3.4 M params)",
            arch="fcn8s",
            model_kwargs={"backbone": "efficientnet_lite0"},
            pretrained=True,
            train=dict(lr=1e-3, **_TRAIN),
        ),
    ],
)


def _split(
    folder: SegmentationFolder,
    pairs: dict[int, tuple[torch.Tensor, torch.Tensor]],
    manifest: Path,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    reuse: bool,
    write: bool = True,
) -> dict[str, list[int]]:
    """Folder indices per part: read from `manifest` when the run is resumed (`reuse`), else a seeded split written
    there (a run started again splits afresh: its old manifest had kept another --data and other fractions); the
    images' and their masks' digests are written beside it (``split_digests.json``) when it has none (a run started
    before they were recorded), and compared with the pairs when it has (`check_split_digests`, `check_mask_digests`:
    an image or a mask whose bytes changed since is refused; a file without masks' digests compares the images alone,
    and gets the masks' then, `add_mask_digests`);
    `write`: False in the processes of a torchrun job other than rank 0, which write no file. The digests are those of
    the bytes `folder` decoded (`SegmentationFolder.digests`): no file is read again."""
    by_path = {str(folder.images[i].resolve()): i for i in pairs}
    decoded = folder.digests
    digests = {path: decoded[folder.images[i]] for path, i in by_path.items() if folder.images[i] in decoded}
    masks = {path: (str(folder.masks[i].resolve()), decoded.get(folder.masks[i])) for path, i in by_path.items()}
    if reuse and manifest.is_file():
        images, split = read_manifest(manifest)
        missing = [images.paths[i] for part in split.values() for i in part if images.paths[i] not in by_path]
        if missing:
            raise CnnlabError(
                f"{manifest} lists {missing[0]}, which is no longer a usable image of {folder.root} "
                f"({len(missing)} such); restore it, or start again with --overwrite or under another --name"
            )
        images.digests.update({path: digests[path] for path in images.paths if path in digests})
        check_split_digests(images, split, manifest)  # not trained on other bytes than the run's first session
        check_mask_digests(images, split, manifest, masks)  # nor on other labels
        if write and not manifest.with_name(SPLIT_DIGESTS).is_file():  # a run started before it was recorded:
            write_split_digests(manifest.with_name(SPLIT_DIGESTS), images, split, masks)  # evaluate need not re-read
        elif write:  # one of the images alone (made before masks were recorded), checked above: the masks' added
            add_mask_digests(manifest.with_name(SPLIT_DIGESTS), images, split, masks)
        return {part: [by_path[images.paths[i]] for i in indices] for part, indices in split.items()}
    usable = sorted(pairs)
    if len(usable) < 3:
        raise CnnlabError(f"{folder.root} has {len(usable)} usable image+mask pairs; at least 3 are needed")
    parts = stratified_split([0] * len(usable), val_fraction, test_fraction, seed=split_seed)
    paths = [str(folder.images[i].resolve()) for i in usable]
    mask_paths = [str(folder.masks[i].resolve()) for i in usable]
    if write:
        listed_pairs = LabelledImages(paths, list(range(len(usable))), mask_paths, digests=digests)
        write_manifest(manifest, listed_pairs, parts)
        # the images' for evaluate and a resume, the masks' for a resume
        write_split_digests(manifest.with_name(SPLIT_DIGESTS), listed_pairs, parts, masks)
    return {part: [usable[i] for i in indices] for part, indices in parts.items()}


def _processes_here() -> int:
    """The processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE, else 1): each holds its own pairs."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _largest_side_that_fits(
    crop: int, below: int, cost: Callable[[int], int], available: int
) -> tuple[int, int] | None:
    """The largest of `MAX_SIDE_STEPS` not below `crop` and below `below` whose `cost` (bytes) fits in `MEMORY_SHARE`
    of `available`, with that cost; None when none does. What a refusal for memory suggests."""
    for side in (side for side in MAX_SIDE_STEPS if crop <= side < below):
        if (bytes_needed := cost(side)) <= MEMORY_SHARE * available:
            return side, bytes_needed
    return None


def _check_memory(folder: SegmentationFolder, crop: int, show: bool) -> None:
    """Refuse, before decoding, a folder whose pairs would take more than `MEMORY_SHARE` of the memory available (a
    few hundred phone photos took tens of GB: the process decoded for minutes and was then killed without a word),
    naming the largest of `MAX_SIDE_STEPS` that fits and is not below the `crop`; with `show`, print the estimate.
    Under torchrun each process on this machine holds its own copy."""
    copies = _processes_here()
    pairs = f"{len(folder)} image+mask pair" + ("" if len(folder) == 1 else "s")
    one_copy = folder.decoded_bytes(folder.max_side)
    needed = one_copy * copies
    # Said, or 2 processes' 2.0 MB reads as twice what one run of the folder takes.
    per_process = "" if copies == 1 else f" ({copies} processes x {file_size(one_copy)})"
    available = available_memory_bytes()
    if show:
        at = "" if folder.max_side is None else f" (longer side at most {folder.max_side} px)"
        of = "" if available is None else f" of the {file_size(available)} available"
        print(f"decoding {pairs}{at}: about {file_size(needed)} in memory{per_process}{of}")
    if available is None or needed <= MEMORY_SHARE * available:
        return
    below = folder.max_side or max(MAX_SIDE_STEPS) + 1
    fits = _largest_side_that_fits(crop, below, lambda side: folder.decoded_bytes(side) * copies, available)
    remedy = "train on fewer of them"
    if fits is not None:
        remedy = f"pass --max-side {fits[0]} to downscale each as it is read (about {file_size(fits[1])})"
    raise CnnlabError(
        f"{folder.root} holds {pairs}, about {file_size(needed)} decoded{per_process}, more than "
        f"{MEMORY_SHARE:.0%} of the {file_size(available)} of memory available; {remedy}"
    )


def _whole_image_batch(
    network: nn.Module,
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
    paths: dict[str, list[Path]],
    batch: int,
    device: torch.device,
    crop: int,
    show: bool,
) -> int:
    """The number of whole images validation and test run at once: `batch`, halved until the largest batch (padded
    to its largest image, as `pad_collate` pads it) fits in `MEMORY_SHARE` of the memory free on `device`, by the
    model's inference working set traced on the meta device (nothing computed). Each whole 12 MP photo takes the
    U-Net about 4.4 GB: a batch of 32 of them was tried after the first epoch of training, and killed the process.

    Raises:
        CnnlabError: one image alone does not fit, naming it and the largest of `MAX_SIDE_STEPS` (not below the
            `crop`) at which it does.
    """
    if device.type == "cuda":
        available: int | None = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        free = available_memory_bytes()  # the decoded pairs are already taken from it
        available = None if free is None else free // _processes_here()
    else:
        available = None
    if available is None:
        return batch
    limit = MEMORY_SHARE * available
    sizes = {part: [tuple(mask.shape) for _, mask in pairs] for part, pairs in parts.items() if part != "train"}

    def needed(count: int, height: int, width: int, exact: bool = False) -> int:
        if not exact and count * height * width * WHOLE_IMAGE_BYTES_PER_PIXEL <= limit:  # fits by far: not traced
            return 0
        from cnnlab.budget import trace

        return trace(network, (3, height, width), training=False, inference_batch_size=count).inference_peak_bytes

    def largest_batch(at_once: int) -> tuple[int, int, int]:  # (images, height, width) of the largest padded batch
        batches = [part[i : i + at_once] for part in sizes.values() for i in range(0, len(part), at_once)]
        shapes = [(len(b), max(h for h, _ in b), max(w for _, w in b)) for b in batches if b]
        return max(shapes, key=lambda shape: shape[0] * shape[1] * shape[2], default=(0, 0, 0))

    at_once = batch
    while (need := needed(*largest_batch(at_once))) > limit and at_once > 1:
        at_once //= 2
    if need <= limit:
        if at_once < batch and show:
            print(
                f"validation and test segment whole images {at_once} at a time, not {batch}: about "
                f"{file_size(needed(*largest_batch(at_once), exact=True))} of the {file_size(available)} of memory free"
            )
        return at_once
    _, part, index = max((h * w, part, i) for part, shapes in sizes.items() for i, (h, w) in enumerate(shapes))
    height, width = sizes[part][index]

    def whole(side: int) -> int:
        smaller_width, smaller_height = downscaled_size(width, height, side)
        return needed(1, smaller_height, smaller_width, exact=True)

    fits = _largest_side_that_fits(crop, max(height, width), whole, available)
    remedy = "downscale it" if fits is None else f"pass --max-side {fits[0]} (about {file_size(fits[1])})"
    raise CnnlabError(
        f"{paths[part][index]} ({width}x{height} px, a {'validation' if part == 'val' else part} image) takes about "
        f"{file_size(need)} to segment whole, more than {MEMORY_SHARE:.0%} of the {file_size(available)} of memory "
        f"free on {device}; {remedy}"
    )


def _whole_images(pairs: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> DataLoader:
    """The test pass's loader: whole pairs in order, in batches of one image size (`same_size_batches`), so each
    image is segmented as predict and evaluate segment it alone; mixed sizes were padded to the largest in their
    batch, and the test pass scored other masks than evaluate gave on the same pairs."""
    sizes = [(int(mask.shape[0]), int(mask.shape[1])) for _, mask in pairs]
    return DataLoader(SegmentationSamples(pairs), batch_sampler=same_size_batches(sizes, batch), collate_fn=pad_collate)


def labelled_pixels(parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, tuple[int, int]]:
    """Each part's mask pixels that carry a class (not `IGNORE_INDEX`), and all its mask pixels."""
    return {
        part: (sum(int((mask != IGNORE_INDEX).sum()) for _, mask in pairs), sum(mask.numel() for _, mask in pairs))
        for part, pairs in parts.items()
    }


def describe_labelled(counts: dict[str, tuple[int, int]]) -> str | None:
    """One line for a folder whose masks leave pixels unlabelled (scribbles, points), None when every pixel is
    labelled: "labelled pixels: 0.12% of train (1,234), 0.1% of val (210), ...; the rest are 255, unlabelled: the
    loss and the metrics leave them out". Training on few labelled pixels is legitimate: this is said, not refused."""
    if all(labelled == total for labelled, total in counts.values()):
        return None
    parts = ", ".join(
        f"{_percent(labelled, total)} of {part} ({labelled:,})" for part, (labelled, total) in counts.items()
    )
    return f"labelled pixels: {parts}; the rest are {IGNORE_INDEX}, unlabelled: the loss and the metrics leave them out"


def describe_untrained(
    train: list[tuple[torch.Tensor, torch.Tensor]] | torch.Tensor,
    class_names: list[str],
    largest: tuple[int, Path] | None,
    scored_in: Path | None = None,
) -> str | None:
    """One line naming the classes no training mask has a pixel of (the model cannot learn them: they are scored, as
    any class, where validation and test masks have them), None when every class has some; `largest`: the largest
    index and its mask when the classes were read from the masks (no classes.json), which is then said as their
    origin: a stray value made a head of that many classes. `train` may be the masks' pixels per value (int [256]);
    `scored_in`: the folder `cnnlab evaluate` scores, whose masks they are (the line says what scoring does then)."""
    if isinstance(train, torch.Tensor):
        counts = train
    else:
        counts = torch.bincount(torch.cat([mask.flatten() for _, mask in train]).long(), minlength=256)
    untrained = [f"{name!r} ({index})" for index, name in enumerate(class_names) if counts[index] == 0]
    if not untrained:
        return None
    shown = ", ".join(untrained[:8]) + (f" and {len(untrained) - 8} more" if len(untrained) > 8 else "")
    origin = ""
    if largest is not None:
        origin = (
            f" (no classes.json: the classes are 0 to {largest[0]}, the largest index in the masks, in {largest[1]}; "
            "a classes.json lists them, and a mask with an index beyond them is named and skipped)"
        )
    them = "them" if len(untrained) > 1 else "it"
    if scored_in is not None:  # a class no mask has is left out of mIoU, or scores IoU 0 where it is predicted
        return (
            f"no mask in {scored_in} has a pixel of {shown}: {them} {'are' if them == 'them' else 'is'} left out of "
            f"mIoU (IoU -), or scored IoU 0 where the model predicts {them}"
        )
    return f"no training mask has a pixel of {shown}: the model cannot learn {them}{origin}"


def describe_edge_only(folder: SegmentationFolder, values: dict[int, int]) -> str | None:
    """One line naming the mask values found only in thin fringes where other classes meet (`edge_only_values`: value
    -> the first mask holding it), the likely cause and the fix; None when there are none."""
    if not values:
        return None
    shown = ", ".join(str(value) for value in list(values)[:8]) + (
        f" and {len(values) - 8} more" if len(values) > 8 else ""
    )
    files = sorted({folder.masks[index].name for index in values.values()})
    named = ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    return (
        f"mask value{'s' if len(values) > 1 else ''} {shown} ({named} in {folder.root / 'masks'}) "
        f"{'lie' if len(values) > 1 else 'lies'} only in thin "
        "fringes where other classes meet, as a JPEG's compression or a smooth resize invents them at edges; if so, "
        "save the masks losslessly, resize them by nearest neighbour, and list the real classes in classes.json"
    )


def _percent(part: int, total: int) -> str:
    """``part / total`` as a percentage, two significant digits below 10%: "0.098%", "4.5%", "63%"."""
    share = part / total if total else 0.0
    return f"{share:.0%}" if share >= 0.1 or share == 0.0 else f"{share * 100:.2g}%"


def train_segmentation_folder(
    data: str,
    model: str = "unet",
    *,
    class_weight: str | None = None,
    background: int | None = 0,
    background_weight: float | None = None,
    crop_size: int | None = None,
    max_side: int | None = None,
    hflip: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    output: str = "runs",
    name: str | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    notes: bool | None = None,
) -> dict[str, Any]:
    """Train a segmentation model on an image + mask folder with the engine, then test it once.

    Args:
        data: the folder (``images/``, ``masks/``, optional ``classes.json``).
        model: a name in `MODELS`.
        class_weight: "balanced": each class's cross-entropy weighted n / (k * n_c) by its training pixels.
        background: the background class (left out of ``miou`` and not painted in overlays); None: no class is.
        background_weight: cross-entropy weight of the background class, the others weighing 1 (the built-in digit
            canvases use 0.2: most pixels are background); None: unweighted (or `class_weight`'s weights).
        crop_size: training crop side (default: the model recipe's).
        max_side: downscale each pair as it is read so that its longer side is at most this many pixels (image
            antialiased, mask by nearest neighbour); validation and test score at that size, and the saved model
            records it, so `cnnlab predict` downscales the same way. None: full size.
        hflip: flip training crops left-right at random (for data whose classes do not change under a mirror).
        val_fraction: validation share of the pairs.
        test_fraction: test share of the pairs.
        split_seed: the split's seed (apart from `seed`, so several seeds share one split).
        output: runs root; the run goes to ``<output>/segment/<name>/``.
        name: run name; default ``<model>-<timestamp>``.
        seed: initialisation and data order.
        overrides: `TrainConfig` fields replacing the recipe's (the engine options).
        resume: continue an interrupted run (its split is reused).
        overwrite: replace a finished or interrupted run of the same name (split afresh).
        progress: progress bar and epoch lines on stderr.
        callbacks: extra engine callbacks (after the one that keeps the best epoch's weights).
        notes: print, before training, what the data holds that the results depend on (files skipped, the share of
            labelled pixels, classes with no training pixels, values found on mask edges alone), the line on a
            finished run read back (nothing run; its report.md written again, or why it could not be), and the
            engine's notes on the results (the batch a search chose, an out-of-memory retry's micro-batch, the best
            epoch's weights restored; `Trainer.note`); None: as `progress`. The CLI keeps them under -q, which drops
            progress alone, and with --json (on stderr).

    Returns:
        The summary saved as ``results.json``.
    """
    command_started = time.perf_counter()
    notes = progress if notes is None else notes
    recipe = MODELS.get(model)
    if class_weight not in (None, "balanced"):
        raise CnnlabError(f"--class-weight must be 'balanced' or 'none', got {class_weight!r}")
    if background_weight is not None:
        if class_weight is not None:
            raise CnnlabError("--background-weight and --class-weight balanced both set the loss weights; choose one")
        if background is None:
            raise CnnlabError("--background-weight needs a background class (--background is -1)")
        if not background_weight > 0:
            raise CnnlabError(f"--background-weight must be positive, got {background_weight}")
    crop = recipe.crop_size if crop_size is None else crop_size  # 0 is refused, not taken for the default
    if crop < 8:
        raise CnnlabError(f"--crop-size must be at least 8 px, got {crop}")
    if max_side is not None and max_side < crop:
        raise CnnlabError(
            f"--max-side {max_side} is smaller than the {crop} px training crops (--crop-size), which would be mostly "
            "padding; raise --max-side or lower --crop-size"
        )
    if (overrides or {}).get("auto_batch_size"):  # the engine refused it at fit: after decoding, in a run folder
        raise CnnlabError(
            "--batch-size auto: train segment --data reads its pairs through a DataLoader, whose batch is fixed; pass "
            "--batch-size N and --accum auto (as many micro-batches as memory needs)"
        )
    check_split_seed(split_seed)  # before the folder is read
    check_fractions(val_fraction, test_fraction)
    check_output_outside_data(output, data)
    train_options = with_overrides(recipe.train, overrides)
    check_options(train_options)  # here as TrainConfig would, later: a bad num_threads is a line, not torch's error
    use_threads(train_options.get("num_threads"))  # the pairs are decoded before the Trainer, which sets them too
    folder = SegmentationFolder(data, skip_bad=True, max_side=max_side)
    name = name or run_name(recipe.name)
    config = TrainConfig(
        **train_options,
        seed=seed,
        task=TASK,
        name=name,
        output=output,
        resume=engine_resumes(Path(output) / TASK / name, resume),  # a run stopped in its first epoch starts again
        overwrite=overwrite,
        progress=progress,
        extra={
            "data": str(folder.root),
            "model": recipe.name,
            "arch": recipe.arch,
            "model_kwargs": recipe.model_kwargs,
            "pretrained": recipe.pretrained,
            "classes": folder.class_names,  # from the masks once they are read, without a classes.json
            "background": background,
            "class_weight": class_weight,
            # recorded only when set: a run started before this option existed still resumes
            **({} if background_weight is None else {"background_weight": background_weight}),
            "crop_size": crop,
            **({} if max_side is None else {"max_side": max_side}),  # as background_weight
            "hflip": hflip,
            "split_seed": split_seed,
            "val_fraction": val_fraction,  # a resumed run reads its split back: other fractions are refused
            "test_fraction": test_fraction,
        },
    )
    run_dir = config.run_dir
    # A resume under other options is refused here, as the engine would refuse it once every pair was decoded (minutes
    # for a folder of photos); the classes read from the masks are the engine's to compare.
    unknown = {"extra.classes"} if folder.class_names is None else set()
    finished = resume and is_finished(run_dir)
    # compared for a run continued from its checkpoint or read back finished; one with neither trains afresh
    options = config.to_dict() if config.resume or finished else None
    check_start(run_dir, MANIFEST, resume, overwrite, options, free=RESUME_FREE_OPTIONS | unknown)
    if finished:
        # read back (`cnnlab.train.finished`): not decoded, trained or tested again; a stop before its report.md leaves
        # only that to write, from what the run saved
        return _read_back(recipe, config, background, overrides, notes)
    _check_memory(folder, crop, progress and is_main_process())
    # this command's session of the run (sessions.json), read before the engine rewrites config.yaml; a resumed run's
    # session stopped before it trains (reading the pairs, splitting them, building the model) is one of the run's
    sessions = RunSessions(run_dir, resume, is_main_process(), command_started)
    sessions.doing("reading the image+mask pairs")
    with sessions:
        pairs = folder.read_all()
        if not pairs:
            reasons = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in folder.skipped[:3])
            raise CnnlabError(f"{folder.root} has no usable image+mask pair ({reasons})")
        # the largest class index, and the first mask holding it (-index: of a tie, the first is the largest)
        largest, minus_index = max(
            (int(torch.where(mask == IGNORE_INDEX, 0, mask).max()), -index) for index, (_, mask) in pairs.items()
        )
        class_names = folder.class_names or [f"class {i}" for i in range(max(largest + 1, 2))]
        if background is not None and not 0 <= background < len(class_names):
            raise CnnlabError(f"--background {background} is not a class index (0..{len(class_names) - 1})")
        config = replace(config, extra={**config.extra, "classes": class_names})
        # a value no region holds: JPEG or interpolation artefacts, said before the split (a class of them each)
        edge_only = describe_edge_only(folder, edge_only_values({index: mask for index, (_, mask) in pairs.items()}))
        make_folder(run_dir, shown=str(config.output))  # under a file: one line, exit 2
        note_current_run(run_dir)
        sessions.doing("setting up the run")
        # Under torchrun rank 0 splits and writes the manifest first, the other processes then read it (they write no
        # file of the run: the engine and the end of this function write from rank 0 only).
        main = is_main_process()
        with main_process_first(config.device):
            split = _split(folder, pairs, run_dir / MANIFEST, val_fraction, test_fraction, split_seed, resume, main)
        if main:
            write_text_whole(run_dir / SKIPPED, json.dumps([vars(s) for s in folder.skipped], indent=1))
        for skipped in folder.skipped if notes and main else ():  # named before training, as `train transfer` does
            print(f"skipped {skipped.path}: {skipped.reason}")
        parts = {part: [pairs[i] for i in indices] for part, indices in split.items()}
        training_pairs = len(parts["train"])
        if "batch_size" in (overrides or {}) and training_pairs < config.batch_size:
            # the DataLoader gave one step of them per epoch, and the run recorded the batch asked for
            raise CnnlabError(
                f"--batch-size {config.batch_size} is more than the {training_pairs} training pairs of {folder.root}; "
                f"pass --batch-size {training_pairs} or less"
            )
        labelled = labelled_pixels(parts)
        if notes and main and describe_labelled(labelled):  # scribbles or points: said before training
            print(describe_labelled(labelled))
        origin = None if folder.class_names is not None else (largest, folder.masks[-minus_index])
        untrained = describe_untrained(parts["train"], class_names, origin)
        if notes and main and untrained:  # a class without training pixels trained silently, never predicted
            print(untrained)
        if notes and main and edge_only:
            print(edge_only)

        from cnnlab.models import create_model

        torch.manual_seed(seed)
        kwargs = {**recipe.model_kwargs, "num_classes": len(class_names), "in_chans": 3}
        network = create_model(recipe.arch, pretrained=recipe.pretrained, **kwargs)
        weights_cfg = getattr(getattr(network, "backbone", None), "pretrained_cfg", None) if recipe.pretrained else None
        mean, std = (weights_cfg.mean, weights_cfg.std) if weights_cfg is not None else ((0.0,) * 3, (1.0,) * 3)
        to_input = SegmentationInput(mean, std)
        weight = None
        if class_weight == "balanced":
            counts = torch.bincount(torch.cat([m.flatten().long() for _, m in parts["train"]]), minlength=256)
            if empty := [name for name, count in zip(class_names, counts.tolist(), strict=False) if count == 0]:
                # class_weights' own message spoke of training images: here it is the pixels of the training masks
                raise CnnlabError(
                    "--class-weight balanced weighs each class by its training pixels, and the training split's masks "
                    f"have no pixel of {', '.join(repr(name) for name in empty)}; leave --class-weight out"
                )
            weight = class_weights(dict(zip(class_names, counts[: len(class_names)].tolist(), strict=True)))
        elif background_weight is not None:
            weight = torch.ones(len(class_names))
            weight[background] = background_weight
        trainer = Trainer(
            network,
            config,
            loss_fn=nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE_INDEX),
            metrics={
                "miou": MeanIoU(len(class_names), background is None, IGNORE_INDEX, background or 0),
                "pixel_accuracy": PixelAccuracy(len(class_names), IGNORE_INDEX),
            },
            train_transform=to_input,
            eval_transform=to_input,
            callbacks=[best_weights := BestWeights(), *callbacks, SessionEpochs(sessions)],
            notes=notes,
        )
        eval_batch = config.eval_batch_size or 2 * config.batch_size
        paths = {part: [folder.images[i] for i in indices] for part, indices in split.items()}
        show = progress and main
        eval_batch = _whole_image_batch(network, parts, paths, eval_batch, resolve_device(config.device), crop, show)
        train_loader = DataLoader(
            SegmentationSamples(parts["train"], joint_train_transform(crop, hflip)),
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator(),
        )
        # padded batches (pad_collate): under torchrun the engine shards validation's batch_size batches between ranks
        val_loader = DataLoader(SegmentationSamples(parts["val"]), batch_size=eval_batch, collate_fn=pad_collate)
    with sessions:  # an interrupted session records its wall time too
        history = trainer.fit(LoaderBatches(train_loader), LoaderBatches(val_loader) if parts["val"] else None)
        final = trainer.eval_model  # the best epoch's weights, which BestWeights loaded back
        chosen = chosen_epoch(trainer, best_weights, history)
        if not main:  # the trained model is rank 0's to test, save and report
            return {"run_dir": str(run_dir)}

        # The test images are used here, once, after training: never for a choice.
        test = parts["test"]
        test_loader = _whole_images(test, eval_batch)
        scores = MaskScores(len(class_names), IGNORE_INDEX, BOUNDARY_TOLERANCE)
        errors = scores.errors
        # the predictions of the WORST_IMAGES images with the most wrong pixels so far, for the overlays: every test
        # image's, held as int64 views of their padded batches, took 96 MB or more a 12 MP photo
        predictions: dict[int, torch.Tensor] = {}
        for logits, targets in trainer.inference(LoaderBatches(test_loader), final):
            for predicted, target in zip(logits.argmax(1).cpu(), targets.cpu(), strict=True):
                height, width = test[len(errors)][1].shape  # crop the batch padding off
                predicted, target = predicted[:height, :width], target[:height, :width]
                scores.add(predicted, target)
                predictions[len(errors) - 1] = predicted.to(torch.uint8)  # a copy: fewer than 255 classes
                if len(predictions) > WORST_IMAGES:  # the fewest wrong pixels leave, the later of a tie first
                    del predictions[max(predictions, key=lambda i: (-errors[i], i))]
        test_report = scores.report(class_names, background)
        matrix = scores.matrix
        worst = sorted(predictions, key=lambda i: (-errors[i], i))
        test_paths = paths["test"]
        downscaled = (
            "" if max_side is None else f"; trained on images downscaled to a longer side of at most {max_side} px"
        )
        save_model(
            final,
            run_dir,
            recipe.arch,
            kwargs,
            meta={
                "task": TASK,
                "kind": SEGMENTER,
                "recipe": recipe.name,  # written as "model" before 2026-12-07 (`saved_meta` reads both)
                "seed": seed,
                "classes": class_names,
                "background": background,
                "ignore_index": IGNORE_INDEX,
                "colours": folder.colours.tolist() if folder.colours is not None else None,
                "normalisation": {"mean": list(mean), "std": list(std)},
                "max_side": max_side,
                "input": "float RGB [N, 3, H, W] in [0, 1], any H and W, minus mean, over std" + downscaled,
                "output": f"logits [N, {len(class_names)}, H, W]",
                "val_miou": chosen["val_miou"],
            },
        )
        if trainer.is_main_process:  # before the session ends: a stop while they are drawn interrupts it
            from cnnlab.report.plots import plot_confusion_matrix

            plot_confusion_matrix(matrix, run_dir / "test_confusion.png", class_names, "test pixels")
            save_overlays(
                [test[i][0] for i in worst],
                [test[i][1] for i in worst],
                [predictions[i] for i in worst],
                run_dir / "test_worst.png",
                class_names,
                max_images=WORST_IMAGES,
                titles=[f"{test_paths[i].name}: {errors[i]:.1%} wrong" for i in worst],
                background=background,
                colours=folder.colours,  # classes.json's, as predict paints its masks; None: the default palette
            )
        sessions.end()
        summary = {
            "data": str(folder.root),
            "model": recipe.name,
            "arch": recipe.arch,
            "pretrained": recipe.pretrained,
            "max_side": max_side,
            "params": sum(p.numel() for p in final.parameters()),
            "run_dir": str(run_dir),
            "images": {part: len(indices) for part, indices in split.items()},
            "skipped": len(folder.skipped),
            "labelled_pixels": {part: list(pair) for part, pair in labelled.items()},  # (labelled, all) of the masks
            "untrained_classes": untrained,  # the line naming the classes no training mask has, or None
            "edge_only_values": edge_only,  # the line naming mask values found only at edges (artefacts?), or None
            "epochs": len(history),
            "steps": trainer.global_step,
            "saved_epoch": chosen["epoch"],  # the epoch whose weights were saved and tested
            "saved_epoch_best": chosen["best"],  # whether it is the best on the monitor (else the last)
            "val_miou": chosen["val_miou"],  # that epoch's
            "test": test_report,
            "worst_test_images": [{"image": str(test_paths[i]), "pixel_error": errors[i]} for i in worst],
            "train_seconds": trainer.train_seconds,
            **sessions.results(),  # each session, and their wall time (None: one is unknown)
            "batch": trainer.batch_record(),  # the batch it trained with: after an out-of-memory retry, say
            "device": str(trainer.device),  # what its report's hardware line names
        }
        if trainer.is_main_process:
            write_text_whole(run_dir / "results.json", json.dumps(summary, indent=1))
            _report(recipe, config, history, summary, class_names, background, overrides).write(run_dir / "report.md")
        return summary


def _read_back(
    recipe: FolderSegmentRecipe,
    config: TrainConfig,
    background: int | None,
    overrides: dict[str, Any] | None,
    notes: bool,
) -> dict[str, Any]:
    """The results of the finished run `config` names (its options already compared), and its report.md written
    where a stop came before it, from what the run saved: results.json, metrics.json, and config.yaml's options,
    classes and environment (the session that finished it), named as the folder is now; and its split_digests.json
    where a run made before it was recorded has none, or its masks' digests where one made before they were recorded
    lacks them (`write_missing_split_digests`)."""
    run_dir = config.run_dir

    def write_report(summary: dict[str, Any]) -> None:
        # config.yaml's name is where it was trained, which a moved or renamed run has left
        saved = replace(load_config(run_dir / "config.yaml"), name=config.name, output=config.output)
        history = json.loads((run_dir / "metrics.json").read_text())
        environment = recorded_environment(run_dir)
        report = _report(recipe, saved, history, summary, saved.extra["classes"], background, overrides, environment)
        report.write(run_dir / "report.md")

    def confusion(summary: dict[str, Any], path: Path) -> None:  # as the test pass drew it
        from cnnlab.report.plots import plot_confusion_matrix

        classes = load_config(run_dir / "config.yaml").extra["classes"]
        plot_confusion_matrix(torch.tensor(summary["test"]["confusion_matrix"]), path, classes, "test pixels")

    if is_main_process():  # a run made before split_digests.json (or its masks): recorded once here, not read again
        write_missing_split_digests(run_dir / MANIFEST, masks=True)  # split.csv's labels are the masks
    # test_worst.png, deleted since, stays missing: it shows the model's masks of test images, a test pass again
    figures = {"test_confusion.png": confusion}
    return read_back(run_dir, write_report, print if notes else None, is_main_process(), figures)


def _report(  # noqa: ANN202
    recipe: FolderSegmentRecipe,
    config: TrainConfig,
    history: list[dict[str, float]],
    summary: dict[str, Any],
    class_names: list[str],
    background: int | None,
    overrides: dict[str, Any] | None = None,
    environment: dict[str, Any] | None = None,
):
    """report.md, from the run's results (`summary`: its data folder, split counts and test scores) and epochs;
    `environment`: the session's that finished the run, default this one's."""
    from cnnlab.report.markdown import RunReport
    from cnnlab.report.units import counted

    test, counts = summary["test"], summary["images"]
    downscaled = (
        "" if summary["max_side"] is None else f", downscaled to a longer side of at most {summary['max_side']} px"
    )
    labelled = describe_labelled({part: tuple(pair) for part, pair in summary["labelled_pixels"].items()})
    unlabelled = f" {labelled[0].upper()}{labelled[1:]}." if labelled else ""
    for line in (summary.get("untrained_classes"), summary.get("edge_only_values")):
        unlabelled += f" {line[0].upper()}{line[1:]}." if line else ""
    report = RunReport(
        f"Segmentation run `{config.name}`",
        f"Model `{recipe.name}`: {recipe.summary}{describe_overrides(recipe.train, overrides)}. Data "
        f"{summary['data']}: {counts['train']} training, {counts['val']} validation and "
        f"{counted(counts['test'], 'test image', 'test images')} ({MANIFEST}), {summary['skipped']} skipped "
        f"({SKIPPED}); seed {config.seed}; the test "
        f"{'image was' if counts['test'] == 1 else 'images were'} evaluated once, after training, "
        f"whole{downscaled}.{unlabelled}",
        environment or environment_record(),
        summary.get("device"),
    )
    report.heading("Test images")
    scope = "every class" if background is None else f"the classes other than background `{class_names[background]}`"
    every = "" if background is None else f"; over every class {test['miou_with_bg']:.4f}"  # else the same figure
    report.text(
        f"mIoU over {scope} **{test['miou']:.4f}**{every}; pixel accuracy "
        f"{test['pixel_accuracy']:.4f} (unlabelled pixels excluded); boundary F1 "
        f"{boundary_f1_text(test['boundary_f1'])} (within {test['boundary_tolerance_px']} px). "
        f"{summary['params']:,} parameters, {summary['train_seconds']:.0f} s of training."
    )
    report.table(
        ["class", "IoU"],
        [[name, "absent" if iou is None else iou] for name, iou in test["iou_per_class"].items()],
        scores=["IoU"],
    )
    report.image("confusion matrix of the test pixels", "test_confusion.png")
    report.image("the test images with the most wrong pixels: image, truth, prediction, errors", "test_worst.png")
    report.add_sessions(summary.get("sessions", []))
    report.add_training(history, monitor=config.monitor)
    report.text(saved_epoch_line(summary["saved_epoch"], summary["saved_epoch_best"], config.monitor))
    return report.add_config(config.to_dict())
