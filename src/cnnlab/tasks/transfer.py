"""Transfer learning on photos: dataset -> stratified split -> pretrained backbone -> two-phase fine-tuning -> test.

Everything trains on the engine (`cnnlab.train.Trainer`): this module only chooses data, parameters and phases.

1. Data: an ImageFolder-style folder, a CSV of ``path,label``, a split folder (``train/``, ``val/``, ``test/``), or a
   built-in dataset (``elpv``). Bad files are skipped and listed; classes below ``min_per_class`` are an error.
2. Split: stratified train/val/test from the seed, written to ``split.csv`` in the run directory and read back by any
   later run in that directory (resume, evaluation), or taken from ``split_manifest``.
3. Phase 1 ("head"): the backbone is frozen (its batch norms kept in eval mode) and a new classifier is trained. With
   ``cache_features`` the pooled backbone features are computed once (saved in ``features.safetensors``) and the
   head trains on them in memory: seconds on a CPU.
4. Phase 2 ("finetune", optional): all, or the top N, blocks are unfrozen and trained with layer-wise learning rates
   (``finetune_lr * layer_decay**depth_from_top``), with augmentation, on the engine.
5. Each phase keeps the weights of its best validation epoch (`BestWeights`) and may stop early.
6. The test set is evaluated once, at the end: accuracy, balanced accuracy, per-class P/R/F1, confusion matrix PNG,
   highest-loss PNG, ``results.json`` and ``report.md``. The model is saved as ``model.safetensors`` +
   ``model.json`` with its classes and preprocessing record (`cnnlab predict` / `cnnlab export` read them).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data.folder import ImageDataset, LabelledImages, SkippedFile, load_image, scan_csv, scan_folder
from cnnlab.data.photo_transforms import (
    InputCheck,
    InputStatisticsWarning,
    build_eval_transform,
    build_train_transform,
    input_problems,
    save_preview_grid,
)
from cnnlab.data.split import SPLITS, Split, read_manifest, split_from_folders, stratified_split, write_manifest
from cnnlab.errors import CnnlabError
from cnnlab.models import PretrainedCfg, create_model
from cnnlab.train import Callback, TensorBatches, TrainConfig, Trainer
from cnnlab.train.saved import save_model

__all__ = [
    "BUILTIN_DATASETS",
    "BestWeights",
    "FreezeBatchNorm",
    "TransferConfig",
    "adapt_batch_norm",
    "depth_units",
    "layerwise_param_groups",
    "load_images",
    "preprocessing_record",
    "record_from_dict",
    "train_transfer",
]

TASK = "transfer"
MANIFEST = "split.csv"
FEATURES = "features.safetensors"
SKIPPED = "skipped.json"
BUILTIN_DATASETS = ("elpv",)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """``<output>/transfer/<name>``."""
        return Path(self.output) / TASK / self.name


# ---------------------------------------------------------------------------------------------------------- data
def load_images(config: TransferConfig, log: Any = print) -> tuple[LabelledImages, Split, str]:
    """The run's images and split, and where the split came from.

    Order of precedence: the manifest already in the run directory (a later run of the same name), then
    ``config.split_manifest``, then a split folder, then a fresh stratified split (written to the run directory).
    """
    run_manifest = config.run_dir / MANIFEST
    if run_manifest.is_file():
        images, split = read_manifest(run_manifest)
        _check_files_exist(images, run_manifest)
        return images, split, f"reused {run_manifest}"
    if config.split_manifest:
        images, split = read_manifest(config.split_manifest)
        _check_files_exist(images, Path(config.split_manifest))
        return images, split, f"given manifest {config.split_manifest}"
    data = config.data
    path = Path(data)
    if data in BUILTIN_DATASETS and not path.exists():
        from cnnlab.data.elpv import load_elpv

        images = load_elpv(min_per_class=config.min_per_class)
        how = "stratified"
    elif path.is_file() and path.suffix.lower() == ".csv":
        images = scan_csv(path, min_per_class=config.min_per_class)
        how = "stratified"
    elif path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        if config.max_per_class is not None:
            raise CnnlabError("--max-per-class applies to fresh splits; it cannot be combined with a split folder")
        images, split = split_from_folders(path, min_per_class=config.min_per_class)
        return images, split, f"split folder {path}"
    elif path.is_dir():
        images = scan_folder(path, min_per_class=config.min_per_class)
        how = "stratified"
    else:
        raise CnnlabError(
            f"--data {data!r} is neither a folder, a .csv file nor a built-in dataset ({', '.join(BUILTIN_DATASETS)})"
        )
    for skipped in images.skipped:
        log(f"skipped {skipped.path} ({skipped.label}): {skipped.reason}")
    images = _limit_images(images, config)
    split = stratified_split(images.labels, config.val_fraction, config.test_fraction, config.seed)
    description = (
        f"{how} {1 - config.val_fraction - config.test_fraction:.0%}/{config.val_fraction:.0%}/"
        f"{config.test_fraction:.0%} train/val/test, seed {config.seed}"
    )
    return images, split, description


def _limit_images(images: LabelledImages, config: TransferConfig) -> LabelledImages:
    if config.max_per_class is None:
        return images
    generator = torch.Generator().manual_seed(config.seed)
    keep: list[int] = []
    for label in range(len(images.classes)):
        members = [i for i, y in enumerate(images.labels) if y == label]
        order = torch.randperm(len(members), generator=generator).tolist()
        keep += [members[i] for i in order[: config.max_per_class]]
    limited = images.subset(sorted(keep))
    limited.skipped = images.skipped
    return limited


def _check_files_exist(images: LabelledImages, manifest: Path) -> None:
    missing = [p for p in images.paths if not Path(p).is_file()]
    if missing:
        raise CnnlabError(
            f"{len(missing)} image(s) of {manifest} are missing (first: {missing[0]}); restore them or start a new run"
        )


# --------------------------------------------------------------------------------------------------------- model
def preprocessing_record(
    model: nn.Module, image_size: int | None = None, crop_pct: float | None = None
) -> PretrainedCfg:
    """The model's weights record (its preprocessing), optionally at another square input size or centre-crop
    fraction (the resize is then ``size / crop_pct``).

    Models without a record get ImageNet's mean/std at their default input size (a randomly initialised model has
    no preferred scaling; ImageNet's is the usual convention).
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None:
        channels, height, width = getattr(model, "default_input_size", (3, 224, 224))
        cfg = PretrainedCfg(
            source="none",
            file_name="none",
            input_size=(3, height, width),
            resize_size=round(height / 0.875),
            crop_pct=0.875,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            interpolation="bilinear",
            notes="no pretrained record: ImageNet mean/std used",
        )
    if image_size is not None or crop_pct is not None:
        size = cfg.input_size[1] if image_size is None else image_size
        pct = cfg.crop_pct if crop_pct is None else crop_pct
        cfg = dataclasses.replace(cfg, input_size=(3, size, size), resize_size=round(size / pct), crop_pct=pct)
    return cfg


def record_to_dict(cfg: PretrainedCfg) -> dict[str, Any]:
    """The JSON-able fields of a record (everything but the key map)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "key_map"}


def record_from_dict(values: dict[str, Any]) -> PretrainedCfg:
    """Inverse of `record_to_dict` (lists back to tuples)."""
    known = {f.name for f in dataclasses.fields(PretrainedCfg)} - {"key_map"}
    return PretrainedCfg(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


def depth_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's parameterised blocks from input to output, the classifier excluded.

    Top-level children in definition order, with `nn.Sequential`/`nn.ModuleList` children expanded one level (so
    EfficientNet's 16 MBConv blocks, or a ResNet stage's blocks, count one by one).
    """
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    units = []
    for name, child in model.named_children():
        if child is classifier:
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            units += [(f"{name}.{sub_name}", sub) for sub_name, sub in child.named_children()]
        else:
            units.append((name, child))
    return [(name, unit) for name, unit in units if any(True for _ in unit.parameters())]


def layerwise_param_groups(
    model: nn.Module, top_blocks: int, layer_decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """Unfreeze the classifier and the top ``top_blocks`` blocks (0: all) and give each its own learning rate.

    The classifier gets ``lr_scale`` 1, the block under it ``layer_decay``, the next ``layer_decay**2``, and so on.
    Weights are decayed, biases and norm parameters are not. Blocks left frozen get ``requires_grad=False``.
    """
    units = depth_units(model)
    trainable = units if top_blocks <= 0 else units[-top_blocks:]
    for param in model.parameters():
        param.requires_grad_(False)
    groups: list[dict[str, Any]] = []

    def add(module: nn.Module, scale: float) -> None:
        decay = [p for p in module.parameters() if p.ndim >= 2]
        no_decay = [p for p in module.parameters() if p.ndim < 2]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            for p in params:
                p.requires_grad_(True)
            if params:
                groups.append({"params": params, "weight_decay": wd, "lr_scale": scale})

    add(model.get_classifier(), 1.0)
    for depth, (_, unit) in enumerate(reversed(trainable), start=1):
        add(unit, layer_decay**depth)
    return groups


class FreezeBatchNorm(Callback):
    """Keep batch norms in eval mode during training (the engine calls `model.train()` each epoch).

    Frozen batch norms (parameters not trained) always use their running statistics; with ``all_bn`` every batch norm
    does (the Keras fine-tuning convention: small fine-tuning batches would otherwise overwrite ImageNet statistics).
    """

    def __init__(self, all_bn: bool) -> None:
        self.all_bn = all_bn

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for module in trainer.model.modules():
            if isinstance(module, _BN_TYPES):
                frozen = not any(p.requires_grad for p in module.parameters())
                if self.all_bn or frozen:
                    module.eval()


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False) -> int:
    """AdaBN (Li et al. 2016): set every batch norm's running mean and variance to the average over ``loader``'s
    batches (not a moving average), touching no weight. Dropout stays off. Returns the number of images seen."""
    norms = [m for m in model.modules() if isinstance(m, _BN_TYPES) and m.track_running_stats]
    if not norms:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average over the batches
        module.train()
    seen = 0
    try:
        for inputs, _ in loader:
            inputs = inputs.to(device)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            model(inputs)
            seen += len(inputs)
    finally:
        for module, momentum in zip(norms, momenta, strict=True):
            module.momentum = momentum
        model.train(was_training)
    return seen


class BestWeights(Callback):
    """Remember the weights of the best epoch on ``monitor`` and load them back when fitting ends.

    Its state (best value, epoch, weights) is checkpointed by the engine, so a resumed run still ends on the best
    epoch's weights.
    """

    def __init__(self, monitor: str = "val_accuracy", mode: str = "max") -> None:
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None:
            return
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch = float(value), epoch + 1
            self.weights = {k: v.detach().cpu().clone() for k, v in trainer.eval_model.state_dict().items()}

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.weights is not None:
            trainer.model.load_state_dict(self.weights)
            trainer.log(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.4f})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.weights = state["best"], state["best_epoch"], state["weights"]


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


@torch.inference_mode()
def _extract_features(
    model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logit features (eval mode, no dropout) and labels of every image of ``loader``.

    With `channels_last`, inputs are made NHWC; the model should already be (converted outside inference mode, so
    its parameters stay ordinary tensors).
    """
    model.eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    features, labels = [], []
    for inputs, targets in loader:
        inputs = inputs.to(device).contiguous(memory_format=layout)
        pooled = model.forward_head(model.forward_features(inputs), pre_logits=True)
        features.append(pooled.float().cpu())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def _phase_config(config: TransferConfig, phase: str, epochs: int, lr: float) -> TrainConfig:
    checkpoint = config.run_dir / phase / "checkpoint.pt"
    return TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        lr=lr,
        optimizer="adamw",
        weight_decay=config.weight_decay,
        schedule="cosine",
        warmup_epochs=min(1.0, epochs / 5),
        label_smoothing=config.label_smoothing,
        precision=config.precision,  # type: ignore[arg-type]
        channels_last=config.channels_last,
        seed=config.seed,
        device=config.device,
        monitor="val_accuracy",
        early_stopping_patience=config.patience,
        output=str(config.run_dir.parent),
        task=config.run_dir.name,
        name=phase,
        resume=config.resume and checkpoint.is_file(),
        overwrite=config.overwrite or (config.resume and not checkpoint.is_file()),
        progress=config.progress,
        extra={"task": TASK, "phase": phase, "arch": config.arch, "data": config.data},
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
    best = next((cb for cb in trainer.callbacks if isinstance(cb, BestWeights)), None)
    return {
        "epochs_run": len(history),
        "best_epoch": best.best_epoch if best else None,
        "best_val_accuracy": best.best if best else None,
        "train_seconds": trainer.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "history": history,
        "curves": str(trainer.run_dir / "learning_curves.png"),
    }


def _cached_features(
    model: nn.Module, parts: dict[str, LabelledImages], cfg: PretrainedCfg, config: TransferConfig, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file, save_file

    path = config.run_dir / FEATURES
    if path.is_file() and config.resume:
        stored = load_file(str(path))
        if all(f"{part}_features" in stored and len(stored[f"{part}_labels"]) == len(parts[part]) for part in parts):
            return {part: (stored[f"{part}_features"], stored[f"{part}_labels"]) for part in parts}
    eval_transform = build_eval_transform(cfg)
    cached = {}
    for part, images in parts.items():
        loader = _loader(images, eval_transform, config, False, device)
        cached[part] = _extract_features(model, loader, device, config.channels_last)
    save_file(
        {f"{p}_{k}": t.contiguous() for p, (f, y) in cached.items() for k, t in (("features", f), ("labels", y))},
        str(path),
    )
    return cached


def train_transfer(config: TransferConfig, log: Any = None) -> dict[str, Any]:
    """Run the whole recipe (see the module docstring) and return the results (also in ``results.json``)."""
    log = log or (lambda message: print(message) if config.progress else None)
    if not 0.0 < config.crop_scale <= 1.0:
        raise CnnlabError(f"--crop-scale must be in (0, 1], got {config.crop_scale}")
    if config.crop_pct is not None and not 0.0 < config.crop_pct <= 1.0:
        raise CnnlabError(f"--crop-pct must be in (0, 1], got {config.crop_pct}")
    if config.class_weight not in (None, "balanced"):
        raise CnnlabError(f"--class-weight must be 'balanced' or 'none', got {config.class_weight!r}")
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

    torch.manual_seed(config.seed)
    # Images are loaded as RGB (grayscale replicated to 3 channels), so every backbone is built for 3 channels.
    model = create_model(config.arch, pretrained=config.pretrained, num_classes=len(classes), in_chans=3)
    if not hasattr(model, "forward_features"):
        raise CnnlabError(f"{config.arch} lacks the classifier surface (forward_features/forward_head) to fine-tune")
    record = preprocessing_record(model)
    cfg = preprocessing_record(model, config.image_size, config.crop_pct)
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

    # The test set, once.
    results = evaluate_on_test(model, parts["test"], cfg, config, device, run_dir)
    kwargs = {"num_classes": len(classes), "in_chans": 3}
    meta = {
        "task": TASK,
        "classes": classes,
        "preprocessing": record_to_dict(cfg),
        "input": "RGB image preprocessed with the record in `preprocessing` (cnnlab.data.transforms)",
        "data": config.data,
        "test_accuracy": results["accuracy"],
    }
    save_model(model, run_dir, config.arch, kwargs, meta)
    summary = {
        "run_dir": str(run_dir),
        "config": dataclasses.asdict(config),
        "classes": classes,
        "counts": counts,
        "skipped": [dataclasses.asdict(s) for s in images.skipped],
        "split": split_source,
        "preprocessing": record_to_dict(cfg),
        "input_warnings": input_warnings,
        "bn_adapted": adapted,
        "phases": {name: {k: v for k, v in phase.items() if k != "history"} for name, phase in phases.items()},
        "test": results,
        "wall_seconds": time.perf_counter() - started,
        "preview": str(preview),
    }
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1))
    (run_dir / "report.md").write_text(render_report(summary, phases))
    log(
        f"test accuracy {results['accuracy']:.4f}, balanced accuracy {results['balanced_accuracy']:.4f} "
        f"({len(parts['test'])} images); report: {run_dir / 'report.md'}"
    )
    return summary


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.inference_mode()
def _logits(model: nn.Module, loader: DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    model.eval()
    for inputs, targets in loader:
        yield model(inputs.to(device)).float().cpu(), targets


def evaluate_on_test(
    model: nn.Module,
    test: LabelledImages,
    cfg: PretrainedCfg,
    config: TransferConfig,
    device: torch.device,
    run_dir: Path,
    highest_loss: int = 16,
) -> dict[str, Any]:
    """Metrics, confusion-matrix PNG and highest-loss PNG of ``model`` on the test images (called once per run)."""
    from cnnlab.report.classification import classification_summary, plot_highest_loss
    from cnnlab.report.plots import plot_confusion_matrix

    outputs = list(_logits(model, _loader(test, build_eval_transform(cfg), config, False, device), device))
    logits = torch.cat([o for o, _ in outputs])
    targets = torch.cat([t for _, t in outputs])
    predictions = logits.argmax(1)
    results = classification_summary(targets.tolist(), predictions.tolist(), test.classes)
    losses = nn.functional.cross_entropy(logits, targets, reduction="none")
    results["loss"] = float(losses.mean())
    plot_confusion_matrix(
        torch.tensor(results["confusion_matrix"]), run_dir / "confusion_matrix.png", test.classes, title="test set"
    )
    probabilities = logits.softmax(1)
    worst = losses.argsort(descending=True)[:highest_loss].tolist()
    thumbnails = []
    for i in worst:
        image = load_image(test.paths[i])
        image.thumbnail((160, 160))
        thumbnails.append(image)
    titles = [
        f"{Path(test.paths[i]).name[:22]}\ntrue {test.classes[int(targets[i])]}\n"
        f"pred {test.classes[int(predictions[i])]} {float(probabilities[i].max()):.2f}, loss {float(losses[i]):.2f}"
        for i in worst
    ]
    plot_highest_loss(thumbnails, titles, run_dir / "highest_loss.png")
    return results


def render_report(summary: dict[str, Any], phases: dict[str, Any]) -> str:
    """``report.md``: data, skipped files, split, preprocessing, phases with curves, test results."""
    config = summary["config"]
    test = summary["test"]
    classes = summary["classes"]
    lines = [
        f"# Transfer learning run `{Path(summary['run_dir']).name}`",
        "",
        f"Data `{config['data']}`; model `{config['arch']}` (pretrained: {config['pretrained']}); "
        f"total wall time {summary['wall_seconds']:.0f} s.",
        "",
        "## Data and split",
        "",
        f"Split: {summary['split']} (manifest: `split.csv`).",
        "",
        "| class | " + " | ".join(summary["counts"]) + " |",
        "|---|" + "---:|" * len(summary["counts"]),
    ]
    for name in classes:
        lines.append(f"| {name} | " + " | ".join(str(c[name]) for c in summary["counts"].values()) + " |")
    skipped = summary["skipped"]
    lines += ["", f"Skipped files: {len(skipped)}."]
    lines += [f"- `{s['path']}` ({s['label']}): {s['reason']}" for s in skipped[:50]]
    if len(skipped) > 50:
        lines.append(f"- ... and {len(skipped) - 50} more (results.json lists them all)")
    pre = summary["preprocessing"]
    lines += [
        "",
        "## Preprocessing",
        "",
        f"From the weights' record: resize shorter side to {pre['resize_size']} ({pre['interpolation']}), centre "
        f"crop {pre['input_size'][1]}x{pre['input_size'][2]}, scale to [0, 1], normalise mean "
        f"{[round(m, 3) for m in pre['mean']]} std {[round(s, 3) for s in pre['std']]}. Training adds augmentation "
        f"(random resized crop, flips, rotation, colour jitter): {config['augment']}; preview `augmented_preview.png`.",
    ]
    if summary.get("bn_adapted"):
        lines.append(
            f"Batch-norm statistics recomputed on {summary['bn_adapted']['images']} training images (AdaBN) "
            "before training."
        )
    lines += [
        "",
        "Input warnings: " + ("; ".join(summary["input_warnings"]) if summary["input_warnings"] else "none."),
        "",
        "## Training",
        "",
        "| phase | epochs run | best epoch | best val accuracy | train s | wall s | curves |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, phase in phases.items():
        best = phase["best_val_accuracy"]
        lines.append(
            f"| {name} | {phase['epochs_run']} | {phase['best_epoch']} | {best if best is None else f'{best:.4f}'} | "
            f"{phase['train_seconds']:.1f} | {phase['wall_seconds']:.1f} | `{Path(phase['curves']).parent.name}/"
            f"{Path(phase['curves']).name}` |"
        )
    lines += [
        "",
        "Config: " + ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("extra", "progress")),
        "",
        "## Test set (evaluated once)",
        "",
        f"{test['count']} images: accuracy **{test['accuracy']:.4f}**, balanced accuracy "
        f"**{test['balanced_accuracy']:.4f}**, loss {test['loss']:.4f}.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in test["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![highest loss](highest_loss.png)", ""]
    return "\n".join(lines)
