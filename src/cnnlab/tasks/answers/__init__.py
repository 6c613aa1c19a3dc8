"""`cnnlab answers`: the chapter's ten exercises answered with evidence measured by the invocation that writes them.

`run_answers` measures each exercise (`measure.EXERCISES`), saves every result into ``answers.json`` as soon as it
is known, and renders ``answers.md`` from that JSON alone (`sheet.render`). An interrupted invocation loses nothing:
run it again with the same ``--output`` and the exercises already measured in that mode are read back, not measured
again (``--overwrite`` measures them afresh); those not chosen this time (``--exercise``) stay in the sheet. An
exercise whose data is missing is reported in the sheet with the reason, and the others still run.

Before it returns, the sheet is checked against the JSON (`sheet.untraced_numbers`): a number that the JSON does not
account for is an error in cnnlab, reported as such.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cnnlab.data.mnist import find_mnist_dir
from cnnlab.errors import CnnlabError, first_line, why_not_a_folder
from cnnlab.files import check_writable, write_text_whole
from cnnlab.tasks.answers.measure import EXERCISES, MODES, Context, Mode, timed
from cnnlab.tasks.answers.sheet import render, unrenderable, untraced_numbers
from cnnlab.tasks.recipes import note_current_run
from cnnlab.tasks.runs_root import misplaced_root
from cnnlab.train.config import command_line
from cnnlab.train.records import RESULTS

__all__ = ["CHAPTER", "MODES", "Mode", "run_answers", "untraced_numbers"]

CHAPTER = 14
RESULTS_FILE = "answers.json"
SHEET_FILE = "answers.md"
# what a finished run leaves: an experiment's run its finished.json, a training run its results.json
_RUN_FINISHED = {"finished.json", RESULTS}


def _hardware() -> str:
    from cnnlab.train.config import environment_record

    record = environment_record()
    hardware = record["hardware"]
    device = f", {hardware['cuda']}" if hardware["cuda"] else ""
    return f"{hardware['cpu']}, {hardware['cpu_count']} CPU cores{device}, torch {record['versions']['torch']}"


def _previous(path: Path, mode: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Exercises already measured in `mode` by an earlier (possibly interrupted) invocation into the same folder.

    A record that does not parse is said so and measured anew (it was measured anew without a word, or, holding
    JSON other than an object, an AttributeError).
    """
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        previous = None
    if not isinstance(previous, dict) or not isinstance(previous.get("exercises"), dict):
        say(f"{path} is not an answer sheet's record; every exercise is measured again and it is replaced")
        return {}
    meta = previous.get("meta")
    if not isinstance(meta, dict) or meta.get("mode") != mode:
        return {}
    kept = {}
    for key, value in previous["exercises"].items():
        if not isinstance(value, dict) or "error" in value or not key.isdigit() or int(key) not in EXERCISES:
            continue
        why = unrenderable(int(key), value)
        if why:  # written by another cnnlab version: it was read back and the sheet failed at the end
            say(
                f"exercise {key}: its record in {path}, written by another cnnlab version, cannot be shown ({why}); "
                f"it is measured again when chosen (-e {key}), else left out of the sheet"
            )
            continue
        kept[key] = _where_now(value, path.parent)
    return kept


def _where_now(evidence: dict[str, Any], out: Path) -> dict[str, Any]:
    """A read-back exercise's `run_dir` (exercise 7's Reproduce line) where the run is now: a run inside the sheet's
    folder (its `folder` relative to it) moved with the folder, and the path recorded when it was measured named
    where it was. A run outside it (``--runs``, its `folder` the path as given) is named as recorded."""
    run_dir, folder = evidence.get("run_dir"), evidence.get("folder")
    if not isinstance(run_dir, str) or not isinstance(folder, str) or folder == run_dir or Path(folder).is_absolute():
        return evidence
    return {**evidence, "run_dir": str(out / folder)}


def _finished_any(out: Path, mode: str) -> bool:
    """Whether a sheet interrupted in `out` had finished anything that the same command reads back: an exercise
    recorded in answers.json in `mode`, or a run of its own (an experiment's run, a training run) in the folder.
    Interrupted before any, its line said it "keeps what it finished" and the same command "reads it back"."""
    if _previous(out / RESULTS_FILE, mode, lambda message: None):
        return True
    return any(path.name in _RUN_FINISHED for path in out.rglob("*.json"))


def run_answers(
    mode: str | Mode = "quick",
    output: str | os.PathLike[str] = "runs/answers",
    runs: str | os.PathLike[str] | None = None,
    data_dir: str | None = None,
    exercises: Sequence[int] = (),
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
) -> Path:
    """Measure and write the answer sheet; returns the path of answers.md.

    Args:
        mode: ``quick`` (minutes on a CPU: subsets, quick recipes), ``full`` (the full recipes, about an hour) or a
            `Mode` (tests use smaller ones).
        output: the folder of answers.md, answers.json, the figures and the runs trained here.
        runs: a runs root (as written by `cnnlab train`/`experiment`, e.g. ``runs``) whose finished runs are used
            instead of training again: ``experiment/<name>``, ``mnist/*`` of the mode's recipe, ``segment/*`` and
            ``transfer/*``.
        data_dir: the MNIST root (else ``$CNNLAB_DATA``, else ``./data``).
        exercises: only these exercise numbers (default all ten); the others an earlier invocation measured into
            this folder in this mode stay in the sheet.
        overwrite: measure every chosen exercise again, even those an earlier invocation finished in this folder.
        log: where progress lines go (default: stderr).
        device: where the sheet's training runs and experiments train (cpu, cuda, cuda:N, mps or auto), checked on this
            machine first; None: each one's own (the recipes' auto, the experiments' CPU).
    """
    from cnnlab.train.device import resolve_device

    chosen = MODES.get(mode) if isinstance(mode, str) else mode
    if chosen is None:
        raise CnnlabError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    numbers = list(dict.fromkeys(exercises)) or sorted(EXERCISES)  # `-e 6 -e 6` measured exercise 6 twice
    unknown = [number for number in numbers if number not in EXERCISES]
    if unknown:
        raise CnnlabError(f"no exercise {unknown[0]}; the chapter's exercises are 1 to {max(EXERCISES)}")
    device = str(resolve_device(device)) if device is not None else None  # "auto" as the device it picks
    runs_root = Path(runs) if runs is not None else None
    if runs_root is not None and not runs_root.is_dir():
        raise CnnlabError(f"--runs {runs_root} {why_not_a_folder(runs_root)}; pass a runs root such as runs")
    if data_dir is not None:  # a --data-dir without MNIST: every exercise "not measured", and exit code 0
        find_mnist_dir(data_dir)

    misplaced = misplaced_root(runs_root) if runs_root is not None else None
    if misplaced is not None:  # a task's folder read no run, and every exercise was trained again
        raise CnnlabError(misplaced)
    out = Path(output)
    check_writable(out / RESULTS_FILE, shown=str(out))  # an --output that is a file: exit code 2, not an OSError's 1
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    results_path = out / RESULTS_FILE
    earlier = _previous(results_path, chosen.name, say)
    done = {} if overwrite else earlier
    ctx = Context(chosen, out, runs_root, data_dir, say, overwrite=overwrite, device=device)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "chapter": CHAPTER,
            "command": command_line(),
            "mode": chosen.name,
            "mode_settings": chosen.to_dict(),
            "date": datetime.now().strftime("%Y-%m-%d"),
            "hardware": _hardware(),
            "runs": str(runs_root) if runs_root else None,
            "minutes": 0.0,
        },
        "exercises": {},
    }
    chosen_keys = {str(number) for number in numbers}
    known = {str(number) for number in EXERCISES}  # an exercise no longer on the sheet is not carried over
    not_chosen = {
        key: {**evidence, "read_back": True} for key, evidence in earlier.items() if key in known - chosen_keys
    }
    for number in numbers:
        key = str(number)
        if key in done:
            say(f"exercise {number}: read back from {results_path} (measured earlier; --overwrite measures again)")
            results["exercises"][key] = {**done[key], "read_back": True}
            continue
        say(f"exercise {number}: measuring ...")
        try:
            evidence = timed(EXERCISES[number], ctx)
            evidence["measured_by"] = {"command": results["meta"]["command"], "date": results["meta"]["date"]}
        except KeyboardInterrupt:  # the runs inside noted themselves; the sheet, not them, is what to continue
            note_current_run(
                out,
                again=True,
                again_without="--overwrite" if overwrite else None,
                finished_any=lambda: _finished_any(out, chosen.name),
            )
            raise
        except (CnnlabError, FileNotFoundError, ImportError) as error:  # missing data or package: say what to do
            evidence = {"error": first_line(error)}
            say(f"exercise {number}: not measured: {evidence['error']}")
        except Exception as error:  # noqa: BLE001 - a bug in one exercise must not cost the others their results
            say(traceback.format_exc())
            evidence = {"error": f"{type(error).__name__}: {error} (a cnnlab bug; the traceback was printed)"}
            say(f"exercise {number}: failed: {evidence['error']}")
        else:
            say(f"exercise {number}: done in {evidence['seconds']:.0f} s")
        results["exercises"][key] = evidence
        results["meta"]["minutes"] = (time.perf_counter() - started) / 60
        # each finished exercise is kept, whatever happens next, and so are those not chosen: an interruption
        # after the first one lost them from answers.json
        _write_json(results_path, {**results, "exercises": {**results["exercises"], **not_chosen}})
    results["exercises"].update(not_chosen)  # exercises not chosen this time stay in the sheet (they were dropped)
    results["meta"]["minutes"] = (time.perf_counter() - started) / 60
    _write_json(results_path, results)
    sheet = render(json.loads(results_path.read_text()))
    missing = untraced_numbers(sheet, results)
    if missing:
        raise RuntimeError(f"answers.md prints numbers that answers.json does not hold: {missing[:10]} (a cnnlab bug)")
    sheet_path = out / SHEET_FILE
    return write_text_whole(sheet_path, sheet)


def _write_json(path: Path, results: dict[str, Any]) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(results, indent=1, default=str))
    partial.replace(path)
