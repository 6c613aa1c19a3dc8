"""Saved models without pickle: ``model.safetensors`` (weights) + ``model.json`` (architecture name and kwargs).

An ensemble is a directory with ``ensemble.json`` listing its members (each a saved-model directory). `load_model`
accepts a run directory, a member directory, an ``ensemble.json``/``model.json`` file or a ``.safetensors`` file
that has its ``model.json`` next to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.errors import CnnlabError, first_line
from cnnlab.files import check_writable, file_sha256, written_then_renamed
from cnnlab.train.device import resolve_device
from cnnlab.train.records import EXPERIMENT_FINISHED, EXPERIMENT_WEIGHTS, SESSIONS, last_session, unended_session

MODEL_WEIGHTS = "model.safetensors"
MODEL_SPEC = "model.json"
ENSEMBLE_SPEC = "ensemble.json"
EXPORT_RECORD_SUFFIX = ".preprocessing.json"  # what `cnnlab export` writes beside the exported file

# What a saved model (its record's `meta`, docs/ARCHITECTURE.md "Model records") or an export is, by what it takes
# and returns: `kind` in every record, so a reader need not tell a segmenter from a classifier by which keys it has
DIGIT_CLASSIFIER = "digit-classifier"  # `train mnist` runs, members and ensembles: [N, 1, 28, 28] digits -> logits
IMAGE_CLASSIFIER = "image-classifier"  # `train transfer` runs and zoo models: RGB photos -> logits
DIGIT_SEGMENTER = "digit-segmenter"  # `train segment` on the MNIST canvases: [N, 1, H, W] -> per-pixel logits
SEGMENTER = "segmenter"  # `train segment --data`: RGB images of any size -> per-pixel logits
MODEL_KINDS = (DIGIT_CLASSIFIER, IMAGE_CLASSIFIER, DIGIT_SEGMENTER, SEGMENTER)
# an export's kind only (`fcn convert` saves no model.json): an MNIST classifier made fully convolutional, [N, 1, H, W]
# digits -> the classifier's scores for every training-sized window
DIGIT_SCANNER = "digit-scanner"
_DIGITS = [str(digit) for digit in range(10)]
EXPORT_LAYOUT = "cnnlab-export-2"  # `layout` of an export's record: README "What an export's record holds"
_DEFAULT_CLASSES = {DIGIT_CLASSIFIER: _DIGITS, DIGIT_SEGMENTER: ["background", *_DIGITS]}


class Ensemble(nn.Module):
    """Averages the members' softmax probabilities and returns the log of the average.

    The output is a valid logit vector (softmax of it gives back the averaged probabilities; argmax is the
    ensemble's prediction), so an ensemble can be used wherever a single model is.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([member(x).float().softmax(dim=1) for member in self.members]).mean(0)
        return probabilities.clamp_min(1e-12).log()


def save_model(
    model: nn.Module, directory: str | os.PathLike[str], arch: str, kwargs: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Write `model`'s weights and its architecture record into `directory`; returns the weights path.

    Args:
        model: the module (its state_dict is saved; tensors are made contiguous and moved to the CPU).
        directory: where ``model.safetensors`` and ``model.json`` go.
        arch: registered model name (`cnnlab.create_model` rebuilds it).
        kwargs: constructor keyword arguments (JSON-serialisable; tuples come back as lists and are restored).
        meta: free-form facts saved with it (input shape and range, metrics, seed ...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = save_weights(model, directory / MODEL_WEIGHTS)
    # the weights' SHA-256, checked on every load: a file damaged inside its tensors (a flipped bit of a bad copy or
    # disk) still parses as safetensors, and was loaded, predicted with and exported without a word
    spec = {"format": "cnnlab-model-1", "arch": arch, "kwargs": kwargs, "weights_sha256": digest, "meta": meta}
    with written_then_renamed(directory / MODEL_SPEC) as record:
        record.write_text(json.dumps(spec, indent=1))
    return directory / MODEL_WEIGHTS


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> str:
    """Write `model`'s state_dict to the safetensors file `path` (tensors made contiguous, on the CPU) and return the
    file's SHA-256, which the record written beside it keeps and every load checks.

    The file is renamed into place once whole: a run stopped while it saved left a truncated model.safetensors that
    `predict` and `evaluate` failed on with safetensors' "incomplete metadata" traceback.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with written_then_renamed(path) as weights:
        save_file(state, str(weights))
        return file_sha256(weights)


def save_ensemble(
    directory: str | os.PathLike[str], members: list[str | os.PathLike[str]], meta: dict[str, Any]
) -> Path:
    """Write ``ensemble.json`` listing member directories (stored relative to `directory`) and the SHA-256 of each
    member's weights, so that a member replaced later (`--overwrite` of its run) is refused, not averaged in unsaid.

    Raises:
        CnnlabError: a member's weights are missing or damaged (a member cut short after it finished, which a resumed
            `train mnist --ensemble` reuses without loading): its digest would make the damage the record.
    """
    directory = Path(directory)
    relative = [os.path.relpath(Path(m), directory) for m in members]
    digests = [_weights_digest(Path(m) / MODEL_WEIGHTS, directory) for m in members]
    path = directory / ENSEMBLE_SPEC
    with written_then_renamed(path) as record:
        record.write_text(
            json.dumps({"format": "cnnlab-ensemble-1", "members": relative, "digests": digests, "meta": meta}, indent=1)
        )
    return path


def _weights_digest(weights: Path, ensemble: Path) -> str:
    """The SHA-256 of the weights file at `weights`, once its bytes (read for the digest anyway) hold a whole
    safetensors file.

    Raises:
        CnnlabError: the file is missing or damaged, naming the `ensemble` that would have listed it.
    """
    try:
        data = weights.read_bytes()
        load_weights(weights, data=data)
    except FileNotFoundError:
        raise CnnlabError(
            f"cannot save the ensemble {ensemble}: {weights} is missing; copy the run again or train it again"
        ) from None
    except CnnlabError as error:
        raise CnnlabError(f"cannot save the ensemble {ensemble}: {error}") from None
    return hashlib.sha256(data).hexdigest()


def read_record(spec: Path) -> dict[str, Any]:
    """The JSON object in `spec` (a ``model.json`` or ``ensemble.json``).

    Raises:
        CnnlabError: when the file cannot be decoded or holds JSON that is not an object (a list, a string ...).
    """
    try:
        record = json.loads(spec.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise CnnlabError(f"{spec} is not valid JSON ({error}); is it a cnnlab run?") from None
    if not isinstance(record, dict):
        raise CnnlabError(
            f"{spec} holds a JSON {type(record).__name__}, not a cnnlab model record; is it a cnnlab run?"
        )
    return record


def ensemble_members(spec: Path) -> list[Path]:
    """The member directories that the ``ensemble.json`` at `spec` lists (its entries are relative to its folder).

    Raises:
        CnnlabError: when the file is not an ensemble record, or lists no members.
    """
    named = read_record(spec).get("members")
    if not isinstance(named, list) or not named or not all(isinstance(member, str) for member in named):
        raise CnnlabError(f"{spec} does not list its members' folders under 'members'; re-save the ensemble")
    return [Path(os.path.normpath(spec.parent / member)) for member in named]  # "e2/../q" as "q"


def present_ensemble_members(spec: Path) -> list[Path]:
    """`ensemble_members`, each checked to be there: a member moved or renamed on its own (the ensemble's entries are
    relative to its folder), or an ensemble copied without its members, was reported as "no saved model at
    MEMBER/model.json" (by `load_model`, and by `cnnlab ensemble` once MNIST was read), naming a run the user never
    passed and not the ensemble that needs it.

    Raises:
        CnnlabError: naming the ensemble, the entry and where it looked, when a member's folder is not there.
    """
    named = read_record(spec).get("members")
    for entry, folder in zip(named, folders := ensemble_members(spec), strict=True):
        if not folder.is_dir():
            raise CnnlabError(
                f"{spec.parent} is an ensemble whose member {entry!r} is not there ({folder}: moved or renamed?); its "
                "members are found relative to its folder: put that run back there, or run `cnnlab ensemble` again "
                "with the runs where they are now"
            )
    return folders


def _restore_tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def _build_single(spec_path: Path) -> tuple[str, nn.Module]:
    """The architecture name and the network that the ``model.json`` at `spec_path` describes, with fresh weights."""
    from cnnlab.models import create_model

    spec = read_record(spec_path)
    try:
        arch, kwargs = spec["arch"], _restore_tuples(spec.get("kwargs", {}))
        if not isinstance(arch, str):
            raise TypeError(f"'arch' is {arch!r}, not a name")
    except (KeyError, TypeError, AttributeError) as error:
        raise CnnlabError(f"{spec_path} is not a cnnlab model record ({error}); re-save the model") from None
    return arch, create_model(arch, **kwargs)


def _load_single(spec_path: Path, device: str | torch.device, data: bytes | None = None) -> nn.Module:
    """The model `spec_path` describes with its weights: the file's, or `data` when given (its bytes, read already)."""
    arch, model = _build_single(spec_path)
    weights = spec_path.parent / MODEL_WEIGHTS
    if data is None and not weights.is_file():
        raise CnnlabError(f"{weights} is missing next to {spec_path}; the saved model is incomplete")
    recorded = read_record(spec_path).get("weights_sha256")  # absent from models saved before it was recorded
    if isinstance(recorded, str) and data is None:
        data = weights.read_bytes()
    state = load_weights(weights, device, data)  # a file cut short or not safetensors is said so first
    if isinstance(recorded, str) and (digest := hashlib.sha256(data).hexdigest()) != recorded:  # type: ignore[arg-type]
        raise CnnlabError(
            f"{weights} is damaged: its SHA-256 is {digest[:16]}..., not the {recorded[:16]}... {spec_path.name} "
            "records for the weights saved with it; copy the run again or train it again"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CnnlabError(f"{weights} does not fit architecture {arch!r}: {first_line(error)}") from None
    return model.to(device)


def load_weights(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    data: bytes | None = None,
    remedy: str = "copy the run again or train it again",
) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file at `path` (of `data`, its bytes, when they were read already).

    Raises:
        CnnlabError: the file is missing or damaged (zero bytes, cut short, not safetensors), one line naming it and
            `remedy`; safetensors' own traceback named neither.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        return load(data) if data is not None else load_file(str(path), device=str(device))
    except FileNotFoundError:  # a folder copied without it: "No such file or directory", exit 1, no remedy
        raise CnnlabError(f"{path} is missing; {remedy}") from None
    except SafetensorError as error:
        raise CnnlabError(f"{path} is damaged, not a whole safetensors file ({first_line(error)}); {remedy}") from None


def load_model_and_digest(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    expected_digest: str | None = None,
    ensemble: Path | None = None,
) -> tuple[nn.Module, str]:
    """`load_model` of a single saved model, and the SHA-256 of its weights file, which is read once: the digest is
    that of the weights loaded (hashing the file apart read it a second time, and a file replaced in between gave
    another model's digest).

    Args:
        path: what `load_model` accepts, for a single model.
        device: where to put the weights.
        expected_digest: the SHA-256 the weights must have (what an ensemble recorded of its member); checked
            before the bytes are loaded, so a member replaced by another file, even a damaged one, is called replaced.
        ensemble: the folder of the ensemble that recorded `expected_digest`, named in the refusal.

    Raises:
        CnnlabError: as `load_model`; `path` is an ensemble (its weights are several files); the weights' digest is
            not `expected_digest`.
    """
    device = resolve_device(device)
    path = spec_path(path)
    if path.name.endswith(ENSEMBLE_SPEC):
        raise CnnlabError(f"{path} is an ensemble; its members' weights are several files, not one to digest")
    weights = path.parent / MODEL_WEIGHTS
    if not weights.is_file():
        raise CnnlabError(f"{weights} is missing next to {path}; the saved model is incomplete")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if expected_digest is not None and digest != expected_digest:
        if ensemble is None:
            raise CnnlabError(f"{weights} is not the file expected (its SHA-256 is {digest}, not {expected_digest})")
        raise CnnlabError(
            f"{path.parent} was replaced after the ensemble {ensemble} was made (its weights are not the ones the "
            "ensemble was scored with); make the ensemble again (`cnnlab ensemble`, or train it with --overwrite)"
        )
    return _load_single(path, device, data).eval(), digest


def spec_path(path: str | os.PathLike[str]) -> Path:
    """The JSON file that describes the saved model at `path` (what `load_model` accepts): a directory's
    ``ensemble.json`` or ``model.json``, the ``model.json`` beside a ``.safetensors`` file, or the JSON file itself.

    Raises:
        CnnlabError: when nothing loadable is at `path`.
    """
    path = Path(path)
    if path.is_dir():
        if (path / ENSEMBLE_SPEC).is_file():
            return path / ENSEMBLE_SPEC
        if (path / MODEL_SPEC).is_file():
            return path / MODEL_SPEC
        raise CnnlabError(f"{path} holds no {MODEL_SPEC} or {ENSEMBLE_SPEC}{_what_it_holds(path)}")
    if path.suffix == ".safetensors":
        path = path.parent / MODEL_SPEC
    if not path.is_file():
        raise CnnlabError(f"no saved model at {path}; pass a run directory or a model.json / model.safetensors file")
    if path.name.endswith(EXPORT_RECORD_SUFFIX):  # it has no 'arch': "re-save the model" was the advice
        exported = path.with_name(path.name.removesuffix(EXPORT_RECORD_SUFFIX))
        raise CnnlabError(
            f"{path} is the preprocessing record `cnnlab export` wrote for {exported}, not a saved model; "
            f"pass {_run_to_pass(path)}"
        )
    check_not_exported(path)
    return path


def evaluation_folder(run_dir: Path, output: str | os.PathLike[str] | None) -> Path:
    """Where `cnnlab evaluate` writes evaluation.json and its figures: `output`, or ``RUN/evaluation``; checked before
    anything is scored.

    Raises:
        CnnlabError: `output` holds a saved run (its model.json or ensemble.json): `-o RUN` replaced the run's own
            confusion_matrix.png (and highest_loss.png, misclassified.png), which its report.md shows, with those of
            the images evaluated; or it cannot be written (`cnnlab.files.check_writable`).
    """
    out = Path(output) if output is not None else run_dir / "evaluation"
    held = next((name for name in (MODEL_SPEC, ENSEMBLE_SPEC) if (out / name).is_file()), None)
    if held is not None:
        raise CnnlabError(
            f"--output {out} holds a saved run ({held}): this evaluation's figures would replace the run's own, which "
            f"its report.md shows; pass another folder, such as {out / 'evaluation'} (the default for that run)"
        )
    check_writable(out / "evaluation.json", shown=str(out))
    return out


def read_export_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record `cnnlab export` wrote beside an exported file (`path` is the record or the exported file), in the
    current layout (`EXPORT_LAYOUT`, README "What an export's record holds").

    A record written before it had a ``layout`` (up to 2026-12-07) is read as if written now: its kind is told by its
    keys (``prepare_steps``: digits; ``center_crop``: photos; ``max_side``: a segmenter), its mean and std, kept under
    ``record`` by a photo classifier, at the top by a segmenter and not at all by an MNIST export, become
    ``normalisation``, and a segmenter's ``views`` the identity alone.

    Raises:
        CnnlabError: the file is missing, not JSON, or not a record `cnnlab export` wrote.
    """
    path = Path(path)
    if not path.name.endswith(EXPORT_RECORD_SUFFIX):
        path = path.with_name(path.name + EXPORT_RECORD_SUFFIX)
    if not path.is_file():
        raise CnnlabError(f"{path} is missing; export the run again with `cnnlab export`")
    record = read_record(path)
    if record.get("layout") == EXPORT_LAYOUT:
        return _with_input_shape(record)
    upgraded = {"layout": EXPORT_LAYOUT, **record}
    if "prepare_steps" in record:
        from cnnlab.models.mnist_net import MNIST_MEAN, MNIST_STD  # every cnnlab MNIST network normalises with them

        upgraded["kind"] = DIGIT_CLASSIFIER
        upgraded.setdefault("normalisation", {"mean": [MNIST_MEAN], "std": [MNIST_STD]})
    elif "center_crop" in record:
        upgraded["kind"] = IMAGE_CLASSIFIER
        weights = record.get("record")
        if isinstance(weights, dict) and "mean" in weights:
            upgraded.setdefault("normalisation", {"mean": list(weights["mean"]), "std": list(weights["std"])})
    elif "max_side" in record:
        upgraded["kind"] = SEGMENTER
        upgraded.setdefault("views", ["identity"])
        if "mean" in record:
            upgraded.setdefault("normalisation", {"mean": upgraded.pop("mean"), "std": upgraded.pop("std")})
    else:
        raise CnnlabError(f"{path} is not a record `cnnlab export` wrote (it holds no preparation); export again")
    return _with_input_shape(upgraded)


def _with_input_shape(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with the ``input_shape`` an export of its kind takes, where it was written before records held one:
    any batch size ("N"), a classifier's height and width fixed (MNIST's 28x28, a photo classifier's crop), a
    segmenter's free."""
    if "input_shape" in record:
        return record
    shapes = {
        DIGIT_CLASSIFIER: lambda: ["N", 1, 28, 28],
        IMAGE_CLASSIFIER: lambda: ["N", 3, *record["center_crop"]],
        SEGMENTER: lambda: ["N", 3, "H", "W"],
    }
    return {**record, "input_shape": shapes[record["kind"]]()} if record.get("kind") in shapes else record


def check_not_exported(path: Path) -> None:
    """Refuse a file `cnnlab export` wrote (its preprocessing record lies beside it) as a saved model, naming the run
    to pass instead and how the exported file is loaded: "a file other than a model.json" said neither.

    Raises:
        CnnlabError: `path` has an export's record beside it.
    """
    record = path.with_name(path.name + EXPORT_RECORD_SUFFIX)
    if not record.is_file():
        return
    try:
        load = json.loads(record.read_text()).get("load")  # every layout's
    except (OSError, ValueError, AttributeError):
        load = None
    how = f" (outside cnnlab: {load}, with {record.name} for the preprocessing)" if isinstance(load, str) else ""
    raise CnnlabError(
        f"{path} is a model `cnnlab export` wrote{how}; cnnlab's commands read the saved run: pass {_run_to_pass(path)}"
    )


def _run_to_pass(exported: Path) -> str:
    """What to pass instead of a file `cnnlab export` wrote into `exported.parent`: that run folder, else its source."""
    has_run = (exported.parent / MODEL_SPEC).is_file() or (exported.parent / ENSEMBLE_SPEC).is_file()
    return f"the run's folder, {exported.parent}" if has_run else "the run directory it was exported from"


def _what_it_holds(folder: Path) -> str:
    """The end of spec_path's message for a folder without a saved model: what is there instead."""
    from cnnlab.train.checkpoint import CHECKPOINT_NAME

    phase = _phase(folder)
    if phase is not None:  # its checkpoint is the phase's own: the run saves its model one folder up
        run = folder.parent
        if (run / MODEL_SPEC).is_file() or (run / ENSEMBLE_SPEC).is_file():
            return f": it is the {phase!r} phase of the run in {run}, which holds the model; pass {run}"
        # the run's own sessions say whether it trains now: "run it again with --resume" was said of a run training
        running = unended_session(run)
        unfinished = f": it is the {phase!r} phase of the run in {run}, whose training has not finished"
        return f"{unfinished}: {_still_training(run, running)}" if running else f"{unfinished}; {_to_continue(run)}"
    running = unended_session(folder)
    if running is not None:  # "run it again with --resume" of a run training now would start a second process on it
        return f": its training has not finished: {_still_training(folder, running)}"
    if (folder / CHECKPOINT_NAME).is_file():  # a run stopped before it saved its model
        return f": its training has not finished ({CHECKPOINT_NAME} is there); {_to_continue(folder)}"
    stopped_how = _last_session_end(folder)
    if stopped_how in ("interrupted", "failed"):  # in its first epoch: "is it a finished cnnlab run?" said nothing
        return (
            f": its training {'was interrupted' if stopped_how == 'interrupted' else 'failed'} before it saved a "
            f"model ({SESSIONS} records it); {_to_continue(folder)}"
        )
    # a run of several phases (a transfer run) keeps its checkpoint in the phase's folder, not its own: stopped
    # mid-training, it was "is it a finished cnnlab run?", which said neither that it was unfinished nor what to do
    stopped = next((sub for sub in _subfolders(folder) if (sub / CHECKPOINT_NAME).is_file() and _phase(sub)), None)
    if stopped is not None:
        return (
            f": its training has not finished (its {_phase(stopped)!r} phase stopped, {stopped.name}/"
            f"{CHECKPOINT_NAME} is there), so there is no model to use yet; {_to_continue(folder)}"
        )
    experiment_run = _experiment_run(folder)
    if experiment_run is not None:  # it asked "is it a finished cnnlab run?" (an experiment's variant: "an ensemble")
        experiment = experiment_run.parent.parent
        report = f", whose results are in {experiment / 'report.md'}" if (experiment / "report.md").is_file() else ""
        return (
            f": it {'is a run' if experiment_run == folder else 'holds runs'} of `cnnlab experiment`{report}; an "
            f"experiment keeps its runs' weights ({EXPERIMENT_WEIGHTS}) to read them back, not as a model to load: "
            "train one with `cnnlab train mnist` (or transfer, segment) and pass its run folder"
        )
    members = [sub for sub in _subfolders(folder) if sub.name.startswith("seed") and sub.name[4:].isdigit()]
    if members:  # `train mnist --ensemble N` saves ensemble.json once every member is trained
        saved = [member.name for member in members if (member / MODEL_SPEC).is_file()]
        unsaved = [member.name for member in members if member.name not in saved]
        state = f"{', '.join(saved) or 'no member'} saved" + (f", {', '.join(unsaved)} not yet" if unsaved else "")
        use = f"pass a finished member's folder ({folder / saved[0]}) to use it alone, or " if saved else ""
        return (
            f": it is an ensemble whose training has not finished ({state}); {use}wait for it, or if it stopped, "
            f"{_to_continue(folder)}"
        )
    names = sorted(entry.name for entry in folder.iterdir())
    if not names:
        return "; it is empty"
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f" (it holds {shown}); is it a finished cnnlab run?"


def _experiment_run(folder: Path) -> Path | None:
    """A finished run of `cnnlab experiment` (``<experiment>/<variant>/seedN``) that `folder` is, or holds as a
    variant's or an experiment's folder; None when it is none of these."""
    for run in (folder, *_subfolders(folder), *(run for sub in _subfolders(folder) for run in _subfolders(sub))):
        if (run / EXPERIMENT_WEIGHTS).is_file() and (run / EXPERIMENT_FINISHED).is_file():
            return run
    return None


def _to_continue(folder: Path, running: str | None = None) -> str:
    """How to continue the unfinished run in `folder`: its command again with --resume (and --name), or, for a run
    `cnnlab answers` trains for its sheet (which has neither option and continues its runs when run again), that
    command again. `running`: `unended_session`'s words, whose command is the one named ("that command")."""
    last = last_session(folder)
    command = last.get("command") if last is not None else None
    if isinstance(command, str) and re.search(r"(^|[\s/])cnnlab\s+answers(\s|$)", command):
        that = "that command" if running is not None else f"`{command}`"
        return f"run {that} again without --overwrite: the sheet continues its runs"
    if running is not None:
        return f"run that command again with --resume{'' if '--name' in running else f' --name {folder.name}'}"
    return (
        f"run the command that started it again with --resume (and --name {folder.name} if the run was named by its "
        "start time)"
    )


def _still_training(folder: Path, running: str) -> str:
    """What to do about the run in `folder` whose session `running` (`unended_session`'s words) has not ended."""
    return (
        f"{running} has not ended, so it is still training or its process was killed; wait for it to save its model "
        f"(if it was killed, {_to_continue(folder, running)})"
    )


def _last_session_end(folder: Path) -> str | None:
    """How the run's last session ended ("finished", "interrupted", "failed"), None if unknown or not yet."""
    last = last_session(folder)
    ended = last.get("ended") if last is not None else None
    return ended if isinstance(ended, str) else None


def _subfolders(folder: Path) -> list[Path]:
    """`folder`'s folders, by name; none where it cannot be listed."""
    try:
        return sorted(entry for entry in folder.iterdir() if entry.is_dir())
    except OSError:
        return []


def _phase(folder: Path) -> str | None:
    """The phase `folder` trained when it is one phase of a run with several (a transfer run's ``head``), as its
    config.yaml records it (``extra: phase:``); None for any other folder."""
    import yaml

    try:
        phase = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))["config"]["extra"]["phase"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):  # no config, or one without a phase
        return None
    return phase if isinstance(phase, str) else None


def saved_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` record saved with the model at `path`, in the current layout (`current_meta`); {} when it has
    none.

    Raises:
        CnnlabError: when nothing loadable is at `path`, or its JSON does not parse.
    """
    spec = spec_path(path)
    meta = read_record(spec).get("meta", {})
    if not isinstance(meta, dict):
        raise CnnlabError(f"{spec}: its 'meta' is a JSON {type(meta).__name__}, not an object; re-save the model")
    if spec.name.endswith(ENSEMBLE_SPEC):  # saved before ensembles recorded their task: they are MNIST ensembles
        meta = {"task": "mnist", **meta}
    return current_meta(meta) if meta else {}


def model_kind(meta: dict[str, Any]) -> str | None:
    """What the model whose `meta` this is takes and returns: one of `MODEL_KINDS`, or None for a record cnnlab
    did not write. Records saved before they held a ``kind`` are told apart as their tasks saved them: a segmenter of
    the MNIST canvases records no normalisation, one of a folder does, and a transfer run its weights' record."""
    kind = meta.get("kind")
    if kind in MODEL_KINDS:
        return str(kind)
    task = meta.get("task", "mnist")
    if task == "segment":
        return SEGMENTER if "normalisation" in meta else DIGIT_SEGMENTER
    if task == "transfer" or "preprocessing" in meta:
        return IMAGE_CLASSIFIER
    return DIGIT_CLASSIFIER if task == "mnist" else None


def current_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` in the layout every task writes now (docs/ARCHITECTURE.md, "Model records"): a record saved before
    (no ``kind``; a transfer run's mean/std only inside ``preprocessing``; a folder segmenter's recipe under
    ``model``; no ``classes`` for MNIST runs and canvas segmenters) is read as if written now. Keys it does not know
    are kept."""
    upgraded = dict(meta)
    kind = model_kind(meta)
    if kind is None:
        return upgraded
    upgraded["kind"] = kind
    if "classes" not in upgraded and kind in _DEFAULT_CLASSES:
        upgraded["classes"] = list(_DEFAULT_CLASSES[kind])
    preprocessing = meta.get("preprocessing")
    if "normalisation" not in upgraded and isinstance(preprocessing, dict) and "mean" in preprocessing:
        upgraded["normalisation"] = {"mean": list(preprocessing["mean"]), "std": list(preprocessing["std"])}
    if kind == SEGMENTER and "recipe" not in upgraded and "model" in upgraded:
        upgraded["recipe"] = upgraded["model"]
    return upgraded


DIGIT_INPUT = (1, 28, 28)  # what `mnist_preprocess` makes of an image: the input of every `train mnist` network


def check_digit_input(network: nn.Module, spec: Path) -> None:
    """Refuse a network read as an MNIST digit classifier that was built for other inputs than `mnist_preprocess`'s
    1x28x28: a lenet5 (1x32x32) saved from Python with no ``kind`` in its meta failed on its first image with torch's
    "Kernel size can't be greater than actual input size" (`cnnlab predict`, `export`, `explain`, `evaluate`).

    Raises:
        CnnlabError: naming the record, the input its network states and the digits it would be fed.
    """
    stated = {tuple(module.default_input_size) for module in network.modules() if hasattr(module, "default_input_size")}
    wrong = sorted(size for size in stated if size != DIGIT_INPUT)
    if not wrong:
        return
    record = read_record(spec)
    meta = record.get("meta")
    arch = record.get("arch", "its network")
    why = (
        "it records kind digit-classifier"
        if isinstance(meta, dict) and "kind" in meta
        else "its meta records no 'kind', so it is read as an MNIST digit classifier"
    )
    raise CnnlabError(
        f"{spec}: {arch} takes {'x'.join(map(str, wrong[0]))} inputs, but {why}, which cnnlab feeds MNIST's "
        f"{'x'.join(map(str, DIGIT_INPUT))} digits; pass a digit network built for them (mnist_net, "
        "mnist_net_small, mnist_baseline: `cnnlab train mnist`)"
    )


def build_network(path: str | os.PathLike[str]) -> nn.Module:
    """The network saved at `path` (what `load_model` accepts), built as its record describes but without reading
    its weights: what `cnnlab budget RUN` sizes. Under ``torch.device("meta")`` no weight is even initialised.

    Raises:
        CnnlabError: when nothing loadable is at `path`, or its record names no architecture.
    """
    path = spec_path(path)
    if path.name.endswith(ENSEMBLE_SPEC):
        return Ensemble([_build_single(member / MODEL_SPEC)[1] for member in present_ensemble_members(path)])
    return _build_single(path)[1]


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load a saved model or ensemble in eval mode.

    For MNIST models the returned module takes float images in [0, 1] shaped [N, 1, 28, 28] and returns logits
    (normalisation is inside). An ensemble returns log(mean softmax) of its members (see `Ensemble`).

    Args:
        path: a run directory, a saved-model directory, ``model.json``, ``ensemble.json`` or ``model.safetensors``.
        device: where to put the weights.

    Raises:
        CnnlabError: when nothing loadable is at `path`, or `device` is unknown or not on this machine.
    """
    device = resolve_device(device)
    path = spec_path(path)
    if path.name == ENSEMBLE_SPEC or path.name.endswith(ENSEMBLE_SPEC):
        folders = present_ensemble_members(path)
        digests = read_record(path).get("digests")  # ensembles saved before digests were recorded have none
        if not isinstance(digests, list) or len(digests) != len(folders):
            digests = [None] * len(folders)
        members = [
            load_model_and_digest(folder / MODEL_SPEC, device, digest, ensemble=path.parent)[0]
            for folder, digest in zip(folders, digests, strict=True)
        ]
        model: nn.Module = Ensemble(members)
    else:
        model = _load_single(path, device)
    return model.eval()
