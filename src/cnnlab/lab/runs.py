"""The Runs page: the runs under a runs root, one run's records, two runs' curves side by side.

A run is a folder ``<root>/<task>/<name>/`` holding a ``config.yaml`` (docs/ARCHITECTURE.md, "The run folder"). The
page names runs by ``task/name`` and only ever opens folders that `find_runs` listed, so a run id sent by a browser
cannot lead outside the runs root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import shutil
import stat
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, first_line
from cnnlab.files import pid_namespace, process_alive

__all__ = [
    "RunDetails",
    "RunSummary",
    "compare_curves",
    "find_runs",
    "remove_stale_scratch",
    "resolve_run",
    "run_details",
    "saved_model_stamp",
    "saved_runs",
    "summarise",
    "unreadable_run_folders",
    "unreadable_task_folders",
]

# A folder segmentation run (train segment --data) names its test figures test_confusion.png and test_worst.png.
_CONFUSION_FIGURES = ("confusion_matrix.png", "test_confusion.png")
_MISTAKE_FIGURES = ("misclassified.png", "highest_loss.png", "test_overlays.png", "test_worst.png")
# What each of them shows, as the page titles it: a segmentation run's were all "misclassified / highest-loss images",
# though the canvases' test_overlays.png draws the first test canvases, right or wrong.
_MISTAKE_LABELS = {
    "misclassified.png": "misclassified test images",
    "highest_loss.png": "highest-loss test images",
    "test_overlays.png": "test canvases: input, truth, prediction",
    "test_worst.png": "test images with the most wrong pixels",
}


@dataclass
class RunSummary:
    """One line of the runs list."""

    run_id: str
    task: str
    recipe: str
    date: str
    metric: str
    value: float | None


@dataclass
class RunDetails:
    """What the page shows of one run: its figures (paths; None when the run has no such figure, or only one that
    cannot be read) and config.

    Attributes:
        unreadable: each figure the run holds but that does not decode (a run killed while it redrew its curves
            leaves half a PNG), with the reason.
        curves_label: what the learning curves are: an ensemble, which trains none of its own, shows its first
            member's (inside the runs root) that has them, saying so.
        mistakes_label: what `mistakes` shows (a classifier's misclassified or highest-loss test images, a
            segmentation run's test canvases or worst test images).
    """

    learning_curves: Path | None
    confusion_matrix: Path | None
    mistakes: Path | None
    config: str
    unreadable: list[str] = field(default_factory=list)
    curves_label: str = "learning curves"
    mistakes_label: str = "misclassified / highest-loss images"


def find_runs(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Run id (``task/name``) -> folder, for every ``<root>/<task>/<name>/config.yaml``, newest first, every
    ensemble still training: ``<root>/<task>/<name>/seed<k>/config.yaml``, its own config.yaml written only at its
    end (it was not listed until then), every finished experiment and every ensemble `cnnlab ensemble` combined
    (``ensemble.json``, no config.yaml: it was not listed at all); a hidden task or run folder (``.name``) is none."""
    root = Path(root)
    if not root.is_dir():
        return {}
    folders = [path.parent for path in root.glob("*/*/config.yaml") if path.is_file() and path.parent.is_dir()]
    folders += {
        path.parent.parent
        for path in root.glob("*/*/seed*/config.yaml")
        if not (path.parent.parent / "config.yaml").exists() and path.parent.parent.is_dir()
    }
    folders += [path.parent for path in root.glob("experiment/*/results.json") if _is_experiment(path.parent)]
    folders += [path.parent for path in root.glob("*/*/ensemble.json") if _is_combined(path.parent)]
    # pathlib's glob matches hidden names: a folder being built (`cnnlab ensemble` writes .NAME.partial, then renames
    # it) was listed as a run, gone a moment later
    folders = [
        folder for folder in folders if not folder.name.startswith(".") and not folder.parent.name.startswith(".")
    ]
    folders.sort(key=lambda folder: _mtime(_config_path(folder)), reverse=True)
    return {f"{folder.parent.name}/{folder.name}": folder for folder in folders}


# An experiment's figure to show first (`cnnlab experiment`: pool-vs-stride, lrn-vs-bn, cnn-vs-dense), in this order.
_EXPERIMENT_FIGURES = ("val_accuracy.png", "training_loss.png", "sample_efficiency.png")


def _is_experiment(folder: Path) -> bool:
    """Whether `folder` is a finished ``cnnlab experiment`` (``<root>/experiment/<name>/``: results.json and
    report.md, no config.yaml of its own, its seeds' runs one level deeper). It was not listed at all."""
    return (
        folder.parent.name == "experiment"
        and not (folder / "config.yaml").exists()
        and (folder / "results.json").is_file()
        and (folder / "report.md").is_file()
    )


def _is_combined(folder: Path) -> bool:
    """Whether `folder` is an ensemble that `cnnlab ensemble` combined from saved runs: ensemble.json, results.json and
    report.md, no config.yaml (it trained nothing) and no members of its own being trained."""
    return (
        not (folder / "config.yaml").exists()
        and (folder / "ensemble.json").is_file()
        and not _training_members(folder)
        and not _is_experiment(folder)
    )


def _training_members(folder: Path) -> list[Path]:
    """The members of the ensemble at `folder` that started (``seed<k>/config.yaml``), by seed."""
    members = [path.parent for path in folder.glob("seed*/config.yaml") if path.parent.name[4:].isdigit()]
    return sorted(members, key=lambda member: int(member.name[4:]))


def _config_path(folder: Path) -> Path:
    """A run's config.yaml; an ensemble still training has none of its own: its newest member's."""
    own = folder / "config.yaml"
    if own.is_file():
        return own
    if _is_experiment(folder):  # dated by its results, written at its end
        return folder / "results.json"
    if _is_combined(folder):  # dated by its record, written with its results
        return folder / "ensemble.json"
    members = [member / "config.yaml" for member in _training_members(folder)]
    return max(members, key=_mtime) if members else own


def _mtime(path: Path) -> float:
    """`path`'s modification time; 0 once it is gone (a run trained again with --overwrite, removed while the page
    lists it, failed the whole list with FileNotFoundError)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def unreadable_task_folders(root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(task, reason) for each ``<root>/<task>/`` folder, or link to one, that cannot be listed (a folder this user
    cannot read, a symbolic link loop, a link to a folder that is gone): `find_runs` cannot see its runs (the glob
    skips such a folder without a word), so the Runs page says so instead."""
    try:
        return _unopenable(Path(root))
    except OSError:
        return []  # the root itself: refused when the lab starts (`check_runs_root`)


def unreadable_run_folders(root: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """(``task/name``, reason) for each entry of a readable ``<root>/<task>/`` that is a folder, or a link, which
    cannot be opened: a symbolic link loop, a link to a folder that is gone, a folder this user cannot list.
    `find_runs` skips them without a word, as it skips a folder that is no run (no config.yaml), which is not named."""
    root = Path(root)
    try:
        tasks = sorted(path for path in root.iterdir() if path.is_dir())
    except OSError:
        return []
    unreadable = []
    for task in tasks:
        try:
            unreadable += [(f"{task.name}/{name}", reason) for name, reason in _unopenable(task)]
        except OSError:
            continue  # the task folder itself: `unreadable_task_folders`
    return unreadable


def _unopenable(folder: Path) -> list[tuple[str, str]]:
    """(name, reason) for each folder or link in `folder` that cannot be listed, by name; a link to a file is none.

    Raises:
        OSError: `folder` itself cannot be listed.
    """
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    unreadable = []
    for entry in entries:
        try:
            if entry.name.startswith(".") or not (entry.is_symlink() or entry.is_dir(follow_symlinks=False)):
                continue
            with os.scandir(entry.path) as inside:
                next(inside, None)
        except NotADirectoryError:
            continue  # a link to a file
        except OSError as error:
            unreadable.append((entry.name, str(error.strerror or error)))
    return unreadable


def saved_runs(root: str | os.PathLike[str], tasks: tuple[str, ...], ensembles: bool = True) -> list[str]:
    """The ids of the listed runs of `tasks` that saved a model to load, newest first: a single network
    (``model.json``) or, with `ensembles`, an ensemble of them (``ensemble.json``, as `cnnlab train mnist
    --ensemble` writes)."""
    from cnnlab.train.saved import ENSEMBLE_SPEC, MODEL_SPEC

    specs = (MODEL_SPEC, ENSEMBLE_SPEC) if ensembles else (MODEL_SPEC,)
    return [
        run_id
        for run_id, folder in find_runs(root).items()
        if folder.parent.name in tasks and any((folder / spec).is_file() for spec in specs)
    ]


def saved_model_stamp(folder: str | os.PathLike[str]) -> tuple[tuple[str, int, int], ...]:
    """What changes when the model saved in `folder` is saved again: the path, size and modification time of its
    ``model.json`` and weights, or of its ``ensemble.json`` and each member's (a run trained again with --overwrite,
    or resumed to its end, saves its model anew under the same run id). Empty when nothing is saved there."""
    from cnnlab.train.saved import ENSEMBLE_SPEC, MODEL_SPEC, MODEL_WEIGHTS, ensemble_members

    folder = Path(folder)
    files = [folder / ENSEMBLE_SPEC, folder / MODEL_SPEC, folder / MODEL_WEIGHTS]
    if files[0].is_file():
        with contextlib.suppress(CnnlabError):  # loading the ensemble says what is wrong with it
            files += [member / name for member in ensemble_members(files[0]) for name in (MODEL_SPEC, MODEL_WEIGHTS)]
    stamp = []
    for path in files:
        try:
            status = path.stat()
        except OSError:
            continue
        stamp.append((str(path), status.st_size, status.st_mtime_ns))
    return tuple(stamp)


def resolve_run(root: str | os.PathLike[str], run_id: str) -> Path:
    """The folder of a listed run.

    Raises:
        CnnlabError: `run_id` is not one of the runs `find_runs` lists under `root`.
    """
    runs = find_runs(root)
    if run_id not in runs:
        # a run deleted or moved while a page listed it: the page's list still offers it until the page is reloaded
        raise CnnlabError(
            f"no run {run_id!r} under {root} (deleted, moved or renamed since the page listed it?); pick one from "
            "the list: reload the page, or press Refresh on the Runs page, to list the runs there now"
        )
    return runs[run_id]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unreadable_json(path: Path) -> str | None:
    """Why the JSON file at `path` cannot be read (cut short, not JSON, unreadable), or None (read, or missing)."""
    try:
        json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return first_line(error)
    return None


def _recipe(results: dict[str, Any], config: dict[str, Any]) -> str:
    extra = config.get("extra")
    extra = extra if isinstance(extra, dict) else {}  # `extra: null` failed the whole list
    for value in (results.get("recipe"), extra.get("recipe"), config.get("recipe")):
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, str) and value:
            return value
    return "-"


_TEST_HEADLINES = ("accuracy", "miou", "pixel_accuracy")  # a test report's figure to headline, in this order


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _headline(results: dict[str, Any], history: list[dict[str, float]]) -> tuple[str, float | None]:
    """The run's test figure, else the last epoch's first validation metric other than the loss.

    The test figure is the first top-level ``test_*`` number (`train mnist`'s ``test_accuracy``), else the accuracy
    of the test report under ``test`` (`train transfer`), else its mean IoU (`train segment`: the classes but the
    background) or pixel accuracy.
    """
    for key, value in results.items():
        if key.startswith("test_") and _number(value):
            return key, float(value)
    test = results.get("test")
    if isinstance(test, dict):
        for key in _TEST_HEADLINES:
            if _number(test.get(key)):
                return f"test_{key}", float(test[key])
    if history:
        last = {key: value for key, value in history[-1].items() if _number(value)}  # a null or a text is no figure
        keys = [k for k in last if k.startswith("val_") and k != "val_loss"] or [k for k in last if k == "val_loss"]
        if keys:
            return f"{keys[0]} (last epoch)", float(last[keys[0]])
    return "-", None


def _config_document(folder: Path) -> dict[str, Any]:
    """The run's config.yaml as read (``config:`` and ``environment:``); empty when it cannot be read."""
    import yaml

    try:  # libyaml's parser where PyYAML has it: Python's took 7 ms a config, most of a long list's time
        text = (folder / "config.yaml").read_text(errors="replace")
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return document if isinstance(document, dict) else {}


def _config(folder: Path) -> dict[str, Any]:
    config = _config_document(folder).get("config", {})
    return config if isinstance(config, dict) else {}


def _written_at(folder: Path) -> Path | None:
    """Where the run at `folder` was written, as its records name it: its config's ``output``/``task``/``name``, else
    its results.json's ``run_dir``, a relative one read from the working folder its config.yaml records. None when
    no record says (or a relative path has no recorded working folder)."""
    document = _config_document(folder)
    config = document.get("config") if isinstance(document.get("config"), dict) else {}
    environment = document.get("environment") if isinstance(document.get("environment"), dict) else {}
    parts = [config.get(key) for key in ("output", "task", "name")]
    results = _read_json(folder / "results.json")
    run_dir = results.get("run_dir") if isinstance(results, dict) else None
    if all(isinstance(part, str) and part for part in parts):
        path = Path(*parts)
    elif isinstance(run_dir, str) and run_dir:
        path = Path(run_dir)
    else:
        return None
    if not path.is_absolute():
        cwd = environment.get("cwd")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            return None
        path = Path(cwd) / path
    return Path(os.path.normpath(path))


def _moved_note(folder: Path) -> str:
    """A config view's first line when the run at `folder` is no longer where its records say it was written (a runs
    root moved or copied, a run renamed): the recorded paths read as where it is. Empty when it has not moved."""
    written = _written_at(folder)
    try:  # the same folder by another path (a bind mount, a link above the root) is where it was written
        if written is None or written.resolve() == folder.resolve() or (written.is_dir() and written.samefile(folder)):
            return ""
    except OSError:
        return ""
    how = "copied (the original is still there)" if written.is_dir() else "moved"
    return f"# {how}: written to {written}, now at {folder.absolute()}; the paths below are where it was written\n"


def _epochs(history: Any) -> list[dict[str, Any]]:
    """The rows of a metrics.json that are epochs (an object with a number under "epoch"); another layout has none.
    One run's odd records failed the whole Runs page, every run's line with it."""
    if not isinstance(history, list):
        return []
    return [row for row in history if isinstance(row, dict) and _number(row.get("epoch"))]


def _ensemble_size(folder: Path, results: dict[str, Any]) -> int | None:
    """The number of members of the ensemble at `folder` that is still training: its results.json's members and
    missing_members (members trained with --member), else the largest size its started members record
    (``--ensemble``): one extended by ``--resume -n 3`` keeps the 2 its first members started with, and read as its
    size it showed "members finished: 2 of 2" while the third trained."""
    if isinstance(results.get("missing_members"), list) and isinstance(results.get("members"), list):
        return len(results["members"]) + len(results["missing_members"])
    sizes = []
    for member in _training_members(folder):
        extra = _config(member).get("extra")
        size = extra.get("ensemble") if isinstance(extra, dict) else None
        if _number(size):
            sizes.append(int(size))
    return max(sizes, default=None)


def _members_progress(folder: Path, results: dict[str, Any]) -> str:
    """The members of a training ensemble that finished, of its size: "1 of 3" (size unknown: "1 of 2 started")."""
    members = _training_members(folder)
    finished = sum((member / "results.json").is_file() for member in members)
    if isinstance(results.get("members"), list):
        finished = max(finished, len(results["members"]))
    size = _ensemble_size(folder, results)
    return f"{finished} of {size if size is not None else f'{len(members)} started'}"


def _extending(folder: Path, results: dict[str, Any]) -> str:
    """What a saved ensemble's line adds while ``-n 3 --resume`` extends it ("" when nothing does): the members started
    since it was saved (``seed<k>/`` not among its results.json's members), which the saved result leaves out. It
    showed the saved 2-member result as finished and said nothing of the third member training."""
    saved = results.get("members")
    if not isinstance(saved, list) or isinstance(results.get("missing_members"), list):
        return ""
    seeds = {member.get("seed") for member in saved if isinstance(member, dict)}
    added = [member for member in _training_members(folder) if int(member.name[4:]) not in seeds]
    if not added:
        return ""
    state = ", ".join(
        f"member {member.name} {'finished' if (member / 'results.json').is_file() else 'training or interrupted'}"
        for member in added
    )
    size = _ensemble_size(folder, results)
    to = f" to {size}" if size is not None and size > len(saved) else ""
    return f" (of its {len(saved)} saved members; extending{to}: {state})"


def _experiment_headline(results: dict[str, Any]) -> tuple[str, float | None]:
    """An experiment's best mean test accuracy over its variants, naming the variant and how many it compared."""
    measured = results.get("measured")  # {variant: {"test accuracy": [per seed]}}; cnn-vs-dense: test_accuracy
    by_variant = (
        {v: f.get("test accuracy") for v, f in measured.items() if isinstance(f, dict)}
        if isinstance(measured, dict)
        else results.get("test_accuracy")
    )
    means = {}
    for variant, values in (by_variant if isinstance(by_variant, dict) else {}).items():
        if isinstance(values, list) and values and all(_number(v) for v in values):
            means[str(variant)] = sum(values) / len(values)
    if not means:
        return "- (see its report.md)", None
    best = max(means, key=lambda variant: means[variant])
    return f"mean test accuracy of {best} (best of {len(means)} variants; report.md compares them)", means[best]


def summarise(run_id: str, folder: Path) -> RunSummary:
    """The list line of one run: task, recipe, date (of its config.yaml), headline metric."""
    results = _read_json(folder / "results.json")
    history = _read_json(folder / "metrics.json")
    results = results if isinstance(results, dict) else {}
    history = _epochs(history)
    modified = _mtime(_config_path(folder))
    when = dt.datetime.fromtimestamp(modified).strftime("%Y-%m-%d %H:%M") if modified else "-"
    metric, value = _headline(results, history)
    if _is_experiment(folder):
        metric, value = _experiment_headline(results)
        return RunSummary(run_id, folder.parent.name, "-", when, metric, value)
    members = _training_members(folder) if not (folder / "config.yaml").is_file() else []
    if members:  # an ensemble still training: its folder holds its members alone
        metric, value = f"training (members finished: {_members_progress(folder, results)})", None
        return RunSummary(run_id, folder.parent.name, _recipe({}, _config(members[0])), when, metric, value)
    if isinstance(results.get("missing_members"), list) and isinstance(results.get("members"), list):
        # members trained in processes of their own (--member): saved by each, the others still to train
        metric, value = f"training (members finished: {_members_progress(folder, results)})", None
    elif (folder / "results.json").is_file() and _unreadable_json(folder / "results.json"):
        # its last epoch's figure was shown as a finished run's, with nothing said of its results
        metric, value = f"- (results.json cannot be read: {_unreadable_json(folder / 'results.json')})", None
    elif not (folder / "results.json").is_file():
        # Training, or interrupted (nothing tells the two apart): "(last epoch)" read as a finished run's figure.
        progress = f"epoch {history[-1]['epoch']:g}" if history else "no epoch finished"
        broken = _unreadable_json(folder / "metrics.json") if not history else None
        progress = f"metrics.json cannot be read: {broken}" if broken else progress  # said "no epoch finished"
        metric = metric.replace("(last epoch)", f"({progress}, no results yet: training or interrupted)")
        metric = f"- ({progress}, no results yet: training or interrupted)" if metric == "-" else metric
    metric += _extending(folder, results)
    recipe = _recipe(results, {})  # results.json names it for most runs: config.yaml is read only when it does not
    recipe = _recipe(results, _config(folder)) if recipe == "-" else recipe
    if _is_combined(folder):
        recipe = _combined_recipe(folder, results)
    if recipe == "-" and isinstance(results.get("model"), str) and results["model"]:
        recipe = results["model"]  # `train segment --data` names its recipe --model (unet, unet-lite0...): read "-"
    return RunSummary(run_id, folder.parent.name, recipe, when, metric, value)


def _member_names(folder: Path) -> list[str]:
    """The members of the ensemble at `folder` as its ensemble.json lists them, each named by its folder under the
    runs root (``mnist/pair/seed0``), else by its path; a member that is not there says so. None read: empty."""
    from cnnlab.train.saved import ENSEMBLE_SPEC, ensemble_members

    try:
        members = ensemble_members(folder / ENSEMBLE_SPEC)
    except (OSError, CnnlabError):
        return []
    root = folder.parent.parent.resolve()
    names = []
    for member in members:
        resolved = member.resolve()
        name = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(member)
        names.append(name if member.is_dir() else f"{name} (not there: moved or renamed?)")
    return names


def _combined_recipe(folder: Path, results: dict[str, Any]) -> str:
    """The recipe column of an ensemble `cnnlab ensemble` combined: its size, selection and first members."""
    names = _member_names(folder)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    select = results.get("select") if isinstance(results.get("select"), str) else "?"
    return f"ensemble of {len(names)} (cnnlab ensemble, --select {select}): {shown or 'members cannot be read'}"


def _combined_settings(folder: Path) -> str:
    """What the config view shows of an ensemble `cnnlab ensemble` combined, which has no config.yaml: the runs it
    was chosen from, its members where they are now, and each candidate's and its own validation and test results."""
    import yaml

    results = _read_json(folder / "results.json")
    results = results if isinstance(results, dict) else {}
    meta = _read_json(folder / "ensemble.json")
    meta = meta.get("meta") if isinstance(meta, dict) else None
    candidates = results.get("candidates") if isinstance(results.get("candidates"), list) else []
    keys = ("run_dir", "chosen", "val_accuracy", "val_errors", "val_log_loss", "test_accuracy")
    document = {
        "select": results.get("select"),
        "runs": meta.get("runs") if isinstance(meta, dict) else None,
        "members": _member_names(folder),
        "candidates": [{key: c.get(key) for key in keys} for c in candidates if isinstance(c, dict)],
        **{key: results.get(key) for key in ("val_size", "val_accuracy", "val_errors", "test_accuracy", "test_errors")},
    }
    text = (
        "# an ensemble `cnnlab ensemble` combined from saved runs: no config.yaml of its own (it trained nothing); its "
        "members and results (report.md has more)\n"
    )
    return text + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=2**16)


def run_details(root: str | os.PathLike[str], run_id: str) -> RunDetails:
    """The figures and config of a listed run (see `resolve_run`)."""
    from cnnlab.data.folder import check_image
    from cnnlab.train.saved import ENSEMBLE_SPEC

    folder = resolve_run(root, run_id)
    unreadable: list[str] = []

    def figure(*names: str) -> Path | None:
        for path in (folder / name for name in names if (folder / name).is_file()):
            reason = check_image(path)
            if reason is None:
                return path
            unreadable.append(f"{path.name}: {reason}")
        return None

    curves, curves_label = figure("learning_curves.png"), "learning curves"
    config = _config_path(folder)
    if _is_experiment(folder):
        curves = figure(*_EXPERIMENT_FIGURES)
        label = f"{curves.stem.replace('_', ' ')} of each variant" if curves else ""
        return RunDetails(curves, None, None, _experiment_settings(folder), unreadable, f"{label} (more in report.md)")
    if curves is None and (folder / ENSEMBLE_SPEC).is_file():  # its curves were hidden without a word
        curves, curves_label = _member_curves(Path(root), folder / ENSEMBLE_SPEC)
    elif curves is None and _epochs(_read_json(folder / "metrics.json")):
        # killed in its first epoch between metrics.json and the figure, or while it redrew it: its epochs hidden
        why = "its learning_curves.png cannot be read" if unreadable else "the run saved none"
        curves, curves_label = _drawn_curves(folder), f"learning curves (drawn from metrics.json: {why})"
    elif curves is None and _training_members(folder):  # an ensemble still training (--member too): its members'
        results = _read_json(folder / "results.json")
        progress = _members_progress(folder, results if isinstance(results, dict) else {})
        curves, curves_label = _member_curves(Path(root), _training_members(folder), f"members finished: {progress}")
    try:
        text = _combined_settings(folder) if _is_combined(folder) else config.read_text(errors="replace")
    except OSError as error:  # failed the whole Runs page when it opened on this run (the newest)
        text = f"# {config.name} cannot be read ({error.strerror or error})\n"
    text = _moved_note(config.parent) + text
    if config.parent != folder:
        text = f"# member {config.parent.name}'s config (the ensemble's own is written when it finishes)\n{text}"
    mistakes = figure(*_MISTAKE_FIGURES)
    return RunDetails(
        curves,
        figure(*_CONFUSION_FIGURES),
        mistakes,
        text,
        unreadable,
        curves_label,
        _MISTAKE_LABELS[mistakes.name] if mistakes is not None else RunDetails.mistakes_label,
    )


_SCRATCH_PREFIX = "cnnlab-lab-"  # + the lab's process id: `remove_stale_scratch` tells a dead lab's by it
# In a lab's scratch folder: which machine and process-id namespace its <pid> belongs to (`cnnlab.files.pid_namespace`).
_SCRATCH_MARKER = ".cnnlab-lab-namespace"


def _mark_scratch(path: Path) -> None:
    """Record in the scratch folder at `path` whose process id its name holds (`cnnlab.files.pid_namespace`)."""
    (path / _SCRATCH_MARKER).write_text(pid_namespace())


class _ScratchFolder:
    """``<tmp>/cnnlab-lab-<pid>``, made for this process and removed when it exits (as `tempfile.TemporaryDirectory`
    does), named by the process id and marked with its namespace (`_mark_scratch`), so that a later lab can tell one a
    killed lab left (`remove_stale_scratch`)."""

    def __init__(self) -> None:
        path = Path(tempfile.gettempdir()) / f"{_SCRATCH_PREFIX}{os.getpid()}"
        # Left by a dead process that had this id here (this one makes it once), or long unused; one marked by another
        # container's live lab with the same id was removed under it: this lab takes a name of its own instead.
        if _scratch_pid(path) is not None and (_same_namespace(path) or _untouched_long(path)):
            shutil.rmtree(path, ignore_errors=True)
        try:
            path.mkdir(mode=0o700)
        except OSError:  # taken (another user's, a link): a name of its own, which a later lab leaves alone
            path = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-"))
        self.name = str(path)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.name, ignore_errors=True)
        self.make()

    def make(self) -> None:
        """Make the folder with its marker, again when it was removed under a running lab (a /tmp cleaner)."""
        Path(self.name).mkdir(mode=0o700, exist_ok=True)
        if not (Path(self.name) / _SCRATCH_MARKER).is_file():
            _mark_scratch(Path(self.name))

    def cleanup(self) -> None:
        """Remove the folder now (exiting does)."""
        self._finalizer()


@functools.cache
def _scratch() -> _ScratchFolder:
    """This process's folder for the figures the lab draws itself, removed when the process exits: Gradio copies a
    figure into its own cache when it serves it. A /tmp/cnnlab-lab-<pid> folder was left behind by every lab."""
    return _ScratchFolder()


def _scratch_pid(path: Path) -> int | None:
    """The process id of the lab scratch folder (`_ScratchFolder`) at `path`: named exactly ``cnnlab-lab-<pid>``, a
    folder (not a link) owned by this user; None for anything else."""
    digits = path.name[len(_SCRATCH_PREFIX) :]
    if not path.name.startswith(_SCRATCH_PREFIX) or not digits.isascii() or not digits.isdigit():
        return None
    try:
        status = path.lstat()
    except OSError:
        return None
    owner = os.getuid() if hasattr(os, "getuid") else None
    if not stat.S_ISDIR(status.st_mode) or owner is None or status.st_uid != owner:
        return None
    return int(digits)


def _same_namespace(path: Path) -> bool:
    """Whether the scratch folder at `path` is marked as made in this process's namespace (`_mark_scratch`), where
    its process id can be asked about."""
    marker = path / _SCRATCH_MARKER
    try:
        return not marker.is_symlink() and marker.read_text() == pid_namespace()
    except (OSError, UnicodeDecodeError):
        return False


def _untouched_long(path: Path) -> bool:
    """Whether nothing was written in the folder at `path` for `STALE_AFTER_SECONDS` (a day): a lab draws its figures
    there as they are asked for, and makes it again if it is gone."""
    import time

    from cnnlab.files import STALE_AFTER_SECONDS

    try:
        return time.time() - path.lstat().st_mtime > STALE_AFTER_SECONDS
    except OSError:
        return False


def remove_stale_scratch(tmp: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the scratch folders (``<tmp>/cnnlab-lab-<pid>``, see `_scratch_pid`) of labs that are no longer running: a
    lab killed with SIGKILL cannot remove its own, so each left one behind in /tmp for good. Called when a lab starts.

    A folder is removed when its marker names this namespace and no process has its id; any other (its marker names
    another container's namespace, or a lab older than the marker made it) when it was untouched for a day: /tmp may
    be shared by containers that number their processes on their own, where a live lab's id is no process here (its
    folder was removed under it).

    Args:
        tmp: the folder to look in; default the system's temporary folder, where labs make theirs.

    Returns:
        the folders removed.
    """
    folder = Path(tmp) if tmp is not None else Path(tempfile.gettempdir())
    try:
        candidates = [folder / name for name in os.listdir(folder) if name.startswith(_SCRATCH_PREFIX)]
    except OSError:
        return []
    removed = []
    for path in sorted(candidates):
        pid = _scratch_pid(path)
        if pid is None or pid == os.getpid():
            continue
        if not process_alive(pid) if _same_namespace(path) else _untouched_long(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _drawn_curves(folder: Path) -> Path:
    """The learning curves of the run at `folder` drawn from its metrics.json, as the engine draws them, into this
    process's scratch folder (`_scratch`; one file per run, redrawn each time)."""
    import hashlib

    from cnnlab.train.records import plot_learning_curves

    _scratch().make()  # removed under a running lab (a /tmp cleaner): made again
    scratch = Path(_scratch().name)
    name = hashlib.blake2b(str(folder.resolve()).encode(), digest_size=8).hexdigest()
    return plot_learning_curves(_epochs(_read_json(folder / "metrics.json")), scratch / f"{name}.png")


def _experiment_settings(folder: Path) -> str:
    """What the config view shows of an experiment, which has no config.yaml: its command and settings."""
    import yaml

    results = _read_json(folder / "results.json")
    settings = results.get("settings") if isinstance(results, dict) else None
    command = next(
        (
            line[len("- command: ") :].strip("`")
            for line in _lines(folder / "report.md")
            if line.startswith("- command: ")
        ),
        None,
    )
    text = "# an experiment: no config.yaml of its own; its command and settings (report.md has its results)\n"
    document = {"command": command, "settings": settings if isinstance(settings, dict) else None}
    return text + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=2**16)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _member_curves(root: Path, spec: Path | list[Path], progress: str = "") -> tuple[Path | None, str]:
    """The learning curves of the first member of the ensemble at `spec` (or of `spec`'s members, one still
    training, whose `progress` the label gives in place of the member's place among the started members only: "1 of
    2" read as the whole ensemble of 3) that has readable ones, and a label naming the member; only members inside
    `root` are opened (`cnnlab ensemble` may name runs elsewhere)."""
    from cnnlab.data.folder import check_image
    from cnnlab.train.saved import ensemble_members

    try:
        members = ensemble_members(spec) if isinstance(spec, Path) else spec
    except (OSError, CnnlabError):
        return None, "learning curves"
    for number, member in enumerate(members, 1):
        curves = member / "learning_curves.png"
        if member.resolve().is_relative_to(root.resolve()) and curves.is_file() and check_image(curves) is None:
            place = f"ensemble still training, {progress}" if progress else f"{number} of {len(members)}"
            # a member of another run (`cnnlab ensemble`: mnist/pair/seed0) by its folder under the root: "seed0"
            # named no run of the ensemble's own
            own = isinstance(spec, list) or member.parent.resolve() == spec.parent.resolve()
            name = member.name if own else member.resolve().relative_to(root.resolve()).as_posix()
            return curves, f"learning curves of member {name} ({place}; each member trained on its own)"
    return None, "learning curves"


def _curves_history(root: str | os.PathLike[str], run_id: str) -> tuple[list[tuple[str, list[dict[str, Any]]]], str]:
    """The epochs to plot of a listed run, each with the label of whose they are, and a note naming what is left out.

    A run's are its metrics.json's, labelled `run_id`. An ensemble trains none of its own: its members' (``seed<k>``
    of `train mnist -n`, or the runs `cnnlab ensemble` chose), each labelled by its folder under the root
    (``mnist/E/seed0``), a member still training with the epochs it has; a member outside the root (`cnnlab ensemble`
    may name one) is not opened, and one with no epochs yet is left out, the note saying so.

    Raises:
        CnnlabError: there is nothing to plot, saying why: a metrics.json cut short or not JSON read as "no
            metrics.json", an ensemble none of whose members has epochs yet, and an experiment, whose variants' runs
            hold the curves, as a run without any.
    """
    folder = resolve_run(root, run_id)
    path = folder / "metrics.json"
    reason = _unreadable_json(path)
    if reason is not None:
        raise CnnlabError(f"run {run_id}'s metrics.json cannot be read ({reason}); pick another run")
    history = _epochs(_read_json(path))
    if history:
        return [(run_id, history)], ""
    members = _ensemble_members(folder)
    if members:
        return _members_history(Path(root), run_id, members)
    kind = " (an experiment: its report.md compares its variants)" if _is_experiment(folder) else ""
    raise CnnlabError(f"run {run_id} has no metrics.json with epochs to plot{kind}")


def _ensemble_members(folder: Path) -> list[Path]:
    """The members of the ensemble at `folder`: those its ensemble.json lists, else those started
    (``seed<k>/config.yaml``: still training, or trained with --member, its ensemble.json saved by the last); none for
    a run that is no ensemble."""
    from cnnlab.train.saved import ENSEMBLE_SPEC, ensemble_members

    if (folder / ENSEMBLE_SPEC).is_file():
        with contextlib.suppress(OSError, CnnlabError):  # a record that lists none: its started members, if any
            return ensemble_members(folder / ENSEMBLE_SPEC)
    return _training_members(folder)


def _members_history(
    root: Path, run_id: str, members: list[Path]
) -> tuple[list[tuple[str, list[dict[str, Any]]]], str]:
    """Each member's epochs (see `_curves_history`), labelled by its folder under `root`, and the note."""
    histories, left_out = [], []
    for member in members:
        try:
            label = member.resolve().relative_to(root.resolve()).as_posix()
        except (OSError, ValueError):
            left_out.append(f"{member.name} (outside the runs root)")
            continue
        reason = _unreadable_json(member / "metrics.json")
        history = _epochs(_read_json(member / "metrics.json")) if reason is None else []
        if history:
            histories.append((label, history))
        else:
            left_out.append(f"{member.name} ({f'metrics.json cannot be read: {reason}' if reason else 'no epoch yet'})")
    if not histories:
        raise CnnlabError(
            f"run {run_id} is an ensemble and none of its members under the runs root has epochs to plot yet"
            + (f": {', '.join(left_out)}" if left_out else "")
        )
    return histories, f"{run_id}'s members not plotted: {', '.join(left_out)}" if left_out else ""


# A marker per member of an ensemble, so that its members' curves of one metric (one colour) tell apart; a run that
# is no ensemble takes a cross, which no member has (a dot hid a one-epoch run).
_MEMBER_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
_RUN_MARKER = "x"


def _metric_palette() -> list[str]:
    """The colours of Compare's metrics, distinct for 60: tab10's, then their light shades (tab20's), then tab20b's
    and tab20c's. Line style and marker already tell the runs and members apart, so the colour alone names the
    metric, and the default cycle of ten gave the 11th metric the 1st's."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab20 = colormaps["tab20"].colors
    shades = [*colormaps["tab10"].colors, *tab20[1::2], *colormaps["tab20b"].colors, *colormaps["tab20c"].colors]
    return list(dict.fromkeys(to_hex(colour) for colour in shades))


def compare_curves(root: str | os.PathLike[str], first: str, second: str) -> Any:
    """A matplotlib figure: the two runs' losses (left) and other metrics (right) per epoch, from metrics.json; an
    ensemble's are each member's, labelled ``<ensemble>/seed<k>`` (see `_curves_history`).

    One legend below both plots says what a line's colour (the metric), style (the run) and marker (the member) mean:
    a legend entry per line (an ensemble of 10 gave 22 entries an axis) covered the curves it named. A run compared
    with itself is drawn once."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from cnnlab.train.records import epoch_axis

    # both read before the figure is made: a refusal left it open in pyplot
    (first_curves, first_note), (second_curves, second_note) = (_curves_history(root, r) for r in (first, second))
    # one colour per metric across both runs, one line style per run, one marker per ensemble member
    keys = sorted({k for _, history in first_curves + second_curves for row in history for k in row})
    palette = _metric_palette()
    metrics = [k for k in keys if k.startswith(("train_", "val_"))]
    colours = {key: palette[index % len(palette)] for index, key in enumerate(metrics)}
    runs = ((first, first_curves, "-"), (second, second_curves, "--"))
    if first == second:  # a run with itself: drawn twice, its entries and member names listed twice
        runs = runs[:1]
    members: dict[str, list[str]] = {}  # marker -> the members drawn with it
    drawn: list[list[tuple[str, list[dict[str, Any]], str]]] = [[] for _ in runs]  # (label, history, marker) per run
    for (_, curves, _), lines in zip(runs, drawn, strict=True):
        for number, (label, history) in enumerate(curves):
            marker = _MEMBER_MARKERS[number % len(_MEMBER_MARKERS)] if len(curves) > 1 else _RUN_MARKER
            if len(curves) > 1:
                members.setdefault(marker, []).append(label)
            lines.append((label, history, marker))
    handles = [
        Line2D([], [], color="black", linestyle=style, label=run_id + (" (one line per member)" if len(c) > 1 else ""))
        for run_id, c, style in runs
    ]
    handles += [
        Line2D([], [], color="black", linestyle="none", marker=marker, label=" / ".join(names))
        for marker, names in members.items()
    ]
    handles += [Line2D([], [], color=colour, linewidth=3, label=key) for key, colour in colours.items()]
    columns = 4
    height = 4 + 0.22 * math.ceil(len(handles) / columns)
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(11, height), layout="constrained")
    for (_, _, style), lines in zip(runs, drawn, strict=True):
        for label, history, marker in lines:
            epochs = [row["epoch"] for row in history]
            for key in sorted({k for row in history for k in row if k in colours}):
                axis = loss_axis if key.endswith("loss") else metric_axis
                values = [row[key] if _number(row.get(key)) else float("nan") for row in history]
                axis.plot(epochs, values, style, marker=marker, color=colours[key], label=f"{label}: {key}")
    for axis, title in ((loss_axis, "loss"), (metric_axis, "metrics")):
        epoch_axis(axis, title)
    figure.legend(handles=handles, loc="outside lower center", ncol=columns, fontsize=8, frameon=False)
    notes = [note for note in dict.fromkeys((first_note, second_note)) if note]
    if notes:
        figure.suptitle("; ".join(notes), fontsize=8)
    return figure
