"""The measurements behind each answer: one function per exercise, each returning JSON-ready evidence.

Every function takes the invocation's `Context` and returns a dict that `cnnlab.tasks.answers.sheet` turns into
Markdown. All numbers the sheet prints are computed here (ratios and differences included) or read from a named run
folder; the sheet only formats them. A function that needs data it cannot find raises `CnnlabError` or
`FileNotFoundError`, and the exercise is reported as not measured, with the reason.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.tasks.answers import published

# The network of exercise 2, in `cnnlab budget` spec strings, and its input (C, H, W).
EXERCISE_2_SPEC = ("conv 100 k3 s2 same", "conv 200 k3 s2 same", "conv 400 k3 s2 same")
EXERCISE_2_INPUT = (3, 200, 300)
EXERCISE_2_BATCH = 50
FLOAT32_BYTES = 4

# Exercise 6: the architectures the chapter names, in its order.
# AlexNet twice: torchvision's one-tower layout (what its weights fit) and the 2012 paper's two towers.
ZOO_MODELS = ("lenet5", "alexnet", "alexnet_2012", "googlenet", "inception_v3", "resnet50", "seresnet50",
              "xception", "efficientnet_lite0")  # fmt: skip

# Exercise 6: the 2012 paper's AlexNet as `cnnlab budget` layer strings (its Figure 2 and section 3.5, 227 x 227
# input): conv2, conv4 and conv5 in two groups, one per GPU. Built here, its count is checked against the zoo's
# `alexnet_2012`; the same layers without groups give what the two towers save.
ALEXNET_2012_SPEC = (
    "conv 96 k11 s4 valid relu, lrn 5, maxpool k3 s2, conv 256 k5 p2 g2 relu, lrn 5, maxpool k3 s2, "
    "conv 384 k3 p1 relu, conv 384 k3 p1 g2 relu, conv 256 k3 p1 g2 relu, maxpool k3 s2, flatten, "
    "dense 4096 relu, dropout, dense 4096 relu, dropout, dense 1000"
)
ALEXNET_2012_INPUT = (3, 227, 227)

# Exercise 8: the output strides compared (the name says the stride: FCN-32s predicts one score per 32x32 cell).
SEGMENTATION_STRIDES = {"FCN-32s": 32, "FCN-16s": 16, "FCN-8s": 8, "U-Net": 1}

SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@dataclass
class Mode:
    """What one mode of `cnnlab answers` measures.

    Attributes:
        name: ``quick`` or ``full``.
        experiments: per experiment, the `ExperimentSettings` fields of its run.
        mnist_recipe: the MNIST recipe trained for exercises 7 and 9.
        mnist_overrides: `TrainConfig` fields replacing the recipe's (tests use fewer epochs).
        mnist_subset: train the MNIST recipe on this many training images (None: all 55,000).
        remedies_model: the zoo model of exercise 3, with its batch and memory.
        segment_canvases: test canvases the stride ceilings of exercise 8 are measured on.
        segment_recipe: the segmentation recipe trained in this mode (None: none).
        transfer_recipe: the transfer recipe trained on ELPV when elpv-dataset is installed (None: none).
        fcn_test_images: MNIST test images the dense->conv conversion is compared on.
    """

    name: str
    experiments: dict[str, dict[str, Any]]
    mnist_recipe: str
    mnist_overrides: dict[str, Any] = field(default_factory=dict)
    mnist_subset: int | None = None
    remedies_model: tuple[str, int, str] = ("resnet50", 256, "8GiB")
    segment_canvases: int = 500
    segment_recipe: str | None = None
    transfer_recipe: str | None = None
    fcn_test_images: int = 2000

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "experiments": self.experiments,
            "mnist_recipe": self.mnist_recipe,
            "mnist_overrides": self.mnist_overrides,
            "mnist_subset": self.mnist_subset,
            "remedies_model": list(self.remedies_model),
            "segment_canvases": self.segment_canvases,
            "segment_recipe": self.segment_recipe,
            "transfer_recipe": self.transfer_recipe,
            "fcn_test_images": self.fcn_test_images,
        }


_QUICK_EXPERIMENT = {"seeds": 3, "test_subset": 2000, "val_subset": 1000}
MODES: dict[str, Mode] = {
    "quick": Mode(
        name="quick",
        experiments={
            "cnn-vs-dense": {"epochs": 3, "subset": 4000, **_QUICK_EXPERIMENT},
            "pool-vs-stride": {"epochs": 2, "subset": 4000, **_QUICK_EXPERIMENT},
            "lrn-vs-bn": {"epochs": 2, "subset": 3000, **_QUICK_EXPERIMENT},
        },
        mnist_recipe="quick",
    ),
    "full": Mode(
        name="full",
        experiments={"cnn-vs-dense": {}, "pool-vs-stride": {}, "lrn-vs-bn": {}},  # each experiment's own defaults
        mnist_recipe="default",
        segment_canvases=1000,
        segment_recipe="quick",
        transfer_recipe="quick",
        fcn_test_images=10_000,
    ),
}


@dataclass
class Context:
    """One invocation: its mode, folders, and what earlier exercises left for later ones.

    Attributes:
        overwrite: train again what an interrupted invocation finished in `output` (``--overwrite``); without it, the
            experiments' finished runs are read back.
        device: where the sheet's own training runs (MNIST, segmentation, transfer) and experiments train and are
            tested (``--device``, resolved); None: each one's own (the recipes' auto, the experiments' CPU). The
            sheet's few measurements of its own (exercise 2's step, exercise 7's conversion, exercise 10's
            predictions) stay on the CPU.
    """

    mode: Mode
    output: Path
    runs: Path | None = None
    data_dir: str | None = None
    log: Callable[[str], None] = print
    shared: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    device: str | None = None

    def engine(self, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """`options` (`TrainConfig` fields) with the sheet's device, if one was asked for; None for none at all."""
        merged = {**(options or {}), **({"device": self.device} if self.device is not None else {})}
        return merged or None

    def figure(self, name: str) -> Path:
        """A path for a figure of the sheet, under ``<output>/figures``."""
        folder = self.output / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def relative(self, path: str | Path) -> str:
        """`path` relative to the sheet's folder when it lies inside it, else as given (the folders the sheet names)."""
        try:
            return Path(path).resolve().relative_to(self.output.resolve()).as_posix()
        except ValueError:
            return str(path)

    def link(self, path: str | Path) -> str:
        """`path` as an image link in answers.md: relative to the sheet's folder wherever it lies (a figure of a
        ``--runs`` folder beside the sheet's is ``../experiment/NAME/...``), absolute where no relative path leads
        there (another drive)."""
        try:
            return Path(os.path.relpath(Path(path).resolve(), self.output.resolve())).as_posix()
        except ValueError:
            return Path(path).resolve().as_posix()


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def finished_runs(root: Path | None, task: str) -> list[Path]:
    """Run folders under ``<root>/<task>/`` that hold a results.json, newest first."""
    if root is None or not (root / task).is_dir():
        return []
    found = [path.parent for path in (root / task).glob("*/results.json") if path.is_file()]
    return sorted(found, key=lambda path: (path / "results.json").stat().st_mtime, reverse=True)


def read_results(folder: Path, ctx: Context, needs: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A run folder's results.json as a JSON object holding the keys `needs`; None, said, when it is not one.

    A --runs root may hold anything: a half-written, foreign or older results.json is left out with a line saying so
    (it stopped the exercise as "a cnnlab bug", and an MNIST one hid the good runs beside it).
    """
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError and UnicodeDecodeError
        reason = f"cannot be read ({type(error).__name__})"
    else:
        missing = [key for key in needs if key not in results] if isinstance(results, dict) else None
        if missing is None:
            reason = "is not a JSON object"
        elif missing:
            reason = f"has no {', '.join(missing)}"
        else:
            return results
    ctx.log(f"{path} {reason}: not a finished run's results, left out")
    return None


# Where an exercise's evidence comes from (its "source"): measured by the invocation writing the sheet, or by an
# earlier, interrupted one into the same folder whose finished runs this one read back (each trained once).
MEASURED_HERE = "measured in this invocation"
READ_BACK = "measured by an earlier invocation into this folder, its finished runs read back"


# ---------------------------------------------------------------------------------------------- experiments
# What the answers read of each experiment's results.json.
_EXPERIMENT_RESULTS = {
    "cnn-vs-dense": ("params", "macs", "dense_width", "test_accuracy", "seconds_per_step", "sweeps", "conclusion"),
    "pool-vs-stride": ("params", "macs", "measured", "conclusion"),
    "lrn-vs-bn": ("params", "macs", "measured", "conclusion"),
}


def _experiment_results(ctx: Context, name: str) -> tuple[dict[str, Any], Path, str]:
    """An experiment's results.json: from ``--runs`` when it holds one, else run now with the mode's settings."""
    from cnnlab.tasks.experiments import run_experiment

    folder = ctx.runs / "experiment" / name if ctx.runs is not None else None
    if folder is not None and (folder / "results.json").is_file():
        results = read_results(folder, ctx, _EXPERIMENT_RESULTS[name])
        if results is not None:
            return results, folder, "read from the run folder"
    settings = ctx.mode.experiments[name]
    # The sheet's own experiment folder: its report is rewritten, and the runs an interrupted invocation finished are
    # read back (each only under the settings it was trained with) unless --overwrite; they were all trained again.
    own = ctx.output / "experiment" / name
    (own / "report.md").unlink(missing_ok=True)
    before = _finished_runs(own)
    report = run_experiment(  # a device of None is the experiment's own (the CPU)
        name, output=ctx.output, data_dir=ctx.data_dir, overwrite=ctx.overwrite, progress=False, device=ctx.device,
        **settings,
    )  # fmt: skip
    after = _finished_runs(report.parent)
    read_back = sum(before.get(path) == written for path, written in after.items())
    if read_back and read_back == len(after):
        source = READ_BACK
    elif read_back:
        source = f"{MEASURED_HERE} ({read_back} of its {len(after)} runs read back: an earlier invocation trained them)"
    else:
        source = MEASURED_HERE
    return json.loads((report.parent / "results.json").read_text()), report.parent, source


def _finished_runs(folder: Path) -> dict[Path, int]:
    """The finished runs of an experiment folder (their ``finished.json``, written last) and when each was written:
    a run whose record is unchanged by an invocation was read back, not trained, by it."""
    return {path: path.stat().st_mtime_ns for path in folder.glob("**/finished.json")} if folder.is_dir() else {}


def _settings_text(ctx: Context, name: str, results: dict[str, Any], source: str) -> dict[str, Any] | None:
    """The options of the `cnnlab experiment` command that made `results`: the mode's when measured now; read from
    --runs, those the results record (the mode's were printed, whatever the run had used), None where an older
    results.json records none."""
    from cnnlab.tasks.experiments import get_experiment

    if source == "read from the run folder":
        return results.get("settings")
    return {**get_experiment(name).defaults, **ctx.mode.experiments[name]}


def _condition_rows(results: dict[str, Any], measured: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    rows = []
    for condition, values in measured.items():
        test = values["test accuracy"]
        rows.append(
            {
                "condition": condition,
                "params": results["params"][condition],
                "macs": results["macs"][condition],
                "test_accuracy_mean": _mean(test),
                "test_accuracy_std": _std(test),
                "ms_per_step": _mean(values["ms / step"]),
                "seeds": len(test),
            }
        )
    return rows


def noise_verdict(name_a: str, a: list[float], name_b: str, b: list[float], quantity: str) -> dict[str, Any]:
    """`a` against `b` (per-seed values) under the experiments' noise rule (`cnnlab.tasks.experiments.common.compare`),
    for a sentence of the sheet: the sheet states a difference only where the rule calls it measurable."""
    from cnnlab.tasks.experiments.common import compare, stat

    comparison = compare(stat(a), stat(b))
    return {
        "a": name_a,
        "b": name_b,
        "quantity": quantity,
        "difference": comparison.difference,
        "gap": abs(comparison.difference),
        "noise": comparison.noise,
        "measurable": comparison.measurable,
        "estimable": comparison.estimable,
        "seeds": min(len(a), len(b)),
    }


def exercise_1(ctx: Context) -> dict[str, Any]:
    """CNN vs a dense net of the same parameter count (experiment cnn-vs-dense)."""
    results, folder, source = _experiment_results(ctx, "cnn-vs-dense")
    measured = {
        name: {"test accuracy": results["test_accuracy"][name], "ms / step": [s * 1000 for s in results[
            "seconds_per_step"][name]]}
        for name in results["test_accuracy"]
    }  # fmt: skip
    shifts = results["sweeps"]["shift"]
    shift_rows = []
    for name, kinds in results["sweeps"]["values"].items():
        per_seed = kinds["shift"]
        shift_rows.append(
            {"condition": name, "accuracy": [_mean([seed[i] for seed in per_seed]) for i in range(len(shifts))]}
        )
    cnn, dense = (row for row in shift_rows)
    (cnn_name, cnn_kinds), (dense_name, dense_kinds) = results["sweeps"]["values"].items()
    verdicts = [
        noise_verdict(cnn_name, results["test_accuracy"][cnn_name], dense_name, results["test_accuracy"][dense_name],
                      "test accuracy"),
        noise_verdict(cnn_name, [seed[-1] for seed in cnn_kinds["shift"]], dense_name,
                      [seed[-1] for seed in dense_kinds["shift"]], f"accuracy shifted by {shifts[-1]} pixels"),
    ]  # fmt: skip
    first = _layer_counts(EXERCISE_2_SPEC[:1])[0]
    inputs = EXERCISE_2_INPUT[0] * EXERCISE_2_INPUT[1] * EXERCISE_2_INPUT[2]
    outputs = first["maps"] * first["out_height"] * first["out_width"]
    return {
        "dense_equivalent": {
            "layer": first["layer"],
            "inputs": inputs,
            "outputs": outputs,
            "conv_params": first["params"],
            "dense_params": inputs * outputs + outputs,
        },
        "source": source,
        "folder": ctx.relative(folder),
        "settings": _settings_text(ctx, "cnn-vs-dense", results, source),
        "rows": _condition_rows(results, measured),
        "dense_width": results["dense_width"],
        "shifts": shifts,
        "shift_rows": shift_rows,
        "largest_shift_gap": cnn["accuracy"][-1] - dense["accuracy"][-1],
        "verdicts": verdicts,
        "conclusion": results["conclusion"],
        # only the figures the folder holds: one read from --runs may come from a cnnlab that drew fewer
        "plots": [
            ctx.link(folder / name)
            for name in ("robustness_shift.png", "sample_efficiency.png")
            if (folder / name).is_file()
        ],
    }


def _experiment_evidence(
    ctx: Context, name: str, extra: tuple[str, str], compared: tuple[tuple[str, str], ...], judged: tuple[str, ...]
) -> dict[str, Any]:
    """The evidence of an experiment with a `measured` table: per condition its cost, test accuracy and the mean and
    std of one more measurement (``extra``: (key in `measured`, key in the row)), and the noise rule's verdict on
    each measurement of `judged` for each pair of conditions in `compared`."""
    results, folder, source = _experiment_results(ctx, name)
    measured = results["measured"]
    rows = _condition_rows(results, measured)
    measured_key, row_key = extra
    for row in rows:
        row[row_key] = _mean(measured[row["condition"]][measured_key])
        row[f"{row_key}_std"] = _std(measured[row["condition"]][measured_key])
    verdicts = [
        noise_verdict(a, measured[a][key], b, measured[b][key], key)
        for a, b in compared
        if a in measured and b in measured  # a --runs experiment from another cnnlab may lack a condition
        for key in judged
    ]
    return {
        "source": source,
        "folder": ctx.relative(folder),
        "settings": _settings_text(ctx, name, results, source),
        "rows": rows,
        "verdicts": verdicts,
        "conclusion": results["conclusion"],
    }


def exercise_4(ctx: Context) -> dict[str, Any]:
    """Max pooling vs a stride-2 convolution (experiment pool-vs-stride)."""
    return _experiment_evidence(
        ctx,
        "pool-vs-stride",
        ("1-px shifted accuracy", "shifted_accuracy_mean"),
        (("max-pool", "strided-conv"), ("max-pool", "stride-2 conv only")),
        ("test accuracy", "1-px shifted accuracy"),
    )


def exercise_5(ctx: Context) -> dict[str, Any]:
    """When LRN helps, and what replaced it (experiment lrn-vs-bn)."""
    return _experiment_evidence(
        ctx,
        "lrn-vs-bn",
        ("val accuracy after epoch 1", "val_after_epoch_1"),
        (("LRN", "none"), ("BN", "none"), ("BN", "LRN")),
        ("test accuracy",),
    )


# ---------------------------------------------------------------------------------------------- budget
def _layer_counts(spec: tuple[str, ...]) -> list[dict[str, Any]]:
    from cnnlab.budget.spec import parameter_counts, spec_from_strings

    layers, _ = spec_from_strings(list(spec), EXERCISE_2_INPUT)
    rows = []
    for layer in layers:
        params, _ = parameter_counts(layer)
        kernel_h, kernel_w = layer.kernel
        weights = layer.filters * kernel_h * kernel_w * layer.input_shape[0]
        biases = params - weights
        rows.append(
            {
                "layer": layer.source,
                "in_channels": layer.input_shape[0],
                "kernel": layer.kernel[0],
                "maps": layer.output_shape[0],
                "out_height": layer.output_shape[1],
                "out_width": layer.output_shape[2],
                "weights": weights,
                "biases": biases,
                "params": params,
            }
        )
    return rows


def exercise_2(ctx: Context) -> dict[str, Any]:
    """Parameters and RAM of the three-layer network, textbook and measured, and the answer sets' slips."""
    from cnnlab.budget import budget
    from cnnlab.budget.explain import explain

    report = budget(list(EXERCISE_2_SPEC), input_shape=EXERCISE_2_INPUT, batch_size=EXERCISE_2_BATCH, measure=True)
    layers = _layer_counts(EXERCISE_2_SPEC)
    weights = sum(row["weights"] for row in layers)
    biases = sum(row["biases"] for row in layers)
    reversed_layers = _layer_counts(tuple(reversed(EXERCISE_2_SPEC)))
    reversed_total = sum(row["params"] for row in reversed_layers)
    second = layers[1]
    second_weights_formula = {
        "kernel": second["kernel"],
        "in_channels": second["in_channels"],
        "maps": second["maps"],
        "weights": second["weights"],
        "written_as": second["weights"] * 10,
    }
    training = report.training
    measured = report.measured or {}
    params_bytes = report.params * FLOAT32_BYTES
    slips = {
        "times_ten": {**published.EXERCISE_2_CLAIMS["times_ten"], "reproduced": weights * 10},
        "reversed": {**published.EXERCISE_2_CLAIMS["reversed"], "reproduced": reversed_total},
        "dense_and_misadd": {**published.EXERCISE_2_CLAIMS["dense_and_misadd"], "reproduced": None},
    }
    for slip in slips.values():
        slip["matches_claim"] = slip["reproduced"] == slip["claim"]
    return {
        "spec": list(EXERCISE_2_SPEC),
        "input": list(EXERCISE_2_INPUT),
        "batch": EXERCISE_2_BATCH,
        "layers": layers,
        "weights": weights,
        "biases": biases,
        "params": report.params,
        "reversed_layers": reversed_layers,
        "second_layer": second_weights_formula,
        "bytes_per_float": FLOAT32_BYTES,
        "inference": dict(report.inference),
        "inference_realistic_bytes": report.realistic["inference_total_bytes"],
        "training_textbook": dict(training),
        # the book's sum: layer outputs, inputs and parameters (it leaves gradients and optimizer state out)
        "training_book_bytes": training["activations_bytes"] + training["inputs_bytes"] + training["params_bytes"],
        "training_realistic_peak_bytes": report.realistic["peak_bytes"],
        "training_measured_peak_bytes": measured.get("peak_live_bytes"),
        "measured_over_estimate": (
            measured["peak_live_bytes"] / report.realistic["peak_bytes"] if measured.get("peak_live_bytes") else None
        ),
        "params_only_bytes": params_bytes,
        "params_only_missed_share": (
            1 - params_bytes / measured["peak_live_bytes"] if measured.get("peak_live_bytes") else None
        ),
        "slips": slips,
        "explained": explain(report),
    }


def exercise_3(ctx: Context) -> dict[str, Any]:
    """The remedies for an out-of-memory GPU, as the planner sizes them for a real model."""
    from cnnlab.budget import budget
    from cnnlab.budget.core import parse_memory

    model, batch, memory = ctx.mode.remedies_model
    report = budget(model, batch_size=batch, memory_limit=memory)
    plan = report.plan or {}
    remedies = []
    baseline = plan["remedies"][0]["max_batch"]
    for remedy in plan["remedies"]:
        remedies.append(
            {
                **remedy,
                "vs_configured": remedy["max_batch"] / baseline if baseline else None,
                "accumulation_steps_for_batch": -(-batch // remedy["max_batch"]) if remedy["max_batch"] else None,
            }
        )
    return {
        "model": model,
        "input": list(report.input_shape),
        "batch": batch,
        "memory": memory,
        "memory_bytes": parse_memory(memory),
        "params": report.params,
        "training_peak_bytes": report.realistic["peak_bytes"],
        "fits": report.realistic["peak_bytes"] <= parse_memory(memory),
        "remedies": remedies,
    }


# ---------------------------------------------------------------------------------------------- zoo
def zoo_row(name: str) -> dict[str, Any]:
    """One architecture of exercise 6: its parameters counted now against the published figure, MACs, innovation."""
    import torch

    from cnnlab.budget import count_macs
    from cnnlab.models import create_model, model_info

    with torch.device("meta"):
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters())
    info = model_info(name)
    published_params = info.published_params if info else None
    return {
        "model": name,
        "input": list(model.default_input_size),
        "params": params,
        "published_params": published_params,
        "matches_published": params == published_params,
        # a count no publication or reference implementation gives (LeNet-5's, the 2012 AlexNet's): where it comes
        # from instead
        "params_note": info.params_note if info else "",
        "macs": count_macs(model, tuple(model.default_input_size)),
        "paper": info.paper if info else "",
        "innovation": info.innovation if info else "",
        "innovation_code": info.innovation_code if info else "",
    }


def exercise_6(ctx: Context) -> dict[str, Any]:
    """The named architectures: parameters counted now against the published figure, MACs, the innovation."""
    rows = [zoo_row(name) for name in ZOO_MODELS]
    return {
        "rows": rows,
        "all_match": all(row["matches_published"] for row in rows if not row["params_note"]),
        "alexnet_layouts": alexnet_layouts({row["model"]: row["params"] for row in rows}),
    }


def _built_params(spec: str, input_shape: tuple[int, ...]) -> int:
    """Parameters of the module that layer strings build (on the meta device: nothing allocated)."""
    import torch

    from cnnlab.budget.spec import build_module, infer_shapes, parse_spec

    with torch.device("meta"):
        module = build_module(infer_shapes(parse_spec([spec]), input_shape))
    return sum(p.numel() for p in module.parameters())


def alexnet_layouts(zoo_params: dict[str, int]) -> dict[str, Any]:
    """Which AlexNet was counted: torchvision's one tower and the 2012 paper's two towers (built as layer strings
    and as the zoo's `alexnet_2012`), the paper's layers without groups, and the paper's own rounded figure, quoted."""
    paper = _built_params(ALEXNET_2012_SPEC, ALEXNET_2012_INPUT)
    ungrouped = _built_params(ALEXNET_2012_SPEC.replace(" g2", ""), ALEXNET_2012_INPUT)
    return {
        "one_tower": "torchvision's one-tower layout (64-192-384-256-256 filters, no LRN, from Krizhevsky's 2014 "
        '"one weird trick", arXiv:1404.5997; what its ImageNet weights fit)',
        "two_tower": "two towers, one per GPU: conv2, conv4 and conv5 see only their own tower's half of the maps "
        "(convolutions with groups=2; 96-256-384-384-256 filters, LRN after conv1 and conv2, 227 x 227 input)",
        "one_tower_params": zoo_params["alexnet"],
        "two_tower_params": zoo_params["alexnet_2012"],
        "two_tower_spec": ALEXNET_2012_SPEC,
        "two_tower_input": list(ALEXNET_2012_INPUT),
        "two_tower_spec_params": paper,
        "spec_matches_zoo": paper == zoo_params["alexnet_2012"],
        "ungrouped_params": ungrouped,
        "saved_by_towers": ungrouped - paper,
        "paper_quote": published.ALEXNET_2012_PARAMS,
    }


# ---------------------------------------------------------------------------------------------- MNIST and FCN
def _mnist_run(ctx: Context) -> tuple[dict[str, Any], str]:
    """The MNIST run of exercises 7 and 9: the newest of the mode's recipe in ``--runs``, else trained now."""
    from cnnlab.tasks.mnist import train_mnist

    if "mnist" in ctx.shared:
        return ctx.shared["mnist"]
    for folder in finished_runs(ctx.runs, "mnist"):
        summary = read_results(folder, ctx, ("test_accuracy",))
        if summary is None or summary.get("recipe") != ctx.mode.mnist_recipe or not (folder / "model.json").is_file():
            continue
        changed = _changed_recipe_options(folder, ctx)
        if changed:
            ctx.log(f"{folder} trained recipe {ctx.mode.mnist_recipe} with other options ({changed}): left out")
            continue
        ctx.shared["mnist"] = ({**summary, "run_dir": str(folder)}, "read from the run folder")
        return ctx.shared["mnist"]
    splits = None
    if ctx.mode.mnist_subset:
        from cnnlab.data.mnist import load_mnist

        full = load_mnist(ctx.data_dir, val_size=5_000, seed=0)  # a fixed split: too large, no --val-size is named
        count = ctx.mode.mnist_subset
        splits = replace(full, train_images=full.train_images[:count], train_labels=full.train_labels[:count])
    options = dict(
        splits=splits,
        data_dir=ctx.data_dir,
        output=str(ctx.output),
        name=ctx.mode.mnist_recipe,
        overrides=ctx.engine(ctx.mode.mnist_overrides),
        progress=False,
        val_option=None,  # the sheet has no --val-size to name
        batch_option=None,  # the sheet has no --batch-size to name: too few training images ask for the full MNIST
    )
    run_dir = ctx.output / "mnist" / ctx.mode.mnist_recipe
    summary = continue_or_train(ctx, run_dir, lambda **start: train_mnist(ctx.mode.mnist_recipe, **options, **start))
    # a run an earlier invocation finished is read back by its resume, which says so (`cnnlab.train.finished`)
    ctx.shared["mnist"] = (summary, READ_BACK if summary.get("finished_before") else MEASURED_HERE)
    return ctx.shared["mnist"]


def continue_or_train(ctx: Context, run_dir: Path, train: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """`train(resume=..., overwrite=...)`'s summary of the sheet's own run in `run_dir`: the run an earlier,
    interrupted invocation started there continues from its last finished epoch (a finished one is read back), unless
    ``--overwrite``; it was trained again from the start (up to 20 minutes lost under ``--full``). A run that cannot
    be continued (other options, a start that never got far) is said and trained again."""
    if not ctx.overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        try:
            return train(resume=True, overwrite=False)
        except CnnlabError as error:
            ctx.log(f"{run_dir} cannot be continued ({error}); training it again")
    return train(resume=False, overwrite=True)


def _changed_recipe_options(folder: Path, ctx: Context) -> str:
    """The options an MNIST run folder was trained with that are not the mode's recipe's (``epochs 1, the recipe's
    2``), "" when none: a run of the recipe's name with another --epochs was shown as the recipe, its summary and its
    command."""
    import yaml

    from cnnlab.tasks.mnist import RECIPES
    from cnnlab.tasks.recipes import with_overrides
    from cnnlab.train.config import load_config

    recipe = RECIPES.get(ctx.mode.mnist_recipe)
    expected = {**with_overrides(recipe.train, ctx.mode.mnist_overrides), "arch": recipe.arch}
    try:
        config = load_config(folder / "config.yaml").to_dict()
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
        return f"its config.yaml cannot be read: {type(error).__name__}"
    trained = {**config, "arch": config["extra"].get("arch")}
    changed = [(key, value) for key, value in expected.items() if trained.get(key) != value]
    return ", ".join(f"{key} {trained.get(key)}, the recipe's {value}" for key, value in changed)


def exercise_9(ctx: Context) -> dict[str, Any]:
    """A CNN from scratch on MNIST: test accuracy and time, against the answer sets' range."""
    from cnnlab.tasks.mnist import RECIPES

    summary, source = _mnist_run(ctx)
    member = summary["members"][0] if summary.get("members") else summary
    recipe = RECIPES.get(summary.get("recipe", ctx.mode.mnist_recipe))
    from cnnlab.data.mnist import load_mnist

    accuracy = summary["test_accuracy"]
    test_images = len(load_mnist(ctx.data_dir, val_size=0).test_labels)
    errors = round((1 - accuracy) * test_images)
    sets = published.EXERCISE_9_ANSWER_SETS
    return {
        "source": source,
        "folder": ctx.relative(summary["run_dir"]),
        "recipe": recipe.name,
        "recipe_summary": recipe.summary,
        "test_accuracy": accuracy,
        "test_images": test_images,
        "test_errors": errors,
        "val_accuracy": member.get("val_accuracy"),
        "train_seconds": member.get("train_seconds"),
        "params": member.get("params"),
        "answer_sets": sets,
        "above_answer_sets": accuracy > sets["high"],
        "errors_at_answer_sets_high": round((1 - sets["high"]) * test_images),
        "error_ratio": ((1 - sets["high"]) / (1 - accuracy)) if accuracy < 1 else None,
    }


def exercise_7(ctx: Context) -> dict[str, Any]:
    """Dense -> convolution conversion: measured difference on real digits, parameters kept, a scan heatmap."""
    import torch

    from cnnlab import load_model
    from cnnlab.data.mnist import load_mnist
    from cnnlab.fcn.convert import to_fully_convolutional
    from cnnlab.fcn.scan import scan_canvas_demo

    summary, source = _mnist_run(ctx)
    model = load_model(summary["run_dir"]).eval()
    converted = to_fully_convolutional(model)
    splits = load_mnist(ctx.data_dir, val_size=0)  # its test images
    images = splits.test_images[: ctx.mode.fcn_test_images].float() / 255
    with torch.inference_mode():
        original = torch.cat([model(chunk) for chunk in images.split(500)])
        fcn = torch.cat([converted(chunk).flatten(1) for chunk in images.split(500)])
    dense_layers = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    heatmap = scan_canvas_demo(converted, ctx.output / "figures", data_dir=ctx.data_dir)
    (window, _), (stride, _) = converted.output_geometry()  # heights: an MNIST network's windows are square
    channels, height, width = converted.input_size
    with torch.inference_mode():
        grid = converted(torch.zeros(1, channels, height * 2, width * 2)).shape[-2:]
    return {
        "source": source,
        "folder": ctx.relative(summary["run_dir"]),
        "run_dir": str(summary["run_dir"]),
        "images": len(images),
        "max_abs_difference": float((original - fcn).abs().max()),
        "max_abs_logit": float(original.abs().max()),
        "same_prediction_share": float((original.argmax(1) == fcn.argmax(1)).float().mean()),
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in converted.parameters()),
        "dense_layers_converted": dense_layers,
        "input": list(converted.input_size),
        "window": window,
        "stride": stride,
        "double_input": [height * 2, width * 2],
        "double_input_grid": list(grid),
        # the last window starts at (grid - 1) * stride: how far it reaches past the doubled input's edge
        "window_overhang": max(0, window + (int(grid[0]) - 1) * stride - height * 2),
        "heatmap": ctx.link(heatmap),
    }


# ---------------------------------------------------------------------------------------------- segmentation
def _coarse_prediction(masks: Any, stride: int, num_classes: int) -> Any:
    """The best prediction a network with output stride `stride` can make if its coarse scores are exact: the class
    shares of each stride x stride cell, upsampled bilinearly (as FCN-32s/16s/8s upsample), then the argmax."""
    import torch
    import torch.nn.functional as F

    if stride == 1:
        return masks.clone()
    one_hot = F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2).float()
    shares = F.avg_pool2d(one_hot, stride, ceil_mode=True)
    upsampled = F.interpolate(shares, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return upsampled.argmax(1).to(torch.uint8)


def exercise_8(ctx: Context) -> dict[str, Any]:
    """What output stride costs: the best mIoU and boundary F1 reachable at each stride, and trained models' figures."""
    from cnnlab.data.segmentation import CLASS_NAMES, NUM_CLASSES, make_digit_segmentation
    from cnnlab.report.segmentation import BoundaryF1, MeanIoU, segmentation_report

    canvases = ctx.mode.segment_canvases
    data = make_digit_segmentation(ctx.data_dir, sizes=(1, 1, canvases))
    masks = data.test.masks
    size = list(masks.shape[-2:])
    ceilings = []
    for name, stride in SEGMENTATION_STRIDES.items():
        predicted = _coarse_prediction(masks, stride, NUM_CLASSES)
        iou, boundary = MeanIoU(NUM_CLASSES), BoundaryF1(2)
        iou.update(predicted, masks)
        boundary.update(predicted, masks)
        report = segmentation_report(iou.matrix, CLASS_NAMES)
        ceilings.append(
            {
                "model": name,
                "stride": stride,
                "grid": [-(-size[0] // stride), -(-size[1] // stride)],
                "miou": report["miou"],
                "pixel_accuracy": report["pixel_accuracy"],
                "boundary_f1": boundary.compute(),
            }
        )
    trained = []
    folders = finished_runs(ctx.runs, "segment")
    if ctx.mode.segment_recipe:
        from cnnlab.tasks.segmentation import train_segmentation

        recipe = ctx.mode.segment_recipe
        summary = continue_or_train(
            ctx, ctx.output / "segment" / recipe,
            lambda **start: train_segmentation(
                recipe, data_dir=ctx.data_dir, output=str(ctx.output), name=recipe, progress=False,
                overrides=ctx.engine(), **start
            ),
        )  # fmt: skip
        folders = [Path(summary["run_dir"]), *folders]
    for folder in folders:
        summary = read_results(folder, ctx, ("test",))
        test = summary["test"] if summary is not None and isinstance(summary["test"], dict) else {}
        if "miou" not in test or "boundary_f1" not in test:  # a folder run (own classes) is not comparable
            continue
        trained.append(
            {
                "folder": ctx.relative(folder),
                "recipe": summary.get("recipe"),
                "arch": summary.get("arch"),
                "params": summary.get("params"),
                "miou": test["miou"],
                "boundary_f1": test["boundary_f1"],
                "canvases": summary.get("canvases"),
            }
        )
    return {
        "canvases": canvases,
        "canvas_size": size,
        "tolerance_px": 2,
        "ceilings": ceilings,
        "trained": trained,
    }


# ---------------------------------------------------------------------------------------------- transfer
def _photo_tensors(names: tuple[str, ...]) -> tuple[list[Any], list[str]]:
    from PIL import Image

    try:
        import skimage.data
    except ModuleNotFoundError as error:
        raise CnnlabError("the sample photos come from scikit-image; `pip install scikit-image`") from error
    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in names], list(names)


def exercise_10(ctx: Context) -> dict[str, Any]:
    """Transfer learning: a pretrained model with its own preprocessing and with a mismatched one; ELPV runs."""
    import torch
    from torchvision.transforms import v2

    from cnnlab.data.transforms import build_eval_transform
    from cnnlab.tasks.predict import load_predictor

    predictor = load_predictor("efficientnet_lite0")
    photos, names = _photo_tensors(SAMPLE_PHOTOS)
    right = build_eval_transform(predictor.cfg)
    size = predictor.cfg.input_size[1:]
    # A common mismatch: ImageNet's torchvision mean/std applied to a model trained on [-1, 1] inputs, and the
    # photo squashed to the input size instead of resized and centre-cropped.
    imagenet = v2.Compose([
        v2.ToImage(), v2.Resize(list(size)), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])  # fmt: skip
    unscaled = v2.Compose([v2.ToImage(), v2.Resize(list(size)), v2.ToDtype(torch.float32, scale=False)])
    pipelines = {"the weights' record": right, "ImageNet mean/std, squashed": imagenet, "pixels 0-255": unscaled}
    rows = []
    with torch.inference_mode():
        reference = None
        for label, transform in pipelines.items():
            batch = torch.stack([transform(photo) for photo in photos])
            probabilities = predictor.model(batch).softmax(1)
            top = probabilities.max(1)
            predicted = [predictor.classes[int(i)] for i in top.indices]
            if reference is None:
                reference = top.indices
            rows.append(
                {
                    "preprocessing": label,
                    "predictions": [
                        {"photo": name, "label": cls, "probability": float(p)}
                        for name, cls, p in zip(names, predicted, top.values, strict=True)
                    ],
                    "agrees_with_record": int((top.indices == reference).sum()),
                }
            )
    transfer_runs = []
    folders = finished_runs(ctx.runs, "transfer")
    if ctx.mode.transfer_recipe:
        folders = [*_train_elpv(ctx), *folders]
    for folder in folders:
        summary = read_results(folder, ctx, ("test",))
        test = summary["test"] if summary is not None and isinstance(summary["test"], dict) else {}
        if "accuracy" not in test:
            continue
        # Every session's time, not the last one's ("wall_seconds"); None, unknown, where a session was killed
        # outright or the run predates the total. A new key, so that a sheet's older record of the last session's time
        # is measured again rather than shown as the total.
        wall_seconds = summary.get("wall_seconds_total")
        transfer_runs.append(
            {
                "folder": ctx.relative(folder),
                "data": summary.get("config", {}).get("data"),
                "recipe": summary.get("recipe", {}).get("name"),
                "classes": summary.get("classes"),
                "test_images": test.get("count"),
                "accuracy": test["accuracy"],
                "balanced_accuracy": test.get("balanced_accuracy"),
                "single_view_accuracy": test.get("single_view", {}).get("accuracy"),
                "binary_accuracy": test.get("binary_accuracy"),
                "total_wall_minutes": None if wall_seconds is None else wall_seconds / 60,
            }
        )
    return {
        "model": "efficientnet_lite0",
        "record": {"mean": list(predictor.cfg.mean), "std": list(predictor.cfg.std), "input": list(size)},
        "photos": names,
        "pipelines": rows,
        "mismatched_answer_accuracy": published.EXERCISE_10_MISMATCHED_ACCURACY,
        "transfer_runs": transfer_runs,
        "elpv_available": _elpv_available(),
    }


def _elpv_available() -> bool:
    from cnnlab.data.elpv import elpv_available

    return elpv_available()


def _train_elpv(ctx: Context) -> list[Path]:
    """The mode's transfer recipe on ELPV, when elpv-dataset is installed (else nothing)."""
    if not _elpv_available():
        ctx.log("exercise 10: elpv-dataset is not installed (`pip install elpv-dataset`); no ELPV run")
        return []
    from cnnlab.tasks.transfer import TransferConfig, train_transfer

    options = {"data": "elpv", "recipe": ctx.mode.transfer_recipe or "quick", "output": str(ctx.output)}
    summary = continue_or_train(
        ctx,
        ctx.output / "transfer" / "elpv",
        lambda **start: train_transfer(
            TransferConfig(**options, name="elpv", progress=False, train=ctx.engine() or {}, **start)
        ),
    )
    return [Path(summary["run_dir"])]


EXERCISES: dict[int, Callable[[Context], dict[str, Any]]] = {
    1: exercise_1,
    2: exercise_2,
    3: exercise_3,
    4: exercise_4,
    5: exercise_5,
    6: exercise_6,
    7: exercise_7,
    8: exercise_8,
    9: exercise_9,
    10: exercise_10,
}


def timed(function: Callable[[Context], dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """Run one exercise's measurement and add the seconds it took."""
    started = time.perf_counter()
    evidence = function(ctx)
    evidence["seconds"] = time.perf_counter() - started
    return evidence
