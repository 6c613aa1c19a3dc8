"""Transfer learning on photos: dataset -> stratified split -> pretrained backbone -> two-phase fine-tuning -> test.

This module is the task: it chooses data, parameters and phases, and wires the layers below together.

1. Data (`cnnlab.data.sources`): an ImageFolder-style folder, a CSV of ``path,label``, a split folder (``train/``,
   ``val/``, ``test/``), or a built-in dataset (``elpv``). Bad files are skipped and listed; classes below
   ``min_per_class`` are an error.
2. Split (`cnnlab.data.split`): stratified train/val/test from the seed, written to ``split.csv`` in the run
   directory and read back by any later run in that directory (resume, evaluation), or taken from
   ``split_manifest``.
3. Phase 1 ("head"): the backbone is frozen (its batch norms kept in eval mode) and a new classifier is trained.
   With ``cache_features`` the pooled backbone features are computed once (``features.safetensors``) and the head
   trains on them in memory: seconds on a CPU.
4. Phase 2 ("finetune", optional): all, or the top N, blocks are unfrozen and trained with layer-wise learning rates
   (`cnnlab.train.layerwise_param_groups`), with augmentation, on the engine.
5. Each phase keeps the weights of its best validation epoch (`cnnlab.train.BestWeights`) and may stop early.
6. The test set is evaluated once, at the end, through the engine's inference path: accuracy, balanced accuracy,
   per-class P/R/F1, confusion matrix and highest-loss PNGs (`cnnlab.report.classification`), ``results.json`` and
   ``report.md`` (`cnnlab.report.transfer`). The model is saved as ``model.safetensors`` + ``model.json`` with its
   classes and preprocessing record (`cnnlab predict` / `cnnlab export` read them).

The run folder holds, like every task's, config.yaml, metrics.csv/json and learning_curves.png (the phases' epochs in
order; each phase also has its own folder), results.json and report.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data.folder import ImageDataset, LabelledImages, SkippedFile, load_image
from cnnlab.data.photo_transforms import (
    InputCheck,
    InputStatisticsWarning,
    build_eval_transform,
    build_train_transform,
    input_problems,
    save_preview_grid,
)
from cnnlab.data.sources import check_files_exist, limit_per_class, open_image_source
from cnnlab.data.split import SPLITS, Split, read_manifest, stratified_split, write_manifest
from cnnlab.errors import CnnlabError
from cnnlab.models import PretrainedCfg, create_model
from cnnlab.tasks.recipes import run_name
from cnnlab.train import (
    BestWeights,
    FreezeBatchNorm,
    TensorBatches,
    TrainConfig,
    Trainer,
    adapt_batch_norm,
    layerwise_param_groups,
)
from cnnlab.train.config import environment_record, save_record
from cnnlab.train.records import write_history
from cnnlab.train.saved import save_model

if TYPE_CHECKING:
    from cnnlab.train.config import EngineOptions

__all__ = ["TransferConfig", "class_weights", "load_images", "train_transfer"]

TASK = "transfer"
MANIFEST = "split.csv"
FEATURES = "features.safetensors"
SKIPPED = "skipped.json"


@dataclass
class TransferConfig:
    """Options of a transfer-learning run (the CLI's `cnnlab train transfer` fills it).

    Attributes:
        data: image folder, CSV of ``path,label``, split folder (train/, val/, test/) or a built-in name (``elpv``).
        arch: a registered model name; its pretrained record gives the preprocessing.
        pretrained: load the pretrained weights (False only for tests and baselines).
        image_size: train and evaluate at this square size instead of the record's (resize scaled by its crop_pct);
            a size under half the record's is warned about.
        crop_pct: evaluate on the centre crop that keeps this fraction of the resized image's side, instead of the
            record's (0.875 for most ImageNet weights). 1.0 resizes the whole image to the input size, so no border
            is lost and training (whose random crops start from the whole image) and evaluation see the image at the
            same scale: for data whose label may sit at the border (defect inspection).
        min_per_class: the fewest usable images a class may have.
        max_per_class: keep at most this many images per class (seeded), for quick trials; None keeps all.
        val_fraction: validation share of all images (taken from the non-test part).
        test_fraction: test share of all images.
        split_manifest: reuse this manifest CSV (``path,label,split``) instead of splitting.
        seed: split, initialisation and data order.
        batch_size: images per optimizer step.
        head_epochs: phase-1 epochs (0: skip phase 1).
        head_lr: phase-1 peak learning rate.
        cache_features: phase 1 on cached backbone features (no augmentation in this phase).
        head_dropout: dropout before the new classifier in phase 1 on cached features.
        finetune_epochs: phase-2 epochs (0: features only).
        finetune_lr: phase-2 peak learning rate of the classifier; lower blocks get less.
        unfreeze: phase 2 trains the top ``unfreeze`` blocks (0: all of them).
        layer_decay: learning-rate factor per block going down from the top.
        bn_train: let unfrozen batch norms update their running statistics in phase 2 (frozen ones never do).
        bn_adapt: before phase 1, replace every batch norm's running statistics with those of the training images
            (AdaBN, `adapt_batch_norm`), for data far from the pretraining images (grayscale cells, X-rays): the
            frozen backbone then normalises with statistics of the data it sees, and phase 2 with ``bn_train`` starts
            from statistics that its batches do not pull away.
        weight_decay: AdamW weight decay (weights only).
        label_smoothing: cross-entropy label smoothing.
        class_weight: "balanced" weighs each class's cross-entropy by n / (k * n_c) over the training split (n
            images, k classes, n_c in class c), so that every class counts as much as the others in the loss;
            None weighs every image alike. For imbalanced data whose small classes are never predicted.
        patience: early-stopping patience in epochs on ``val_accuracy`` (None: off).
        augment: training augmentation in phase 2 (and phase 1 without the cache).
        vertical_flip: add vertical flips (images with no up and down: cells, microscopy, aerial views).
        crop_scale: smallest area fraction kept by the random resized crop (1.0: whole image, only resized). Raise
            it when the label may sit anywhere in the image and a crop could cut it out (defect inspection).
        workers: DataLoader worker processes.
        device: auto, cpu, cuda...
        precision: fp32, bf16 or fp16.
        channels_last: NHWC memory format for the network and its inputs (feature extraction and phase 2): 1.4-1.7x
            faster EfficientNet-Lite0 training steps on a CPU (benchmarks/step_speed.py), and what GPU tensor cores
            prefer.
        output: runs root; the run is ``<output>/transfer/<name>``.
        name: run name.
        resume: continue an interrupted run (its split and cached features are reused).
        overwrite: start again in a run directory that holds checkpoints (its split manifest is still reused).
        progress: progress bars and epoch lines.
        engine: further `TrainConfig` fields for both phases (accumulation, threads, compile, ...).
    """

    data: str
    arch: str = "efficientnet_lite0"
    pretrained: bool = True
    image_size: int | None = None
    crop_pct: float | None = None
    min_per_class: int = 100
    max_per_class: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_manifest: str | None = None
    seed: int = 0
    batch_size: int = 32
    head_epochs: int = 15
    head_lr: float = 3e-3
    cache_features: bool = True
    head_dropout: float = 0.2
    finetune_epochs: int = 0
    finetune_lr: float = 3e-4
    unfreeze: int = 0
    layer_decay: float = 0.85
    bn_train: bool = False
    bn_adapt: bool = False
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    class_weight: str | None = None
    patience: int | None = 5
    augment: bool = True
    vertical_flip: bool = False
    crop_scale: float = 0.5
    workers: int = 2
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    output: str = "runs"
    name: str = "transfer"
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """``<output>/transfer/<name>``."""
        return Path(self.output) / TASK / self.name

    @property
    def main_phase(self) -> str:
        """The phase ``--epochs`` and ``--lr`` set: fine-tuning when it runs, else the head."""
        return "finetune" if self.finetune_epochs > 0 else "head"

    def validate(self) -> None:
        """Raise `CnnlabError` for an option value no run can use, naming the option."""
        if not 0.0 < self.crop_scale <= 1.0:
            raise CnnlabError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if self.crop_pct is not None and not 0.0 < self.crop_pct <= 1.0:
            raise CnnlabError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.class_weight not in (None, "balanced"):
            raise CnnlabError(f"--class-weight must be 'balanced' or 'none', got {self.class_weight!r}")

    @classmethod
    def from_options(cls, engine: EngineOptions, **options: Any) -> TransferConfig:
        """A config from the command line: the task's own `options` and the shared engine options.

        ``--epochs``/``--lr`` set the main phase (`main_phase`); the batch size, precision, memory format, device
        and seed set both phases; accumulation, threads, compile and checkpointing pass through to the engine.
        """
        overrides = engine.overrides()
        config = cls(**options)
        fields: dict[str, Any] = {
            "seed": engine.seed,
            "output": engine.output,
            "resume": engine.resume,
            "overwrite": engine.overwrite,
            "progress": config.progress and not engine.quiet,
            "name": engine.name or run_name("transfer"),
        }
        for key in ("batch_size", "precision", "channels_last", "device"):
            if key in overrides:
                fields[key] = overrides.pop(key)
        phase = "finetune" if config.finetune_epochs > 0 else "head"
        if "epochs" in overrides:
            fields[f"{phase}_epochs"] = overrides.pop("epochs")
        if "lr" in overrides:
            fields[f"{phase}_lr"] = overrides.pop("lr")
        return dataclasses.replace(config, **fields, engine={**config.engine, **overrides})


# ---------------------------------------------------------------------------------------------------------- data
def load_images(config: TransferConfig, log: Any = print) -> tuple[LabelledImages, Split, str]:
    """The run's images and split, and where the split came from.

    Order of precedence: the manifest already in the run directory (a later run of the same name), then
    ``config.split_manifest``, then a split folder, then a fresh stratified split (written to the run directory).
    """
    run_manifest = config.run_dir / MANIFEST
    if run_manifest.is_file():
        images, split = read_manifest(run_manifest)
        check_files_exist(images, run_manifest)
        return images, split, f"reused {run_manifest}"
    if config.split_manifest:
        images, split = read_manifest(config.split_manifest)
        check_files_exist(images, config.split_manifest)
        return images, split, f"given manifest {config.split_manifest}"
    images, folder_split, source = open_image_source(config.data, config.min_per_class)
    if folder_split is not None:
        if config.max_per_class is not None:
            raise CnnlabError("--max-per-class applies to fresh splits; it cannot be combined with a split folder")
        return images, folder_split, source
    for skipped in images.skipped:
        log(f"skipped {skipped.path} ({skipped.label}): {skipped.reason}")
    images = limit_per_class(images, config.max_per_class, config.seed)
    split = stratified_split(images.labels, config.val_fraction, config.test_fraction, config.seed)
    description = (
        f"stratified {1 - config.val_fraction - config.test_fraction:.0%}/{config.val_fraction:.0%}/"
        f"{config.test_fraction:.0%} train/val/test, seed {config.seed}"
    )
    return images, split, description


# ------------------------------------------------------------------------------------------------------ training
def _loader(
    images: LabelledImages, transform: Any, config: TransferConfig, train: bool, device: torch.device
) -> DataLoader:
    workers = config.workers
    return DataLoader(
        ImageDataset(images, transform),
        batch_size=config.batch_size if train else 2 * config.batch_size,
        shuffle=train,
        drop_last=train and len(images) > config.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator() if train else None,
    )


def _phase_config(config: TransferConfig, phase: str, epochs: int, lr: float) -> TrainConfig:
    checkpoint = config.run_dir / phase / "checkpoint.pt"
    return TrainConfig(
        **{
            "epochs": epochs,
            "batch_size": config.batch_size,
            "lr": lr,
            "optimizer": "adamw",
            "weight_decay": config.weight_decay,
            "schedule": "cosine",
            "warmup_epochs": min(1.0, epochs / 5),
            "label_smoothing": config.label_smoothing,
            "precision": config.precision,
            "channels_last": config.channels_last,
            "seed": config.seed,
            "device": config.device,
            "monitor": "val_accuracy",
            "early_stopping_patience": config.patience,
            "output": str(config.run_dir.parent),
            "task": config.run_dir.name,
            "name": phase,
            "resume": config.resume and checkpoint.is_file(),
            "overwrite": config.overwrite or (config.resume and not checkpoint.is_file()),
            "progress": config.progress,
            "extra": {"task": TASK, "phase": phase, "arch": config.arch, "data": config.data},
            **config.engine,
        }
    )


def class_weights(counts: dict[str, int]) -> torch.Tensor:
    """ "Balanced" cross-entropy weights n / (k * n_c) from per-class image counts (in class order)."""
    values = torch.tensor(list(counts.values()), dtype=torch.float32)
    if (values <= 0).any():
        empty = [name for name, count in counts.items() if count <= 0]
        raise CnnlabError(f"class weights need training images in every class; none in {', '.join(empty)}")
    return values.sum() / (len(values) * values)


def _loss(config: TransferConfig, train_counts: dict[str, int], device: torch.device) -> nn.Module | None:
    """The phases' loss: None (the engine's cross-entropy) unless `config.class_weight` asks for weights."""
    if config.class_weight is None:
        return None
    weight = class_weights(train_counts).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def _run_phase(trainer: Trainer, train: Any, val: Any) -> dict[str, Any]:
    started = time.perf_counter()
    history = trainer.fit(train, val)
    return {
        "epochs_run": len(history),
        "best_epoch": trainer.best_epoch,
        "best_val_accuracy": trainer.best_metric,
        "train_seconds": trainer.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "history": history,
        "curves": str(trainer.run_dir / "learning_curves.png"),
    }


class _PooledFeatures(nn.Module):
    """The backbone's pooled pre-logit features (what the classifier sees)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _cached_features(
    model: nn.Module, parts: dict[str, LabelledImages], cfg: PretrainedCfg, config: TransferConfig, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pooled features (eval mode, through the engine's inference path) and labels of each part, computed once and
    kept in ``features.safetensors`` for a resumed run."""
    from safetensors.torch import load_file, save_file

    path = config.run_dir / FEATURES
    if path.is_file() and config.resume:
        stored = load_file(str(path))
        if all(f"{part}_features" in stored and len(stored[f"{part}_labels"]) == len(parts[part]) for part in parts):
            return {part: (stored[f"{part}_features"], stored[f"{part}_labels"]) for part in parts}
    extractor = Trainer.for_inference(
        _PooledFeatures(model),
        device=str(device),
        batch_size=2 * config.batch_size,
        precision=config.precision,
        channels_last=config.channels_last,
    )
    eval_transform = build_eval_transform(cfg)
    cached = {}
    for part, images in parts.items():
        features = extractor.predict(_loader(images, eval_transform, config, False, device))
        cached[part] = (features, torch.tensor(images.labels))
    save_file(
        {f"{p}_{k}": t.contiguous() for p, (f, y) in cached.items() for k, t in (("features", f), ("labels", y))},
        str(path),
    )
    return cached


def train_transfer(config: TransferConfig, log: Any = None) -> dict[str, Any]:
    """Run the whole recipe (see the module docstring) and return the results (also in ``results.json``)."""
    log = log or (lambda message: print(message) if config.progress else None)
    config.validate()
    started = time.perf_counter()
    run_dir = config.run_dir
    if (run_dir / "model.json").is_file() and not (config.resume or config.overwrite):
        raise CnnlabError(f"{run_dir} already holds a finished run; pass --overwrite, --resume or another --name")
    images, split, split_source = load_images(config, log)
    classes = images.classes
    run_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(run_dir / MANIFEST, images, split)
    skipped_path = run_dir / SKIPPED
    if split_source.startswith("reused") and skipped_path.is_file():  # the bad files found when the split was made
        images.skipped = [SkippedFile(**entry) for entry in json.loads(skipped_path.read_text())]
    skipped_path.write_text(json.dumps([dataclasses.asdict(s) for s in images.skipped], indent=1))
    parts = {part: images.subset(split[part]) for part in SPLITS if split[part]}
    if "val" not in parts:
        raise CnnlabError("the split has no validation images; model selection needs them (raise --val-fraction)")
    counts = {part: parts[part].class_counts() for part in parts}
    log(
        f"{len(images)} images, {len(classes)} classes; split ({split_source}): "
        + ", ".join(f"{part} {len(parts[part])}" for part in parts)
    )
    save_record(dataclasses.asdict(config), run_dir / "config.yaml")

    torch.manual_seed(config.seed)
    # Images are loaded as RGB (grayscale replicated to 3 channels), so every backbone is built for 3 channels.
    model = create_model(config.arch, pretrained=config.pretrained, num_classes=len(classes), in_chans=3)
    if not hasattr(model, "forward_features"):
        raise CnnlabError(f"{config.arch} lacks the classifier surface (forward_features/forward_head) to fine-tune")
    record = PretrainedCfg.for_model(model)
    cfg = record.with_input(config.image_size, config.crop_pct)
    from cnnlab.train.trainer import resolve_device

    device = resolve_device(config.device)
    model.to(device)
    if config.channels_last:  # once, outside inference mode; the engine keeps it for phase 2
        model.to(memory_format=torch.channels_last)
    loss = _loss(config, counts["train"], device)
    train_transform = (
        build_train_transform(cfg, scale=(config.crop_scale, 1.0), vertical_flip=config.vertical_flip)
        if config.augment
        else None
    )
    train_transform = train_transform or build_eval_transform(cfg)
    eval_transform = build_eval_transform(cfg)
    preview = save_preview_grid(
        [train_transform(load_image(p)) for p in parts["train"].paths[:16]], run_dir / "augmented_preview.png", cfg
    )
    input_warnings: list[str] = []
    phases: dict[str, Any] = {}
    adapted = None
    if config.bn_adapt:
        tick = time.perf_counter()
        seen = adapt_batch_norm(
            model, _loader(parts["train"], eval_transform, config, False, device), device, config.channels_last
        )
        adapted = {"images": seen, "seconds": time.perf_counter() - tick}
        log(
            f"batch-norm statistics adapted to {seen} training images in {adapted['seconds']:.1f}s"
            if seen
            else f"{config.arch} has no batch norm with running statistics: --bn-adapt changes nothing"
        )

    # Phase 1: frozen backbone, new head.
    if config.head_epochs > 0:
        for param in model.parameters():
            param.requires_grad_(False)
        for param in model.get_classifier().parameters():
            param.requires_grad_(True)
        phase_config = _phase_config(config, "head", config.head_epochs, config.head_lr)
        if config.cache_features:
            sample = next(
                iter(
                    _loader(
                        parts["train"].subset(range(min(8, len(parts["train"])))), eval_transform, config, False, device
                    )
                )
            )[0]
            input_warnings += [f"training inputs: {p}" for p in input_problems(sample, record)]
            for problem in input_warnings:
                warnings.warn(problem, InputStatisticsWarning, stacklevel=2)
            tick = time.perf_counter()
            cached = _cached_features(model, {p: parts[p] for p in ("train", "val")}, cfg, config, device)
            feature_seconds = time.perf_counter() - tick
            count = sum(len(features) for features, _ in cached.values())
            log(f"cached backbone features of {count} images in {feature_seconds:.1f}s")
            head = nn.Sequential(nn.Dropout(config.head_dropout), model.get_classifier())
            trainer = Trainer(head, phase_config, loss_fn=loss, callbacks=[BestWeights()])
            phases["head"] = _run_phase(
                trainer, TensorBatches(*cached["train"], config.batch_size, drop_last=True), cached["val"]
            )
            phases["head"]["feature_seconds"] = feature_seconds
        else:
            check = InputCheck(record, "training")
            trainer = Trainer(
                model,
                phase_config,
                loss_fn=loss,
                train_transform=check,
                callbacks=[FreezeBatchNorm(True), BestWeights()],
            )
            phases["head"] = _run_phase(
                trainer,
                _loader(parts["train"], train_transform, config, True, device),
                _loader(parts["val"], eval_transform, config, False, device),
            )
            input_warnings += [f"training inputs: {p}" for p in check.problems]

    # Phase 2: unfreeze the top N blocks (or all) with layer-wise learning rates.
    if config.finetune_epochs > 0:
        phase_config = _phase_config(config, "finetune", config.finetune_epochs, config.finetune_lr)
        check = InputCheck(record, "training")

        def groups(module: nn.Module) -> list[dict[str, Any]]:
            return layerwise_param_groups(module, config.unfreeze, config.layer_decay, config.weight_decay)

        trainer = Trainer(
            model,
            phase_config,
            loss_fn=loss,
            train_transform=check,
            param_groups=groups,
            callbacks=[FreezeBatchNorm(not config.bn_train), BestWeights()],
        )
        phases["finetune"] = _run_phase(
            trainer,
            _loader(parts["train"], train_transform, config, True, device),
            _loader(parts["val"], eval_transform, config, False, device),
        )
        input_warnings += [
            f"training inputs: {p}" for p in check.problems if f"training inputs: {p}" not in input_warnings
        ]
    for param in model.parameters():
        param.requires_grad_(True)

    # The test set, once, through the engine's inference path (the run's precision and memory format).
    from cnnlab.report.classification import classification_test_report

    tester = Trainer.for_inference(
        model,
        device=str(device),
        batch_size=2 * config.batch_size,
        precision=config.precision,
        channels_last=config.channels_last,
    )
    test = parts["test"]
    logits = tester.predict(_loader(test, eval_transform, config, False, device))
    results = classification_test_report(logits, torch.tensor(test.labels), test.paths, test.classes, run_dir)
    kwargs = {"num_classes": len(classes), "in_chans": 3}
    meta = {
        "task": TASK,
        "classes": classes,
        "preprocessing": cfg.to_dict(),
        "input": "RGB image preprocessed with the record in `preprocessing` (cnnlab.data.transforms)",
        "data": config.data,
        "test_accuracy": results["accuracy"],
    }
    save_model(model, run_dir, config.arch, kwargs, meta)
    _write_phase_history(phases, run_dir)
    summary = {
        "run_dir": str(run_dir),
        "config": dataclasses.asdict(config),
        "classes": classes,
        "counts": counts,
        "skipped": [dataclasses.asdict(s) for s in images.skipped],
        "split": split_source,
        "preprocessing": cfg.to_dict(),
        "input_warnings": input_warnings,
        "bn_adapted": adapted,
        "phases": {name: {k: v for k, v in phase.items() if k != "history"} for name, phase in phases.items()},
        "test": results,
        "wall_seconds": time.perf_counter() - started,
        "preview": str(preview),
    }
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1))
    from cnnlab.report.transfer import transfer_report

    transfer_report(summary, environment_record()).write(run_dir / "report.md")
    log(
        f"test accuracy {results['accuracy']:.4f}, balanced accuracy {results['balanced_accuracy']:.4f} "
        f"({len(parts['test'])} images); report: {run_dir / 'report.md'}"
    )
    return summary


def _write_phase_history(phases: dict[str, Any], run_dir: Path) -> None:
    """The run's metrics.csv/json and learning curves: every phase's epochs in order, numbered across phases, with
    the phase's name and its own epoch number."""
    rows: list[dict[str, Any]] = []
    for name, phase in phases.items():
        for row in phase["history"]:
            rows.append(
                {
                    "epoch": float(len(rows) + 1),
                    "phase": name,
                    "phase_epoch": row["epoch"],
                    **{k: v for k, v in row.items() if k != "epoch"},
                }
            )
    write_history(rows, run_dir)
