"""The ELPV dataset (Buerhop-Lutz et al. 2018; Deitsch et al. 2019): 2,624 solar-cell electroluminescence images,
300 x 300 8-bit grayscale, each labelled with the probability (0, 1/3, 2/3 or 1) that the cell is defective.

The images ship in the PyPI package ``elpv-dataset`` (data licence CC BY-NC-SA 4.0). cnnlab never vendors them: the
package is installed on demand (``pip install elpv-dataset``) and read from where pip put it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cnnlab.data.folder import LabelledImages, _collect
from cnnlab.errors import CnnlabError

__all__ = ["ELPV_BINARY_CLASSES", "ELPV_CLASSES", "elpv_available", "elpv_class", "elpv_labels_path", "load_elpv"]

# Class names of the 4-class task, in label order: the defect probability in percent.
ELPV_CLASSES = ["defect_0", "defect_33", "defect_67", "defect_100"]
# The dataset authors' binary task (Deitsch et al. 2019): a defect probability of 0.5 or more is "defective".
ELPV_BINARY_CLASSES = ["functional", "defective"]
_INSTALL_HINT = (
    "the elpv dataset comes from the PyPI package elpv-dataset (data licence CC BY-NC-SA 4.0, not shipped with "
    "cnnlab); install it with `pip install elpv-dataset`"
)


def elpv_available() -> bool:
    """Whether the ``elpv-dataset`` package is installed."""
    return importlib.util.find_spec("elpv_dataset") is not None


def elpv_labels_path() -> Path:
    """The package's ``labels.csv``.

    Raises:
        CnnlabError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise CnnlabError(_INSTALL_HINT)
    labels = Path(spec.origin).parent / "data" / "labels.csv"
    if not labels.is_file():
        raise CnnlabError(f"{labels} is missing: the elpv-dataset install looks broken; reinstall it")
    return labels


def elpv_class(probability: float, binary: bool = False) -> str:
    """The class of a cell with defect `probability` (0, 1/3, 2/3 or 1): one of `ELPV_CLASSES`, or with `binary`
    one of `ELPV_BINARY_CLASSES` (defective when the probability is 0.5 or more)."""
    if binary:
        return ELPV_BINARY_CLASSES[int(probability >= 0.5)]
    return ELPV_CLASSES[round(probability * 3)]


def load_elpv(min_per_class: int = 100, check: bool = True, binary: bool = False) -> LabelledImages:
    """The 2,624 ELPV cells with their labels, bad files skipped and listed.

    Args:
        min_per_class: the fewest usable images a class may have (the rarest class, 2/3, has 106).
        check: decode every image first (about 10 s).
        binary: the authors' 2-class task (`ELPV_BINARY_CLASSES`) instead of the 4 probabilities (`ELPV_CLASSES`).
    """
    labels_path = elpv_labels_path()
    candidates = []
    for line in labels_path.read_text().splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        candidates.append((str(labels_path.parent / fields[0]), elpv_class(float(fields[1]), binary)))
    classes = ELPV_BINARY_CLASSES if binary else ELPV_CLASSES
    images = _collect(candidates, classes, "elpv:binary" if binary else "elpv", check)
    if min_per_class > 0:
        images.check_min_per_class(min_per_class)
    return images
