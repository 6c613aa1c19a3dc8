"""Experiment `pool-vs-stride`: downsample with 2x2 max pooling or with a stride-2 convolution?

Géron ch. 14, exercise 4 ("Why would you want to add a max pooling layer rather than a convolutional layer with the
same stride?"). The usual answers: pooling has no parameters and adds some invariance to small shifts. The same
two-stage network is built three ways, differing only in how each stage halves the resolution:

- `max-pool`: conv3x3 -> ReLU -> 2x2 max pool (stride 2); no parameters in the downsampling.
- `strided-conv`: conv3x3 -> ReLU -> conv3x3 stride 2 -> ReLU; the pooling layer replaced by a learned convolution
  with the same stride (exercise 4's alternative).
- `stride-2 conv only`: the stage's conv3x3 itself uses stride 2; no extra layer (cheapest).

Each is trained over several seeds on the engine and compared on parameters, MACs, test accuracy (clean and with
1-pixel shifts), and how invariant its features are to 1-pixel shifts: the cosine similarity between the features
of a test image and of the same image shifted by one pixel (mean over right/left/down/up), for the penultimate
layer (the classifier's input) and the last feature map. The similarity between two *different* test images gives
the scale: invariance means the shifted pair is much closer than an unrelated pair.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.budget import count_macs
from cnnlab.data.mnist import find_mnist_dir
from cnnlab.data.perturb import shift
from cnnlab.errors import CnnlabError
from cnnlab.files import save_figure_whole
from cnnlab.models.mnist_net import mnist_normalize
from cnnlab.report.markdown import markdown_table
from cnnlab.tasks.experiments.common import (
    MIN_SEEDS,
    ExperimentSettings,
    Report,
    Stat,
    accuracy,
    compare,
    count_params,
    describe_difference,
    load_data,
    log,
    model_device,
    prepare_run_dir,
    pyplot,
    seeded,
    stat,
    train_run,
    write_results,
)
from cnnlab.train.records import epoch_axis

NAME = "pool-vs-stride"
CLAIM = "max pooling beats a stride-2 convolution: no parameters, and features more invariant to small shifts"
VARIANTS = ("max-pool", "strided-conv", "stride-2 conv only")
FEATURE_IMAGES = 2_000  # test images used for the feature-similarity measurements
ONE_PIXEL = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _stage(in_channels: int, out_channels: int, downsample: str) -> nn.Sequential:
    if downsample == "max-pool":
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    if downsample == "strided-conv":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
    if downsample == "stride-2 conv only":
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.ReLU())
    raise ValueError(f"unknown downsampling {downsample!r}; one of {VARIANTS}")


class DownsampleNet(nn.Module):
    """Two conv stages (each halving the resolution by `downsample`), a hidden dense layer and a classifier.

    Args:
        downsample: one of `VARIANTS`.
        channels: output channels of the two stages.
        hidden: width of the penultimate (hidden dense) layer.
    """

    def __init__(self, downsample: str, channels: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        super().__init__()
        c1, c2 = channels
        self.normalize = mnist_normalize()
        self.stages = nn.Sequential(_stage(1, c1, downsample), _stage(c1, c2, downsample))
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, 10)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map: N x c2 x 7 x 7."""
        return self.stages(self.normalize(x))  # N x c2 x 7 x 7

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (the classifier's input): N x hidden."""
        return self.hidden(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pre_logits(x))


@torch.inference_mode()
def shift_similarity(model: DownsampleNet, images: torch.Tensor) -> dict[str, float]:
    """Mean cosine similarity of features: image vs its 1-pixel shifts, and image vs a different image."""
    model.eval()
    images = images.to(model_device(model))
    results: dict[str, float] = {}
    for name, extract in (("penultimate", model.pre_logits), ("feature map", model.forward_features)):
        reference = extract(images).flatten(1)
        shifted = [
            F.cosine_similarity(reference, extract(shift(images, dx, dy)).flatten(1)).mean() for dx, dy in ONE_PIXEL
        ]
        results[f"{name} shifted"] = float(torch.stack(shifted).mean())
        # roll by one: each image paired with the next, a different digit image (usually another class)
        results[f"{name} unrelated"] = float(F.cosine_similarity(reference, reference.roll(1, 0)).mean())
    return results


# The unrelated baseline pairs each test image with the next one (`roll(1)`): one image was paired with itself, its
# similarity 1, and the report claimed that a 1-pixel shift moves the features further than an unrelated image.
_ONE_TEST_IMAGE = (
    "pool-vs-stride compares each test image's features with another test image's (the unrelated baseline), so it "
    "needs 2 or more"
)


def run(settings: ExperimentSettings) -> Path:
    """Run the experiment and write ``<output>/experiment/pool-vs-stride/report.md``; returns its path."""
    settings.validate()
    if settings.test_subset == 1:
        raise CnnlabError(f"--test-subset 1: {_ONE_TEST_IMAGE}; pass --test-subset 2 or more")
    run_dir = prepare_run_dir(settings, NAME)
    report = Report("Max pooling vs stride-2 convolution", CLAIM, settings)
    data = load_data(settings)
    settings = report.settings = data.counted(settings)  # the images used, said so
    if len(data.test_labels) < 2:  # an MNIST of one test image (--data-dir)
        where = find_mnist_dir(settings.data_dir)
        raise CnnlabError(f"{where} holds one test image: {_ONE_TEST_IMAGE}; point --data-dir at the full MNIST")
    val = (data.val_images, data.val_labels)
    feature_images = data.test_images[:FEATURE_IMAGES]
    feature_labels = data.test_labels[:FEATURE_IMAGES]

    measured: dict[str, dict[str, list[float]]] = {variant: {} for variant in VARIANTS}
    curves: dict[str, list[list[float]]] = {variant: [] for variant in VARIANTS}
    for seed in range(settings.seeds):
        for variant in VARIANTS:
            trained = train_run(
                seeded(seed, lambda variant=variant: DownsampleNet(variant)),
                data.train_images,
                data.train_labels,
                val,
                settings,
                run_dir / variant.replace(" ", "-") / f"seed{seed}",
                seed,
            )
            report.count(trained)
            model = trained.model
            assert isinstance(model, DownsampleNet)
            values = {
                "test accuracy": accuracy(model, data.test_images, data.test_labels),
                "1-px shifted accuracy": sum(
                    accuracy(model, shift(feature_images, dx, dy), feature_labels) for dx, dy in ONE_PIXEL
                )
                / len(ONE_PIXEL),
                "ms / step": trained.seconds_per_step * 1000,
            }
            values.update(shift_similarity(model, feature_images))
            for key, value in values.items():
                measured[variant].setdefault(key, []).append(value)
            curves[variant].append([row["val_accuracy"] for row in trained.history])
            log(settings, f"{NAME}: {variant} seed {seed}: test accuracy {values['test accuracy']:.4f}")

    stats = {variant: {key: stat(v) for key, v in measured[variant].items()} for variant in VARIANTS}
    params = {variant: count_params(DownsampleNet(variant)) for variant in VARIANTS}
    macs = {variant: count_macs(DownsampleNet(variant), (1, 28, 28)) for variant in VARIANTS}
    report.add(
        "Cost and accuracy",
        markdown_table(
            [
                "downsampling",
                "parameters",
                "MACs / image",
                "test accuracy (%)",
                "1-px shifted accuracy (%)",
                "ms / step",
            ],  # fmt: skip
            [
                [
                    variant,
                    f"{params[variant]:,}",
                    f"{macs[variant]:,}",
                    stats[variant]["test accuracy"].format(100),
                    stats[variant]["1-px shifted accuracy"].format(100),
                    stats[variant]["ms / step"].format(1, 1),
                ]
                for variant in VARIANTS
            ],
        )
        + f"\n\nTest accuracy on {len(data.test_labels):,} test images; shifted accuracy on the first "
        f"{len(feature_labels):,}, mean over 1-pixel shifts right/left/down/up.",
    )
    report.add(
        "Invariance of the features to 1-pixel shifts",
        "Mean cosine similarity between the features of a test image and of the same image shifted by one pixel "
        '("shifted"), and between two different test images ("unrelated", the baseline). Closer to 1 and further '
        "above the baseline means more invariant.\n\n"
        + markdown_table(
            [
                "downsampling",
                "penultimate shifted",
                "penultimate unrelated",
                "feature map shifted",
                "feature map unrelated",
            ],  # fmt: skip
            [
                [variant]
                + [
                    stats[variant][key].format(1, 3)
                    for key in (
                        "penultimate shifted",
                        "penultimate unrelated",
                        "feature map shifted",
                        "feature map unrelated",
                    )  # fmt: skip
                ]
                for variant in VARIANTS
            ],
        )
        + "\n\n![invariance](invariance.png)",
    )
    _plot_invariance(run_dir / "invariance.png", stats)
    _plot_curves(run_dir / "val_accuracy.png", curves)
    report.add("Validation accuracy per epoch", "![validation accuracy](val_accuracy.png)")

    conclusion = _conclusion(params, macs, stats)
    results = {
        "params": params,
        "macs": macs,
        "measured": measured,
        "val_curves": curves,
        "conclusion": conclusion,
        "settings": settings.flags(),
    }
    write_results(run_dir / "results.json", results)
    return report.write(run_dir / "report.md", conclusion)


def _plot_invariance(path: Path, stats: dict[str, dict[str, Stat]]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8.5, 4))
    keys = ("penultimate shifted", "penultimate unrelated", "feature map shifted", "feature map unrelated")
    width = 0.8 / len(VARIANTS)
    for i, variant in enumerate(VARIANTS):
        positions = [k + i * width for k in range(len(keys))]
        axis.bar(positions, [stats[variant][key].mean for key in keys], width,
                 yerr=[stats[variant][key].std for key in keys], label=variant)  # fmt: skip
    axis.set_xticks([k + width for k in range(len(keys))], [key.replace(" ", "\n", 1) for key in keys])
    axis.set_ylabel("cosine similarity (mean ± std over seeds)")
    axis.set_title("feature similarity under 1-pixel shifts")
    axis.legend(title="downsampling", loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the bars, not on them
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)


def _plot_curves(path: Path, curves: dict[str, list[list[float]]]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for variant, per_seed in curves.items():
        epochs = range(1, len(per_seed[0]) + 1)
        means = [sum(seed[e] for seed in per_seed) / len(per_seed) * 100 for e in range(len(per_seed[0]))]
        axis.plot(epochs, means, marker="o", label=variant)
    epoch_axis(axis)
    axis.set_ylabel("validation accuracy (%, mean over seeds)")
    axis.legend()
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)


def _conclusion(params: dict[str, int], macs: dict[str, int], stats: dict[str, dict[str, Stat]]) -> str:
    pool, learned, merged = VARIANTS
    sentences = [
        f"Replacing each 2x2 max pool by a stride-2 3x3 convolution adds {params[learned] - params[pool]:,} "
        f"parameters ({params[pool]:,} -> {params[learned]:,}) and {macs[learned] / macs[pool]:.2f}x the MACs; "
        f"putting the stride in the stage's own convolution instead needs {macs[merged] / macs[pool]:.2f}x the MACs "
        f"of the pooled net with the same parameters.",
    ]
    for other in (learned, merged):
        parts = [
            describe_difference(
                pool, stats[pool]["test accuracy"], other, stats[other]["test accuracy"], "test accuracy"
            ),  # fmt: skip
            describe_difference(
                pool,
                stats[pool]["1-px shifted accuracy"],
                other,
                stats[other]["1-px shifted accuracy"],
                "accuracy under 1-px shifts",
            ),  # fmt: skip
            describe_difference(
                pool,
                stats[pool]["penultimate shifted"],
                other,
                stats[other]["penultimate shifted"],
                "penultimate-feature similarity under 1-px shifts",
                scale=1.0,
                unit="",
                digits=3,
            ),  # fmt: skip
        ]
        sentences.append(f"Max pool vs {other}: " + "; ".join(parts) + ".")
    gaps = {v: stats[v]["penultimate shifted"].mean - stats[v]["penultimate unrelated"].mean for v in VARIANTS}
    # under the noise rule, as every other claim: is a shifted image's similarity above an unrelated image's?
    closer = {v: compare(stats[v]["penultimate shifted"], stats[v]["penultimate unrelated"]) for v in VARIANTS}
    nearer = [v for v, c in closer.items() if c.measurable and c.difference > 0]
    farther = [v for v, c in closer.items() if c.measurable and c.difference < 0]
    within = [v for v, c in closer.items() if not c.measurable]
    what = "a 1-pixel shift keeps the penultimate features closer to the original than an unrelated image's are"
    if len(nearer) == len(VARIANTS):
        sentence = f"For every variant {what}"
    elif not any(c.estimable for c in closer.values()):
        seeds = min(c.seeds for c in closer.values())
        count = "one seed" if seeds == 1 else f"{seeds} seeds ({MIN_SEEDS} are needed)"
        sentence = f"Whether {what} is not claimed from {count}"
    else:
        parts = [f"for {' and '.join(nearer)} {what}"] if nearer else []
        if farther:
            parts.append(
                f"for {' and '.join(farther)} a 1-pixel shift moves the penultimate features further from the "
                "original than an unrelated image's are"
            )
        if within:
            parts.append(
                f"for {' and '.join(within)} a shifted and an unrelated image's similarities are within the noise"
            )
        sentence = "; ".join(parts)
        sentence = sentence[0].upper() + sentence[1:]
    sentences.append(
        sentence
        + " (similarity gaps above the unrelated baseline: "
        + ", ".join(f"{v} {gap:.3f}" for v, gap in gaps.items())
        + ")."
    )
    return " ".join(sentences)
