"""Experiment `cnn-vs-dense`: does a CNN beat a dense network of the same parameter budget, and why?

Géron ch. 14, exercise 1 ("What are the advantages of a CNN over a fully connected DNN for image classification?").
Answers claim fewer parameters, translation invariance and better use of few examples. Here a small CNN (two 3x3
conv + max-pool stages, a small dense head) and a one-hidden-layer dense net whose width is *computed* to match the
CNN's parameter count are trained on the engine over several seeds, then compared on:

- parameters, MACs per image, test accuracy, training time;
- robustness: test accuracy with the digits shifted by 0..6 pixels (averaged over right/left/down/up), rotated by
  0..30 degrees (averaged over both senses) and scaled by 0.7..1.3 (`cnnlab.data.perturb`);
- sample efficiency: accuracy after training on 1k, 5k and all training images. A set k times smaller than the
  full one trains min(k, 10) times more epochs, so small sets are not starved of optimizer steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnlab.budget import count_macs
from cnnlab.data.perturb import rotate, scale, shift
from cnnlab.models.mnist_net import mnist_normalize
from cnnlab.report.markdown import markdown_table
from cnnlab.tasks.experiments.common import (
    ExperimentSettings,
    Report,
    Stat,
    accuracy,
    compare,
    count_params,
    describe_difference,
    load_data,
    log,
    plot_sweep,
    prepare_run_dir,
    seeded,
    stat,
    too_few_seeds,
    train_run,
    write_results,
)

NAME = "cnn-vs-dense"
CLAIM = "a CNN beats a dense network with the same number of parameters, is robust to shifts and needs fewer examples"
SHIFTS = (0, 1, 2, 3, 4, 5, 6)
ROTATIONS = (0, 10, 20, 30)
SCALES = (0.7, 0.85, 1.0, 1.15, 1.3)
SAMPLE_SIZES = (1_000, 5_000)
SWEEP_IMAGES = 2_000  # test images used by the robustness sweeps (the clean accuracy uses all test images)
MAX_EPOCH_MULTIPLIER = 10


def small_cnn(channels: tuple[int, int] = (16, 32), hidden: int = 32) -> nn.Sequential:
    """Two conv3x3-ReLU-maxpool stages and a small dense head: [N, 1, 28, 28] in [0, 1] -> 10 logits."""
    c1, c2 = channels
    return nn.Sequential(
        mnist_normalize(),
        nn.Conv2d(1, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # N x c1 x 14 x 14
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # N x c2 x 7 x 7
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def dense_net(hidden: int) -> nn.Sequential:
    """One hidden ReLU layer: [N, 1, 28, 28] in [0, 1] -> 10 logits."""
    return nn.Sequential(mnist_normalize(), nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def matched_dense_width(target_params: int) -> int:
    """Hidden width of `dense_net` whose parameter count is closest to `target_params`."""
    # params(h) = 784 h + h + 10 h + 10
    return max(1, round((target_params - 10) / (28 * 28 + 1 + 10)))


def sample_sizes(train_count: int) -> list[int]:
    """The training-set sizes of the sample-efficiency study (those not larger than the data available)."""
    return sorted({size for size in SAMPLE_SIZES if size < train_count} | {train_count})


def epochs_for(size: int, train_count: int, epochs: int) -> int:
    """Epochs for a training set of `size`: min(k, 10) times `epochs` for a set k times smaller than the full one."""
    return epochs * max(1, min(MAX_EPOCH_MULTIPLIER, train_count // size))


def _sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, list[float]]:
    shift_accuracy = []
    for pixels in SHIFTS:
        directions = [(0, 0)] if pixels == 0 else [(pixels, 0), (-pixels, 0), (0, pixels), (0, -pixels)]
        shift_accuracy.append(
            sum(accuracy(model, shift(images, dx, dy), labels) for dx, dy in directions) / len(directions)
        )
    rotation_accuracy = []
    for degrees in ROTATIONS:
        senses = [0.0] if degrees == 0 else [degrees, -degrees]
        rotation_accuracy.append(sum(accuracy(model, rotate(images, d), labels) for d in senses) / len(senses))
    scale_accuracy = [accuracy(model, scale(images, factor), labels) for factor in SCALES]
    return {"shift": shift_accuracy, "rotation": rotation_accuracy, "scale": scale_accuracy}


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"  # "after 1 epochs" was the report's sentence


def run(settings: ExperimentSettings) -> Path:
    """Run the experiment and write ``<output>/experiment/cnn-vs-dense/report.md``; returns its path."""
    settings.validate()
    run_dir = prepare_run_dir(settings, NAME)
    report = Report("CNN vs dense network", CLAIM, settings)
    data = load_data(settings)
    settings = report.settings = data.counted(settings)  # the images used, said so
    train_count = len(data.train_labels)
    val = (data.val_images, data.val_labels)
    sweep_images, sweep_labels = data.test_images[:SWEEP_IMAGES], data.test_labels[:SWEEP_IMAGES]

    cnn_params = count_params(small_cnn())
    dense_width = matched_dense_width(cnn_params)
    builders = {"CNN": small_cnn, "dense": lambda: dense_net(dense_width)}
    sizes = sample_sizes(train_count)
    test_accuracy: dict[str, list[float]] = {name: [] for name in builders}
    train_seconds: dict[str, list[float]] = {name: [] for name in builders}
    step_seconds: dict[str, list[float]] = {name: [] for name in builders}
    sweeps: dict[str, dict[str, list[list[float]]]] = {name: {} for name in builders}
    by_size: dict[str, dict[int, list[float]]] = {name: {size: [] for size in sizes} for name in builders}

    for seed in range(settings.seeds):
        for name, build in builders.items():
            for size in sizes:
                epochs = epochs_for(size, train_count, settings.epochs)
                trained = train_run(
                    seeded(seed, build),
                    data.train_images[:size],
                    data.train_labels[:size],
                    val,
                    settings,
                    run_dir / f"{name.lower()}-n{size}" / f"seed{seed}",
                    seed,
                    epochs=epochs,
                )
                report.count(trained)
                test = accuracy(trained.model, data.test_images, data.test_labels)
                by_size[name][size].append(test)
                log(settings, f"{NAME}: {name} seed {seed} n={size} ({_epochs(epochs)}): test accuracy {test:.4f}")
                if size == train_count:
                    test_accuracy[name].append(test)
                    train_seconds[name].append(trained.train_seconds)
                    step_seconds[name].append(trained.seconds_per_step)
                    for kind, values in _sweep(trained.model, sweep_images, sweep_labels).items():
                        sweeps[name].setdefault(kind, []).append(values)

    names = list(builders)
    params = {name: count_params(build()) for name, build in builders.items()}
    macs = {name: count_macs(build(), (1, 28, 28)) for name, build in builders.items()}
    acc = {name: stat(test_accuracy[name]) for name in names}
    seconds = {name: stat(train_seconds[name]) for name in names}
    per_step = {name: stat(step_seconds[name]) for name in names}

    def sweep_stats(name: str, kind: str) -> list[Stat]:
        per_seed = sweeps[name][kind]
        return [stat([values[i] for values in per_seed]) for i in range(len(per_seed[0]))]

    curves = {kind: {name: sweep_stats(name, kind) for name in names} for kind in ("shift", "rotation", "scale")}
    size_stats = {name: [stat(by_size[name][size]) for size in sizes] for name in names}

    report.add(
        "Models",
        f"The dense net's hidden width ({dense_width}) is computed to match the CNN's parameter count.\n\n"
        + markdown_table(
            ["model", "parameters", "MACs / image", "test accuracy (%)", "training time (s)", "ms / step"],
            [
                [
                    name,
                    f"{params[name]:,}",
                    f"{macs[name]:,}",
                    acc[name].format(100),
                    seconds[name].format(1, 1),
                    per_step[name].format(1000, 2),
                ]
                for name in names
            ],
        )
        + f"\n\nTest accuracy on {len(data.test_labels):,} test images after {_epochs(settings.epochs)} on "
        f"{train_count:,} training images; time spent in training steps only.",
    )
    sweep_specs = (
        ("shift", SHIFTS, "shift (pixels, mean of right/left/down/up)", "robustness_shift.png"),
        ("rotation", ROTATIONS, "rotation (degrees, mean of both senses)", "robustness_rotation.png"),
        ("scale", SCALES, "scale factor", "robustness_scale.png"),
    )
    for kind, xs, label, file_name in sweep_specs:
        plot_sweep(run_dir / file_name, list(xs), curves[kind], label, "test accuracy (%)", f"{kind} robustness")
        rows = [[x, *(curves[kind][name][i].format(100) for name in names)] for i, x in enumerate(xs)]
        report.add(
            f"Robustness: {kind}",
            f"Test accuracy (%) on the first {len(sweep_labels):,} test images, {label}.\n\n"
            + markdown_table([label, *names], rows)
            + f"\n\n![{kind}]({file_name})",
        )
    plot_sweep(run_dir / "sample_efficiency.png", sizes, size_stats, "training images", "test accuracy (%)",
               "sample efficiency")  # fmt: skip
    rows = [
        [f"{size:,}", epochs_for(size, train_count, settings.epochs), *(size_stats[n][i].format(100) for n in names)]
        for i, size in enumerate(sizes)
    ]
    report.add(
        "Sample efficiency",
        markdown_table(["training images", "epochs", *(f"{n} test accuracy (%)" for n in names)], rows)
        + "\n\n![sample efficiency](sample_efficiency.png)",
    )

    conclusion = _conclusion(names, params, macs, acc, per_step, curves, sizes, size_stats)
    results = {
        "params": params,
        "macs": macs,
        "dense_width": dense_width,
        "test_accuracy": test_accuracy,
        "train_seconds": train_seconds,
        "seconds_per_step": step_seconds,
        "step_time_ratio": list(step_time_ratios(per_step[names[0]], per_step[names[1]]).values),  # CNN / dense
        "sweeps": {"shift": SHIFTS, "rotation": ROTATIONS, "scale": SCALES, "values": sweeps},
        "sample_sizes": sizes,
        "accuracy_by_size": {name: {str(k): v for k, v in by_size[name].items()} for name in names},
        "conclusion": conclusion,
        "settings": settings.flags(),
    }
    write_results(run_dir / "results.json", results)
    return report.write(run_dir / "report.md", conclusion)


def step_time_ratios(cnn: Stat, dense: Stat) -> Stat:
    """The CNN's time per training step over the dense net's, seed by seed (the seeds' runs are paired in order)."""
    return stat([c / d for c, d in zip(cnn.values, dense.values, strict=True)])


def _step_ratio_phrase(ratio: Stat) -> str:
    # a ratio of means hid the noise: two identical tiny runs under different load gave 24.0x and 9.9x
    load = "step times depend on the machine's load, the accuracies do not"
    if len(ratio.values) == 1:
        return f"{ratio.mean:.1f}x its time per training step (one seed; {load})"
    return (
        f"{ratio.format(1, 1)} times its time per training step (mean ± std of the per-seed ratios, "
        f"{min(ratio.values):.1f}x to {max(ratio.values):.1f}x; {load})"
    )


def _conclusion(
    names: list[str],
    params: dict[str, int],
    macs: dict[str, int],
    acc: dict[str, Stat],
    per_step: dict[str, Stat],
    curves: dict[str, dict[str, list[Stat]]],
    sizes: list[int],
    size_stats: dict[str, list[Stat]],
) -> str:
    cnn, dense = names
    sentences = [
        f"With {params[cnn]:,} parameters against the dense net's {params[dense]:,}, the CNN spends "
        f"{macs[cnn] / macs[dense]:.0f}x the dense net's MACs per image (weights reused at every position) and took "
        f"{_step_ratio_phrase(step_time_ratios(per_step[cnn], per_step[dense]))}.",
        describe_difference(cnn, acc[cnn], dense, acc[dense], "Clean test accuracy") + ".",
    ]
    for kind, xs, unit in (("shift", SHIFTS, " px"), ("rotation", ROTATIONS, " degrees")):
        first, last = curves[kind][cnn][0], curves[kind][cnn][-1]
        dense_first, dense_last = curves[kind][dense][0], curves[kind][dense][-1]
        drop = compare(first, last)
        if drop.measurable:
            cnn_part = (
                f"the CNN's accuracy falls measurably, from {first.mean * 100:.1f}% to {last.mean * 100:.1f}%: "
                f"it is not invariant to {kind}s of that size"
            )
        elif not drop.estimable:  # too few seeds: "not measurably" would read as "no drop", whatever the numbers
            cnn_part = (
                f"the CNN's accuracy goes from {first.mean * 100:.1f}% to {last.mean * 100:.1f}% "
                f"({too_few_seeds(drop.seeds, 'drop')})"
            )
        else:
            cnn_part = (
                f"the CNN's accuracy ({first.mean * 100:.1f}% -> {last.mean * 100:.1f}%) does not fall measurably"
            )
        sentences.append(
            f"Under a {kind} of {xs[-1]}{unit} {cnn_part} (dense net: {dense_first.mean * 100:.1f}% -> "
            f"{dense_last.mean * 100:.1f}%); "
            + describe_difference(cnn, last, dense, dense_last, f"accuracy at {xs[-1]}{unit}")
            + "."
        )
    low, high = curves["scale"][cnn][0], curves["scale"][cnn][-1]
    sentences.append(
        f"Scaled by {SCALES[0]} and {SCALES[-1]}, the CNN keeps {low.mean * 100:.1f}% and {high.mean * 100:.1f}% "
        f"(dense: {curves['scale'][dense][0].mean * 100:.1f}% and {curves['scale'][dense][-1].mean * 100:.1f}%)."
    )
    if len(sizes) == 1:  # the sentence below would repeat the clean accuracy's as if it were a sample-size study
        sentences.append(
            f"Sample efficiency is not measured: {sizes[0]:,} training images leave no smaller set among "
            f"{', '.join(f'{size:,}' for size in SAMPLE_SIZES)} to train on."
        )
        return " ".join(sentences)
    smallest = 0
    sentences.append(
        f"Trained on {sizes[smallest]:,} images: "
        + describe_difference(cnn, size_stats[cnn][smallest], dense, size_stats[dense][smallest], "test accuracy")
        + "."
    )
    return " ".join(sentences)
