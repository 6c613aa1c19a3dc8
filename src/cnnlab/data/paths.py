"""Where datasets live: `--data-dir`, else `$CNNLAB_DATA`, else `./data`."""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.errors import CnnlabError

DATA_ENV_VAR = "CNNLAB_DATA"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The root directory that datasets are looked up under.

    Args:
        data_dir: an explicit directory (the `--data-dir` option); wins when given.

    Returns:
        `data_dir` if given, else `$CNNLAB_DATA` if set and non-empty, else `./data` (not checked for existence).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    from_env = os.environ.get(DATA_ENV_VAR, "")
    if from_env:
        return Path(from_env).expanduser()
    return Path("data")


def data_dir_source(data_dir: str | os.PathLike[str] | None = None) -> str:
    """A short phrase saying which rule picked the data directory, for error messages."""
    if data_dir is not None and str(data_dir) != "":
        return "--data-dir"
    if os.environ.get(DATA_ENV_VAR, ""):
        return f"${DATA_ENV_VAR}"
    return f"the default ./data (neither --data-dir nor ${DATA_ENV_VAR} was set)"


def check_output_outside_data(output: str | os.PathLike[str], data: str | os.PathLike[str]) -> None:
    """Refuse an ``--output`` folder inside the ``--data`` folder (or the folder itself): a run's plots and previews
    written there were read by the next run as images, a folder ``runs/`` taken for a class of them, and the data
    folder is the user's to keep as it is. A ``--data`` that is not a folder (a CSV, a built-in dataset) reads no
    folder, and passes.

    Raises:
        CnnlabError: naming both folders and what to do.
    """
    data_path = Path(data).expanduser()
    if not data_path.is_dir():
        return
    output_path = Path(output).expanduser().resolve()
    if output_path.is_relative_to(data_path.resolve()):
        raise CnnlabError(
            f"--output {output} is inside --data {data}: the run's files would be written among the images and read "
            "as images by the next run; pass an --output outside the data folder"
        )
