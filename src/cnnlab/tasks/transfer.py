"""Transfer learning: a folder of labelled images -> split -> pretrained model adapted -> report -> predictions.

This module is the task: it chooses the data, the recipe and the phases, and wires the layers below together.

1. **Data** (`cnnlab.data.sources`): a class folder, a CSV of ``path,label``, a split folder (``train/``, ``val/``,
   ``test/``), or a built-in dataset (``elpv``, ``elpv:binary``). Bad files are listed and skipped.
2. **Split** (`cnnlab.data.split`): stratified train/val/test from ``split_seed``, written to ``split.csv`` in the run
   directory and read back by any later run there (each part's content digests beside it, ``split_digests.json``,
   by which `cnnlab evaluate` recognises the run's training images under other names, and a resume refuses images
   whose bytes changed since). Validation chooses the checkpoint; the test set is read once.
3. **Recipes** (`RECIPES`, ``--recipe``):

   - ``quick``: the backbone frozen, its pooled features computed once per image and view, the classifier trained on
     them: seconds to minutes.
   - ``default`` (the best a CPU does): **cached partial fine-tuning**. The network is cut at a block boundary
     (`cnnlab.models.split_classifier`); the frozen lower part runs once per training image and per label-preserving
     view (`cnnlab.layers.views`), its output maps are cached in float16 (`cnnlab.tasks.feature_cache`), and the top
     blocks and the head train on the cache for as many epochs as needed.
   - ``full``: the head on cached features, then the whole network unfrozen with layer-wise learning rates and
     augmentation (a GPU's recipe).

4. **Views** double as test-time augmentation: validation and test logits are averaged over the views, and the test
   report gives the results with and without it. The views are recorded with the model, so `cnnlab predict` and
   `cnnlab export` apply exactly the same averaging (`cnnlab.layers.views.ViewAverage`).
5. **The test set**, once, at the end, through the engine's inference path on the saved network:
   ``test_predictions.csv``, the confusion matrix and highest-loss images, ``results.json`` and ``report.md``.

The run folder holds, like every task's, config.yaml, metrics.csv/json and learning_curves.png (the phases' epochs
in order; each phase also has its own folder), results.json and report.md, and the model (``model.safetensors`` +
``model.json`` with the classes, the preprocessing record and the views).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cnnlab.data.folder import (
    DECODING_VERSION,
    ImageDataset,
    LabelledImages,
    SkippedFile,
    image_files,
    load_image,
)
from cnnlab.data.paths import check_output_outside_data
from cnnlab.data.photo_transforms import InputCheck, build_eval_transform, build_train_transform, save_preview_grid
from cnnlab.data.sources import (
    check_files_exist,
    check_split_unchanged,
    limit_per_class,
    open_image_source,
    source_classes,
    source_defaults,
)
from cnnlab.data.split import (
    SPLIT_DIGESTS,
    SPLITS,
    Split,
    check_fractions,
    check_split_images,
    check_split_seed,
    read_manifest,
    split_part_missing,
    stratified_split,
    validation_from_train,
    write_manifest,
    write_missing_split_digests,
    write_split_digests,
)
from cnnlab.errors import CnnlabError, listed
from cnnlab.files import PATH_BYTES, make_folder, write_text_whole, written_then_renamed
from cnnlab.layers.views import parse_views
from cnnlab.models import (
    PretrainedCfg,
    check_unfreeze,
    create_model,
    fetch_pretrained,
    split_classifier,
    trainable_blocks,
)
from cnnlab.report.units import duration
from cnnlab.tasks.feature_cache import CachedPart, FeatureCache, images_digest
from cnnlab.tasks.predict import view_logits
from cnnlab.tasks.recipes import Recipe, RecipeBook, check_start, note_current_run, run_name, with_overrides
from cnnlab.train import (
    BestWeights,
    FreezeBatchNorm,
    TensorBatches,
    TrainConfig,
    Trainer,
    layerwise_param_groups,
    top_param_groups,
)
from cnnlab.train.callbacks import SessionEpochs
from cnnlab.train.config import (
    environment_record,
    recorded_environment,
    save_record,
    slow_precision_said_once,
    use_threads,
)
from cnnlab.train.finished import is_finished, read_back
from cnnlab.train.metrics import Accuracy, BalancedAccuracy, ViewAveraged
from cnnlab.train.records import RunSessions, write_history
from cnnlab.train.saved import IMAGE_CLASSIFIER, save_model
from cnnlab.train.strategy import is_main_process, main_process_first

if TYPE_CHECKING:
    from cnnlab.train.config import EngineOptions

__all__ = ["RECIPES", "TransferConfig", "TransferRecipe", "class_weights", "load_images", "train_transfer"]

TASK = "transfer"
MANIFEST = "split.csv"
SKIPPED = "skipped.json"
CACHE_BUILDS = "cache_builds.json"  # the feature cache entries the run built, and their seconds
MONITORS = ("val_accuracy", "val_balanced_accuracy")


@dataclass(frozen=True)
class TransferRecipe(Recipe):
    """A way to adapt a pretrained classifier: the recipe base plus what is frozen, cached and averaged.

    ``train`` holds the `TrainConfig` fields of the main phase (the one ``--epochs``/``--lr`` set).

    Attributes:
        method: ``cached`` (train the top `unfreeze` blocks and the head on the cached output of the frozen rest)
            or ``full`` (a head phase on cached pooled features, then the network unfrozen on augmented images).
        unfreeze: backbone blocks trained (counted from the top); 0 trains the classifier alone; None all of them.
        views: label-preserving views for training and test-time averaging (``hflip``, ``dihedral``, a list); None
            takes the data's default (``dihedral`` for ELPV, ``hflip`` for photos).
        image_size: square input side for the recipe's own ``arch``; None (or another ``--model``) keeps the
            weights' record.
        crop_pct: evaluation centre-crop fraction; 1.0 keeps the whole image (labels at the border, defects).
        layer_decay: learning-rate factor per block going down from the classifier.
        head_epochs: ``full`` only: epochs of the head phase on cached pooled features.
        head_lr: ``full`` only: the head phase's peak learning rate.
        crop_scale: ``full`` only: smallest area a random training crop keeps (1.0: no crop, only resized).
        patience: early stopping on the monitored validation metric (None: off).
    """

    method: str = "cached"
    unfreeze: int | None = 0
    views: str | None = None
    image_size: int | None = None
    crop_pct: float | None = 1.0
    layer_decay: float = 0.85
    head_epochs: int = 0
    head_lr: float = 3e-3
    crop_scale: float = 1.0
    patience: int | None = None

    def input_side(self, arch: str, requested: int | None) -> int | None:
        """The input side a run of this recipe uses: `requested` if given, else the recipe's own (chosen for its
        backbone, so None for any other ``arch``: that model's weights keep their size)."""
        return requested if requested is not None else (self.image_size if arch == self.arch else None)


_OPTIMISER = dict(optimizer="adamw", weight_decay=0.01, label_smoothing=0.1, channels_last=True)
RECIPES: RecipeBook[TransferRecipe] = RecipeBook(
    "transfer",
    [
        TransferRecipe(
            name="default",
            summary="cached partial fine-tuning: the top backbone blocks and the head trained on cached maps of every "
            "view (the best CPU recipe)",
            arch="efficientnet_lite0",
            method="cached",
            # the top 8 of Lite0's 18 blocks (stem, 16 MBConv, head conv) for 4 epochs rather than 6 blocks for 5:
            # validation 1.5 points higher on ELPV over 3 seeds, in 18 min on 2 cores (cache included) against 17;
            # 8 blocks for 5 epochs took 23 min
            unfreeze=8,
            # 192 px instead of the weights' 224: 0.68x the time at the same validation accuracy over 3 seeds
            # (docs/BENCHMARKS.md, Transfer)
            image_size=192,
            layer_decay=0.85,
            # peak lr 3e-3 diverged on one seed in three; 1e-3 trains stably and its validation accuracy peaks by
            # epoch 4-5 (docs/BENCHMARKS.md, Transfer)
            train=dict(epochs=4, batch_size=64, lr=1e-3, schedule="onecycle", warmup_epochs=1.0, **_OPTIMISER),
        ),
        TransferRecipe(
            name="quick",
            summary="features only: the classifier trained on cached pooled features of every view (minutes on a CPU)",
            arch="efficientnet_lite0",
            method="cached",
            unfreeze=0,
            train=dict(epochs=30, batch_size=64, lr=3e-3, schedule="cosine", warmup_epochs=1.0, **_OPTIMISER),
            patience=8,
        ),
        TransferRecipe(
            name="full",
            summary="the whole network unfrozen on augmented images after a head phase (for a GPU; ~1 h on a CPU)",
            arch="efficientnet_lite0",
            method="full",
            unfreeze=None,
            layer_decay=0.85,
            head_epochs=15,
            head_lr=3e-3,
            crop_scale=1.0,
            train=dict(epochs=20, batch_size=32, lr=1e-3, schedule="cosine", warmup_epochs=1.0, **_OPTIMISER),
            patience=8,
        ),
    ],
)


@dataclass
class TransferConfig:
    """Options of a transfer-learning run (`cnnlab train transfer` fills it; None means "the recipe's").

    Attributes:
        data: image folder, CSV of ``path,label``, split folder (train/, val/, test/) or a built-in name (``elpv``,
            ``elpv:binary``).
        recipe: a name in `RECIPES`.
        arch: the pretrained model (default: the recipe's); its weights' record gives the preprocessing.
        pretrained: load the pretrained weights (False only for tests and baselines).
        unfreeze: backbone blocks trained, from the top (0: the classifier alone).
        views: label-preserving views, for training and test-time averaging.
        image_size: square input side.
        crop_pct: evaluation centre-crop fraction (1.0: the whole image).
        class_weight: "balanced": each class's cross-entropy weighted n / (k * n_c) over the training split.
        sampling: "balanced": training batches drawn with every class equally likely.
        monitor: the validation metric that chooses the checkpoint: ``val_accuracy`` or ``val_balanced_accuracy``.
        min_per_class: the fewest usable images a class may have.
        max_per_class: keep at most this many images per class (seeded), for quick trials.
        val_fraction: validation share of all images (taken from the non-test part); default 0.15. For a split
            folder without ``val/``: the stratified share of ``train/`` taken as validation (seeded by `split_seed`).
        test_fraction: test share of all images; default 0.15 (0.25 for ELPV, as its papers).
        split_manifest: reuse this manifest CSV (``path,label,split``) instead of splitting.
        split_seed: the split's seed (kept apart from `seed`, so runs of several seeds share one split and cache).
        seed: initialisation and data order.
        workers: DataLoader worker processes for decoding images.
        output: runs root; the run is ``<output>/transfer/<name>``, the feature cache
            ``<output>/transfer/feature-cache``.
        name: run name (default ``<recipe>-<timestamp>``).
        resume: continue an interrupted run (its split, cache and finished phases are reused).
        overwrite: start again in a run directory that holds a finished or interrupted run (split afresh).
        progress: progress bars and log lines.
        train: `TrainConfig` fields that override the recipe's (the engine options: epochs and lr of the main phase,
            batch size, precision, device, threads ...).
    """

    data: str
    recipe: str = "default"
    arch: str | None = None
    pretrained: bool = True
    unfreeze: int | None = None
    views: str | None = None
    image_size: int | None = None
    crop_pct: float | None = None
    class_weight: str | None = None
    sampling: str | None = None
    monitor: str = "val_accuracy"
    min_per_class: int = 100
    max_per_class: int | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    split_manifest: str | None = None
    split_seed: int = 0
    seed: int = 0
    workers: int = 2
    output: str = "runs"
    name: str = ""
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or run_name(self.recipe)

    @property
    def run_dir(self) -> Path:
        """``<output>/transfer/<name>``."""
        return Path(self.output) / TASK / self.name

    def validate(self) -> TransferRecipe:
        """The recipe this config runs; `CnnlabError` for any option value no run can use, naming the option."""
        recipe = RECIPES.get(self.recipe)
        PretrainedCfg.check_input(self.image_size, self.crop_pct)  # before the split, not when the model is built
        if self.class_weight not in (None, "balanced"):
            raise CnnlabError(f"--class-weight must be 'balanced' or 'none', got {self.class_weight!r}")
        if self.sampling not in (None, "balanced"):
            raise CnnlabError(f"--sampling must be 'balanced' or 'uniform', got {self.sampling!r}")
        if self.sampling == "balanced" and self.class_weight == "balanced":  # each alone evens the classes out
            raise CnnlabError(
                "--sampling balanced and --class-weight balanced correct the same imbalance: together a rare class "
                "weighs (majority / rare count) times too much; choose one"
            )
        if self.monitor not in MONITORS:
            raise CnnlabError(f"--monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")
        if self.unfreeze is not None and self.unfreeze < 0:
            raise CnnlabError(f"--unfreeze must be >= 0, got {self.unfreeze}")
        if self.unfreeze is not None and recipe.method == "full":  # it was ignored without a word
            raise CnnlabError(
                f"--unfreeze {self.unfreeze}: recipe {recipe.name} trains the whole network; --recipe default trains "
                "the top blocks that --unfreeze names"
            )
        if recipe.method == "full" and self.train.get("auto_batch_size"):  # refused after the head phase had trained
            raise CnnlabError(
                f"--batch-size auto: recipe {recipe.name} fine-tunes on images read through a DataLoader, whose batch "
                "is fixed; pass --batch-size N and --accum auto (or --recipe default, which trains on cached maps)"
            )
        check_split_seed(self.split_seed)
        check_fractions(self.val_fraction, self.test_fraction, val_needed=True)
        check_output_outside_data(self.output, self.data)
        if self.min_per_class < 0:
            raise CnnlabError(f"--min-per-class must be >= 0 (0: no minimum), got {self.min_per_class}")
        # 0 was a scikit-learn error about the split; 1 or 2 were told to "add images" to a class that had plenty
        if self.max_per_class is not None and self.max_per_class < 3:
            raise CnnlabError(
                f"--max-per-class must be >= 3 (one image of each class for train, validation and test), got "
                f"{self.max_per_class}"
            )
        parse_views(self.views or "none")
        TrainConfig(**{**recipe.train, **self.train, "progress": False})  # --epochs 0, --lr -1 ...: the engine's word
        return recipe

    def check_model(self, recipe: TransferRecipe) -> PretrainedCfg | None:
        """The backbone exists, has weights to transfer (unless ``--no-pretrained``), can be fine-tuned, and has the
        blocks ``--unfreeze`` asks for: asked of the model on the meta device, before an image is read or a run
        folder made (each was found after both). Returns the record of the weights to start from (None without).

        Raises:
            CnnlabError: naming the option at fault.
        """
        arch = self.arch or recipe.arch
        with torch.device("meta"):
            model = create_model(arch, num_classes=2, in_chans=3)
        weights = getattr(model, "pretrained_cfg", None) if self.pretrained else None
        if self.pretrained and weights is None:
            raise CnnlabError(
                f"--model {arch} has no pretrained weights in cnnlab, so there is nothing to transfer; choose a "
                "model with weights (`cnnlab zoo` lists them), or add --no-pretrained to train it from scratch"
            )
        if not hasattr(model, "forward_features") or not hasattr(model, "get_classifier"):
            raise CnnlabError(f"{arch} lacks the classifier surface (forward_features/forward_head) to fine-tune")
        top = self.unfreeze if self.unfreeze is not None else recipe.unfreeze
        if top is None or recipe.method != "cached":
            return weights
        if top == 0 and self.train.get("grad_checkpointing"):  # refused by the engine once the cache was built
            trains = "--unfreeze 0" if self.unfreeze == 0 else f"recipe {recipe.name}"
            raise CnnlabError(
                f"--grad-checkpointing: {trains} trains the classifier alone on cached pooled features, which has no "
                "stages to recompute; leave it out (it applies to the top blocks --unfreeze N trains, and to --recipe "
                "full)"
            )
        blocks = len(trainable_blocks(model))
        if self.unfreeze is None and top > blocks:  # the recipe's count, chosen for its own backbone
            raise CnnlabError(
                f"recipe {recipe.name} trains the top {top} blocks of {recipe.arch}, and {arch} has {blocks}; "
                f"choose --unfreeze 0..{blocks}"
            )
        check_unfreeze(top, blocks, model)
        return weights

    @classmethod
    def from_options(cls, engine: EngineOptions, **options: Any) -> TransferConfig:
        """A config from the command line: the task's own `options` and the shared engine options."""
        progress = bool(options.pop("progress", True)) and not engine.quiet
        return cls(
            **options,
            seed=engine.seed,
            output=engine.output,
            name=engine.name or "",
            resume=engine.resume,
            overwrite=engine.overwrite,
            progress=progress,
            train=engine.overrides(),
        )


# ---------------------------------------------------------------------------------------------------------- data
def _read_split(manifest: str | Path, data: str) -> tuple[LabelledImages, Split]:
    """A split manifest read back with the class order a fresh split of `data` has: a built-in dataset's own order
    (ELPV's classes by defect probability), so a later run of the same name or a resumed one indexes the classes as
    the first run did; sorted names for the user's own data, as a fresh scan gives."""
    images, split = read_manifest(manifest)
    order = source_classes(data)
    if order is not None and set(images.classes) <= set(order):
        images, split = read_manifest(manifest, [name for name in order if name in images.classes])
    return images, split


def _recorded_split(run_dir: Path) -> str | None:
    """How the run's split was made, as its config.yaml records it (None for a run started before it did)."""
    import yaml

    try:
        split = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["config"]["split"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return split if isinstance(split, str) else None


def _refuse_split_options(
    config: TransferConfig, given_split: str, allowed: tuple[str, ...] = (), why: str = ""
) -> None:
    """The options that shape a fresh split, refused with a split given as it is (they were accepted and ignored),
    but for those `allowed`; `why` ends the refusal."""
    values = {
        "--val-fraction": config.val_fraction,
        "--test-fraction": config.test_fraction,
        "--max-per-class": config.max_per_class,
        "--split-seed": config.split_seed or None,  # 0, the default, cannot be told from not given
    }
    given = [option for option, value in values.items() if value is not None and option not in allowed]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise CnnlabError(f"{' and '.join(given)} {verb} to fresh splits; {given_split} gives the split as it is{why}")


def load_images(config: TransferConfig, log: Any = print) -> tuple[LabelledImages, Split, str]:
    """The run's images and split, and where the split came from.

    Order of precedence: the manifest already in the run directory when the run is resumed, then
    ``config.split_manifest``, then a split folder, then a fresh stratified split (written to the run directory).
    A run started again (``--overwrite``, or after a failed start) splits afresh: its old manifest had kept another
    ``--data`` and other fractions, and a split the run had refused. So does a resume of a start stopped before it
    recorded its options (config.yaml, written before anything trains): its split was this command's to make, and
    read back it was reported as "reused split.csv", not as the stratified or given split it is.
    """
    run_manifest = config.run_dir / MANIFEST
    if config.resume and run_manifest.is_file() and (config.run_dir / "config.yaml").is_file():
        images, split = _read_split(run_manifest, config.data)
        check_split_unchanged(images, split, run_manifest)
        _note_images_not_in_split(config, images, log)
        return images, split, f"reused {run_manifest}"
    if config.split_manifest:
        _refuse_split_options(config, f"--split {config.split_manifest}")
        images, split = _read_split(config.split_manifest, config.data)
        check_files_exist(images, config.split_manifest)
        images, split = check_split_images(images, split)
        for skipped in images.skipped:
            log(f"skipped {skipped.path} ({skipped.label}): {skipped.reason}")
        _refuse_untrained_classes(images, split)
        if not split["val"]:  # it said "raise --val-fraction", an option refused with --split
            raise CnnlabError(
                f"{config.split_manifest} has no usable val rows: a given split is taken as it is (--val-fraction "
                "applies to fresh splits), and the best epoch is chosen on its val images; mark some of each "
                "class's train rows `val`"
            )
        _refuse_unscored_classes(images, split, config.split_manifest, folder=False)
        return images, split, f"given manifest {config.split_manifest}"
    images, folder_split, source = open_image_source(config.data, config.min_per_class)
    # A split folder without val/ takes validation from train/ when --val-fraction asks (seeded by --split-seed);
    # one with val/ is taken as it is.
    has_val = folder_split is not None and (Path(config.data) / "val").exists()
    val_from_train = folder_split is not None and not has_val and config.val_fraction is not None
    if folder_split is not None:
        _refuse_split_options(
            config,
            f"the split folder {config.data}",
            allowed=("--val-fraction", "--split-seed") if val_from_train else (),
            why=" (its val/ is the validation set; --val-fraction takes one from train/ where val/ is missing)"
            if has_val and config.val_fraction is not None
            else "",
        )
    for skipped in images.skipped:  # a split folder's too: its bad files and leaked copies were counted, not named
        log(f"skipped {skipped.path} ({skipped.label}): {skipped.reason}")
    if folder_split is not None:
        if val_from_train:
            assert config.val_fraction is not None
            folder_split = validation_from_train(
                images.labels, folder_split, config.val_fraction, config.split_seed, images.classes
            )
            source += f", val a stratified {config.val_fraction:g} of train/ (seed {config.split_seed})"
        _refuse_untrained_classes(images, folder_split)
        for part in ("val", "test"):  # it said "raise --val-fraction", an option refused with a split folder
            if not folder_split[part]:
                raise CnnlabError(split_part_missing(config.data, part, images.classes))
        _refuse_unscored_classes(images, folder_split, config.data, folder=True)
        return images, folder_split, source
    _note_nested_images(images, Path(config.data), log)
    images = limit_per_class(images, config.max_per_class, config.split_seed)
    defaults = source_defaults(config.data)
    val = config.val_fraction if config.val_fraction is not None else float(defaults.get("val_fraction", 0.15))
    test = config.test_fraction if config.test_fraction is not None else float(defaults.get("test_fraction", 0.15))
    split = stratified_split(images.labels, val, test, config.split_seed, images.classes)
    _refuse_untrained_classes(images, split)
    return (
        images,
        split,
        f"stratified {1 - val - test:.0%}/{val:.0%}/{test:.0%} train/val/test, seed {config.split_seed}",
    )


def _note_nested_images(images: LabelledImages, root: Path, log: Any) -> None:
    """Say which class folders hold images in sub-folders, read as images of that class: a folder of groups of
    classes (animals/cat, animals/dog, vehicles/car) was trained as the groups, and nothing said the sub-folders
    were read at all."""
    nested: dict[str, Counter[str]] = {}
    for path, label in zip(images.paths, images.labels, strict=True):
        relative = Path(path).relative_to(root).parts if Path(path).is_relative_to(root) else ()
        if len(relative) > 2:  # <class>/<sub-folder>/.../<image>
            nested.setdefault(images.classes[label], Counter())[relative[1]] += 1
    if nested:
        said = "; ".join(
            f"{name}: {sum(subs.values())} in {listed([f'{sub}/' for sub in sorted(subs)], 3)}"
            for name, subs in list(nested.items())[:4]
        )
        more = f"; and {len(nested) - 4} more classes" if len(nested) > 4 else ""
        log(
            f"images in sub-folders of class folders are read as images of that class ({said}{more}); "
            "to train a sub-folder as a class of its own, move it up beside the class folders"
        )


def _note_images_not_in_split(config: TransferConfig, images: LabelledImages, log: Any) -> None:
    """Say so when a resumed run's class folders hold image files its split does not (added since the split was made):
    a resume keeps its split, and the new images were left out without a word. Files the split's own scan skipped
    (`SKIPPED`) and, with --max-per-class, the ones it left out on purpose are not counted."""
    root = Path(config.data)
    if not root.is_dir() or config.max_per_class is not None:
        return
    known = {str(Path(path).resolve()) for path in images.paths}
    try:
        skipped = json.loads((config.run_dir / SKIPPED).read_text())
        known |= {str(Path(entry["path"]).resolve()) for entry in skipped}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with warnings.catch_warnings():  # the split's scan warned of unread formats already
        warnings.simplefilter("ignore")
        found = [path for path in image_files(root) if Path(path).parent != root]  # loose images are in no class
    new = [path for path in found if str(Path(path).resolve()) not in known]
    if new:
        log(
            f"{len(new)} image file(s) under {config.data} are not in the run's split (added since it was made; "
            f"first: {new[0]}): a resumed run keeps its split; start a new run (--overwrite or another --name) to "
            "train on them"
        )


def _refuse_untrained_classes(images: LabelledImages, split: Split) -> None:
    """Refuse a class without a training image: with ``--min-per-class 0`` an empty class folder trained a model with
    an output for a class it never saw, and a report that scored it."""
    trained = {images.labels[index] for index in split["train"]}
    empty = [name for index, name in enumerate(images.classes) if index not in trained]
    if empty:
        raise CnnlabError(
            f"{images.source}: {listed(empty, 8)} {'has' if len(empty) == 1 else 'have'} no usable training image; "
            "a class is learned from its images (add some, or remove the class)"
        )


def _refuse_unscored_classes(images: LabelledImages, split: Split, given: str, folder: bool) -> None:
    """Refuse a given split (a split folder's, or a `--split` manifest's) whose val or test part lacks a class: an
    empty test/<class>/ folder left the class out of the test set, and the report's accuracy and balanced accuracy
    (1.0) were those of the other classes, without a word; a val part without it chose the best epoch blind to it."""
    for part in ("test", "val"):
        present = {images.labels[index] for index in split[part]}
        missing = [name for index, name in enumerate(images.classes) if index not in present]
        if not missing:
            continue
        one = len(missing) == 1
        use = "the best epoch is chosen on them" if part == "val" else "the run is scored on them, once"
        folders = f"train/{missing[0]}/ into {part}/{missing[0]}/" if one else f"train/<class>/ into {part}/<class>/"
        its = "its" if one else "their"
        remedy = f"move some of {its} images from {folders}" if folder else f"mark some of {its} train rows `{part}`"
        raise CnnlabError(
            f"{Path(given) / part if folder else given}: {listed(missing, 8)} {'has' if one else 'have'} no usable "
            f"{part} image; every class needs {part} images ({use}, and a class without them goes unmeasured): "
            f"{remedy}"
        )


def class_weights(counts: dict[str, int]) -> torch.Tensor:
    """ "Balanced" cross-entropy weights n / (k * n_c) from per-class image counts (in class order)."""
    values = torch.tensor(list(counts.values()), dtype=torch.float32)
    if (values <= 0).any():
        empty = [name for name, count in counts.items() if count <= 0]
        raise CnnlabError(f"class weights need training images in every class; none in {', '.join(empty)}")
    return values.sum() / (len(values) * values)


# ------------------------------------------------------------------------------------------------------- the run
@dataclass
class _Run:
    """What every phase of one run shares."""

    config: TransferConfig
    recipe: TransferRecipe
    parts: dict[str, LabelledImages]
    cfg: PretrainedCfg
    views: tuple[str, ...]
    device: torch.device
    log: Any
    note: Any  # a line on the results (`log`'s, but said under -q too: `train_transfer`'s notes)
    phases: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    sessions: RunSessions | None = None
    notes: bool = True  # the engine's notes on the results (`Trainer`'s argument)

    def session_epochs(self) -> list[SessionEpochs]:
        """The callback that counts the next phase's epochs in this session's record, after the earlier phases'
        (each phase trains in a sub-folder with a trainer of its own: the run's sessions showed no epochs)."""
        if self.sessions is None:
            return []
        return [SessionEpochs(self.sessions, sum(phase["epochs_run"] for phase in self.phases.values()))]

    @property
    def classes(self) -> list[str]:
        return self.parts["train"].classes

    @property
    def unfreeze(self) -> int | None:
        """Backbone blocks the run trains, from the top: ``--unfreeze``, else the recipe's (None: all of them)."""
        return self.config.unfreeze if self.config.unfreeze is not None else self.recipe.unfreeze

    def train_config(self, phase: str, main: bool, samples: int | None = None, **fields: Any) -> TrainConfig:
        """The phase's engine config: the recipe's, the engine options, the run's place and monitor.

        A recipe's batch size larger than the phase's `samples` (a small folder) shrinks to one batch of them; a
        ``--batch-size`` given by the user is kept (the engine then names the problem; the ``full`` recipe's
        finetune phase, whose loader would train on one smaller batch, is refused first: `_check_finetune_batch`).
        """
        config = self.config
        options = with_overrides({**self.recipe.train, **fields}, config.train if main else _shared(config.train))
        batch = options.get("batch_size", TrainConfig.batch_size)
        if samples is not None and "batch_size" not in config.train and isinstance(batch, int) and 0 < samples < batch:
            options["batch_size"] = samples
            self.note(f"{phase}: batch size {samples}, all the training samples (the recipe's {batch} is more)")
        checkpoint = config.run_dir / phase / "checkpoint.pt"
        return TrainConfig(
            **{
                **options,
                "seed": config.seed,
                "monitor": config.monitor,
                "early_stopping_patience": self.recipe.patience,
                "output": str(config.run_dir.parent),
                "task": config.run_dir.name,
                "name": phase,
                "resume": config.resume and checkpoint.is_file(),
                "overwrite": config.overwrite or (config.resume and not checkpoint.is_file()),
                "progress": config.progress,
                "extra": {"task": TASK, "phase": phase, "recipe": self.recipe.name, "data": config.data},
            }
        )

    def loss(self, device: torch.device) -> nn.Module | None:
        if self.config.class_weight is None:
            return None
        weight = class_weights(self.parts["train"].class_counts()).to(device)
        smoothing = {**self.recipe.train, **self.config.train}.get("label_smoothing", 0.0)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)

    def metrics(self, views: int) -> dict[str, Any]:
        """Validation metrics, averaged over the views (and the identity view alone, to compare)."""
        classes = len(self.classes)
        return {
            "accuracy": ViewAveraged(Accuracy(), views),
            "balanced_accuracy": ViewAveraged(BalancedAccuracy(classes), views),
            "accuracy_single_view": ViewAveraged(Accuracy(), views, first_only=True),
        }

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights that make every class equally likely in a batch (``--sampling balanced``)."""
        if self.config.sampling is None:
            return None
        counts = torch.bincount(labels, minlength=len(self.classes)).double()
        return 1.0 / counts[labels]

    def loader(self, images: LabelledImages, transform: Any, train: bool, batch_size: int) -> DataLoader:
        workers = self.config.workers
        return DataLoader(
            ImageDataset(images, transform),
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(images) > batch_size,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator() if train else None,
        )


def _check_finetune_batch(config: TransferConfig, recipe: TransferRecipe, train_images: int) -> None:
    """Refuse a ``--batch-size`` above the training images of a ``full`` run, before its head phase trains.

    Its finetune phase reads the images through a DataLoader, which would train on one smaller batch than the one
    given while the run recorded the given one; the cached phases' samples are images x views, so they had passed.
    """
    batch = config.train.get("batch_size")
    if recipe.method == "full" and isinstance(batch, int) and 0 < train_images < batch:
        raise CnnlabError(
            f"the split's training part has {train_images} images, fewer than one batch of {batch} (the full "
            f"recipe's finetune phase trains on the images); lower --batch-size to at most {train_images}"
        )


def _shared(train: dict[str, Any]) -> dict[str, Any]:
    """The engine options every phase takes (epochs and lr set the main phase only)."""
    return {k: v for k, v in train.items() if k not in ("epochs", "lr")}


def _cache_spec(run: _Run, model_name: str, split: Any, part: str) -> dict[str, Any]:
    precision = {**run.recipe.train, **run.config.train}.get("precision", "fp32")
    return {
        "images": images_digest(run.parts[part]),
        "model": model_name,
        "pretrained": run.config.pretrained,
        "cut": split.cut,
        "top_blocks": split.top_blocks,
        "views": list(run.views),
        "preprocessing": {k: v for k, v in run.cfg.to_dict().items() if k not in ("notes", "license")},
        "precision": precision,
        "decoding": DECODING_VERSION,  # an entry of files decoded another way is built again
    }


def _cached_parts(run: _Run, model: nn.Module, model_name: str, top_blocks: int, parts: tuple[str, ...]) -> Any:
    """Split `model` and return (the split, the cached train/val parts)."""
    split = split_classifier(model, top_blocks, run.cfg.input_size)
    cache = FeatureCache(Path(run.config.output) / TASK / "feature-cache", run.log)
    transform = build_eval_transform(run.cfg)
    train_options = {**run.recipe.train, **run.config.train}
    cheaper = (
        f"use --views hflip (2 views instead of {len(run.views)}), a later cut (fewer --unfreeze blocks) or a "
        "smaller --image-size"
    )
    cached: dict[str, CachedPart] = {}
    # Under torchrun rank 0 builds the cache and the other processes read it (building it together, they wrote the
    # same files at once).
    with main_process_first(str(train_options.get("device", "auto"))):
        for part in parts:
            if run.sessions is not None:  # what a session stopped before it trained was doing
                ready = cache.path(_cache_spec(run, model_name, split, part)).is_dir()
                run.sessions.doing(f"{'reading' if ready else 'building'} the feature cache")
            cached[part] = cache.get_or_build(
                _cache_spec(run, model_name, split, part),
                split.lower,
                run.parts[part],
                transform,
                run.views,
                split.feature_shape,
                device=str(run.device),
                batch_size=2 * int(train_options.get("batch_size", 32)),
                precision=str(train_options.get("precision", "fp32")),
                channels_last=bool(train_options.get("channels_last", False)),
                workers=run.config.workers,
                progress=run.config.progress,
                cheaper=cheaper,
                siblings=[cache.key(_cache_spec(run, model_name, split, other)) for other in parts],
            )
    built = _cache_builds(run, {cache.key(_cache_spec(run, model_name, split, part)): cached[part] for part in parts})
    run.costs["cache_seconds"] = run.costs.get("cache_seconds", 0.0) + sum(built.values())
    run.costs["cache_reused"] = float(not built)
    return split, cached


def _cache_builds(run: _Run, entries: dict[str, CachedPart]) -> dict[str, float]:
    """The seconds of each entry in `entries` (cache key -> part) that this run built, in this session or an earlier
    one: recorded in the run's ``cache_builds.json``, so a resumed run reports the cache its first session built
    as built, with that build's seconds, not as reused in 0 s. Entries an earlier run built are left out."""
    path = run.config.run_dir / CACHE_BUILDS
    recorded: dict[str, float] = json.loads(path.read_text()) if run.config.resume and path.is_file() else {}
    recorded.update({key: part.seconds for key, part in entries.items() if not part.reused})
    if is_main_process():
        write_text_whole(path, json.dumps(recorded, indent=1))
    return {key: recorded[key] for key in entries if key in recorded}


def _to_float(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached float16 maps -> float32 on the device (per batch)."""
    return inputs.float(), targets


def _fit(run: _Run, phase: str, trainer: Trainer, train: Any, val: Any) -> None:
    started = time.perf_counter()
    history = trainer.fit(train, val)
    run.phases[phase] = {
        "epochs_run": len(history),
        "best_epoch": trainer.best_epoch,
        "best_" + run.config.monitor: trainer.best_metric,
        "train_seconds": trainer.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "images_per_second": sum(r["images_per_second"] for r in history) / max(1, len(history)),
        "batch": trainer.batch_record(),  # the batch it trained with: a search's, or after an out-of-memory retry
        "history": history,
    }


def _train_on_cache(run: _Run, model: nn.Module, model_name: str, top_blocks: int, phase: str, main: bool,
                    **fields: Any) -> None:  # fmt: skip
    """Train the classifier and the top `top_blocks` blocks of `model` on the cached output of the frozen rest."""
    split, cached = _cached_parts(run, model, model_name, top_blocks, ("train", "val"))
    groups_model = model

    def groups(_: nn.Module) -> list[dict[str, Any]]:  # the top blocks and the classifier; the rest frozen
        options = {**run.recipe.train, **run.config.train}
        decay = float(options.get("weight_decay", 0.0))
        return top_param_groups(groups_model, top_blocks, run.recipe.layer_decay, decay)

    train_x, train_y = cached["train"].flat()
    val_x, val_y = cached["val"].flat()
    config = run.train_config(phase, main, samples=len(train_x), **fields)
    if top_blocks == 0:  # the full recipe's head phase: a lone classifier has nothing to recompute (its finetune has)
        config = dataclasses.replace(config, grad_checkpointing=False)
    trainer = Trainer(
        split.upper,
        config,
        loss_fn=run.loss(run.device),
        metrics=run.metrics(len(run.views)),
        train_transform=_to_float,
        eval_transform=_to_float,
        param_groups=groups,
        callbacks=[FreezeBatchNorm(True), BestWeights(), *run.session_epochs()],
        notes=run.notes,
    )
    batches = TensorBatches(train_x, train_y, config.batch_size, drop_last=True, weights=run.sample_weights(train_y))
    _fit(run, phase, trainer, batches, TensorBatches(val_x, val_y, 2 * config.batch_size))
    run.phases[phase]["cut"] = split.cut or "pooled features"
    run.phases[phase]["cached_shape"] = list(split.feature_shape)


def _train_full(run: _Run, model: nn.Module) -> None:
    """The ``full`` recipe's second phase: the top blocks (all by default) on augmented images, layer-wise rates."""
    recipe = run.recipe
    train_transform = build_train_transform(run.cfg, scale=(recipe.crop_scale, 1.0), views=run.views)
    eval_transform = build_eval_transform(run.cfg)
    config = run.train_config("finetune", main=True, samples=len(run.parts["train"]))
    # checked against the run's preprocessing (the weights' mean/std at the run's input size): against the weights'
    # own size, a chosen --image-size under half of it was taken for images left too small
    check = InputCheck(run.cfg, "training")

    def groups(module: nn.Module) -> list[dict[str, Any]]:
        return layerwise_param_groups(module, run.unfreeze or 0, recipe.layer_decay, config.weight_decay)

    trainer = Trainer(
        model,
        config,
        loss_fn=run.loss(run.device),
        metrics=run.metrics(1),
        train_transform=check,
        param_groups=groups,
        callbacks=[FreezeBatchNorm(True), BestWeights(), *run.session_epochs()],
        notes=run.notes,
    )
    train = run.loader(run.parts["train"], train_transform, True, config.batch_size)
    val = run.loader(run.parts["val"], eval_transform, False, 2 * config.batch_size)
    _fit(run, "finetune", trainer, train, val)
    run.phases["finetune"]["input_warnings"] = check.problems


def _test(run: _Run, model: nn.Module) -> dict[str, Any]:
    """The test set, once: logits of every view through the engine's inference path on the saved network."""
    from cnnlab.report.classification import classification_summary, classification_test_report

    options = {**run.recipe.train, **run.config.train}
    started = time.perf_counter()
    test = run.parts["test"]
    per_view = view_logits(
        model,
        run.views,
        test,
        run.cfg,
        device=run.device,
        batch_size=2 * int(options.get("batch_size", 32)),
        precision=str(options.get("precision", "fp32")),
        channels_last=bool(options.get("channels_last", False)),
        workers=run.config.workers,
    )
    logits = per_view.mean(1)
    targets = torch.tensor(test.labels)
    run_dir = run.config.run_dir
    results = classification_test_report(logits, targets, test.paths, test.classes, run_dir)
    single = classification_summary(targets.tolist(), per_view[:, 0].argmax(1).tolist(), test.classes)
    results["views"] = list(run.views)
    results["single_view"] = {k: single[k] for k in ("accuracy", "balanced_accuracy")}
    if run.config.data == "elpv":  # the authors' binary task read off the 4 classes: P(2/3) + P(1) >= 0.5
        defective = logits.softmax(1)[:, 2:].sum(1) >= 0.5
        results["binary_accuracy"] = float((defective == (targets >= 2)).float().mean())
    probabilities = logits.softmax(1)
    with (
        written_then_renamed(run_dir / "test_predictions.csv") as partial,
        open(partial, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as f,
    ):
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", *test.classes])
        for path, label, row in zip(test.paths, test.labels, probabilities.tolist(), strict=True):
            writer.writerow([path, test.classes[label], test.classes[int(torch.tensor(row).argmax())], *row])
    run.costs["test_seconds"] = time.perf_counter() - started
    return results


def train_transfer(config: TransferConfig, log: Any = None, notes: bool | None = None) -> dict[str, Any]:
    """Run the recipe (see the module docstring) and return the results (also in ``results.json``).

    A slow precision (fp16 on the CPU) is warned of once, before any image is read, not by each phase's trainer.

    Args:
        config: the run.
        log: where its lines go (default: printed, as `config.progress` and `notes` say).
        notes: print the lines the results depend on without `config.progress`: each file skipped, images under
            ``data`` that a resumed run's split lacks, a finished run read back, a phase trained in one batch of all
            its samples (smaller than the recipe's), and the engine's notes on stderr (the batch a search chose, an
            out-of-memory retry's micro-batch, early stopping, the best epoch's weights restored; `Trainer.note`);
            None: as `config.progress`. The CLI keeps them under -q, which drops progress alone, and with --json
            (on stderr; its results list the files skipped too). Not a `TransferConfig` field, which config.yaml
            records and a resume compares.
    """
    options = {**RECIPES.get(config.recipe).train, **config.train}
    said_as = {"precision": 'train["precision"]'}  # what a Python caller sets (the CLI says --precision, earlier)
    with slow_precision_said_once(options.get("precision"), str(options.get("device", "auto")), said_as):
        return _train_transfer(config, log, config.progress if notes is None else notes)


def _train_transfer(config: TransferConfig, log: Any, notes: bool) -> dict[str, Any]:
    # Under torchrun every process trains; rank 0 alone logs and writes the run's files, the others read them.
    main = is_main_process()
    note = log or (lambda message: print(message) if notes and main else None)  # on the data and the results
    log = log or (lambda message: print(message) if config.progress and main else None)
    recipe = config.validate()
    weights = config.check_model(recipe)
    use_threads({**recipe.train, **config.train}.get("num_threads"))  # the feature cache is built before any Trainer
    started = time.perf_counter()
    run_dir = config.run_dir
    check_start(run_dir, MANIFEST, config.resume, config.overwrite, dataclasses.asdict(config))
    if config.resume and is_finished(run_dir):
        # read back (`cnnlab.train.finished`), not tested again with its report and times rewritten; a stop before
        # its report.md leaves only that to write, from the results and the environment of the session that made them
        def write_report(summary: dict[str, Any]) -> None:
            from cnnlab.report.transfer import transfer_report

            transfer_report(summary, recorded_environment(run_dir)).write(run_dir / "report.md")

        def confusion(summary: dict[str, Any], path: Path) -> None:  # as classification_test_report drew it
            from cnnlab.report.plots import plot_confusion_matrix

            matrix = torch.tensor(summary["test"]["confusion_matrix"])
            plot_confusion_matrix(matrix, path, summary["classes"], title="test set")

        if main:  # a run made before split_digests.json: recorded once here, not read again by each evaluate
            write_missing_split_digests(run_dir / MANIFEST)
        # highest_loss.png, deleted since, stays missing: it shows the test images, which a read-back does not read
        return read_back(run_dir, write_report, note, main, {"confusion_matrix.png": confusion})
    # this command's session of the run (sessions.json), read before its config.yaml is written again; a resumed
    # run's session is one of the run's from here (a refusal of its input is not)
    sessions = RunSessions(run_dir, config.resume, main, started)
    if weights is not None:  # a download that fails does so before the images are read and the run folder made
        sessions.doing("fetching the pretrained weights")
        with sessions:
            fetch_pretrained(weights)
    sessions.doing("reading the images")
    with sessions, main_process_first(str({**recipe.train, **config.train}.get("device", "auto"))):
        images, split, split_source = load_images(config, note)  # its lines name files skipped or left out
        _check_finetune_batch(config, recipe, len(split["train"]))
        make_folder(run_dir, shown=str(config.output))
        note_current_run(run_dir)
        if main:
            write_manifest(run_dir / MANIFEST, images, split)
            if not (split_source.startswith("reused") and (run_dir / SPLIT_DIGESTS).is_file()):  # a resume's are
                write_split_digests(run_dir / SPLIT_DIGESTS, images, split)  # its first session's, as its split is
        skipped_path = run_dir / SKIPPED
        if split_source.startswith("reused") and skipped_path.is_file():  # the bad files found by the split's run
            images.skipped = [SkippedFile(**entry) for entry in json.loads(skipped_path.read_text())]
        if split_source.startswith("reused"):  # the report says how the split was made, as the first run's does
            split_source = _recorded_split(run_dir) or split_source
        if main:
            write_text_whole(skipped_path, json.dumps([dataclasses.asdict(s) for s in images.skipped], indent=1))
    sessions.doing("setting up the run")
    sessions.begin()  # the run folder is this run's now: a refused start records nothing
    with sessions:  # an interrupted session records its wall time too
        parts = {part: images.subset(split[part]) for part in SPLITS if split[part]}
        for needed in ("val", "test"):
            if needed not in parts:
                raise CnnlabError(f"the split has no {needed} images (raise --{needed}-fraction)")
        views = parse_views(config.views or recipe.views or str(source_defaults(config.data).get("views", "hflip")))
        record = {
            "recipe_fields": recipe.to_dict(),
            "split": split_source,
        }  # beside the options: not compared on resume
        if main:
            save_record(dataclasses.asdict(config) | record, run_dir / "config.yaml")
        counts = {part: parts[part].class_counts() for part in parts}
        log(
            f"{len(images)} images, {len(images.classes)} classes; split ({split_source}): "
            + ", ".join(f"{part} {len(parts[part])}" for part in parts)
            + f"; recipe {recipe.name}; views {', '.join(views)}"
        )

        torch.manual_seed(config.seed)
        arch = config.arch or recipe.arch
        # Images are loaded as RGB (grayscale replicated to 3 channels), so every backbone is built for 3 channels.
        model = create_model(arch, pretrained=config.pretrained, num_classes=len(images.classes), in_chans=3)
        record = PretrainedCfg.for_model(model)
        size = recipe.input_side(arch, config.image_size)
        cfg = record.with_input(size, config.crop_pct if config.crop_pct is not None else recipe.crop_pct)
        from cnnlab.train.device import resolve_device

        device = resolve_device(str({**recipe.train, **config.train}.get("device", "auto")))
        model.to(device)
        if {**recipe.train, **config.train}.get("channels_last"):  # once, outside inference mode
            model.to(memory_format=torch.channels_last)
        run = _Run(config, recipe, parts, cfg, views, device, log, note, sessions=sessions, notes=notes)
        preview_transform = build_train_transform(cfg, scale=(recipe.crop_scale, 1.0), views=views)
        preview = run_dir / "augmented_preview.png"
        if main:
            preview = save_preview_grid(
                [preview_transform(load_image(p)) for p in parts["train"].paths[:16]], preview, cfg
            )
        # Random weights are --seed's: the cache key names it, or a run of another seed read maps of a lower part that
        # its saved model does not have (trained on one network, tested and saved with another)
        model_name = f"{arch}:pretrained" if config.pretrained else f"{arch}:random-seed{config.seed}"
        if recipe.method == "cached":
            top = run.unfreeze if run.unfreeze is not None else len(trainable_blocks(model, cfg.input_size))
            _train_on_cache(run, model, model_name, top, "head" if top == 0 else "partial", main=True)
        else:
            _train_on_cache(run, model, model_name, 0, "head", main=False, epochs=recipe.head_epochs, lr=recipe.head_lr)
            _train_full(run, model)
        for param in model.parameters():
            param.requires_grad_(True)
        if not main:  # the trained model is rank 0's to test, save and report
            return {"run_dir": str(run_dir)}

        results = _test(run, model)  # the test set, once
        meta = {
            "task": TASK,
            "kind": IMAGE_CLASSIFIER,
            "classes": images.classes,
            "normalisation": {"mean": list(cfg.mean), "std": list(cfg.std)},  # outside the network: predict applies it
            "preprocessing": cfg.to_dict(),
            "views": list(views),
            "input": "RGB image preprocessed with the record in `preprocessing`; logits averaged over `views`",
            "output": f"logits [N, {len(images.classes)}] of one view; predict averages them over `views`",
            "data": config.data,
            "recipe": recipe.name,
            "test_accuracy": results["accuracy"],
        }
        save_model(model, run_dir, arch, {"num_classes": len(images.classes), "in_chans": 3}, meta)
        _estimate_next_recipe(run, model, record)  # after the model is saved: an estimate never costs a finished run
        _write_phase_history(run.phases, run_dir)
        sessions.end()
        summary = {
            "run_dir": str(run_dir),
            "config": dataclasses.asdict(config),
            "recipe": recipe.to_dict(),
            "unfreeze": run.unfreeze,
            "device": run.device.type,  # what `cnnlab budget RUN` sizes the trained step for
            "classes": images.classes,
            "counts": counts,
            "skipped": [dataclasses.asdict(s) for s in images.skipped],
            "split": split_source,
            "preprocessing": cfg.to_dict(),
            "views": list(views),
            "phases": {name: {k: v for k, v in phase.items() if k != "history"} for name, phase in run.phases.items()},
            "test": results,
            "costs": run.costs,
            "wall_seconds": sessions.sessions[-1]["wall_seconds"],  # this session's; each one's: "sessions"
            **sessions.results(),  # each session, and their wall time (None: one is unknown)
            "preview": str(preview),
        }
        write_text_whole(run_dir / "results.json", json.dumps(summary, indent=1))
        from cnnlab.report.transfer import transfer_report

        transfer_report(summary, environment_record()).write(run_dir / "report.md")
        log(f"report: {run_dir / 'report.md'}")  # the test figures: the caller's summary (the CLI prints them once)
        nxt = run.costs.get("next_recipe")
        if nxt:
            total, count = summary["wall_seconds_total"], len(sessions.sessions)
            took = f"this run took {duration(summary['wall_seconds'])}" if count == 1 else (
                f"this run's {count} sessions took {duration(total)}" if total is not None
                else f"this session of the run took {duration(summary['wall_seconds'])} (an earlier one's is unknown)"
            )  # fmt: skip
            log(f"{took}; --recipe {nxt['recipe']} would take about {duration(nxt['total'])} here (estimate, "
                "report.md)")  # fmt: skip
        return summary


def _estimate_next_recipe(run: _Run, model: nn.Module, record: PretrainedCfg) -> None:
    """``costs["next_recipe"]``: the next recipe in cost order (on this run's model and image size) and its estimated
    seconds on this machine, from the test pass's measured speed (`cnnlab.tasks.transfer_cost`)."""
    from cnnlab.tasks.transfer_cost import estimate_recipe_seconds, forward_flops, next_recipe

    name = next_recipe(run.recipe.name)
    if name is None:
        return
    nxt = RECIPES.get(name)
    config = run.config
    try:
        size = record.with_input(nxt.input_side(config.arch or nxt.arch, config.image_size)).input_size
        tested = len(run.parts["test"]) * len(run.views) * forward_flops(model, run.cfg.input_size, run.device)
        seconds = estimate_recipe_seconds(
            nxt,
            model,
            size,
            {part: len(images) for part, images in run.parts.items()},
            len(run.views),
            run.costs["test_seconds"] / tested,
            run.device,
            len(run.classes),
            _shared(config.train).get("batch_size"),  # None: the next recipe's own
        )
    except (CnnlabError, RuntimeError, ValueError) as error:  # e.g. a model the next recipe cannot split, or OOM
        run.log(f"no estimate of --recipe {name}: {error}")
        return
    run.costs["next_recipe"] = {"recipe": name, "summary": nxt.summary, **seconds}


def _write_phase_history(phases: dict[str, Any], run_dir: Path) -> None:
    """The run's metrics.csv/json and learning curves: every phase's epochs in order, numbered across phases, with
    the phase's name and its own epoch number."""
    rows: list[dict[str, Any]] = []
    for name, phase in phases.items():
        for row in phase["history"]:
            rest = {k: v for k, v in row.items() if k != "epoch"}
            rows.append({"epoch": float(len(rows) + 1), "phase": name, "phase_epoch": row["epoch"], **rest})
    write_history(rows, run_dir)
