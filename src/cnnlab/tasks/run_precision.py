"""The ``--precision`` a run ran its test pass under, for the commands that score it again in float32.

`cnnlab evaluate` and `cnnlab predict` run a saved model in float32 (its weights are float32; autocast is a training
option), so the scores of a run trained and tested under bf16 or fp16 autocast may differ slightly from those of its
own test pass: `precisions` records both, and `precision_line` says so. They run in the memory format the run's test
pass ran in (``--channels-last``, the recipes' default for convolutional networks: faster on most CPUs), which
changes the float rounding alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["precision_line", "precisions", "predicted_precision_line", "run_channels_last", "run_options"]


def run_options(run_dir: Path) -> dict[str, Any] | None:
    """The engine options the run in `run_dir` trained and ran its test pass under, from its config.yaml (None where
    that cannot be read).

    Three layouts: a run's `TrainConfig` (MNIST, segmentation), a transfer run's recipe engine options then those
    given (``train``), and an MNIST ensemble's recipe then its ``overrides``.
    """
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["config"]
        if isinstance(config.get("train"), dict):  # a transfer run: its recipe's engine options, then those given
            return {**(config.get("recipe_fields") or {}).get("train", {}), **config["train"]}
        if isinstance(config.get("recipe"), dict):  # an MNIST ensemble: its recipe's options, then those given
            return {**(config["recipe"].get("train") or {}), **(config.get("overrides") or {})}
        return dict(config)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def precisions(run_dir: Path) -> dict[str, Any]:
    """The precision evaluate runs in (float32, as predict and the exports do), the ``--precision`` the run trained
    and ran its test pass under (None where its config.yaml cannot be read), and the memory format evaluate runs in:
    ``channels_last``, the run's own (`run_channels_last`)."""
    options = run_options(run_dir)
    run_precision = None if options is None else str(options.get("precision") or "fp32")
    return {"precision": "fp32", "run_precision": run_precision, "channels_last": run_channels_last(run_dir)}


def run_channels_last(run_dir: Path) -> bool:
    """Whether the run in `run_dir` ran its test pass in the channels-last memory format (``--channels-last``), as
    `cnnlab evaluate`, `cnnlab predict` (`load_predictor`, `load_segmenter`) and explain's probabilities then run it:
    NCHW ran every evaluation of such a run (the recipes' default) slower than its test pass, the option unsaid, and
    predict's probabilities differed from evaluate's in the float rounding. False where its config.yaml cannot be
    read."""
    options = run_options(run_dir)
    return bool(options is not None and options.get("channels_last"))


def precision_line(result: dict[str, Any]) -> list[str]:
    """A line saying a run tested under autocast is evaluated in float32 (none for a float32 run)."""
    if result.get("run_precision") in (None, "fp32"):
        return []
    return [
        f"evaluated in float32, as predict runs; the run's test pass ran under {result['run_precision']} autocast "
        f"(--precision {result['run_precision']}), so on the same images its test scores may differ slightly"
    ]


def predicted_precision_line(model: str) -> str | None:
    """For `cnnlab predict --model MODEL`: a line saying a run tested under autocast is predicted in float32, so its
    probabilities may differ slightly from its own test predictions (None for a float32 run or a zoo model)."""
    path = Path(model)
    if not path.exists():
        return None  # a zoo model: no run, no test pass
    run_precision = precisions(path if path.is_dir() else path.parent)["run_precision"]
    if run_precision in (None, "fp32"):
        return None
    return (
        f"predicted in float32; {model}'s test pass ran under {run_precision} autocast (--precision {run_precision}), "
        "so on its test images these may differ slightly from its own test predictions"
    )
