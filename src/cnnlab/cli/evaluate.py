"""`cnnlab evaluate RUN`: re-evaluate a trained run on its test set (MNIST, a canvas segmentation run's canvases made
again) or on a labelled folder (transfer, `train segment --data`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from cnnlab.cli.engine_options import apply_threads, device_option, quiet_option, threads_option
from cnnlab.cli.help_text import paragraphs


def evaluate(
    run: Path = typer.Argument(..., help="Run directory (or model.json / model.safetensors / ensemble.json)."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="A folder of new labelled images: one sub-folder per class (a `train transfer` run), or images/ + masks/ "
        "(a `train segment --data` run) (default: an MNIST run on the MNIST test set, a `train segment` run on the "
        "MNIST canvases on its test canvases, made again).",
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="An MNIST run, or a `train segment` run on the MNIST canvases: the MNIST root (else $CNNLAB_DATA, else "
        "./data).",
    ),
    output_dir: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        "--out",
        help="Where figures go (default RUN/evaluation; not a run's own folder, whose report shows its own figures).",
    ),
    device: str = device_option(),
    threads: int | None = threads_option(),
    quiet: bool = quiet_option(),
    as_json: bool = typer.Option(
        False, "--json", help="Print what evaluation.json holds as JSON on stdout (no progress; notes go to stderr)."
    ),
    exclude_trained: bool = typer.Option(
        False,
        "--exclude-trained",
        help="With --data: leave out the images byte-identical to images the run trained on or chose its weights by "
        "(counted and said either way).",
    ),
) -> None:
    """An MNIST run (or ensemble) on the MNIST test set: accuracy, per-class accuracy, a confusion-matrix PNG and a
    PNG of the misclassified images; a transfer or segmentation run on a folder of new labelled images (--data).

    A `cnnlab train segment` run on the MNIST canvases (without --data) is scored again on its own test canvases,
    made again from the MNIST test digits as it made them (seed 0, its count and size): mIoU, pixel accuracy,
    boundary F1 and per-class IoU (evaluation.json), its test pass's numbers, and test_overlays.png. Canvases that
    differ from those its results.json records (another MNIST) are refused.

    With --data DIR, a `cnnlab train transfer` run classifies every image of DIR (one sub-folder per class, named as
    the run's classes; a subset of them will do) with the preprocessing and test-time views the run recorded, as its
    own test pass and `cnnlab predict` do, and gives accuracy and balanced accuracy with and without the views
    averaged, a per-class table, the confusion matrix (PNG), the highest-loss images and predictions.csv. A class
    folder the run does not know is refused.

    A `cnnlab train segment --data` run takes DIR in the layout it trained on (images/, masks/, and classes.json, else
    the run's own classes and colours read the masks), segments
    each image as `cnnlab predict` does, at the image's own size, and gives mIoU, per-class IoU, pixel accuracy,
    boundary F1 and the confusion matrix of the pixels, as its test report does (a run trained with
    `train segment --max-side`: also at the downscaled size its test pass scored), and draws the six images with the
    most wrong pixels (worst_images.png). Either way, files that cannot be read are named and skipped, and the images
    whose bytes equal one the run trained on or chose its weights by (copied or renamed; known by the digests its
    split_digests.json records) are counted and said: the scores include them, unless --exclude-trained."""
    from cnnlab.errors import CnnlabError

    apply_threads(threads)
    if not run.exists():
        raise CnnlabError(f"run {run} does not exist; pass a directory under runs/ (e.g. runs/mnist/<name>)")
    if data is not None:
        from cnnlab.tasks.evaluate import evaluate_folder, evaluation_lines, evaluation_notes

        if data_dir is not None:
            raise CnnlabError("--data-dir names the MNIST root of an MNIST run; with --data, leave it out")
        scored = evaluate_folder(
            run, data, output_dir, device=device, progress=not (quiet or as_json), exclude_trained=exclude_trained
        )
        _print(scored, evaluation_lines, evaluation_notes, as_json)
        return
    if exclude_trained:
        raise CnnlabError("--exclude-trained applies to --data (an MNIST run is scored on the MNIST test set)")
    from cnnlab.tasks.run_precision import precision_line
    from cnnlab.tasks.segmentation import evaluate_canvas_run, is_canvas_run

    data_root = None if data_dir is None else str(data_dir)
    if is_canvas_run(run):  # its test canvases are made again from MNIST, as it made them
        result, described = evaluate_canvas_run(run, data_root, output_dir, device=device), _canvas_lines
    else:
        from cnnlab.tasks.mnist import evaluate_mnist

        result, described = evaluate_mnist(run, data_root, output_dir, device=device), _mnist_lines
    _print(result, lambda scores: [*precision_line(scores), *described(scores)], precision_line, as_json)


def _print(
    result: dict[str, Any],
    lines: Callable[[dict[str, Any]], list[str]],
    notes: Callable[[dict[str, Any]], list[str]],
    as_json: bool,
) -> None:
    """The result as `lines` on stdout; with --json, as JSON alone on stdout and its `notes` on stderr (they were
    dropped, though --json's help says they go there)."""
    if not as_json:
        for line in lines(result):
            typer.echo(line)
        return
    for line in notes(result):
        typer.echo(line, err=True)
    typer.echo(json.dumps(result))


def _canvas_lines(result: dict[str, Any]) -> list[str]:
    """What `evaluate` prints of a canvas segmentation run scored again on its test canvases."""
    test = result["test"]
    checked = "" if result["canvases_checked"] else " (the run records no digest of them: not checked)"
    return [
        f"{result['canvases']} test canvases of {result['canvas_size']} px made again from MNIST{checked}",
        f"test mIoU {test['miou']:.4f} (digits; with background {test['miou_with_bg']:.4f}), pixel accuracy "
        f"{test['pixel_accuracy']:.4f}, boundary F1 {test['boundary_f1']:.4f}",
        f"overlays: {result['test_overlays_png']}",
    ]


def _mnist_lines(result: dict[str, Any]) -> list[str]:
    """What `evaluate` prints of an MNIST run scored on the MNIST test set."""
    return [
        f"test accuracy {result['test_accuracy']:.4f} ({result['errors']} errors)",
        "per class: " + "  ".join(f"{i}: {a:.4f}" for i, a in enumerate(result["per_class_accuracy"])),
        f"confusion matrix: {result['confusion_matrix_png']}",
        f"misclassified:    {result['misclassified_png']}",
    ]


def register(app: typer.Typer) -> None:
    """Add the `evaluate` command."""
    app.command("evaluate", help=paragraphs(evaluate.__doc__ or ""))(evaluate)
