"""Ensembles of saved MNIST models from any runs and recipes, their members chosen on the validation split.

`train_mnist(ensemble=N)` averages N seeds of one recipe. Members of one recipe tend to misread the same digits, so
their average gains little; members trained differently (another augmentation, another architecture) err
differently. `combine_mnist_ensemble` takes finished runs of any recipes (a run holding an ensemble counts as its
members), scores each member on the validation split, optionally keeps only the subset that greedy forward
selection (Caruana et al. 2004) finds best on validation (fewest errors), then tests the result once and saves it
as a loadable ensemble with results.json and report.md (`cnnlab.tasks.mnist.ensemble_report`, which writes the
report of an ensemble trained in one command too).

The validation split is the one every `train_mnist` run holds out (`val_size` images, always seeded with 0): the
smallest hold-out among the members, which each member records, so no member has trained on it (a smaller hold-out
lies inside a larger one). Members that held out nothing cannot be chosen between (``select="all"`` only). The split
is cut again from --data-dir, so each member's record of the training set it was cut from (its SHA-256) must match
that folder's. The test set is read only after the members are chosen.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.data.mnist import MNIST_CLASSES, find_mnist_dir, load_mnist
from cnnlab.errors import CnnlabError, first_line, listed, why_not_a_folder
from cnnlab.files import check_writable, write_text_whole
from cnnlab.tasks.mnist import (
    SOURCE_DIGEST,
    TASK,
    check_mnist_run,
    ensemble_meta,
    ensemble_report,
    predict_logits,
    saved_options,
    test_evaluation,
    to_float,
)
from cnnlab.tasks.recipes import check_not_training
from cnnlab.tasks.run_precision import run_channels_last
from cnnlab.train.config import check_run_name
from cnnlab.train.device import resolve_device
from cnnlab.train.saved import (
    DIGIT_INPUT,
    ENSEMBLE_SPEC,
    MODEL_SPEC,
    check_digit_input,
    ensemble_members,
    load_model_and_digest,
    present_ensemble_members,
    read_record,
    save_ensemble,
    saved_meta,
    spec_path,
)

__all__ = ["combine_mnist_ensemble", "greedy_selection", "member_dirs"]

SELECTIONS = ("all", "greedy")


def member_dirs(runs: list[str | Path]) -> list[Path]:
    """Saved-model directories of `runs`: a run holding an ensemble counts as its members (duplicates dropped)."""
    found: list[Path] = []
    for run in map(Path, runs):
        if (run / ENSEMBLE_SPEC).is_file():
            candidates = present_ensemble_members(run / ENSEMBLE_SPEC)  # one moved away is said so, naming `run`
        elif (run / MODEL_SPEC).is_file():
            candidates = [run]
        elif not run.is_dir():
            raise CnnlabError(f"{run} {why_not_a_folder(run)}; pass the run directories of finished MNIST runs")
        else:  # spec_path says what the folder holds instead (a run stopped mid-training, nothing, ...)
            candidates = [spec_path(run).parent]
        for candidate in candidates:
            # a transfer or segmentation run does not take MNIST digits ("without --data" named an option of evaluate)
            check_mnist_run(candidate, "`cnnlab ensemble` averages MNIST models' probabilities of MNIST digits")
            resolved = candidate.resolve()
            if resolved not in found:
                found.append(resolved)
    if len(found) < 2:
        twice = " (the same run given more than once counts once)" if len(runs) > len(found) else ""
        raise CnnlabError(
            f"an ensemble needs at least 2 members; {len(found)} found in {', '.join(map(str, runs))}{twice}"
        )
    return found


def _recorded_digests(runs: list[str | Path]) -> dict[Path, tuple[str, Path]]:
    """The weights' SHA-256 that each ensemble in `runs` recorded of its members (resolved folder -> (digest, the
    ensemble's folder)): a member retrained after the ensemble was made was averaged in as it is now, while
    `load_model` (evaluate, predict) refuses that ensemble. Ensembles saved before digests were recorded have none."""
    recorded: dict[Path, tuple[str, Path]] = {}
    for run in map(Path, runs):
        spec = run / ENSEMBLE_SPEC
        if not spec.is_file():
            continue
        digests, folders = read_record(spec).get("digests"), ensemble_members(spec)
        if isinstance(digests, list) and len(digests) == len(folders):
            for folder, digest in zip(folders, digests, strict=True):
                recorded.setdefault(folder.resolve(), (digest, run))
    return recorded


def _log_loss(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.nll_loss(probabilities.clamp_min(1e-12).log(), labels))


def _accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probabilities.argmax(1) == labels).float().mean())


def _errors(probabilities: torch.Tensor, labels: torch.Tensor) -> int:
    return int((probabilities.argmax(1) != labels).sum())


def greedy_selection(probabilities: list[torch.Tensor], labels: torch.Tensor) -> list[int]:
    """Forward selection without replacement (Caruana et al. 2004): start from the member with the fewest errors,
    then add, one at a time, the member that gives the averaged probabilities the fewest errors; keep the prefix of
    that order with the fewest errors.

    Ties (frequent: members make ~20 errors in 5,000) go to the lower log loss, and between prefixes with equal
    errors and log loss to the shorter one. Log loss alone is not the criterion: with label smoothing every member
    is deliberately under-confident, so averaging more of them rarely lowers it even when it removes errors (on
    the five default-recipe members it kept one member alone).

    Returns:
        indices into `probabilities`, in the order they were chosen.
    """

    def score(members: list[int]) -> tuple[int, float]:
        mean = torch.stack([probabilities[i] for i in members]).mean(0)
        return _errors(mean, labels), _log_loss(mean, labels)

    order: list[int] = []
    scores: list[tuple[int, float]] = []
    remaining = list(range(len(probabilities)))
    while remaining:
        candidates = {i: score([*order, i]) for i in remaining}
        best = min(candidates, key=candidates.__getitem__)
        order.append(best)
        scores.append(candidates[best])
        remaining.remove(best)
    size = min(range(len(order)), key=lambda k: (scores[k], k)) + 1
    return order[:size]


def _validation_size(members: list[Path], asked: int | None, select: str) -> int:
    """The validation images no member trained on: `asked`, else the fewest any member held out.

    Raises:
        CnnlabError: `asked` is more than a member held out, or there is nothing to choose the members on.
    """
    held_out = {member: int(saved_options(member)["extra"]["val_size"]) for member in members}
    fewest = min(held_out.values())
    if asked is not None and asked > fewest:
        member = min(held_out, key=held_out.__getitem__)
        raise CnnlabError(
            f"--val-size {asked}: {member} held out only {fewest} validation images and trained on the rest; "
            f"use --val-size {fewest} or less"
        )
    size = fewest if asked is None else asked
    if size == 0 and select != "all":
        raise CnnlabError(
            f"--select {select} chooses members on the validation images, and "
            + ("--val-size is 0" if asked == 0 else "a member was trained with --val-size 0 (it held none out)")
            + "; use --select all"
        )
    return size


def _check_same_training_set(members: list[Path], source_sha256: str | None, data_dir: str | None) -> None:
    """Refuse validation images cut from another training set than the one a member held them out of: the split is
    recomputed from --data-dir (seed 0, `val_size` images), so a folder other than the members' (or changed since)
    would score them, and choose them, on other images, some of which they may have trained on.

    Raises:
        CnnlabError: a member recorded the digest of its training set, and it is not that of `data_dir`'s.
    """
    for member in members:
        recorded = saved_meta(member).get(SOURCE_DIGEST)
        if recorded is None or recorded == source_sha256:  # runs saved before it was recorded: as they were
            continue
        raise CnnlabError(
            f"{member} held its validation images out of other MNIST training images than those under "
            f"{find_mnist_dir(data_dir)} (SHA-256 {recorded[:12]}..., not {str(source_sha256)[:12]}...), so the "
            "members would be scored and chosen on images they may have trained on; pass the --data-dir they were "
            "trained with, or --val-size 0 --select all"
        )


def _check_digit_classifier(member: Path, model: torch.nn.Module) -> None:
    """Refuse a member that does not take MNIST's 1x28x28 digits to the ten digits' scores, in their order: its
    probabilities cannot be averaged with the others'. A lenet5 saved from Python (32x32 inputs) failed with torch's
    "Kernel size can't be greater than actual input size", a 5-class network with torch.stack's "expects each tensor
    to be equal size", and a record naming the digits in another order was averaged digit by index, unsaid.

    Raises:
        CnnlabError: naming the member and what it takes or gives instead.
    """
    spec = spec_path(member)
    check_digit_input(model, spec)  # the input size its network states, said before torch's error
    classes = [str(name) for name in saved_meta(member).get("classes", MNIST_CLASSES)]
    if classes != MNIST_CLASSES:
        raise CnnlabError(
            f"{member} names its outputs {listed(classes, 10)}, not the digits {', '.join(MNIST_CLASSES)} in that "
            "order: its probabilities would be averaged with the others' output by output; pass MNIST runs of "
            "`cnnlab train mnist`"
        )
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.inference_mode():
            scores = tuple(model(torch.zeros(1, *DIGIT_INPUT, device=device)).shape[1:])
    except RuntimeError as error:  # a network of another input that states none
        raise CnnlabError(
            f"{member} does not take MNIST's {'x'.join(map(str, DIGIT_INPUT))} digits ({first_line(error)}); "
            "pass MNIST runs of `cnnlab train mnist`"
        ) from None
    if scores != (len(MNIST_CLASSES),):
        raise CnnlabError(
            f"{member} gives {'x'.join(map(str, scores))} scores per image, not one per digit ({len(MNIST_CLASSES)}): "
            "its probabilities cannot be averaged with the others'; pass MNIST runs of `cnnlab train mnist`"
        )


def _validation(probabilities: torch.Tensor | None, labels: torch.Tensor) -> dict[str, Any]:
    """Validation accuracy, log loss and errors; None for each with no validation images."""
    if probabilities is None:
        return {"val_accuracy": None, "val_log_loss": None, "val_errors": None}
    return {
        "val_accuracy": _accuracy(probabilities, labels),
        "val_log_loss": _log_loss(probabilities, labels),
        "val_errors": _errors(probabilities, labels),
    }


def combine_mnist_ensemble(
    runs: list[str | Path],
    name: str,
    *,
    select: str = "all",
    output: str | Path = "runs",
    data_dir: str | None = None,
    val_size: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Make one ensemble of the saved MNIST models in `runs`, saved at ``<output>/mnist/<name>/``.

    Args:
        runs: finished runs (single models or ensembles, any recipes).
        name: the new run's name.
        select: "all" keeps every member; "greedy" keeps the subset chosen by `greedy_selection` on validation.
        output: runs root.
        data_dir: MNIST root.
        val_size: validation images; default the fewest any member held out (each run records its ``val_size``);
            more than that is refused (a member trained on the rest), and 0 scores no validation (``select="all"``).
        device: where the members run.
        overwrite: replace an existing run called `name`.

    Returns:
        per-member validation accuracy and log loss, the chosen members, the ensemble's validation accuracy and
        log loss, then its test accuracy (read once, after the choice) and each chosen member's. Also saved as
        ``results.json`` beside ``ensemble.json``.
    """
    if select not in SELECTIONS:
        raise CnnlabError(f"unknown selection {select!r}; choose one of {', '.join(SELECTIONS)}")
    run_dir = Path(output) / TASK / check_run_name(name)
    if run_dir.exists() and not overwrite:
        raise CnnlabError(f"{run_dir} exists; choose another --name or pass --overwrite")
    # --overwrite of a run that `cnnlab train mnist` trains now removed its folder under it, checkpoints and all
    check_not_training(run_dir, *run_dir.glob("seed*"))
    # an --output under a file, or read-only, was an OSError (exit 1) once every member had been scored and tested
    check_writable(run_dir.with_name(f".{run_dir.name}.writable"), shown=str(output))
    members = member_dirs(runs)
    if run_dir.resolve() in {m.parent for m in members} | set(members):
        raise CnnlabError(f"{run_dir} holds members of this ensemble; choose another --name")
    val_size = _validation_size(members, val_size, select)
    # each read from disk once; the digest is that of the weights loaded, which the report names
    recorded = _recorded_digests(runs)  # a member replaced since its ensemble was made is refused, as load_model does
    models, digests = zip(
        *(load_model_and_digest(m, device, *recorded.get(m, (None, None))) for m in members), strict=True
    )
    for member, model in zip(members, models, strict=True):  # before the 70,000 digits are read
        _check_digit_classifier(member, model)
    data = load_mnist(data_dir, val_size=val_size, seed=0, val_option="--val-size")
    if val_size:
        _check_same_training_set(members, data.source_sha256, data_dir)
    val_images, val_labels = to_float(data.val_images), data.val_labels
    # each member in the memory format of its own test pass, as `cnnlab evaluate` runs it (NCHW for all, once)
    channels_last = [run_channels_last(member) for member in members]

    def probabilities(i: int, images: torch.Tensor) -> torch.Tensor:
        return predict_logits(models[i], images, device, channels_last=channels_last[i]).softmax(1)

    val_probabilities = [probabilities(i, val_images) for i in range(len(models))] if val_size else []
    chosen = list(range(len(members))) if select == "all" else greedy_selection(val_probabilities, val_labels)
    ensemble_val = torch.stack([val_probabilities[i] for i in chosen]).mean(0) if val_size else None
    # The choice is made; now, once, the test set.
    test_images, test_labels = to_float(data.test_images), data.test_labels
    test_probabilities = {i: probabilities(i, test_images) for i in chosen}
    ensemble_test = torch.stack(list(test_probabilities.values())).mean(0)

    with _built_then_renamed(run_dir) as building:
        save_ensemble(
            building, [members[i] for i in chosen], meta=ensemble_meta(select=select, runs=[str(r) for r in runs])
        )
        summary: dict[str, Any] = {
            "run_dir": str(run_dir),
            "select": select,
            "candidates": [
                {
                    "run_dir": str(member),
                    **_validation(val_probabilities[i] if val_size else None, val_labels),
                    "chosen": i in chosen,
                    "test_accuracy": _accuracy(test_probabilities[i], test_labels) if i in chosen else None,
                    "weights_sha256": digests[i],
                }
                for i, member in enumerate(members)
            ],
            "chosen": [str(members[i]) for i in chosen],
            "val_size": val_size,
            **_validation(ensemble_val, val_labels),
            "test_accuracy": _accuracy(ensemble_test, test_labels),
            "test_errors": _errors(ensemble_test, test_labels),
        }
        test = test_evaluation(test_images, test_labels, ensemble_test.argmax(1), building)
        summary["test"] = {
            key: str(run_dir / Path(value).name) if key.endswith("_png") else value  # where they will be
            for key, value in test.items()
            if key != "test_accuracy"
        }
        _report(summary, runs, str(resolve_device(device)), building)
        write_text_whole(building / "results.json", json.dumps(summary, indent=1))
    return summary


@contextlib.contextmanager
def _built_then_renamed(run_dir: Path) -> Iterator[Path]:
    """A hidden sibling of `run_dir` to write the ensemble's files in, renamed to `run_dir` (replacing it) once
    the block finishes and removed when it does not. A stop while the figures and the report were written left an
    ensemble.json that loaded as a model with no results, and a folder that made the same command refuse its
    --name. A sibling keeps the members' paths relative to it as they are relative to `run_dir`."""
    building = run_dir.with_name(f".{run_dir.name}.partial")
    if building.exists():  # what a combination killed outright (SIGKILL) left
        shutil.rmtree(building)
    building.mkdir(parents=True)
    try:
        yield building
        if run_dir.exists():  # --overwrite
            shutil.rmtree(run_dir)
        building.rename(run_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _report(summary: dict[str, Any], runs: list[str | Path], device: str, folder: Path) -> None:
    """Write the combined ensemble's report.md beside its results.json, whose numbers it gives."""
    candidates, chosen, val_size = summary["candidates"], summary["chosen"], summary["val_size"]
    if summary["select"] == "greedy":
        rule = (
            f"`--select greedy`: greedy forward selection (Caruana et al. 2004) on the validation images kept "
            f"{len(chosen)} of the {len(candidates)} candidates, in the order chosen: "
            + ", ".join(f"`{member}`" for member in chosen)
            + ". It starts from the member with the fewest errors and adds, one at a time, the one that gives the "
            "averaged probabilities the fewest errors (ties to the lower log loss); the prefix with the fewest "
            "errors is kept."
        )
    else:
        rule = f"`--select all`: every one of the {len(candidates)} candidates is kept."
    if val_size:
        rule += (
            f" On the {val_size:,} validation images (seed 0, held out by every member) the ensemble has accuracy "
            f"**{summary['val_accuracy']:.4f}** ({summary['val_errors']} errors, log loss "
            f"{summary['val_log_loss']:.4f}); its best single candidate makes "
            f"{min(c['val_errors'] for c in candidates)} errors."
        )
    else:
        rule += " No validation images (`--val-size 0`): nothing was scored before the test set."
    ensemble_report(
        f"MNIST ensemble `{Path(summary['run_dir']).name}`",
        f"{len(chosen)} saved MNIST models chosen from {len(candidates)} candidates in "
        + ", ".join(f"`{run}`" for run in runs)
        + " (a run holding an ensemble counts as its members), combined by `cnnlab ensemble`; the ensemble averages "
        "their softmax probabilities. Candidates not chosen were never tested.",
        candidates,
        summary,
        selection=rule,
        device=device,
    ).write(folder / "report.md")
