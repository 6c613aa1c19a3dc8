"""Experiment `lrn-vs-bn`: does local response normalisation help, and how does it compare with batch norm?

Géron ch. 14, exercise 5 asks what AlexNet's innovations were; LRN is one, and answers often repeat the paper's
"LRN improves generalisation". A small AlexNet-style network (5x5 conv, overlapping 3x3/2 max pooling, three 3x3
convs, a dropout dense head) is trained three ways, everything else equal:

- `none`: no normalisation;
- `LRN`: `cnnlab.layers.LocalResponseNorm` after the ReLU of the first two convolutions, where AlexNet has it,
  with the paper's constants (n=5, alpha=1e-4, beta=0.75, k=2);
- `BN`: batch norm after every convolution, before the ReLU (how BN is used in practice).

Compared over several seeds: test accuracy, convergence speed (validation accuracy after the first epoch, mean
training loss over the first epoch, and the optimizer steps until the 20-step running mean of the training loss first
drops below `LOSS_THRESHOLD`), and wall time per training step.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from cnnlab.budget import count_macs
from cnnlab.files import save_figure_whole
from cnnlab.layers import LocalResponseNorm
from cnnlab.models.mnist_net import mnist_normalize
from cnnlab.report.markdown import markdown_table
from cnnlab.tasks.experiments.common import (
    ExperimentSettings,
    Report,
    Stat,
    accuracy,
    count_params,
    describe_difference,
    load_data,
    log,
    prepare_run_dir,
    pyplot,
    seeded,
    stat,
    train_run,
    write_results,
)

NAME = "lrn-vs-bn"
CLAIM = "local response normalisation (AlexNet, 2012) improves accuracy; batch norm does it better and faster"
VARIANTS = ("none", "LRN", "BN")
LOSS_THRESHOLD = 0.3
RUNNING_WINDOW = 20


def _conv(in_channels: int, out_channels: int, kernel: int, norm: str, lrn_here: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=norm != "BN")]
    if norm == "BN":
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU()]
    else:
        layers.append(nn.ReLU())
        if norm == "LRN" and lrn_here:
            # The paper's alpha = 1e-4 is alpha = 5e-4 in PyTorch's convention (divided by the window size).
            layers.append(LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
    return layers


class SmallAlexNet(nn.Module):
    """AlexNet's layout shrunk for 28x28 digits: [N, 1, 28, 28] in [0, 1] -> 10 logits.

    Args:
        norm: "none", "LRN" or "BN".
        channels: output channels of the five convolutions.
        hidden: width of the dense layer.
        drop_rate: dropout before each dense layer (as in AlexNet).
    """

    def __init__(
        self,
        norm: str,
        channels: tuple[int, int, int, int, int] = (16, 32, 48, 48, 32),
        hidden: int = 128,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if norm not in VARIANTS:
            raise ValueError(f"unknown normalisation {norm!r}; one of {VARIANTS}")
        c1, c2, c3, c4, c5 = channels
        self.features = nn.Sequential(
            mnist_normalize(),
            *_conv(1, c1, 5, norm, lrn_here=True),
            nn.MaxPool2d(3, 2, 1),  # N x c1 x 14 x 14
            *_conv(c1, c2, 3, norm, lrn_here=True),
            nn.MaxPool2d(3, 2, 1),  # N x c2 x 7 x 7
            *_conv(c2, c3, 3, norm, lrn_here=False),
            *_conv(c3, c4, 3, norm, lrn_here=False),
            *_conv(c4, c5, 3, norm, lrn_here=False),
            nn.MaxPool2d(3, 2, 1),  # N x c5 x 4 x 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(drop_rate),
            nn.Linear(c5 * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def steps_to_threshold(losses: list[float], threshold: float = LOSS_THRESHOLD, window: int = RUNNING_WINDOW) -> float:
    """First optimizer step (1-based) where the running mean of `window` losses is below `threshold`; NaN if never."""
    total = 0.0
    for step, loss in enumerate(losses, start=1):
        total += loss
        if step > window:
            total -= losses[step - 1 - window]
        if step >= window and total / window < threshold:
            return float(step)
    return math.nan


def _format_steps(values: list[float]) -> str:
    reached = [v for v in values if not math.isnan(v)]
    if not reached:
        return "not reached"
    text = stat(reached).format(1, 0)
    return text if len(reached) == len(values) else f"{text} ({len(reached)}/{len(values)} seeds)"


def run(settings: ExperimentSettings) -> Path:
    """Run the experiment and write ``<output>/experiment/lrn-vs-bn/report.md``; returns its path."""
    settings.validate()
    run_dir = prepare_run_dir(settings, NAME)
    report = Report("LRN vs batch norm in a small AlexNet-style network", CLAIM, settings)
    data = load_data(settings)
    settings = report.settings = data.counted(settings)  # the images used, said so
    val = (data.val_images, data.val_labels)
    measured: dict[str, dict[str, list[float]]] = {variant: {} for variant in VARIANTS}
    loss_curves: dict[str, list[list[float]]] = {variant: [] for variant in VARIANTS}
    for seed in range(settings.seeds):
        for variant in VARIANTS:
            trained = train_run(
                seeded(seed, lambda variant=variant: SmallAlexNet(variant)),
                data.train_images,
                data.train_labels,
                val,
                settings,
                run_dir / variant.lower() / f"seed{seed}",
                seed,
            )
            report.count(trained)
            steps_per_epoch = trained.steps // len(trained.history)
            first_epoch = trained.step_losses[:steps_per_epoch]
            values = {
                "test accuracy": accuracy(trained.model, data.test_images, data.test_labels),
                "val accuracy after epoch 1": trained.history[0]["val_accuracy"],
                "first-epoch train loss": sum(first_epoch) / len(first_epoch),
                "steps to threshold": steps_to_threshold(trained.step_losses),
                "ms / step": trained.seconds_per_step * 1000,
            }
            for key, value in values.items():
                measured[variant].setdefault(key, []).append(value)
            loss_curves[variant].append(trained.step_losses)
            log(settings, f"{NAME}: {variant} seed {seed}: test accuracy {values['test accuracy']:.4f}")

    stats = {
        variant: {key: stat(v) for key, v in measured[variant].items() if key != "steps to threshold"}
        for variant in VARIANTS
    }
    params = {variant: count_params(SmallAlexNet(variant)) for variant in VARIANTS}
    macs = {variant: count_macs(SmallAlexNet(variant), (1, 28, 28)) for variant in VARIANTS}
    report.add(
        "Accuracy, convergence and cost",
        markdown_table(
            [
                "normalisation",
                "parameters",
                "MACs / image",
                "test accuracy (%)",
                "val accuracy after epoch 1 (%)",
                "first-epoch train loss",
                f"steps to running loss < {LOSS_THRESHOLD}",
                "ms / step",
            ],  # fmt: skip
            [
                [
                    variant,
                    f"{params[variant]:,}",
                    f"{macs[variant]:,}",
                    stats[variant]["test accuracy"].format(100),
                    stats[variant]["val accuracy after epoch 1"].format(100),
                    stats[variant]["first-epoch train loss"].format(1, 3),
                    _format_steps(measured[variant]["steps to threshold"]),
                    stats[variant]["ms / step"].format(1, 1),
                ]
                for variant in VARIANTS
            ],
        )
        + f"\n\nTest accuracy on {len(data.test_labels):,} test images. Steps to threshold: first optimizer step at "
        f"which the {RUNNING_WINDOW}-step running mean of the training loss is below {LOSS_THRESHOLD} "
        "(training loss includes dropout). MACs count the LRN/BN arithmetic only where the counter sees it as "
        "multiply-accumulates.\n\n![training loss](training_loss.png)",
    )
    _plot_losses(run_dir / "training_loss.png", loss_curves)
    conclusion = _conclusion(stats, measured)
    results = {
        "params": params,
        "macs": macs,
        "measured": measured,
        "conclusion": conclusion,
        "settings": settings.flags(),
    }
    write_results(run_dir / "results.json", results)
    return report.write(run_dir / "report.md", conclusion)


def _plot_losses(path: Path, loss_curves: dict[str, list[list[float]]]) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for variant, per_seed in loss_curves.items():
        length = min(len(curve) for curve in per_seed)
        mean = [sum(curve[i] for curve in per_seed) / len(per_seed) for i in range(length)]
        window = min(RUNNING_WINDOW, length)
        smoothed = [sum(mean[max(0, i - window + 1) : i + 1]) / len(mean[max(0, i - window + 1) : i + 1])
                    for i in range(length)]  # fmt: skip
        axis.plot(range(1, length + 1), smoothed, label=variant)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(f"training loss ({RUNNING_WINDOW}-step mean)")
    axis.set_title("training loss, mean over seeds")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure_whole(figure, path, dpi=100)
    plt.close(figure)


def _conclusion(stats: dict[str, dict[str, Stat]], measured: dict[str, dict[str, list[float]]]) -> str:
    none, lrn, bn = VARIANTS
    sentences = []
    for other in (lrn, bn):
        parts = [
            describe_difference(
                other, stats[other]["test accuracy"], none, stats[none]["test accuracy"], "test accuracy"
            ),  # fmt: skip
            describe_difference(
                other,
                stats[other]["val accuracy after epoch 1"],
                none,
                stats[none]["val accuracy after epoch 1"],
                "validation accuracy after one epoch",
            ),
            describe_difference(
                other, stats[other]["ms / step"], none, stats[none]["ms / step"], "time per step", scale=1.0, unit=" ms"
            ),  # fmt: skip
        ]
        sentences.append(f"{other} vs no normalisation: " + "; ".join(parts) + ".")
    sentences.append(
        "BN vs LRN: "
        + describe_difference(bn, stats[bn]["test accuracy"], lrn, stats[lrn]["test accuracy"], "test accuracy")
        + "; "
        + describe_difference(
            bn,
            stats[bn]["first-epoch train loss"],
            lrn,
            stats[lrn]["first-epoch train loss"],
            "first-epoch training loss",
            scale=1.0,
            unit="",
            digits=3,
        )  # fmt: skip
        + "."
    )
    reached = {v: _format_steps(measured[v]["steps to threshold"]) for v in VARIANTS}
    sentences.append(
        f"Steps until the running training loss fell below {LOSS_THRESHOLD}: "
        + ", ".join(f"{v} {text}" for v, text in reached.items())
        + "."
    )
    return " ".join(sentences)
