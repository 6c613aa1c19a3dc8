"""Semantic segmentation of multi-digit MNIST canvases: recipes run on the training engine.

The canvases (`cnnlab.data.segmentation`) stay in memory as uint8 and are converted on the device per batch (float
images in [0, 1], int64 masks). The validation canvases choose the weights (the epoch of the best validation mIoU is
saved and tested, `BestWeights`, across a resume too; the recipes were tuned on them); the test canvases, built only
from MNIST test digits, are evaluated once at the end: pixel accuracy, per-class IoU, mIoU over the 10 digit classes
(background excluded; ``miou_with_bg`` includes it), boundary F1 and an overlay PNG of predictions against ground
truth.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.augment import RandomAffine
from cnnlab.data.segmentation import (
    CLASS_NAMES,
    NUM_CLASSES,
    DigitSegmentation,
    canvases_digest,
    make_digit_segmentation,
    make_test_canvases,
)
from cnnlab.errors import CnnlabError, first_line
from cnnlab.files import write_text_whole
from cnnlab.report.segmentation import (
    BoundaryF1,
    MeanIoU,
    PixelAccuracy,
    boundary_f1_text,
    save_overlays,
    segmentation_report,
)
from cnnlab.report.units import counted
from cnnlab.tasks.recipes import (
    Recipe,
    RecipeBook,
    check_not_training,
    check_resume_or_overwrite,
    describe_overrides,
    engine_resumes,
    load_run_config,
    note_current_run,
    run_name,
    with_overrides,
)
from cnnlab.train import BestWeights, Callback, TensorBatches, TrainConfig, Trainer
from cnnlab.train.callbacks import SessionEpochs
from cnnlab.train.config import (
    check_options,
    check_resumable,
    environment_record,
    load_config,
    recorded_environment,
    use_threads,
)
from cnnlab.train.finished import is_finished, read_back
from cnnlab.train.optim import default_param_groups
from cnnlab.train.records import RunSessions
from cnnlab.train.saved import DIGIT_SEGMENTER, save_model
from cnnlab.train.strategy import is_main_process

__all__ = [
    "RECIPES",
    "EncoderClassifier",
    "SegmentRecipe",
    "chosen_epoch",
    "evaluate_canvas_run",
    "evaluate_segmentation",
    "is_canvas_run",
    "pretrain_encoder",
    "saved_epoch_line",
    "train_segmentation",
]

TASK = "segment"


@dataclass(frozen=True)
class SegmentRecipe(Recipe):
    """A named way to train a segmentation model on the multi-digit canvases: the recipe base plus the canvases,
    the loss weights and encoder pretraining.

    Attributes:
        sizes: canvases in train, val and test.
        canvas_size: canvas side.
        background_weight: cross-entropy weight of the background class (digit classes weigh 1).
        pretrain_epochs: epochs of encoder pretraining on single training-pool digits before segmentation
            (`pretrain_encoder`; U-Nets only, 0 = none).
    """

    sizes: tuple[int, int, int] = (4000, 500, 1000)
    canvas_size: int = 64
    background_weight: float = 1.0
    pretrain_epochs: int = 0


# Chosen on the validation canvases: a 5th level (4x4 bottleneck at 64x64, a receptive field well beyond a 28 px
# digit) and background pixels weighted 0.2 in the cross-entropy (91 % of the pixels are background) make the
# digits' identity learnable within a few hundred steps; with 4 levels and an unweighted loss the network draws the
# ink but gives every digit one class.
_WIDTHS = (12, 24, 48, 96, 192)
_BACKGROUND_WEIGHT = 0.2
_COMMON_TRAIN = dict(
    batch_size=16,  # more steps per canvas: at 32, a short run learns where ink is but not which digit
    optimizer="adamw",
    lr=3e-3,
    weight_decay=1e-4,
    schedule="onecycle",
    warmup_epochs=0.5,
    monitor="val_miou",
    monitor_mode="max",
    channels_last=True,  # 1.2x faster on CPU for these convs (benchmarks/segmentation.py)
)
RECIPES: RecipeBook[SegmentRecipe] = RecipeBook(
    "segmentation",
    [
        SegmentRecipe(
            name="quick",
            summary="U-Net 12-24-48-96-192 (1.1 M params), 4000 canvases of 64x64, 3 epochs (a few minutes)",
            arch="unet",
            model_kwargs={"widths": _WIDTHS},
            train=dict(epochs=3, **_COMMON_TRAIN),
            sizes=(4000, 500, 1000),
            background_weight=_BACKGROUND_WEIGHT,
            pretrain_epochs=1,  # the encoder first learns digit identity from single digits: higher val mIoU per step
        ),
        SegmentRecipe(
            name="accurate",
            summary="U-Net 12-24-48-96-192 (1.1 M), 15000 canvases, pretrained encoder, 6 epochs (19-25 min, 2 cores)",
            arch="unet",
            model_kwargs={"widths": _WIDTHS},
            train=dict(epochs=6, **_COMMON_TRAIN),
            sizes=(15000, 500, 1000),  # more canvases beat more epochs on the same ones (docs/BENCHMARKS.md)
            background_weight=_BACKGROUND_WEIGHT,
            pretrain_epochs=1,  # the encoder first learns digit identity from single digits: higher val mIoU per step
        ),
        SegmentRecipe(
            name="unet",
            summary="U-Net 16-32-64-128 (0.47 M params, 4 levels), trained like the FCNs for the benchmark comparison",
            arch="unet",
            train=dict(epochs=6, **_COMMON_TRAIN),
            background_weight=_BACKGROUND_WEIGHT,
        ),
        SegmentRecipe(
            name="fcn8s",
            summary="FCN-8s on a resnet18 trunk (11.2 M params), transposed-conv upsampling",
            arch="fcn8s",
            train=dict(epochs=6, **_COMMON_TRAIN),
            background_weight=_BACKGROUND_WEIGHT,
        ),
        SegmentRecipe(
            name="fcn32s",
            summary="FCN-32s on a resnet18 trunk (11.2 M params): no skips, one 32x upsampling",
            arch="fcn32s",
            train=dict(epochs=6, **_COMMON_TRAIN),
            background_weight=_BACKGROUND_WEIGHT,
        ),
    ],
)


def _to_device_dtypes(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 canvases -> float images in [0, 1] and int64 masks (runs on the device, per batch)."""
    return images.float().div_(255.0), masks.long()


def evaluate_segmentation(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    batch_size: int = 64,
    boundary_tolerance: int = 2,
    trainer: Trainer | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Segmentation report of `model` on uint8 canvases, and its predicted labels (uint8 [N, H, W]).

    Runs through the engine's inference path: `trainer`'s (the run's precision and memory format) when given, else
    a `Trainer.for_inference` on the model's device.

    Returns:
        ({"pixel_accuracy", "miou" (digits only), "miou_includes_background": False, "miou_with_bg",
        "iou_per_class", "boundary_f1", "boundary_tolerance_px"}, predictions)
    """
    if trainer is None:
        device = str(next(model.parameters()).device)
        trainer = Trainer.for_inference(model, device=device, batch_size=batch_size, eval_transform=_to_device_dtypes)
    accuracy, iou, boundary = PixelAccuracy(NUM_CLASSES), MeanIoU(NUM_CLASSES), BoundaryF1(boundary_tolerance)
    predictions = []
    for logits, targets in trainer.inference(TensorBatches(images, masks, batch_size), model):
        predicted = logits.argmax(1).cpu()
        for metric in (accuracy, iou, boundary):
            metric.update(predicted, targets.cpu())
        predictions.append(predicted.to(torch.uint8))
    report = segmentation_report(iou.matrix, CLASS_NAMES)
    report["boundary_f1"] = boundary.compute()
    report["boundary_tolerance_px"] = boundary_tolerance
    return report, torch.cat(predictions)


class EncoderClassifier(nn.Module):
    """A U-Net's encoder (shared, not copied) + global average pooling + a linear layer over the 10 digits."""

    def __init__(self, unet: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        if not hasattr(unet, "encode"):
            raise CnnlabError(f"encoder pretraining needs a U-Net (a model with .encode); got {type(unet).__name__}")
        self.unet = unet
        self.head = nn.Linear(unet.widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet.encode(x)[-1].mean((2, 3)))

    def trained(self) -> nn.Module:
        """The modules the forward pass runs (the encoder and the head): the U-Net's decoder is held, not trained."""
        return nn.ModuleList([self.unet.encoders, self.head])


_PRETRAIN_AUGMENT = RandomAffine(degrees=10.0, scale=0.1, shift=2.0)


def _digits_to_device(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 28x28 digits -> float [0, 1], zero-padded to 32x32 (the U-Net's stride), randomly shifted/rotated."""
    padded = F.pad(images.float().div_(255.0), (2, 2, 2, 2))
    return _PRETRAIN_AUGMENT(padded, labels.long())


def pretrain_encoder(
    model: nn.Module,
    data: DigitSegmentation,
    config: TrainConfig,
    epochs: int,
    resume: bool = False,
    notes: bool | None = None,
) -> dict[str, Any]:
    """Train `model`'s encoder as a digit classifier on the single digits of the training pool, in place.

    The canvases' loss teaches *where* ink is within a few hundred steps but *which* digit it is only slowly; a
    classifier learns digit identity from 55,000 single 28x28 digits in about a minute of CPU, and segmentation
    then starts from those features (docs/BENCHMARKS.md, Segmentation). Only the training pool is used, the
    digits the train canvases are built from, never a val or test digit. Runs on the engine as the sub-run
    ``<run>/pretrain-encoder`` (AdamW 3e-3 one-cycle, batch 128), with the segmentation run's device, threads and
    precision; the decoder is untouched (it gets no gradient).

    Args:
        resume: continue the sub-run from its checkpoint, when an interrupted run left one (else it starts afresh).
        notes: the engine's notes on the results (`Trainer`'s argument; None: with ``config.progress``).

    Returns:
        The last epoch's record (training loss and accuracy).
    """
    if data.train_digits is None:
        raise CnnlabError("encoder pretraining needs the training pool's digits (DigitSegmentation.train_digits)")
    # A sub-run on the training pool's digits, no validation. Resumed, it keeps its finished epochs: it was redone
    # from scratch until the segmentation run had a checkpoint, so Ctrl+C in the first epoch after the pretraining
    # ("keeps its finished epochs; continue with ... --resume") cost the whole pretraining.
    name = f"{config.name}/pretrain-encoder"
    resumed = engine_resumes(Path(config.output) / config.task / name, resume)
    sub_config = dataclasses.replace(
        config,
        epochs=epochs,
        batch_size=128,
        lr=3e-3,
        weight_decay=1e-4,
        optimizer="adamw",
        schedule="onecycle",
        warmup_epochs=0.0,
        ema_decay=None,
        early_stopping_patience=None,
        name=name,
        resume=resumed,
        overwrite=not resumed,
        extra={"pretraining": "U-Net encoder as a digit classifier on the training pool's single digits"},
    )
    # Only the encoder and the head in the optimizer: the engine then knows the decoder gets no gradient, which
    # DDP must be told (under torchrun it otherwise stopped at the second step).
    trainer = Trainer(
        EncoderClassifier(model),
        sub_config,
        train_transform=_digits_to_device,
        eval_transform=_digits_to_device,
        param_groups=lambda classifier: default_param_groups(classifier.trained(), sub_config.weight_decay),
        notes=notes,
    )
    digits, labels, _ids = data.train_digits
    trainer.fit(TensorBatches(digits, labels, sub_config.batch_size, drop_last=True))
    return trainer.history[-1]


def train_segmentation(
    recipe: str = "quick",
    *,
    data_dir: str | None = None,
    output: str = "runs",
    name: str | None = None,
    seed: int = 0,
    sizes: tuple[int, int, int] | None = None,
    train_canvases: int | None = None,
    overrides: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    data: DigitSegmentation | None = None,
    background_weight: float | None = None,
    pretrain_epochs: int | None = None,
    notes: bool | None = None,
) -> dict[str, Any]:
    """Train a segmentation model on multi-digit MNIST canvases with the engine, then test it once.

    Args:
        recipe: a name in `RECIPES`.
        data_dir: MNIST root (see `cnnlab.data.paths`).
        output: runs root; the run goes to ``<output>/segment/<name>/``.
        name: run name; default ``<recipe>-<timestamp>``.
        seed: training seed (the canvases always use seed 0, so every run sees the same data).
        sizes: canvases in train, val and test (default: the recipe's).
        train_canvases: training canvases, with the recipe's (or `sizes`') validation and test canvases.
        overrides: `TrainConfig` fields replacing the recipe's (e.g. {"epochs": 2}).
        model_kwargs: constructor options added to the recipe's (e.g. {"upsample": "bilinear"}).
        resume: continue an interrupted run.
        overwrite: replace an existing run of the same name.
        progress: progress bar and epoch lines on stderr.
        callbacks: extra engine callbacks.
        data: pre-generated canvases (skips reading MNIST).
        background_weight: cross-entropy weight of background pixels (default: the recipe's).
        pretrain_epochs: epochs of encoder pretraining on single digits (`pretrain_encoder`; default: the
            recipe's; 0 = none).
        notes: print the notes on the results without `progress`: the line on a finished run read back (nothing
            run; its report.md written again, or why it could not be) and the engine's notes on stderr (the batch a
            search chose, an out-of-memory retry's micro-batch, the best epoch's weights restored; `Trainer.note`);
            None: as `progress`. The CLI keeps them under -q, which drops progress alone, and with --json (on
            stderr).

    Returns:
        The summary saved as ``results.json``: validation history end, test report, timings, run directory. The
        run directory also holds ``model.safetensors`` + ``model.json`` (`cnnlab.load_model`) and
        ``test_overlays.png``.
    """
    command_started = time.perf_counter()
    chosen = RECIPES.get(recipe)
    check_resume_or_overwrite(resume, overwrite)
    bg_weight = chosen.background_weight if background_weight is None else background_weight
    if not bg_weight > 0:
        raise CnnlabError(f"--background-weight must be positive, got {bg_weight}")
    pretrain = chosen.pretrain_epochs if pretrain_epochs is None else pretrain_epochs
    if pretrain < 0:
        raise CnnlabError(f"pretrain epochs must be >= 0, got {pretrain}")
    kwargs = {**chosen.model_kwargs, **(model_kwargs or {})}
    from cnnlab.models.segmentation import UPSAMPLE_MODES

    if kwargs.get("upsample", UPSAMPLE_MODES[0]) not in UPSAMPLE_MODES:  # before the canvases (0.5-2.5 s), not after
        raise CnnlabError(f"--upsample {kwargs['upsample']!r} is not one of {', '.join(UPSAMPLE_MODES)}")
    train_options = with_overrides(chosen.train, overrides)
    check_options(train_options)  # here as TrainConfig would, later: a bad num_threads is a line, not torch's error
    use_threads(train_options.get("num_threads"))  # the canvases are made before the Trainer, which sets them too
    sizes = sizes or chosen.sizes
    if train_canvases is not None:
        sizes = (train_canvases, sizes[1], sizes[2])
    name = name or run_name(recipe)
    run_dir = Path(output) / TASK / name
    check_not_training(run_dir)
    if resume and not run_dir.is_dir():
        raise CnnlabError(f"--resume: no run at {run_dir}; start the run without --resume")
    resumed = engine_resumes(run_dir, resume)
    config = TrainConfig(
        **train_options,
        seed=seed,
        task=TASK,
        name=name,
        output=output,
        resume=resumed,
        overwrite=overwrite,
        progress=progress,
        extra={
            "recipe": chosen.name,
            "arch": chosen.arch,
            "model_kwargs": kwargs,
            "canvas_sizes": list(sizes if data is None else data_sizes(data)),  # what make_digit_segmentation makes
            "background_weight": bg_weight,
            "pretrain_epochs": pretrain,
        },
    )
    if resume and is_finished(run_dir):
        # read back (`cnnlab.train.finished`), not tested again; a stop before its report.md leaves only that to write
        # at once: its options need no canvases made
        return _read_back(chosen, config, overrides, pretrain, progress if notes is None else notes)
    # this command's session of the run (sessions.json), read before the engine rewrites config.yaml; a resumed run's
    # session stopped while it makes the canvases is one of the run's (a read-back, above, writes none: it reads none)
    sessions = RunSessions(run_dir, resume, is_main_process(), command_started)
    sessions.doing("making the digit canvases")
    with sessions:  # a resumed run's session is one of the run's from here: stopped before it trains too
        if data is None:
            data = make_digit_segmentation(data_dir, sizes=sizes, canvas_size=chosen.canvas_size, seed=0)
        from cnnlab.models import create_model

        note_current_run(config.run_dir)
        sessions.doing("setting up the run")
        torch.manual_seed(seed)
        model = create_model(chosen.arch, **kwargs)
        metrics = {
            "miou": MeanIoU(NUM_CLASSES, include_background=False),
            "pixel_accuracy": PixelAccuracy(NUM_CLASSES),
            "boundary_f1": BoundaryF1(2),
        }
        trainer = Trainer(
            model,
            config,
            loss_fn=nn.CrossEntropyLoss(weight=torch.tensor([bg_weight] + [1.0] * (NUM_CLASSES - 1))),
            metrics=metrics,
            train_transform=_to_device_dtypes,
            eval_transform=_to_device_dtypes,
            callbacks=[best_weights := BestWeights(), *callbacks, SessionEpochs(sessions)],
            notes=notes,
        )
    with sessions:  # an interrupted session records its wall time too
        if pretrain:
            if trainer.is_main_process:
                trainer.prepare_run_dir()  # a --resume/--overwrite clash fails before the pretraining, not after
            if not resumed:  # a resumed run's checkpoint already holds the pretrained encoder
                sessions.begin(0)  # the encoder's pretraining is this session's work on the run too
                pretrain_encoder(model, data, config, pretrain, resume=resume, notes=notes)
        started = time.perf_counter()
        history = trainer.fit(
            TensorBatches(data.train.images, data.train.masks, config.batch_size, drop_last=True),
            TensorBatches(data.val.images, data.val.masks, config.eval_batch_size or 2 * config.batch_size),
        )
        wall_seconds = time.perf_counter() - started
        final = trainer.eval_model  # the best epoch's weights, which BestWeights loaded back
        kept = chosen_epoch(trainer, best_weights, history)
        # The test canvases are used here, once, after training: never for a choice.
        test_report, predictions = evaluate_segmentation(
            final, data.test.images, data.test.masks, batch_size=2 * config.batch_size, trainer=trainer
        )
        if trainer.is_main_process:  # under torchrun every rank tests, rank 0 writes
            save_overlays(data.test.images, data.test.masks, predictions, run_dir / "test_overlays.png", CLASS_NAMES)
            save_model(
                final,
                run_dir,
                chosen.arch,
                kwargs,
                meta={
                    "task": TASK,
                    "kind": DIGIT_SEGMENTER,
                    "classes": list(CLASS_NAMES),
                    "recipe": chosen.name,
                    "seed": seed,
                    "input": "float images in [0, 1], shape [N, 1, H, W], any H and W",
                    "output": "logits [N, 11, H, W]: 0 = background, 1..10 = digit + 1",
                    "val_miou": kept["val_miou"],
                },
            )
        sessions.end()
        summary = {
            "recipe": chosen.name,
            "arch": chosen.arch,
            "model_kwargs": kwargs,
            "params": sum(p.numel() for p in final.parameters()),
            "run_dir": str(run_dir),
            "epochs": len(history),
            "saved_epoch": kept["epoch"],  # the epoch whose weights were saved and tested
            "saved_epoch_best": kept["best"],  # whether it is the best on the monitor (else the last)
            "val_miou": kept["val_miou"],  # that epoch's
            "val_boundary_f1": history[kept["epoch"] - 1].get("val_boundary_f1") if history else None,
            "test": test_report,
            "train_seconds": trainer.train_seconds,
            "wall_seconds": wall_seconds,  # of this session's training alone; its sessions: "sessions"
            **sessions.results(),  # each session, and their wall time (None: one is unknown)
            "batch": trainer.batch_record(),  # the batch it trained with: a search's, or after an out-of-memory retry
            "canvases": data_sizes(data),
            # which test canvases these scores are of: `cnnlab evaluate RUN` makes them again and checks it
            "test_canvases_sha256": canvases_digest(data.test),
            "device": str(trainer.device),  # what its report's hardware line names
        }
        if trainer.is_main_process:
            write_text_whole(run_dir / "results.json", json.dumps(summary, indent=1))
            given = {**(overrides or {}), "train_canvases": summary["canvases"][0], "pretrain_epochs": pretrain}
            _report(chosen, config, history, summary, given).write(run_dir / "report.md")
        return summary


def is_canvas_run(run: str | Path) -> bool:
    """Whether `run` is a saved `train segment` run on the MNIST canvases (not ``--data``)."""
    from cnnlab.train.saved import saved_meta

    try:
        return saved_meta(run).get("kind") == DIGIT_SEGMENTER
    except CnnlabError:  # nothing loadable there: what loads it says so
        return False


def evaluate_canvas_run(
    run: str | Path, data_dir: str | None = None, output_dir: str | Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Score a canvas run again on its test canvases, made again from MNIST as its record says (seed 0, its count
    and the recipe's canvas size), through the engine's inference path in the memory format of its test pass: the
    scores its results.json holds, on the same device and precision.

    Args:
        run: the run directory (or its model.json / model.safetensors).
        data_dir: MNIST root (see `cnnlab.data.paths`).
        output_dir: where ``evaluation.json`` and ``test_overlays.png`` go; default ``<run>/evaluation``.
        device: evaluation device.

    Returns:
        What ``evaluation.json`` holds: the test report (as results.json's ``test``), the canvases, the precisions
        (`cnnlab.tasks.run_precision.precisions`), whether the canvases were checked against the run's record, and
        the paths written.

    Raises:
        CnnlabError: the run's config.yaml is missing or records no canvas sizes (its test canvases cannot be told);
            the canvases made again differ from those the run was tested on (another MNIST, or canvases given from
            Python); MNIST is not found; `output_dir` cannot be written.
    """
    import yaml

    from cnnlab.tasks.run_precision import precisions, run_channels_last
    from cnnlab.train.saved import evaluation_folder, load_model, spec_path

    run_dir = spec_path(run).parent
    report_md = run_dir / "report.md"
    try:
        extra = load_config(run_dir / "config.yaml").extra
        test_count = int(extra["canvas_sizes"][2])
        canvas_size = RECIPES.get(str(extra["recipe"])).canvas_size
    except (CnnlabError, KeyError, TypeError, ValueError, IndexError, OSError, yaml.YAMLError) as error:
        raise CnnlabError(
            f"{run_dir} is a canvas segmentation run whose config.yaml does not say which test canvases it was scored "
            f"on ({first_line(error)}), so they cannot be made again; its test scores are in {report_md}"
        ) from error
    out = evaluation_folder(run_dir, output_dir)  # before the canvases are made and segmented
    canvases = make_test_canvases(data_dir, test_count, canvas_size, seed=0)
    recorded = _recorded_results(run_dir).get("test_canvases_sha256")
    if recorded is not None and recorded != canvases_digest(canvases):
        raise CnnlabError(
            f"the {test_count} test canvases made again from the MNIST found (--data-dir, else $CNNLAB_DATA, else "
            f"./data) are not those {run_dir} was tested on (another MNIST test file, or canvases given from Python), "
            f"so its scores would not be comparable; pass --data-dir with the MNIST it was trained on, or see its test "
            f"scores in {report_md}"
        )
    model = load_model(run, device=device)
    trainer = Trainer.for_inference(
        model, device=device, batch_size=64, channels_last=run_channels_last(run_dir), eval_transform=_to_device_dtypes
    )
    report, predictions = evaluate_segmentation(model, canvases.images, canvases.masks, trainer=trainer)
    save_overlays(canvases.images, canvases.masks, predictions, out / "test_overlays.png", CLASS_NAMES)
    result = {
        "run": str(run),
        **precisions(run_dir),
        "canvases": test_count,
        "canvas_size": canvas_size,
        "canvases_checked": recorded is not None,  # a run made before the digest was recorded: not checked
        "test": report,
        "test_overlays_png": str(out / "test_overlays.png"),
    }
    write_text_whole(out / "evaluation.json", json.dumps(result, indent=1))
    return result


def _recorded_results(run_dir: Path) -> dict[str, Any]:
    """The run's results.json ({} where it cannot be read: a run stopped before it, or made elsewhere)."""
    try:
        return dict(json.loads((run_dir / "results.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _read_back(
    recipe: SegmentRecipe, config: TrainConfig, overrides: dict[str, Any] | None, pretrain: int, notes: bool
) -> dict[str, Any]:
    """The results of the finished run `config` names, under the options it was trained with (else refused), and
    its report.md written from what it saved where a stop came before it: results.json, metrics.json, and the
    options and environment (the finishing session's) of its config.yaml; its learning curves, deleted since, are drawn
    again from metrics.json (`read_back`), test_overlays.png not (a test pass). Nothing is trained or tested."""
    run_dir = config.run_dir
    saved = load_run_config(run_dir)
    check_resumable(saved.to_dict(), config, run_dir)

    def write_report(summary: dict[str, Any]) -> None:
        history = json.loads((run_dir / "metrics.json").read_text())
        given = {**(overrides or {}), "train_canvases": summary["canvases"][0], "pretrain_epochs": pretrain}
        # named as the folder is now: config.yaml's name is where it was trained, which a renamed run has left
        named_now = dataclasses.replace(saved, name=config.name, output=config.output)
        _report(recipe, named_now, history, summary, given, recorded_environment(run_dir)).write(run_dir / "report.md")

    return read_back(run_dir, write_report, print if notes else None, is_main_process())


def _report(  # noqa: ANN202
    recipe: SegmentRecipe,
    config: TrainConfig,
    history: list[dict[str, float]],
    summary: dict[str, Any],
    given: dict[str, Any] | None = None,
    environment: dict[str, Any] | None = None,
):
    """report.md; `given`: the engine options laid over the recipe's, and ``train_canvases`` and
    ``pretrain_epochs``, which its summary names too ("4000 canvases"); `environment`: the session's that finished
    the run, default this one's."""
    from cnnlab.report.markdown import RunReport

    recipe_options = {**recipe.train, "train_canvases": recipe.sizes[0], "pretrain_epochs": recipe.pretrain_epochs}

    test = summary["test"]
    train, val, test_count = summary["canvases"]
    report = RunReport(
        f"Segmentation run `{config.name}`",
        f"Recipe `{recipe.name}`: {recipe.summary}{describe_overrides(recipe_options, given)}. {train:,} training, "
        f"{val:,} validation and {counted(test_count, 'test canvas', 'test canvases')} of {recipe.canvas_size}x"
        f"{recipe.canvas_size} px with 1-5 MNIST digits each; seed {config.seed}; the test "
        f"{'canvas' if test_count == 1 else 'canvases'} (built from MNIST test digits only) "
        f"{'was' if test_count == 1 else 'were'} evaluated once, after training.",
        environment or environment_record(),
        summary.get("device"),
    )
    report.heading("Test canvases")
    report.text(
        f"mIoU over the 10 digit classes (background excluded) **{test['miou']:.4f}**; with background "
        f"{test['miou_with_bg']:.4f}; pixel accuracy {test['pixel_accuracy']:.4f}; boundary F1 "
        f"({test['boundary_tolerance_px']} px tolerance) {boundary_f1_text(test['boundary_f1'])}. "
        f"{summary['params']:,} parameters, {summary['train_seconds']:.0f} s of training."
    )
    report.table(["class", "IoU"], list(test["iou_per_class"].items()), scores=["IoU"])
    report.image("test canvases: input, truth, prediction", "test_overlays.png")
    report.add_sessions(summary.get("sessions", []))
    report.add_training(history, monitor=config.monitor)
    if "saved_epoch" in summary:
        report.text(saved_epoch_line(summary["saved_epoch"], summary["saved_epoch_best"], config.monitor))
    return report.add_config(config.to_dict())


def chosen_epoch(trainer: Trainer, best_weights: BestWeights, history: list[dict[str, float]]) -> dict[str, Any]:
    """The epoch whose weights a segmentation run saves and tests, its validation mIoU, and whether it is the best
    epoch on the monitor: it is when `best_weights` holds that epoch's weights; else (no validation, or a run resumed
    from a checkpoint written before the best weights were kept) it is the last epoch."""
    if not history:
        return {"epoch": None, "val_miou": None, "best": False}
    best = best_weights.weights is not None and best_weights.best_epoch == trainer.best_epoch
    epoch = int(best_weights.best_epoch) if best and best_weights.best_epoch is not None else len(history)
    return {"epoch": epoch, "val_miou": history[epoch - 1].get("val_miou"), "best": best}


def saved_epoch_line(epoch: int | None, best: bool, monitor: str) -> str:
    """The report's sentence naming the epoch whose weights were saved and tested."""
    if epoch is None:
        return "No epoch was trained: the saved model holds the initial weights."
    return f"The model saved and tested holds the weights of epoch {epoch}, " + (
        f"the best {monitor}." if best else "the last (no best weights were kept)."
    )


def data_sizes(data: DigitSegmentation) -> tuple[int, int, int]:
    """Canvases in (train, val, test)."""
    return len(data.train), len(data.val), len(data.test)
