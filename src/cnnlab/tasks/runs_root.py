"""What a runs root is not: a run's own folder, or a task's (it holds runs itself). `cnnlab lab --runs` and
`cnnlab answers --runs` read ``<root>/<task>/<name>/`` runs, and given either of those found none, unsaid.
"""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.train.checkpoint import CHECKPOINT_NAME
from cnnlab.train.records import RESULTS, SESSIONS
from cnnlab.train.saved import ENSEMBLE_SPEC, MODEL_SPEC

__all__ = ["misplaced_root"]


# The records a run holds beside its config.yaml (sessions.json from its first session on): a config.yaml alone may
# be another tool's, in a folder given as the runs root.
_RUN_RECORDS = (MODEL_SPEC, ENSEMBLE_SPEC, "metrics.json", RESULTS, CHECKPOINT_NAME, SESSIONS)


def _run_file(folder: Path) -> str | None:
    """The file that makes `folder` a run: its config.yaml beside one of `_RUN_RECORDS`, else a saved model's or a
    combined ensemble's record (`cnnlab ensemble` writes no config.yaml); None for any other folder."""
    if (folder / "config.yaml").is_file() and any((folder / name).is_file() for name in _RUN_RECORDS):
        return "config.yaml"
    return next((name for name in (MODEL_SPEC, ENSEMBLE_SPEC) if (folder / name).is_file()), None)


def misplaced_root(root: str | os.PathLike[str]) -> str | None:
    """Why `root` is no runs root but a run's folder or a task's (it holds runs itself), naming the ``--runs`` to pass
    instead; None for any other folder.

    The pages list ``<root>/<task>/<name>/`` runs: given a run's own folder they listed none and said to train one
    with ``--output`` that very folder, and given a task's they listed an ensemble's members as runs of a task named
    after the ensemble, every other run left out, unsaid.
    """
    folder = Path(os.path.abspath(root))
    found = _run_file(folder)
    if found is not None:
        run = folder
        while _run_file(run.parent) is not None:  # an ensemble's member: the ensemble's folder is the run
            run = run.parent
        return (
            f"--runs {root} is a run's folder (it holds {found}), not a runs root: pass the folder the train "
            f"commands' --output named, which holds <task>/<name>/ runs: --runs {_shown_path(run.parent.parent, root)}"
        )
    try:
        children = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    except OSError:
        return None  # a root that cannot be read: refused as such when the lab starts
    for child in children:
        found = _run_file(child)
        if found is not None:
            return (
                f"--runs {root} holds runs itself ({child.name}/{found}), as a task's folder does, not a runs root: "
                f"pass the folder above it, which holds <task>/<name>/ runs: --runs {_shown_path(folder.parent, root)}"
            )
    return None


def _shown_path(path: Path, typed: str | os.PathLike[str]) -> str:
    """`path` as the user typed `typed`: relative to the working folder where `typed` was relative and `path` lies
    inside it, else absolute."""
    if Path(typed).is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)
