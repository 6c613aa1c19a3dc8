"""Classify image files with a fine-tuned run, an MNIST run or a pretrained zoo model, each with its own preprocessing.

`load_predictor("runs/transfer/flowers")` reads a saved run (its classes and preprocessing are in ``model.json``);
`load_predictor("runs/mnist/NAME")` reads an MNIST run or ensemble (a photo of one handwritten digit is prepared as
MNIST's digits are: `cnnlab.data.mnist.mnist_preprocess`); `load_predictor("efficientnet_lite0")` builds the
pretrained ImageNet model ("classify your own photos"). A path that cannot be read or decoded is reported on its own
and the other images are still classified.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data.folder import ImageDataset, LabelledImages, decode_image, thin_image_reason, to_rgb
from cnnlab.data.transforms import build_eval_transform
from cnnlab.errors import CnnlabError
from cnnlab.files import PATH_BYTES, check_writable, readable_name
from cnnlab.layers.views import ViewAverage
from cnnlab.models import PretrainedCfg
from cnnlab.tasks.run_precision import run_channels_last
from cnnlab.train import Trainer
from cnnlab.train.progress import ProgressBar

SEGMENTATION_USE = "`cnnlab predict --model RUN IMAGE...` writes its masks and overlays, at any image size"


__all__ = [
    "Predictor",
    "ViewStack",
    "check_predictions_csv",
    "finished_predictions",
    "iter_predictions",
    "load_predictor",
    "predict_images",
    "predictions_json",
    "view_logits",
    "write_predictions_csv",
]


def _canvas_run_use(folder: Path) -> str:
    """What to run instead of predict on a `cnnlab train segment` run on the MNIST canvases (it records no
    normalisation for new images): its report and overlays, `cnnlab evaluate`, which scores it again, and `cnnlab
    explain`, which reads an image of one's own as the canvases are made."""
    return (
        f"it was trained on MNIST canvases: its report.md and test_overlays.png show its masks, `cnnlab evaluate "
        f"{folder}` scores it again on its test canvases, and `cnnlab explain {folder} IMAGE` gives each class's share "
        "of an image's pixels and where its evidence is (`cnnlab predict` takes runs of `cnnlab train segment --data "
        "DIR`)"
    )


@dataclass
class Predictor:
    """A model in eval mode with its class names and preprocessing.

    Attributes:
        model: returns logits for [N, 3, H, W] preprocessed images (averaged over the run's views, when it recorded
            several: `cnnlab.layers.views.ViewAverage`), or for [N, 1, 28, 28] digits in [0, 1] (an MNIST run).
        classes: class names in output order.
        cfg: the preprocessing record of a photo model; None for an MNIST run.
        source: what was loaded (run directory or model name).
        views: the views the logits are averaged over (the identity alone for a zoo model).
        preprocess: PIL image -> input tensor, where `cfg` does not describe it (MNIST's digit preparation).
        channels_last: run the model in the channels-last memory format, as a run trained with ``--channels-last``
            ran its test pass and `cnnlab evaluate` runs it (`run_channels_last`); False for a zoo model.
    """

    model: nn.Module
    classes: list[str]
    cfg: PretrainedCfg | None
    source: str
    views: tuple[str, ...] = ("identity",)
    preprocess: Callable[[Any], torch.Tensor] | None = None
    channels_last: bool = False

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> the model's input tensor: `preprocess` when given, else the record's resize, crop, scale."""
        if self.preprocess is not None:
            return self.preprocess
        if self.cfg is None:
            raise CnnlabError(f"{self.source}: neither a preprocessing record nor a preprocess function")
        return build_eval_transform(self.cfg)

    def fingerprint(self) -> str:
        """SHA-256 of what decides the predictions: the weights (every tensor of the state dict), the class names, the
        views and the preprocessing record. Two predictors with one fingerprint give the same rows."""
        digest = hashlib.sha256(json.dumps([self.classes, list(self.views), _record(self.cfg)]).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def _record(cfg: PretrainedCfg | None) -> Any:
    """The preprocessing record as plain data (None for an MNIST run)."""
    if cfg is None:
        return None
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def _is_saved_run(path: Path) -> bool:
    return (path.is_dir() and any((path / name).is_file() for name in ("model.json", "ensemble.json"))) or (
        path.is_file() and path.suffix == ".json"
    )


def load_predictor(model: str, device: str | torch.device = "cpu") -> Predictor:
    """A fine-tuned run directory (or its ``model.json`` or ``model.safetensors``), or the name of a zoo model with
    pretrained weights.

    Raises:
        CnnlabError: neither a saved run nor a known model; a model without pretrained weights or classes; a device
            that is unknown or not on this machine.
    """
    from cnnlab.fcn.scan import is_converted
    from cnnlab.models import create_model, is_model
    from cnnlab.train.device import resolve_device
    from cnnlab.train.saved import (
        DIGIT_CLASSIFIER,
        IMAGE_CLASSIFIER,
        SEGMENTER,
        check_digit_input,
        check_not_exported,
        load_model,
        saved_meta,
        spec_path,
    )

    device = resolve_device(device)
    path = Path(model)
    # `cnnlab fcn convert`'s output: "holds no model.json" said nothing of it, and its fcn.json or fcn.safetensors,
    # taken for a run's files, was "not a cnnlab model record" or "no saved model at FOLDER/model.json"
    if path.exists() and is_converted(path) and not (path.is_dir() and _is_saved_run(path)):
        held = "holds" if path.is_dir() else "is part of"
        raise CnnlabError(
            f"{path} {held} a fully convolutional copy of a classifier, which scans large images "
            f"(`cnnlab fcn scan {path} IMAGE`); pass the run it was converted from"
        )
    # the weights file stands for its run as it does for `load_model` (`spec_path` finds the model.json beside it)
    if _is_saved_run(path) or (path.is_file() and path.suffix == ".safetensors"):
        spec = spec_path(path)
        meta = saved_meta(spec)  # in the current layout, whichever it was saved in
        kind = meta.get("kind", DIGIT_CLASSIFIER)  # a record without meta: an MNIST network saved from Python
        channels_last = run_channels_last(spec.parent)  # the memory format of its test pass, as evaluate runs it
        if kind.endswith("segmenter"):
            use = SEGMENTATION_USE if kind == SEGMENTER else _canvas_run_use(spec.parent)
            raise CnnlabError(f"{path} is a segmentation run, not a classifier; {use}")
        if kind == DIGIT_CLASSIFIER:  # an MNIST run or ensemble
            from cnnlab.data.mnist import MNIST_CLASSES, mnist_preprocess

            network = load_model(spec, device=device)
            check_digit_input(network, spec)
            classes = [str(c) for c in meta.get("classes", MNIST_CLASSES)]
            return Predictor(
                network, classes, None, str(path), preprocess=mnist_preprocess, channels_last=channels_last
            )
        if kind != IMAGE_CLASSIFIER or "classes" not in meta or "preprocessing" not in meta:
            raise CnnlabError(
                f"{spec} records no class names or preprocessing; it was not saved by `cnnlab train transfer` "
                "or `cnnlab train mnist`"
            )
        network = load_model(spec, device=device)
        views = tuple(meta.get("views", ["identity"]))
        if len(views) > 1:
            network = ViewAverage(network, views).eval()
        cfg = PretrainedCfg.from_dict(meta["preprocessing"])
        return Predictor(network, list(meta["classes"]), cfg, str(path), views, channels_last=channels_last)
    if is_model(model):
        with torch.device("meta"):  # the weights' record without building real weights (instant even for resnet152)
            cfg = getattr(create_model(model), "pretrained_cfg", None)
        if cfg is None:
            raise CnnlabError(
                f"model {model!r} has no pretrained weights in cnnlab, so it knows no classes yet; train it and pass "
                "the run directory (runs/<task>/NAME), or name a model with weights (`cnnlab zoo` lists them)"
            )
        network = create_model(model, pretrained=True)
        return Predictor(network.to(device).eval(), list(cfg.categories), cfg, model)
    if path.is_dir():
        spec_path(path)  # raises, saying what the folder holds instead (a run stopped mid-training, nothing, ...)
    if path.is_file():
        check_not_exported(path)
    if path.exists():
        raise CnnlabError(
            f"{path} is a file other than a model.json; pass a finished run's directory (`cnnlab train transfer`, "
            "`train mnist` or `train segment`) or its model.json"
        )
    from cnnlab.models import list_models

    # no option named: `predict --model`, `export RUN` and `explain SOURCE` all pass what the user typed here
    raise CnnlabError(
        f"{model!r} is neither a run directory nor a zoo model ({', '.join(list_models())}); "
        "pass a run directory such as runs/transfer/NAME or a model name such as efficientnet_lite0"
    )


def predict_images(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    batch_size: int = 16,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Top-k classes of each image, in input order (`iter_predictions`, collected).

    Returns:
        One dict per path: ``{"image": path, "top": [{"label", "index", "probability"}, ...]}``, or
        ``{"image": path, "error": reason}`` for a path that is missing or not a readable image.
    """
    return list(iter_predictions(predictor, paths, top_k, batch_size, progress))


def iter_predictions(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    batch_size: int = 16,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """`predict_images`' results one at a time, in input order, each batch's as soon as it is classified (so that
    a caller can write them as they come, and an interrupted run keeps what it finished).

    Images are decoded and classified `batch_size` at a time, so a folder of any size takes the memory of one batch
    (decoding a whole folder first took 0.6 MB per 224 px image: 6 GB for 10,000).

    Args:
        progress: a progress bar on stderr (on a terminal only).
    """
    if top_k < 1:
        raise CnnlabError(f"--top-k must be >= 1, got {top_k}")
    transform = predictor.transform()
    device = next(predictor.model.parameters()).device
    k = min(top_k, len(predictor.classes))
    runner = Trainer.for_inference(
        predictor.model, device=str(device), batch_size=batch_size, channels_last=predictor.channels_last
    )
    with ProgressBar(len(paths), "predicting", enabled=progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            results: list[dict[str, Any]] = []
            good: list[tuple[int, torch.Tensor]] = []
            for path in chunk:
                # decoded once, checked and then converted: check_image and then load_image decoded every image twice
                # (16 JPEGs of 12 MP: 2.8 s of CPU, 2.1 s decoded once)
                decoded, size, reason = decode_image(path)
                if reason is None and predictor.preprocess is None:  # a 1 x 100,000 px strip resized: 20 GB
                    reason = thin_image_reason(*size)
                if decoded is not None and reason is None:
                    try:
                        # the decoded image let go before the transform: a 108 MP photo's decoded copy (432 MB) was
                        # held beside its RGB copy and the transform's tensor, a 2.2 GB peak (1.9 GB without it)
                        image, decoded = to_rgb(decoded), None
                        good.append((len(results), transform(image)))
                        del image
                    except OSError as error:
                        reason = f"cannot be read ({error})"
                    except CnnlabError as error:  # the image reads, but the preparation finds nothing to classify
                        reason = str(error)
                del decoded  # a 100 MP image's pixels are not kept while the rest of the batch is decoded
                results.append({"image": str(path)} if reason is None else {"image": str(path), "error": reason})
            if good:
                probabilities = runner.predict(torch.stack([tensor for _, tensor in good])).softmax(dim=1)
                values, indices = probabilities.topk(k, dim=1)
                for (position, _), row_values, row_indices in zip(good, values, indices, strict=True):
                    results[position]["top"] = [
                        {"label": predictor.classes[int(i)], "index": int(i), "probability": float(v)}
                        for v, i in zip(row_values, row_indices, strict=True)
                    ]
            bar.advance(len(chunk))
            yield from results


class ViewStack(nn.Module):
    """Logits of every view: [N, C, H, W] -> [N, views, classes] (their mean is what `ViewAverage` returns)."""

    def __init__(self, model: nn.Module, views: Sequence[str]) -> None:
        super().__init__()
        self.average = ViewAverage(model, views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from cnnlab.layers.views import VIEWS

        return torch.stack([self.average.model(VIEWS[name](x)) for name in self.average.views], dim=1)


def view_logits(
    network: nn.Module,
    views: Sequence[str],
    images: LabelledImages,
    cfg: PretrainedCfg,
    *,
    device: str | torch.device,
    batch_size: int,
    precision: str = "fp32",
    channels_last: bool = False,
    workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """The logits of every view of every image, [N, views, classes]: `cfg`'s evaluation preprocessing, each view of
    the input, the engine's inference path. A transfer run's test pass and `cnnlab evaluate RUN --data DIR` both score
    through it; their mean over the views is what `predict` gives (`ViewAverage`).

    Args:
        network: the classifier alone (not wrapped in `ViewAverage`).
        views: `cnnlab.layers.views.VIEWS` names, the identity first (the single-view prediction).
        images: checked files (`LabelledImages`); their labels are not used.
        progress: a progress bar over the images on stderr (on a terminal only).
    """
    device = torch.device(device)
    runner = Trainer.for_inference(
        ViewStack(network, views),
        device=str(device),
        batch_size=batch_size,
        precision=precision,
        channels_last=channels_last,
    )
    loader = torch.utils.data.DataLoader(
        ImageDataset(images, build_eval_transform(cfg)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    logits = []
    with ProgressBar(len(images), f"scoring {len(images)} images x {len(views)} views", enabled=progress) as bar:
        for outputs, _ in runner.inference(loader):
            logits.append(outputs.cpu())
            bar.advance(len(outputs))
    return torch.cat(logits)


# the fields of a result that name files (a classifier's image; a segmenter's image and the masks it wrote)
PATH_FIELDS = ("image", "mask", "colour", "overlay")


def predictions_json(source: str, results: Sequence[dict[str, Any]]) -> str:
    """The JSON document `cnnlab predict --json` prints: ``{"model": source, "predictions": results}``, valid for strict
    parsers whatever the file names.

    A file name that is not UTF-8 (a zip made on Windows, a Latin-1 disk) is a str holding surrogates on Linux, which
    `json.dumps` wrote as "\\udce9" escapes: lone surrogates, which strict parsers refuse and others turn silently into
    U+FFFD. Every string is written with those bytes as U+FFFD, so the name still reads ("caf\ufffd.jpg"), and a path
    field (`PATH_FIELDS`, and the model) that changed gets a ``<field>_bytes_hex`` beside it, its exact bytes in hex
    (``bytes.fromhex`` gives the name to open the file with).
    """

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return readable_name(value)
        if isinstance(value, list | tuple):
            return [clean(item) for item in value]
        if not isinstance(value, dict):
            return value
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            cleaned[readable_name(str(key))] = clean(item)
            if key in (*PATH_FIELDS, "model") and isinstance(item, str) and _has_surrogates(item):
                cleaned[f"{key}_bytes_hex"] = _raw_bytes(item).hex()
        return cleaned

    return json.dumps(clean({"model": source, "predictions": list(results)}), indent=1)


def _has_surrogates(text: str) -> bool:
    return any("\ud800" <= character <= "\udfff" for character in text)


def _raw_bytes(text: str) -> bytes:
    """The bytes a str of a file name stands for: os.fsencode's on Linux (`PATH_BYTES`); a surrogate that no byte
    gave (none does on Linux) is encoded as it is, and so decodes as U+FFFD."""
    try:
        return text.encode("utf-8", PATH_BYTES)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def check_predictions_csv(output: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The CSV file a classifier's predictions go to, checked before any image is read: its folder is made, and the
    file proved writable (`cnnlab.files.check_writable`).

    Raises:
        CnnlabError: a name that does not end in ``.csv`` (a folder, say, which is what segmentation runs take), a
            place it cannot be written (under a file, a read-only folder), or a CSV that predict did not write
            (without `overwrite`).
    """
    path = Path(output)
    if path.suffix.lower() != ".csv" or path.is_dir():
        raise CnnlabError(
            f"--output {output}: a classifier's predictions go to a .csv file, e.g. predictions.csv "
            "(a folder is for a segmentation run's masks)"
        )
    check_writable(path)
    if (
        path.is_file() and not overwrite and not _is_predictions_csv(path)
    ):  # -o photos/labels.csv replaced the user's own CSV
        raise CnnlabError(
            f"--output {output} is a CSV that `cnnlab predict` did not write (its first row is not path, label_1, "
            "probability_1, ...), which it would replace; name a new file, or pass --overwrite to replace it"
        )
    return path


def _is_predictions_csv(path: Path) -> bool:
    """Whether the file at `path` is empty or starts with the header `_header` writes (for some top-k)."""
    with open(path, newline="", encoding="utf-8", errors=PATH_BYTES) as f:
        first = next(csv.reader(f), None)
    return first is None or (len(first) >= 4 and len(first) % 2 == 0 and first == _header((len(first) - 2) // 2))


def _header(top_k: int) -> list[str]:
    """The CSV's columns: path, label_1, probability_1, ..., label_k, probability_k, error."""
    ranks = [f"{name}_{rank}" for rank in range(1, top_k + 1) for name in ("label", "probability")]
    return ["path", *ranks, "error"]


def write_predictions_csv(
    results: Iterable[dict[str, Any]],
    output: str | os.PathLike[str],
    top_k: int,
    kept: Sequence[Sequence[str]] = (),
    model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `predict_images`' results as one row per image: its path, then label and probability for each of its
    top-k classes, best first, and the reason for an image that could not be read (its other cells empty).

    Each row is written and flushed as `results` yields it: fed by `iter_predictions`, a run interrupted at any
    point leaves a valid CSV of the images it finished. `kept` rows (`finished_predictions` of an earlier run) come
    first, in a file that replaces the old one only once they are all written. `model` (a `Predictor.fingerprint`)
    is recorded beside the CSV, in ``.NAME.csv.model``, for a resumed run to check that it continues the same model.
    A file at `output` that predict did not write is refused, or with `overwrite` replaced (`check_predictions_csv`).
    """
    path = check_predictions_csv(output, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    with open(part, "w", newline="", encoding="utf-8", errors=PATH_BYTES) as f:
        csv.writer(f).writerows([_header(top_k), *kept])
    os.replace(part, path)
    # The record only once the CSV holds no other model's rows (`kept` are this model's): written first, a stop
    # before the CSV was replaced left an earlier model's rows under this model's record, and --resume kept them.
    record = _model_record(path)
    if model is not None:
        record_part = record.with_name(f"{record.name}.part")
        record_part.write_text(model + "\n")
        os.replace(record_part, record)
    else:
        record.unlink(missing_ok=True)
    with open(path, "a", newline="", encoding="utf-8", errors=PATH_BYTES) as f:
        writer = csv.writer(f)
        for result in results:
            cells = [value for entry in result.get("top", []) for value in (entry["label"], entry["probability"])]
            cells += [""] * (2 * top_k - len(cells))
            writer.writerow([result["image"], *cells, result.get("error", "")])
            f.flush()
    return path


def _model_record(csv_path: Path) -> Path:
    """Where `write_predictions_csv` records the fingerprint of the model that wrote `csv_path`."""
    return csv_path.with_name(f".{csv_path.name}.model")


def finished_predictions(
    output: str | os.PathLike[str],
    top_k: int,
    classes: Sequence[str],
    paths: Sequence[str],
    model: str | None = None,
) -> list[list[str]]:
    """The rows of an earlier run's CSV at `output` that classified one of `paths` (for ``predict --resume``): rows
    that hold an error are left out, so that those images are tried again.

    Raises:
        CnnlabError: no such file, other columns than ``-k top_k`` writes, or the CSV of another model: its recorded
            fingerprint is not `model` (a `Predictor.fingerprint`), or, for a CSV without one, it holds a label the
            model does not have.
    """
    path = check_predictions_csv(output)
    if not path.is_file():
        raise CnnlabError(f"--resume: {path} does not exist; run the command without --resume to start it")
    record = _model_record(path)
    if model is not None and record.is_file() and record.read_text().strip() != model:
        raise CnnlabError(
            f"--resume: {path} was written by another model (other weights, classes, views or preprocessing); "
            "give another --output, or leave out --resume to predict every image with this one"
        )
    with open(path, newline="", encoding="utf-8", errors=PATH_BYTES) as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != _header(top_k):
        found = len([cell for cell in rows[0] if cell.startswith("label_")]) if rows else 0
        raise CnnlabError(
            f"--resume: {path} holds {found} classes per image, not the {top_k} this run writes; give the -k it was "
            "written with"
        )
    # matched as the files they name, and given the spelling of this run: a CSV written with absolute paths, resumed
    # with relative ones, lost every row
    wanted, known = {os.path.abspath(path): path for path in paths}, set(classes)
    kept = [
        [wanted[os.path.abspath(row[0])], *row[1:]]
        for row in rows[1:]
        if len(row) == len(rows[0]) and not row[-1] and os.path.abspath(row[0]) in wanted
    ]
    strange = next((label for row in kept for label in row[1:-1:2] if label and label not in known), None)
    if strange is not None:
        raise CnnlabError(
            f"--resume: {path} holds the label {strange!r}, which this model does not have: it was written by another "
            "model; give another --output or leave out --resume"
        )
    return kept
