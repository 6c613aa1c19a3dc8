"""`cnnlab predict`: top-k classes of image files with a fine-tuned run or a pretrained zoo model, or masks with a
segmentation run."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer

from cnnlab.cli.engine_options import apply_threads, device_option, quiet_option, threads_option
from cnnlab.errors import CnnlabError


def predict(
    images: list[Path] = typer.Argument(
        ...,
        help="Image files to classify or segment, or folders: every image in them and their sub-folders (but the "
        "masks predict wrote there); an image reached twice (named, and in a folder given) is predicted once.",
    ),
    model: str = typer.Option(
        "efficientnet_lite0",
        "--model",
        "-m",
        help="A `cnnlab train transfer`, `cnnlab train mnist` (a photo of one handwritten digit each, on white or "
        "grey paper, dark on light or light on dark; a blank image is reported as no digit found, not classified) or "
        "`cnnlab train segment --data` run directory, or a zoo model with pretrained weights.",
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Classifiers: a .csv file for the predictions, one row per image (its top-k labels and probabilities, "
        "or why it could not be read). Segmentation runs: the folder for each image's <stem>_mask.png (class "
        "indices), _colour.png and _overlay.png (default: ./predictions); a file of those names that predict did not "
        "write there is refused, not replaced (--overwrite replaces it).",
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", "-k", min=1, help="Classes shown per image (default 5); classifiers only."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    device: str = device_option(),
    threads: int | None = threads_option(),
    quiet: bool = quiet_option(),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a file at --output that predict did not write (a .csv, or a mask of an image's name) instead of "
        "refusing it; one predict wrote is replaced without it.",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted run into the same --output: the images it finished (rows of the CSV the same "
        "model wrote, as .NAME.csv.model beside it records; masks "
        "the same segmentation run made of the same, unchanged image, as the folder's .cnnlab-masks.jsonl records) "
        "are kept and not predicted again; only the others are predicted and shown.",
    ),
) -> None:
    """Classify images, or segment them with a segmentation run; a missing or unreadable image is reported and the
    others are still predicted. Exit code 0 when at least one image was predicted, 2 when none could be."""
    from cnnlab.data.folder import check_image
    from cnnlab.tasks.segment_predict import is_segmentation_run
    from cnnlab.train.device import resolve_device

    resolve_device(device)  # a typo in --device is the error shown, whatever the images
    apply_threads(threads)
    if resume and overwrite:  # one keeps what --output holds, the other replaces it
        raise CnnlabError("--resume continues the predictions --output holds and --overwrite replaces them: give one")
    paths, empty = _image_paths(images)
    if not any(check_image(path) is None for path in paths):  # stops at the first usable image
        _nothing_to_predict(paths, empty, model, as_json)
    if is_segmentation_run(model):
        if top_k is not None:  # it was accepted and ignored
            raise CnnlabError(f"--top-k {top_k} applies to classifiers; {model} is a segmentation run")
        progress = not (as_json or quiet)
        _segment(paths, empty, model, output or Path("predictions"), as_json, device, resume, overwrite, progress)
        return
    top_k = 5 if top_k is None else top_k
    from cnnlab.tasks.predict import (
        check_predictions_csv,
        finished_predictions,
        iter_predictions,
        load_predictor,
        write_predictions_csv,
    )

    # a run is loaded first (what it is comes before what --output should be: a segmentation run on MNIST canvases
    # was told its -o folder must be a .csv); a zoo model's weights are fetched only for a usable --output
    predictor = load_predictor(model, device=device) if Path(model).exists() else None
    if output is not None:
        check_predictions_csv(output, overwrite)
    elif resume:
        raise CnnlabError("--resume continues the CSV of an interrupted run: give it with --output FILE.csv")
    predictor = predictor or load_predictor(model, device=device)
    k = min(top_k, len(predictor.classes))
    fingerprint = predictor.fingerprint() if output is not None else None
    kept = finished_predictions(output, k, predictor.classes, paths, fingerprint) if resume and output else []
    if kept:
        done = {row[0] for row in kept}
        empty = [(sum(path not in done for path in paths[:position]), entry) for position, entry in empty]
        paths = [path for path in paths if path not in done]
        typer.echo(f"resumed: {output} already holds {_images(len(kept))}; predicting the other {len(paths)}", err=True)
    _say_precision(model)
    results: list[dict[str, Any]] = []
    predictions = iter_predictions(predictor, paths, top_k=top_k, progress=not (as_json or quiet))
    stream = _collected(_in_order(predictions, empty), results)
    try:
        if output is not None:  # row by row: an interrupted run leaves the rows it finished
            write_predictions_csv(stream, output, k, kept, fingerprint, overwrite)
        else:
            for _ in stream:
                pass
    except KeyboardInterrupt:
        _show(results, predictor.source, as_json, _top_classes)
        _stopped(results, len(paths) + len(empty), output, "their predictions")
    _show(results, predictor.source, as_json, _top_classes)
    if output is not None:  # on stderr, so that --json output stays one JSON document
        typer.echo(f"predictions of {_images(len(kept) + len(results))}: {output}", err=True)
    if results and all("error" in result for result in results):
        raise typer.Exit(2)


def _collected(stream: Iterator[dict[str, Any]], results: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`stream`'s results, each also appended to `results` (what was finished, should the stream be interrupted)."""
    for result in stream:
        results.append(result)
        yield result


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def _stopped(results: list[dict[str, Any]], total: int, output: Path | None, kept: str) -> NoReturn:
    """After Ctrl+C: say how far the images got and where the finished ones' results are, then stop as interrupted."""
    where = f"; {output} holds {kept}" if output is not None and results else ""
    typer.echo(f"stopped after {len(results)} of {_images(total)}{where}", err=True)
    raise KeyboardInterrupt


def _nothing_to_predict(paths: list[str], empty: list[tuple[int, dict[str, str]]], model: str, as_json: bool) -> None:
    """Why each path cannot be predicted, said without loading the model (a zoo model would be downloaded first)."""
    from cnnlab.data.folder import check_image

    results = list(_in_order([{"image": path, "error": check_image(path) or ""} for path in paths], empty))
    _show(results, model, as_json, lambda result: None)  # every result is an error
    raise typer.Exit(2)


def _show(
    results: list[dict[str, Any]], source: str, as_json: bool, describe: Callable[[dict[str, Any]], None]
) -> None:
    """The results as one JSON document, or per image: its error on stderr, else the lines `describe` prints."""
    if as_json:
        from cnnlab.tasks.predict import predictions_json

        typer.echo(predictions_json(source, results))
        return
    for result in results:
        if "error" in result:
            typer.echo(f"{result['image']}: error: {result['error']}", err=True)
        else:
            describe(result)


def _top_classes(result: dict[str, Any]) -> None:
    typer.echo(f"{result['image']}:")
    for rank, entry in enumerate(result["top"], start=1):
        typer.echo(f"  {rank}. {entry['label']:<30} {entry['probability']:7.2%}")


def _class_shares(result: dict[str, Any]) -> None:
    width, height = result["size"]
    typer.echo(f"{result['image']} ({width}x{height}) -> {result['mask']}:")
    # the classes found, largest first; a dataset's other classes (often most of them) are one line
    found = sorted(((n, v) for n, v in result["share"].items() if v > 0), key=lambda item: -item[1])
    for name, share in found:
        typer.echo(f"  {name:<30} {share:7.2%}")
    if absent := len(result["share"]) - len(found):
        typer.echo(f"  ({absent} other class{'' if absent == 1 else 'es'}: no pixels; --json lists every class)")


def _image_paths(arguments: list[Path]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The arguments with each folder replaced by its image files; a folder without any becomes an error entry,
    kept with the position among the paths where its results would have been. A file reached twice (named and in a
    folder given too, or a folder given twice) is taken once, where it first came."""
    import os

    from cnnlab.data.folder import image_files
    from cnnlab.tasks.segment_predict import without_written_masks

    paths: list[str] = []
    empty: list[tuple[int, dict[str, str]]] = []
    left_out = 0
    taken: set[str] = set()  # resolved paths: `img.png` and `./dir/../img.png` are one file

    def once(candidates: list[str]) -> list[str]:
        new = [path for path in candidates if os.path.realpath(path) not in taken]
        taken.update(os.path.realpath(path) for path in new)
        return new

    given = 0
    for argument in arguments:
        if not argument.is_dir():
            given += 1
            paths += once([str(argument)])
            continue
        found, written = without_written_masks(image_files(argument))
        left_out += written
        given += len(found)
        if found:
            paths += once(found)
        else:
            entry = {"image": str(argument), "error": "a folder with no image files (.jpg, .png, ...)"}
            empty.append((len(paths), entry))
    if left_out:  # earlier masks in a folder given again: not images to segment
        typer.echo(
            f"left out {left_out} files cnnlab predict wrote (listed in their folder's .cnnlab-masks.jsonl)", err=True
        )
    if repeated := given - len(paths):  # two rows (or masks) of one image
        repeats = f"{repeated} repeat{'' if repeated == 1 else 's'}"
        typer.echo(
            f"left out {repeats} of images already given (named or in a folder): each is predicted once", err=True
        )
    return paths, empty


def _in_order(results: Iterable[dict[str, Any]], empty: list[tuple[int, dict[str, str]]]) -> Iterator[dict[str, Any]]:
    """The results of the paths with the empty folders' entries put back where they were on the command line."""
    pending = list(empty)  # in position order
    for index, result in enumerate(results):
        while pending and pending[0][0] == index:
            yield pending.pop(0)[1]
        yield result
    for _, entry in pending:  # folders after the last image
        yield entry


def _segment(
    paths: list[str],
    empty: list[tuple[int, dict[str, str]]],
    model: str,
    output: Path,
    as_json: bool,
    device: str,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> None:
    from cnnlab.tasks.segment_predict import iter_masks, load_segmenter

    results: list[dict[str, Any]] = []
    segmenter = load_segmenter(model, device=device)
    _say_precision(model)
    masks = iter_masks(segmenter, paths, output, progress, resume, overwrite)
    try:
        for _ in _collected(_in_order(masks, empty), results):
            pass
    except KeyboardInterrupt:
        _show(_segmented_now(results), model, as_json, _class_shares)
        _stopped(results, len(paths) + len(empty), output, "their masks")
    shown = _segmented_now(results)
    if len(shown) < len(results):
        typer.echo(f"resumed: {_images(len(results) - len(shown))} already segmented in {output}, kept", err=True)
    _show(shown, model, as_json, _class_shares)
    if all("error" in result for result in results):
        raise typer.Exit(2)


def _say_precision(model: str) -> None:
    """Say, on stderr (--json stays one JSON document), that a run tested under autocast is predicted in float32: a
    note on the results, which -q keeps (it drops progress alone, `engine_options.QUIET_HELP`)."""
    from cnnlab.tasks.run_precision import predicted_precision_line

    if (line := predicted_precision_line(model)) is not None:
        typer.echo(line, err=True)


def _segmented_now(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results of this call, without those a resumed run read back (they were shown when made)."""
    return [result for result in results if not result.get("resumed")]


def register(app: typer.Typer) -> None:
    """Add the `predict` command."""
    app.command("predict")(predict)
