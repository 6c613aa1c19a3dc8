"""MNIST from scratch: recipes (model + training config + augmentation) run on the training engine.

Data stays in memory as float tensors in [0, 1] and is indexed per batch (`TensorBatches`); augmentation runs on
whole batches on the device (`RandomAffine`). 5,000 training images are held out (seeded) for validation, which is
what every choice is made on; the test set is evaluated once, after training, through the engine's inference path
(`Trainer.predict`), and the run folder gets results.json, report.md, the confusion matrix and the misclassified
digits beside the engine's config.yaml, metrics and learning curves. An ensemble's members are runs of their own
(``<run>/seed<k>/``); the ensemble's folder holds its config.yaml, results.json and report.md (`ensemble_report`,
with the ensemble's own per-digit table and confusion matrix, as `cnnlab ensemble` writes them).
"""

from __future__ import annotations

import contextlib
import functools
import json
import pickle
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.data.augment import RandomAffine
from cnnlab.data.mnist import (
    MNIST_CLASSES,
    MnistSplits,
    find_mnist_dir,
    load_mnist,
    load_test_set,
    read_training_set_digest,
    training_set_digest,
)
from cnnlab.errors import CnnlabError, first_line
from cnnlab.files import write_text_whole, written_then_renamed
from cnnlab.report.units import score
from cnnlab.tasks.recipes import (
    Recipe,
    RecipeBook,
    check_not_training,
    check_resume_or_overwrite,
    config_missing,
    describe_overrides,
    engine_resumes,
    note_current_run,
    run_name,
    with_overrides,
)
from cnnlab.tasks.run_precision import precisions, run_channels_last
from cnnlab.train import Callback, TensorBatches, TrainConfig, Trainer
from cnnlab.train.callbacks import SessionEpochs
from cnnlab.train.checkpoint import atomic_save
from cnnlab.train.config import (
    check_resumable,
    environment_record,
    load_config,
    recorded_environment,
    save_record,
    slow_precision_said_once,
)
from cnnlab.train.finished import Part, is_finished, read_back
from cnnlab.train.records import RunSessions
from cnnlab.train.saved import DIGIT_CLASSIFIER, DIGIT_SEGMENTER, read_record, save_ensemble, save_model
from cnnlab.train.strategy import is_main_process

if TYPE_CHECKING:
    from cnnlab.report.markdown import RunReport

TASK = "mnist"
# Training images held out for validation by default: the first `val_size` of one seed-0 permutation of the 60,000
# (`load_mnist`), so a smaller hold-out lies inside a larger one.
VAL_SIZE = 5_000
# The key, in a run's ``extra`` and its saved model's meta, that holds the digest of the training set its validation
# images were held out of (`MnistSplits.source_sha256`); runs saved before it was recorded have none.
SOURCE_DIGEST = "train_set_sha256"
DIGITS_INPUT = "float images in [0, 1], shape [N, 1, 28, 28]; normalisation is inside the model"


def ensemble_meta(**facts: Any) -> dict[str, Any]:
    """The record an MNIST ensemble's ensemble.json keeps (the layout of every model's, docs/ARCHITECTURE.md "Model
    records"), with the task's own `facts`."""
    return {
        "task": TASK,
        "kind": DIGIT_CLASSIFIER,
        "classes": list(MNIST_CLASSES),
        "input": DIGITS_INPUT,
        "output": "log of the members' mean softmax probabilities over the digits 0-9",
        **facts,
    }


# The key, in an ensemble member's ``extra``, of the number of members of its ensemble (``--ensemble``)
ENSEMBLE_SIZE = "ensemble"
# The key, in a run's ``extra``, of the training images it used (`train_mnist`'s ``train_subset``; None: all)
TRAIN_SUBSET = "train_subset"


@dataclass(frozen=True)
class MnistRecipe(Recipe):
    """A named way to train an MNIST model: the recipe base plus on-device batch augmentation.

    Attributes:
        augment: random affine (and optionally elastic) augmentation of every training batch, or None.
    """

    augment: RandomAffine | None = None


RECIPES: RecipeBook[MnistRecipe] = RecipeBook(
    "MNIST",
    [
        MnistRecipe(
            name="default",
            summary="mnist_net (0.29 M params), 10 epochs, SGD-Nesterov one-cycle, label smoothing, EMA, random affine",
            arch="mnist_net",
            train=dict(
                epochs=10,
                batch_size=128,
                optimizer="sgd",
                lr=0.1,
                weight_decay=5e-4,
                schedule="onecycle",
                warmup_epochs=2,
                label_smoothing=0.1,
                ema_decay=0.999,
                channels_last=True,  # 1.3x faster training steps on 2 CPU cores (524-543 vs 402-413 img/s)
            ),
            augment=RandomAffine(degrees=10, scale=0.1, shift=2.0),
        ),
        MnistRecipe(
            name="quick",
            summary="mnist_net_small, 2 epochs, about a minute on 2 CPU cores (used by `make demo`)",
            arch="mnist_net_small",
            model_kwargs={"drop_rate": 0.0},
            train=dict(
                epochs=2,
                batch_size=128,
                optimizer="sgd",
                lr=0.1,
                weight_decay=5e-4,
                schedule="onecycle",
                warmup_epochs=0.5,
                label_smoothing=0.1,
                ema_decay=0.99,
                channels_last=False,  # slower than NCHW for this narrow net on a CPU (benchmarks/step_speed.py)
            ),
        ),
        MnistRecipe(
            name="baseline",
            summary="Chollet's 2017 textbook CNN (93,322 params), trained here with Adam 1e-3, batch 64, no "
            "augmentation, 10 epochs (for comparison)",
            arch="mnist_baseline",
            train=dict(epochs=10, batch_size=64, optimizer="adam", lr=1e-3, schedule="constant"),
        ),
    ],
)


# results.json's test record: the digest (`training_set_digest`) of the test images (as float, `to_float`) and labels
# the run was tested on, by which a finished run read back knows the test set it redraws misclassified.png from
TEST_SET_DIGEST = "test_set_sha256"


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 1, 28, 28] -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def train_mnist(
    recipe: str = "default",
    *,
    data_dir: str | None = None,
    output: str = "runs",
    name: str | None = None,
    seed: int = 0,
    ensemble: int = 1,
    member: int | None = None,
    val_size: int = VAL_SIZE,
    train_subset: int | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    splits: MnistSplits | None = None,
    notes: bool | None = None,
    val_option: str | None = "--val-size",
    batch_option: str | None = "--batch-size",
) -> dict[str, Any]:
    """Train one model (or `ensemble` members with seeds seed, seed+1, ...) and test it once at the end.

    Args:
        recipe: a name in `RECIPES`.
        data_dir: MNIST root (see `cnnlab.data.paths`).
        output: runs root; the run goes to ``<output>/mnist/<name>/`` (members of an ensemble to ``.../seed<k>/``).
        name: run name; default ``<recipe>-<timestamp>``.
        seed: seed of the (first) member; the validation split is always seeded with 0.
        ensemble: number of members.
        member: train only this member (0-based index, seed ``seed + member``) of the ensemble and return, so that
            members can train in separate processes or on separate machines sharing ``output``; members finished
            earlier are read back, and once all are finished the ensemble is evaluated and saved. Any process
            can finish the job later with ``resume=True`` and no `member`.
        val_size: validation images held out of the 60k training set.
        train_subset: use only the first N (shuffled) training images (tests, smoke runs).
        overrides: `TrainConfig` fields replacing the recipe's (e.g. {"epochs": 3}).
        resume: continue an interrupted run (finished members are skipped).
        overwrite: replace an existing run of the same name.
        progress: progress bar and epoch lines on stderr.
        callbacks: extra engine callbacks (for every member).
        splits: pre-loaded data (skips reading the IDX files).
        notes: print the notes on the results without `progress`: the line on a finished run read back (nothing
            run; its report.md written again, or why it could not be) and the engine's notes on stderr (the batch a
            search chose, an out-of-memory retry's micro-batch, early stopping; `Trainer.note`); None: as
            `progress`. The CLI keeps them under -q, which drops progress alone, and with --json (on stderr).
        val_option: the option that set `val_size`, named when the training set cannot hold it (`load_mnist`); None
            where the caller fixes it (the answer sheet has no --val-size).
        batch_option: the option of the calling command that sets the batch, named by the engine when the training
            images do not fill one batch; None where the command has none (`answers`, whose batch and split are
            fixed): too few training images then ask for the full MNIST.

    Returns:
        A summary (also saved as ``results.json`` in the run directory): per-member validation and test accuracy,
        the ensemble's test accuracy, training seconds and the run directory.

    A slow precision (fp16 on the CPU) is warned of once, before any image is read, not by each member's trainer.
    """
    chosen = RECIPES.get(recipe)
    options = with_overrides(chosen.train, overrides)
    said_as = {"precision": 'overrides["precision"]'}  # what a Python caller sets (the CLI says --precision, earlier)
    with (
        slow_precision_said_once(options.get("precision"), str(options.get("device") or "auto"), said_as),
        contextlib.ExitStack() as before_training,
    ):
        return _train_mnist(
            recipe,
            before_training,
            data_dir=data_dir,
            output=output,
            name=name,
            seed=seed,
            ensemble=ensemble,
            member=member,
            val_size=val_size,
            train_subset=train_subset,
            overrides=overrides,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            callbacks=callbacks,
            splits=splits,
            notes=progress if notes is None else notes,
            val_option=val_option,
            batch_option=batch_option,
        )


def _train_mnist(
    recipe: str,
    before_training: contextlib.ExitStack,
    *,
    data_dir: str | None,
    output: str,
    name: str | None,
    seed: int,
    ensemble: int,
    member: int | None,
    val_size: int,
    train_subset: int | None,
    overrides: dict[str, Any] | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    callbacks: Sequence[Callback],
    splits: MnistSplits | None,
    notes: bool,
    val_option: str | None,
    batch_option: str | None,
) -> dict[str, Any]:
    command_started = time.perf_counter()
    chosen = RECIPES.get(recipe)
    check_resume_or_overwrite(resume, overwrite)
    if ensemble < 1:
        raise CnnlabError(f"--ensemble must be >= 1, got {ensemble}")
    if member is not None and not 0 <= member < ensemble:
        raise CnnlabError(f"--member must be in 0..{ensemble - 1} (an index into --ensemble {ensemble}), got {member}")
    if member is not None and ensemble == 1:
        raise CnnlabError("--member needs --ensemble N with N >= 2")
    if member is not None and name is None:
        raise CnnlabError("--member needs --name: every member's process must name the same ensemble run")
    name = name or run_name(recipe)
    run_dir = Path(output) / TASK / name
    options = with_overrides(chosen.train, overrides)
    reuse_finished = resume or member is not None  # members finished earlier are read back, not trained again
    if resume and not run_dir.is_dir():
        raise CnnlabError(f"--resume: there is no run at {run_dir}; check --name and --output")
    # a member's process shares the ensemble's folder with its fellows' processes: only its own member's is its to check
    its_own = [run_dir / f"seed{seed + member}"] if member is not None else [run_dir, *run_dir.glob("seed*")]
    check_not_training(*its_own)
    if not overwrite:  # a run of the other shape (or other members) refused before MNIST is read; nothing removed
        _check_run_shape(run_dir, ensemble, seed, member, resume, overwrite)

    def member_config(index: int, digest: str | None, fellow: bool = False) -> tuple[int, Path, TrainConfig]:
        """The seed, folder and config of member `index` on the training set of SHA-256 `digest` (None: not read
        yet, or not known); a `fellow` (another process's member, checked before this one trains) with this process's
        training set, to be compared with the one it recorded."""
        member_seed = seed + index
        member_name = name if ensemble == 1 else f"{name}/seed{member_seed}"
        member_dir = Path(output) / TASK / member_name
        continued = reuse_finished and ((member_dir / "results.json").is_file() or engine_resumes(member_dir, True))
        config = TrainConfig(
            **options,
            seed=member_seed,
            task=TASK,
            name=member_name,
            output=output,
            # Members not started before the interruption start fresh; the others continue from their checkpoint.
            resume=engine_resumes(member_dir, reuse_finished),
            overwrite=overwrite,
            progress=progress,
            # val_size and the training set's digest: what `combine_mnist_ensemble` validates on, and what a
            # resumed member must hold out again; a member's ensemble size and training subset, which its fellows
            # must share
            extra={
                "recipe": chosen.name,
                "arch": chosen.arch,
                "model_kwargs": chosen.model_kwargs,
                "val_size": val_size,
                **_training_set(member_dir, digest, data_dir, continued and not fellow),
                **_as_started(member_dir, {ENSEMBLE_SIZE: ensemble} if ensemble > 1 else {}, continued and not fellow),
                **_since_recorded(member_dir, {TRAIN_SUBSET: train_subset}, continued and not fellow),
            },
        )
        return member_seed, member_dir, config

    # a stop from here until a member's own session takes over (the checks of the run and its members, loading MNIST,
    # reading finished members back) is a session of the member this command trains first, when it continues one (a
    # refusal withdraws it; a run with nothing left to train has none)
    prepared = _preparing(output, name, seed, ensemble, member, resume, command_started)
    if prepared is not None:
        before_training.enter_context(prepared)
        prepared.doing("setting up the run")
    # Before MNIST is read (seconds): a finished member is read back only for the options it was trained with
    # (--recipe included), and a member's process trains only beside fellows of its options. Compared here on all but
    # the training set, which is compared once read, below.
    for index in range(ensemble) if reuse_finished else ():
        if member is not None and index != member:
            _check_fellow_member(*member_config(index, None, fellow=True)[1:], data_dir)
            continue
        _, member_dir, config = member_config(index, None)  # its recorded digest stands in for the one not read yet
        if is_finished(member_dir):
            check_resumable(_finished_options(member_dir), config, member_dir)
    main, say = is_main_process(), print if notes else None  # the line on a run read back: a note, kept under -q
    if reuse_finished and _nothing_left(run_dir, [member_config(index, None)[1] for index in range(ensemble)]):
        # Finished before (a single run, or an ensemble saved from all its members): read back, nothing rewritten. Its
        # training set is compared still; the test set, which it was scored on once, is not read.
        digest = splits.source_sha256 if splits is not None else read_training_set_digest(data_dir)
        # each member's config, refused here if it held its validation images out of other images
        configs = [member_config(index, digest)[2] for index in range(ensemble)]
        test_set = (lambda: (splits.test_images, splits.test_labels)) if splits is not None else None
        return _read_back_run(chosen, overrides, run_dir, configs, seed, ensemble, say, main, test_set or data_dir)
    if prepared is not None:
        prepared.doing("loading MNIST")
    data = splits if splits is not None else load_mnist(data_dir, val_size=val_size, seed=0, val_option=val_option)
    if prepared is not None:
        prepared.doing("setting up the run")
    train_images, train_labels = to_float(data.train_images), data.train_labels
    if train_subset is not None:
        train_images, train_labels = train_images[:train_subset], train_labels[:train_subset]
    batch_size = options.get("batch_size")
    if batch_option is None and isinstance(batch_size, int) and len(train_labels) < batch_size:
        # the engine's remedy, "lower --batch-size", names an option that `answers` lacks
        raise CnnlabError(
            f"{find_mnist_dir(data_dir)} holds {len(data.train_labels) + len(data.val_labels):,} MNIST training "
            f"images: the {len(train_labels):,} trained on after the {len(data.val_labels):,} held out for validation "
            f"are fewer than one batch of {batch_size} (this command's batch and split are fixed); point --data-dir "
            "at the full MNIST (60,000 training images)"
        )
    val = (to_float(data.val_images), data.val_labels) if len(data.val_labels) else None
    test_images, test_labels = to_float(data.test_images), data.test_labels
    test_record = {TEST_SET_DIGEST: training_set_digest(test_images, test_labels)}  # misclassified.png's test set
    note_current_run(run_dir)
    if overwrite:  # what --overwrite replaces is removed once MNIST is read: a bad --data-dir leaves it be
        _check_run_shape(run_dir, ensemble, seed, member, resume, overwrite)
    members: list[dict[str, Any]] = []
    member_probabilities = []
    missing: list[int] = []  # seeds of members neither finished nor trained here (with `member`)
    first_trained = True
    # With `member`, that member trains first and the others are looked up after it, when they may have finished.
    order = list(range(ensemble)) if member is None else [member, *(i for i in range(ensemble) if i != member)]

    if member is not None:  # before this member trains: the others (finished, or training now) must be its fellows
        for index in order[1:]:
            _check_fellow_member(*member_config(index, data.source_sha256, fellow=True)[1:], data_dir)
    for index in order:
        member_seed, member_dir, config = member_config(index, data.source_sha256)
        if reuse_finished and is_finished(member_dir):
            # a finished member is read back (`cnnlab.train.finished`) only for the options it was trained with, its
            # training set now included (compared again: it may have finished in another process while MNIST loaded);
            # stopped between its results.json and its report.md, only the report is left to write
            check_resumable(_finished_options(member_dir), config, member_dir)

            def write_report(result: dict[str, Any], current: TrainConfig = config) -> None:
                _write_missing_report(chosen, overrides, current, _member_result(result))

            # a single run's line says it was finished; an ensemble's members, one for the ensemble, below
            said = say if ensemble == 1 else None
            figures = redrawn_figures(test_set=lambda: (data.test_images, data.test_labels))
            finished = _member_result(read_back(member_dir, write_report, said, main, figures))
            members.append({**finished, "run_dir": str(member_dir)})  # where it is now: the run may have moved since
            member_probabilities.append(_saved_probabilities(member_dir))
        elif member is not None and index != member:  # another process trains it
            missing.append(member_seed)
        else:
            # This command's session of the member, from the command's start for the first member it trains (data
            # loading included: the session `_preparing` began, when it is this member's) and from its own start for
            # the next; a resume continues the member's sessions.
            before_training.pop_all()  # this member's session records a stop from here, in its own with block
            if prepared is not None and prepared.path.parent == member_dir:
                sessions = prepared
            else:
                if prepared is not None:  # begun for a member another process has finished since
                    prepared.withdraw()
                sessions = RunSessions(
                    member_dir, reuse_finished, is_main_process(), command_started if first_trained else None
                )
            prepared = None
            first_trained = False
            with sessions:  # an interrupted session records its wall time too
                trained = _train_member(
                    chosen,
                    config,
                    (train_images, train_labels),
                    val,
                    callbacks,
                    sessions,
                    config.extra.get(SOURCE_DIGEST),
                    notes,
                )
                trainer = trained.pop("trainer")
                # The test set is used here, once, after training: never for a choice.
                probabilities = trainer.predict(test_images, model=trained.pop("model")).softmax(1)
                trained["test_accuracy"] = float((probabilities.argmax(1) == test_labels).float().mean())
                if is_main_process():  # under torchrun every rank evaluates, rank 0 writes
                    atomic_save(probabilities, member_dir / "test_probabilities.pt")
                    test = test_evaluation(test_images, test_labels, probabilities.argmax(1), member_dir)
                    trained["test"] = {**{k: v for k, v in test.items() if k != "test_accuracy"}, **test_record}
                sessions.end()
                trained.update(sessions.results())  # each session, and their wall time (None: one is unknown)
                if is_main_process():
                    # What marks the member finished, read back by a resume and by the other members' processes
                    # (which may read it while it is written): renamed into place whole, never seen half-written.
                    with written_then_renamed(member_dir / "results.json") as results:
                        results.write_text(json.dumps(trained, indent=1))
                    report = _member_report(chosen, overrides, config, trainer.history, trained)
                    report.write(member_dir / "report.md")
            member_probabilities.append(probabilities)
            members.append(trained)
    if prepared is not None:  # no member trained here: the one it was begun for was finished by another process
        before_training.pop_all()
        prepared.withdraw()
    by_seed = sorted(range(len(members)), key=lambda i: members[i]["seed"])
    members, member_probabilities = [members[i] for i in by_seed], [member_probabilities[i] for i in by_seed]
    missing.sort()

    summary: dict[str, Any] = {
        "recipe": chosen.name,
        "run_dir": str(run_dir),
        "members": members,
        "test_accuracy": members[0]["test_accuracy"] if ensemble == 1 else None,
    }
    ensemble_predictions = None
    if missing:
        summary["missing_members"] = missing
    elif ensemble > 1:
        ensemble_predictions = torch.stack(member_probabilities).mean(0).argmax(1)
        summary["ensemble_test_accuracy"] = float((ensemble_predictions == test_labels).float().mean())
        summary["test_accuracy"] = summary["ensemble_test_accuracy"]
    if is_main_process():
        if ensemble > 1:
            run_dir.mkdir(parents=True, exist_ok=True)
            task_config = {"recipe": chosen.to_dict(), "ensemble": ensemble, "seed": seed, "overrides": overrides or {}}
            save_record(task_config, run_dir / "config.yaml")
            if ensemble_predictions is not None:
                spec = save_ensemble(
                    run_dir, [Path(m["run_dir"]) for m in members], meta=ensemble_meta(recipe=chosen.name)
                )
                for member_summary, digest in zip(members, read_record(spec)["digests"], strict=True):
                    member_summary["weights_sha256"] = digest  # what loading the ensemble checks its members against
                test = test_evaluation(test_images, test_labels, ensemble_predictions, run_dir)
                summary["test"] = {**{k: v for k, v in test.items() if k != "test_accuracy"}, **test_record}
            report = _ensemble_run_report(chosen, overrides, seed, ensemble, run_dir, members, summary)
            report.write(run_dir / "report.md")
        with written_then_renamed(run_dir / "results.json") as results:  # a single run's is its member's, as above
            results.write_text(json.dumps(summary, indent=1))
    # something was done here: a member trained, or (all finished in processes of their own, never combined) the
    # ensemble combined and saved; a run with nothing left to do was read back above
    return summary


def _nothing_left(run_dir: Path, member_dirs: list[Path]) -> bool:
    """Whether the run in `run_dir` finished: every member did (a single run's is `run_dir` itself), and an
    ensemble's combination was saved (its results.json, written last, lists no member still to train)."""
    if not all(is_finished(member_dir) for member_dir in member_dirs):
        return False
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):  # cut short (written in place by an older cnnlab): combined again from the members
        return False
    if member_dirs == [run_dir]:
        # a single run's results.json is its member's until the run's summary, which lists it, is written over it: a
        # run killed between the two was read back as finished, a KeyError 'members' traceback on every --resume;
        # its member is read back and the summary written
        return "members" in results
    return "missing_members" not in results


def _read_back_run(
    recipe: MnistRecipe,
    overrides: dict[str, Any] | None,
    run_dir: Path,
    configs: list[TrainConfig],
    seed: int,
    ensemble: int,
    log: Callable[[str], None] | None,
    write: bool,
    test_set: Callable[[], tuple[torch.Tensor, torch.Tensor]] | str | None = None,
) -> dict[str, Any]:
    """The results of the finished run (or ensemble) in `run_dir`, its options compared already, with every
    ``run_dir`` where it is now (a run moved or renamed since): from its results.json, no file written again but a
    report.md that a stop left unwritten (a member's, or the ensemble's) (`cnnlab.train.finished.read_back`), named as
    `configs` (this command's config of each member) name the folders they are in now; `test_set`: the MNIST test
    set's loader, or the data root it is read from (None: the default's), when a misclassified.png is redrawn."""
    loader = test_set if callable(test_set) else functools.partial(load_test_set, test_set)
    load_test = functools.cache(loader)  # read once, for every member's figure and the ensemble's
    figures = redrawn_figures(test_set=load_test)
    member_dirs = [run_dir] if ensemble == 1 else [run_dir / f"seed{seed + index}" for index in range(ensemble)]

    def member_report(result: dict[str, Any], config: TrainConfig) -> None:
        _write_missing_report(recipe, overrides, config, _member_result(result))

    def where_now(summary: dict[str, Any]) -> list[dict[str, Any]]:
        members = summary["members"]
        if ensemble == 1:
            return [{**members[0], "run_dir": str(run_dir)}]
        return [{**member, "run_dir": str(run_dir / f"seed{member['seed']}")} for member in members]

    if ensemble == 1:  # its line says it was finished
        summary = read_back(run_dir, lambda result: member_report(result, configs[0]), log, write, figures)
        return {**summary, "members": where_now(summary)}

    def ensemble_report_again(summary: dict[str, Any]) -> None:
        report = _ensemble_run_report(
            recipe, overrides, seed, ensemble, run_dir, where_now(summary), summary, recorded_environment(run_dir)
        )
        report.write(run_dir / "report.md")

    # each member's own report.md and figures, if missing, said in the ensemble's line
    members = [
        Part(member_dir, functools.partial(member_report, config=config), figures)
        for member_dir, config in zip(member_dirs, configs, strict=True)
    ]
    ensemble_figures = redrawn_figures(ensemble=True, test_set=load_test)
    summary = read_back(run_dir, ensemble_report_again, log, write, ensemble_figures, members)
    return {**summary, "members": where_now(summary)}


def _ensemble_run_report(
    recipe: MnistRecipe,
    overrides: dict[str, Any] | None,
    seed: int,
    ensemble: int,
    run_dir: Path,
    members: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    environment: dict[str, Any] | None = None,
) -> RunReport:
    """The report.md of an ensemble trained by `train_mnist` (`environment`: the session's that saved it, default
    this one's), as saved or written again from its results.json."""
    devices = {m.get("device") for m in members}  # members may have trained in processes of their own
    return ensemble_report(
        f"MNIST ensemble `{run_dir.name}`",
        f"{len(members)} members of recipe `{recipe.name}` ({recipe.summary}"
        f"{describe_overrides(recipe.train, overrides)}), each a run of its own (seeds {seed}.."
        f"{seed + ensemble - 1}), all kept; the ensemble averages their softmax probabilities.",
        members,
        summary,
        device=devices.pop() if len(devices) == 1 else None,
        environment=environment,
    )


def _member_result(result: dict[str, Any]) -> dict[str, Any]:
    """A member's results from its results.json: a single run's holds the run's summary, its member first."""
    return result["members"][0] if "members" in result else {k: v for k, v in result.items() if k != "finished_before"}


def _write_missing_report(
    recipe: MnistRecipe, overrides: dict[str, Any] | None, current: TrainConfig, result: dict[str, Any]
) -> None:
    """Write the report.md of a finished member (or single run) stopped before it was written, from what the member
    saved: its results.json (`result`), its epochs (metrics.json), its options and the environment of the session
    that finished it (config.yaml), beside the figures its test pass drew; named as `current` (this command's config
    of it) names the folder it is in now. Nothing is trained or tested again."""
    member_dir = current.run_dir
    history = json.loads((member_dir / "metrics.json").read_text())  # unreadable: `read_back` says so
    # its name and runs folder now: config.yaml's are where it was trained, which a moved or renamed run has left
    config = replace(load_config(member_dir / "config.yaml"), name=current.name, output=current.output)
    report = _member_report(recipe, overrides, config, history, result, recorded_environment(member_dir))
    report.write(member_dir / "report.md")


def _check_fellow_member(member_dir: Path, config: TrainConfig, data_dir: str | None) -> None:
    """Refuse to train a member (``--member K``) beside another member of its ensemble, at `member_dir`, that started
    (finished, or training in its own process now) on other training images or under other options (`config`: the
    other member's, as this command would train it): the ensemble it would save averages members of two setups.
    Said before this member trains, where it was said after, when reading the other member back.

    Raises:
        CnnlabError: naming the other member, what differs and what to do.
    """
    path = member_dir / "config.yaml"  # written whole when a member's training starts (save_config)
    if not path.is_file():
        return  # not started: it is checked against this one when it reads this one back
    saved = saved_options(member_dir)
    recorded, digest = saved["extra"].get(SOURCE_DIGEST), config.extra.get(SOURCE_DIGEST)
    if recorded is not None and digest is not None and recorded != digest:
        from cnnlab.data.mnist import find_mnist_dir

        raise CnnlabError(
            f"{member_dir}, another member of this ensemble, trains on other MNIST training images than those under "
            f"{find_mnist_dir(data_dir)} (SHA-256 {recorded[:12]}... there, {digest[:12]}... here): train every "
            "member with the same --data-dir, or this one under another --name"
        )
    size, other_size = config.extra.get(ENSEMBLE_SIZE), saved["extra"].get(ENSEMBLE_SIZE)
    # a member of a smaller ensemble, finished and saved, that this one extends (`-n 2`, then `-n 3 --member 2` or
    # `--resume`) keeps the size it trained as, as `--resume -n 3` reads it back: refused, an extended ensemble's
    # members could never be trained, nor read back, one process each. Of one still training (not saved), it is a
    # fellow started with another --ensemble.
    extends = (
        isinstance(size, int)
        and isinstance(other_size, int)
        and other_size < size
        and _nothing_left(member_dir.parent, [member_dir])
    )
    if other_size is not None and other_size != size and not extends:
        raise CnnlabError(
            f"{member_dir}, another member of this ensemble, is one of {other_size} members (--ensemble {other_size}), "
            f"this one would be one of {size}: train every member with the same --ensemble, or this one under another "
            "--name"
        )
    current = config.to_dict()
    if recorded is None or digest is None:  # a member saved before the digest was recorded: the rest is compared
        saved["extra"].pop(SOURCE_DIGEST, None)
        current["extra"].pop(SOURCE_DIGEST, None)
    for key in (ENSEMBLE_SIZE, TRAIN_SUBSET):
        if key not in saved["extra"]:  # a member saved before cnnlab recorded it
            current["extra"].pop(key, None)
    if extends:
        current["extra"][ENSEMBLE_SIZE] = other_size
    check_resumable(
        saved,
        current,
        member_dir,
        refusal=f"{member_dir}, another member of this ensemble, trains with other options ({{changes}}): train "
        "every member with the same options, or this one under another --name",
    )


def _training_set(member_dir: Path, digest: str | None, data_dir: str | None, continued: bool) -> dict[str, str]:
    """The record, in a member's ``extra``, of the training set its validation images are held out of.

    A member continued (from its checkpoint, or read back finished) keeps the digest it started with, and only on
    that training set: the same seeded split of other images holds out other digits, so its validation (which chose
    its epoch) would score it on images it may have trained on. A member started before cnnlab recorded the digest
    continues as before, without one; so does one given its splits rather than reading them (`digest` None).

    Raises:
        CnnlabError: the member recorded another training set than the one read now.
    """
    if not continued:
        return {} if digest is None else {SOURCE_DIGEST: digest}
    path = member_dir / "config.yaml"
    recorded = saved_options(member_dir)["extra"].get(SOURCE_DIGEST) if path.is_file() else None
    if recorded is None:
        return {}
    if digest is not None and digest != recorded:
        from cnnlab.data.mnist import find_mnist_dir

        raise CnnlabError(
            f"cannot resume {member_dir}: it held its validation images out of other MNIST training images than those "
            f"under {find_mnist_dir(data_dir)} (SHA-256 {recorded[:12]}... when it started, {digest[:12]}... now), so "
            "it would be validated on images it may have trained on; pass the --data-dir it was trained with"
        )
    return {SOURCE_DIGEST: recorded}


def _as_started(member_dir: Path, record: dict[str, Any], continued: bool) -> dict[str, Any]:
    """`record`: facts of a member's ``extra`` that describe its ensemble, not its training (the ensemble's size). A
    member continued (from its checkpoint, or read back finished) keeps those it was started with, and none when it
    started before cnnlab recorded them: a resume that trains more members, or a member saved earlier, is not refused
    as trained under other options."""
    path = member_dir / "config.yaml"
    if not continued or not path.is_file():
        return dict(record)
    saved = saved_options(member_dir)["extra"]
    return {key: saved[key] for key in record if key in saved}


def _since_recorded(member_dir: Path, record: dict[str, Any], continued: bool) -> dict[str, Any]:
    """`record`: options of a member's ``extra`` that cnnlab records since a version (``train_subset``). A member
    continued (from its checkpoint, or read back finished) that started before is compared, as then, without them,
    rather than refused as started under other options; one that recorded them is compared on them."""
    path = member_dir / "config.yaml"
    if not continued or not path.is_file():
        return dict(record)
    saved = saved_options(member_dir)["extra"]
    return {key: value for key, value in record.items() if key in saved}


def _check_run_shape(
    run_dir: Path, ensemble: int, seed: int, member: int | None, resume: bool, overwrite: bool
) -> None:
    """Refuse to train one model where an ensemble is (or the reverse), or other members than a resumed ensemble's,
    before anything is written; with `overwrite`, remove the run of the other shape (in a member's own process, only
    its saved model, which would be loaded first) or the members the new ensemble leaves out.

    Each member checks only its own folder (``NAME`` for one model, ``NAME/seedK`` for members), so a single run named
    like an ensemble was trained beside it without --overwrite, and `evaluate` went on scoring the old ensemble.
    """
    from cnnlab.train.checkpoint import CHECKPOINT_NAME, run_in_the_way
    from cnnlab.train.saved import ENSEMBLE_SPEC, MODEL_SPEC, MODEL_WEIGHTS

    if not run_dir.is_dir():
        return
    single = [run_dir / name for name in (MODEL_SPEC, MODEL_WEIGHTS, CHECKPOINT_NAME) if (run_dir / name).is_file()]
    seeds = sorted(
        int(folder.name[4:]) for folder in run_dir.glob("seed*") if folder.name[4:].isdigit() and folder.is_dir()
    )
    ensemble_spec = run_dir / ENSEMBLE_SPEC
    held = (
        f"an ensemble (members {', '.join(f'seed{s}' for s in seeds)})"
        if seeds or ensemble_spec.is_file()
        else ("one model" if single else None)
    )
    if held is None:
        return
    wanted = "one model" if ensemble == 1 else f"an ensemble of {ensemble}"
    other_shape = (ensemble == 1) != held.startswith("one")
    if overwrite and member is None:
        # Replaced as a whole: the other shape's saved model would still be what evaluate and predict load, its
        # members or its curves and figures would still be read as the new run's, and an ensemble's members beyond
        # the new ones would be refused as strangers by a later --resume.
        if other_shape:
            shutil.rmtree(run_dir)
        else:
            for stale in (s for s in seeds if not seed <= s < seed + ensemble):
                shutil.rmtree(run_dir / f"seed{stale}")
        return
    if other_shape and overwrite:  # one member's process: the others may be writing, so only what is loaded first
        for path in [ensemble_spec] if ensemble == 1 else single:
            path.unlink(missing_ok=True)
        return
    if other_shape:
        raise CnnlabError(
            f"{run_dir} holds {held}, not {wanted}; pass --overwrite to replace it, or choose another --name"
            + (f" (or resume it with --ensemble {max(len(seeds), 2)} --seed {seeds[0]})" if seeds and resume else "")
        )
    if ensemble > 1 and not overwrite:
        members = range(seed, seed + ensemble)
        if not (resume or member is not None):
            raise run_in_the_way(run_dir)
        if any(found not in members for found in seeds):  # a resume with another --seed trained new members
            raise CnnlabError(
                f"{run_dir} holds members {', '.join(f'seed{s}' for s in seeds)}, which --seed {seed} --ensemble "
                f"{ensemble} (seeds {seed}..{seed + ensemble - 1}) leaves out; resume with the run's --seed "
                f"{seeds[0]} --ensemble {seeds[-1] - seeds[0] + 1}, or average fewer of them with cnnlab ensemble"
            )


def _preparing(
    output: str, name: str | None, seed: int, ensemble: int, member: int | None, resume: bool, started: float
) -> RunSessions | None:
    """Where a stop before training (while MNIST loads, or the run is checked) is recorded: a session of the member
    this command would train first, when it continues that member (its sessions.json: `RunSessions`), which that
    member's training continues; None for a new run."""
    if name is None or not (resume or member is not None):
        return None
    run_dir = Path(output) / TASK / name
    if ensemble == 1:
        first: Path | None = run_dir
    elif member is not None:
        first = run_dir / f"seed{seed + member}"
    else:
        unfinished = (run_dir / f"seed{seed + index}" for index in range(ensemble))
        first = next((path for path in unfinished if not (path / "results.json").is_file()), None)
    if first is None or (first / "results.json").is_file():  # finished: read back, not trained
        return None
    sessions = RunSessions(first, True, is_main_process(), started)
    sessions.doing("loading MNIST")
    return sessions


def _train_member(
    recipe: MnistRecipe,
    config: TrainConfig,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    callbacks: Sequence[Callback],
    sessions: RunSessions,
    source_sha256: str | None = None,
    notes: bool | None = None,
) -> dict[str, Any]:
    """Train and save one member; `sessions` records this session of it (`SessionEpochs`); `source_sha256`
    (`MnistSplits.source_sha256`) is saved with it, so that an ensemble across runs validates only on the training
    set its validation images were held out of; `notes`: the engine's (`Trainer`'s argument)."""
    from cnnlab.models import create_model

    torch.manual_seed(config.seed)  # the initial weights depend on the member's seed
    model = create_model(recipe.arch, **recipe.model_kwargs)
    trainer = Trainer(
        model, config, train_transform=recipe.augment, callbacks=[*callbacks, SessionEpochs(sessions)], notes=notes
    )
    started = time.perf_counter()
    history = trainer.fit(TensorBatches(*train, config.batch_size, drop_last=True), val)
    wall_seconds = time.perf_counter() - started
    first_epoch = sessions.current["first_epoch"] if sessions.current is not None else 0
    final = trainer.eval_model
    if trainer.is_main_process:
        save_model(
            final,
            config.run_dir,
            recipe.arch,
            recipe.model_kwargs,
            meta={
                "task": TASK,
                "kind": DIGIT_CLASSIFIER,
                "classes": list(MNIST_CLASSES),
                "recipe": recipe.name,
                "seed": config.seed,
                "input": DIGITS_INPUT,
                "output": "logits over the digits 0-9",
                "val_accuracy": history[-1].get("val_accuracy"),
                **({} if source_sha256 is None else {SOURCE_DIGEST: source_sha256}),
            },
        )
    return {
        "seed": config.seed,
        "run_dir": str(config.run_dir),
        "epochs": len(history),
        "train_images": len(train[1]),  # fewer than the split's with train_subset
        "val_images": 0 if val is None else len(val[1]),
        "val_accuracy": history[-1].get("val_accuracy"),
        "device": str(trainer.device),  # what its report's hardware line names
        "train_seconds": trainer.train_seconds,  # of every session (kept in the checkpoint)
        "wall_seconds": wall_seconds,  # of this session's training alone; its sessions: "sessions"
        "resumed_after_epoch": first_epoch or None,
        "images_per_second": sum(row["images_per_second"] for row in history) / len(history),
        "batch": trainer.batch_record(),  # the batch it trained with: a search's, or after an out-of-memory retry
        "model": final,
        "trainer": trainer,
    }


def predict_logits(
    model: torch.nn.Module, images: torch.Tensor, device: str = "cpu", batch: int = 1000, channels_last: bool = False
) -> torch.Tensor:
    """Float32 CPU logits of a saved model for float images [N, 1, 28, 28], through the engine's inference path
    (`channels_last`: in that memory format, as a run trained with it ran its test pass)."""
    return Trainer.for_inference(model, device=device, batch_size=batch, channels_last=channels_last).predict(images)


def test_evaluation(
    images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor, out_dir: Path
) -> dict[str, Any]:
    """Accuracy, per-class accuracy, the confusion matrix and its PNG, and a PNG of the misclassified digits."""
    from cnnlab.report.metrics import accuracy_from_matrix, confusion_matrix, per_class_accuracy
    from cnnlab.report.plots import plot_misclassified

    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(predictions, labels, 10)
    accuracy = accuracy_from_matrix(matrix)
    wrong = (predictions != labels).nonzero().flatten()
    confusion_png = _plot_test_confusion(matrix, out_dir / "confusion_matrix.png")
    grid_png = plot_misclassified(images[wrong], labels[wrong], predictions[wrong], out_dir / "misclassified.png")
    return {
        "test_accuracy": accuracy,
        "errors": len(wrong),
        "per_class_accuracy": per_class_accuracy(matrix),
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_png": str(confusion_png),
        "misclassified_png": str(grid_png),
    }


def _plot_test_confusion(matrix: torch.Tensor, path: Path) -> Path:
    """The test set's confusion matrix figure, titled with its count and accuracy, as `test_evaluation` draws it and a
    finished run read back draws it again (`redrawn_figures`)."""
    from cnnlab.report.metrics import accuracy_from_matrix
    from cnnlab.report.plots import plot_confusion_matrix

    # the accuracy as the report and the console write it (the title had "26.22%" beside their 0.2622)
    title = f"MNIST test, {int(matrix.sum()):,} digits: accuracy {accuracy_from_matrix(matrix):.4f}"
    return plot_confusion_matrix(matrix, path, title=title)


def redrawn_figures(
    ensemble: bool = False, test_set: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
) -> dict[str, Callable[[dict[str, Any], Path], object]]:
    """The figures of a finished run (or member, or `ensemble`), deleted since, that its saved results draw again when
    it is read back (`cnnlab.train.finished.read_back`): the confusion matrix, from the test set's matrix in
    results.json; misclassified.png, from the test probabilities each member saved (an ensemble's: their mean, as it
    was scored) and the MNIST test set (`test_set`, its uint8 images and labels, read only then), when it is the one
    the run was tested on (its digest, `TEST_SET_DIGEST`, as the run recorded it; a run made before it was recorded,
    or tested on other digits, keeps it missing)."""

    def confusion(summary: dict[str, Any], path: Path) -> None:
        test = summary["test"] if ensemble else _member_result(summary)["test"]
        _plot_test_confusion(torch.tensor(test["confusion_matrix"]), path)

    def misclassified(summary: dict[str, Any], path: Path) -> None:
        from cnnlab.report.plots import plot_misclassified

        test = summary["test"] if ensemble else _member_result(summary)["test"]
        if test_set is None or TEST_SET_DIGEST not in test:
            raise KeyError(TEST_SET_DIGEST)  # nothing to draw it from, or to know the test set by
        images, labels = test_set()
        images = to_float(images)
        if training_set_digest(images, labels) != test[TEST_SET_DIGEST]:
            raise ValueError(f"the MNIST test set is not the one {path.parent} was tested on")
        members = [path.parent / f"seed{member['seed']}" for member in summary["members"]] if ensemble else None
        probabilities = [_saved_probabilities(folder) for folder in members or [path.parent]]  # unreadable: missing
        predictions = (torch.stack(probabilities).mean(0) if ensemble else probabilities[0]).argmax(1)
        if predictions.shape != labels.shape:
            raise ValueError(f"{path.parent}'s test probabilities are not of the {len(labels)} test digits")
        wrong = (predictions != labels).nonzero().flatten()
        plot_misclassified(images[wrong], labels[wrong], predictions[wrong], path)

    return {"confusion_matrix.png": confusion, "misclassified.png": misclassified}


def _saved_probabilities(member_dir: Path) -> torch.Tensor:
    """The test probabilities a finished member's test pass saved (``test_probabilities.pt``), which its ensemble
    averages.

    Raises:
        CnnlabError: the file is missing, or cannot be read as a tensor of probabilities (cut short, replaced).
    """
    path = member_dir / "test_probabilities.pt"
    try:
        probabilities = torch.load(path, weights_only=True)
        if not isinstance(probabilities, torch.Tensor) or probabilities.ndim != 2:
            raise ValueError("not a tensor of test probabilities")
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        # torch's own message for a damaged file suggests weights_only=False: not advice for a file cnnlab wrote
        reason = first_line(error) if isinstance(error, OSError) else "cut short, or not the tensor its test pass saved"
        raise CnnlabError(
            f"{path} cannot be read ({reason}); it holds the test probabilities of the finished member "
            f"{member_dir}, which its ensemble averages: delete {member_dir / 'results.json'} and --resume to test the "
            "member again"
        ) from None
    return probabilities


def _member_report(
    recipe: MnistRecipe,
    overrides: dict[str, Any] | None,
    config: TrainConfig,
    history: list[dict[str, float]],
    result: dict[str, Any],
    environment: dict[str, Any] | None = None,
) -> RunReport:
    """A member's (or single run's) report.md; `environment`: the session's that finished it, default this one's."""
    from cnnlab.report.markdown import RunReport

    test = result["test"]
    test_count = sum(map(sum, test["confusion_matrix"]))  # 10,000 from the official files; a subset's own count
    report = RunReport(
        f"MNIST run `{config.name}`",
        f"Recipe `{recipe.name}`: {recipe.summary}{describe_overrides(recipe.train, overrides)}. Seed {config.seed}; "
        + (
            f"{result['train_images']:,} training images, {result['val_images']:,} held out for validation; "
            if "train_images" in result  # not in the results of members finished before it was recorded
            else ""
        )
        + f"the test set ({test_count:,} images) was evaluated once, after training.",
        environment or environment_record(),
        result.get("device"),
    )
    resumed = result.get("resumed_after_epoch")
    sessions = f" over its sessions (interrupted, resumed after epoch {resumed})" if resumed else ""
    report.heading("Test set")
    report.text(
        f"Accuracy **{result['test_accuracy']:.4f}** ({test['errors']} errors); validation accuracy at the end "
        f"{score(result['val_accuracy'])}; {result['train_seconds']:.0f} s of training{sessions}, "
        f"{result['images_per_second']:.0f} images/s."
    )
    _add_test_breakdown(report, test)
    report.add_sessions(result.get("sessions", []))
    report.add_training(history, monitor=config.monitor)
    return report.add_config(config.to_dict())


def ensemble_report(
    title: str,
    description: str,
    members: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    selection: str | None = None,
    device: str | None = None,
    environment: dict[str, Any] | None = None,
) -> RunReport:
    """The report.md of an MNIST ensemble, trained in one command (`train_mnist` with ``ensemble=N``) or combined
    from finished runs (`combine_mnist_ensemble`): one function, so both say the same things the same way.

    Args:
        title: the report's title.
        description: the paragraph under it: what the members are and how they are averaged.
        members: one row each, as results.json lists them: ``run_dir``, ``val_accuracy`` and ``test_accuracy`` (None
            when not tested), and where known ``seed``, ``val_errors``, ``val_log_loss``, ``chosen``,
            ``train_seconds``, ``weights_sha256`` (a column is shown when a member has it).
        summary: the ensemble's results.json: ``test_accuracy`` and ``test`` (`test_evaluation`'s errors, per-class
            accuracy and confusion matrix, whose figures lie beside the report), or ``missing_members``.
        selection: how the members were chosen, and the ensemble's score on validation; None when all were kept.
        device: what the members ran on (the report's hardware line); None for several or unknown.
        environment: the session's that saved the ensemble, when its report is written again later; None: this one's.
    """
    from cnnlab.report.markdown import RunReport

    report = RunReport(title, description, environment or environment_record(), device)
    report.heading("Members")
    columns = [  # (header, key, how a cell is written)
        ("seed", "seed", None),
        ("val accuracy", "val_accuracy", None),
        ("val errors", "val_errors", None),
        ("val log loss", "val_log_loss", None),
        ("chosen", "chosen", lambda chosen: "yes" if chosen else "no"),
        ("test accuracy", "test_accuracy", None),
        ("training s", "train_seconds", None),
        ("weights SHA-256", "weights_sha256", lambda digest: f"`{digest[:12]}`" if digest else None),
        ("run", "run_dir", None),
    ]
    shown = [column for column in columns if any(member.get(column[1]) is not None for member in members)]
    rows = [[cell(m.get(key)) if cell else m.get(key) for _, key, cell in shown] for m in members]
    report.table([header for header, _, _ in shown], rows, scores=["val accuracy", "val log loss", "test accuracy"])
    if any(member.get("weights_sha256") for member in members):
        report.text(
            "Weights SHA-256: the first 12 hex digits of each member's model.safetensors (in full in results.json; "
            "ensemble.json records the chosen members', and loading the ensemble refuses a member changed since)."
        )
    # members trained by `train mnist --ensemble` (a combined ensemble's candidates carry none): each one's report
    # lists its own sessions; this one lists them all
    report.add_member_sessions([(f"seed{m['seed']}", m.get("sessions") or []) for m in members if "seed" in m])
    if summary.get("missing_members"):
        return report.text(f"Members still to train (seeds): {summary['missing_members']}.")
    if selection:
        report.heading("Selection").text(selection)
    test = summary["test"]
    count = sum(map(sum, test["confusion_matrix"]))
    report.heading("Test set")
    report.text(
        f"Ensemble accuracy **{summary['test_accuracy']:.4f}** ({test['errors']} errors in {count:,} images), "
        "from the members' averaged softmax probabilities; the test set was read once, after "
        + ("training." if selection is None else "the choice.")
    )
    return _add_test_breakdown(report, test)


def _add_test_breakdown(report: RunReport, test: Mapping[str, Any]) -> RunReport:
    """The per-digit accuracy table and the figures `test_evaluation` drew, a single run's and an ensemble's."""
    per_class = [[digit, accuracy] for digit, accuracy in enumerate(test["per_class_accuracy"])]
    report.table(["digit", "accuracy"], per_class, scores=["accuracy"])
    return report.image("confusion matrix", "confusion_matrix.png").image(
        "misclassified test digits", "misclassified.png"
    )


def evaluate_mnist(
    run: str | Path, data_dir: str | None = None, output_dir: str | Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Re-evaluate a saved MNIST model or ensemble on the test set and draw its plots.

    Args:
        run: run directory or saved-model path (anything `cnnlab.load_model` accepts).
        data_dir: MNIST root.
        output_dir: where the figures and ``evaluation.json`` go; default ``<run>/evaluation``.
        device: evaluation device.

    Returns:
        accuracy, per-class accuracy, error count, the confusion matrix and the written file paths.

    Raises:
        CnnlabError: `run` was saved by another task (a transfer or segmentation run has its own test set, scored
            once in its report), or holds no saved model; `output_dir` cannot be written (under a file, read-only)
            or holds a saved run (`cnnlab.train.saved.evaluation_folder`).
    """
    from cnnlab.train.saved import check_digit_input, evaluation_folder, load_model, spec_path

    run = Path(run)
    check_mnist_run(run)
    model = load_model(run, device=device)
    check_digit_input(model, spec_path(run))  # a lenet5 saved from Python: torch's traceback on the first batch
    data = load_mnist(data_dir, val_size=0)
    out = evaluation_folder(run if run.is_dir() else run.parent, output_dir)  # before the 10,000 digits are classified
    images = to_float(data.test_images)
    run_dir = run if run.is_dir() else run.parent
    # float32, as predict runs: a run tested under autocast records its precision, and the command says so; in the
    # memory format of its test pass
    predictions = predict_logits(model, images, device, channels_last=run_channels_last(run_dir)).argmax(1)
    result = {"run": str(run), **precisions(run_dir), **test_evaluation(images, data.test_labels, predictions, out)}
    write_text_whole(out / "evaluation.json", json.dumps(result, indent=1))
    return result


def _finished_options(member_dir: Path) -> dict[str, Any]:
    """`saved_options` of a finished member (or single run), which wrote its config.yaml: one deleted since leaves
    nothing to compare a --resume's options with (every option read as 'not given').

    Raises:
        CnnlabError: its config.yaml is missing, or cannot be read.
    """
    if not (member_dir / "config.yaml").is_file():
        raise config_missing(member_dir)
    return saved_options(member_dir)


def saved_options(member_dir: Path) -> dict[str, Any]:
    """The engine options a finished MNIST run (or ensemble member) was trained with, ``extra.val_size`` included.

    Runs saved before cnnlab recorded ``val_size`` held out the default, `VAL_SIZE`; so does a saved model without
    its ``config.yaml``.

    Raises:
        CnnlabError: the ``config.yaml`` is there but cannot be read as a run's (damaged, cut short): yaml's
            ScannerError traceback said neither which run nor what to do.
    """
    import yaml

    path = member_dir / "config.yaml"
    try:
        options = load_config(path).to_dict() if path.is_file() else {"extra": {}}
    except (UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError, ValueError) as error:
        raise CnnlabError(
            f"{path} cannot be read as a run's config ({first_line(error)}); it records how {member_dir} was trained "
            "(the validation images it held out): copy the run again or train it again"
        ) from None
    options["extra"].setdefault("val_size", VAL_SIZE)
    return options


def check_mnist_run(
    run: Path, command: str = "without --data this command scores MNIST models on MNIST digits"
) -> None:
    """Refuse, naming where its results are, a run that another task saved (its model does not take MNIST digits);
    `command` says, in the parenthesis after "not an MNIST run", what the refusing command does with MNIST runs."""
    from cnnlab.train.saved import saved_meta, spec_path

    try:
        meta = saved_meta(run)
    except CnnlabError:
        return  # nothing loadable there: load_model says so
    task = meta.get("task")  # a record without meta: an MNIST network saved from Python
    if task is not None and task != TASK:
        folder = spec_path(run).parent
        # a segmentation run on the MNIST canvases records no normalisation for new images: predict refuses it
        canvases = meta.get("kind") == DIGIT_SEGMENTER
        use = (
            f"its test_overlays.png shows its masks; `cnnlab evaluate {folder}` scores it again on its test canvases"
            if canvases
            else f"`cnnlab predict --model {folder} IMAGE...` applies it to new images"
        )
        if task == "transfer" or (task == "segment" and not canvases):
            use += f", and `cnnlab evaluate {folder} --data DIR` scores it on a folder of new labelled images"
        raise CnnlabError(
            f"{folder} is a {task} run, not an MNIST run ({command}); its own test set was scored once, in "
            f"{folder / 'report.md'}, and {use}"
        )
