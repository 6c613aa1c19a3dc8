"""Class-balanced sampling and the metrics for skewed classes and test-time averaging."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from cnnlab.train import TensorBatches
from cnnlab.train.metrics import Accuracy, BalancedAccuracy, ViewAveraged


def test_balanced_accuracy_matches_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.cat([torch.zeros(80, dtype=torch.long), torch.randint(1, 4, (20,), generator=generator)])
    logits = torch.randn(100, 4, generator=generator)
    metric = BalancedAccuracy(4)
    for chunk in range(0, 100, 32):  # streaming, batch by batch
        metric.update(logits[chunk : chunk + 32], targets[chunk : chunk + 32])
    expected = balanced_accuracy_score(targets.numpy(), logits.argmax(1).numpy())
    assert metric.compute() == pytest.approx(expected, abs=1e-12)


def test_view_averaged_metric_averages_the_views_of_each_sample() -> None:
    targets = torch.tensor([0, 1])
    # view-major rows: sample 0 and 1 in view 0, then in view 1; view 0 is wrong on sample 1, the average is right
    outputs = torch.tensor([[2.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    averaged, first = ViewAveraged(Accuracy(), 2), ViewAveraged(Accuracy(), 2, first_only=True)
    for metric in (averaged, first):
        metric.update(outputs, targets.repeat(2))
    assert averaged.compute() == 1.0 and first.compute() == 0.5


def test_weighted_batches_draw_every_class_equally_often() -> None:
    labels = torch.cat([torch.zeros(900, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    counts = torch.bincount(labels).double()
    batches = TensorBatches(torch.arange(1000), labels, 100, drop_last=True, weights=1.0 / counts[labels])
    drawn = torch.cat([y for epoch in range(5) for _, y in batches.batches(epoch, 0, True, torch.device("cpu"))])
    share = float((drawn == 1).float().mean())
    assert 0.45 < share < 0.55  # one in ten samples, drawn half of the time
    again = torch.cat([y for _, y in batches.batches(0, 0, True, torch.device("cpu"))])
    assert torch.equal(again, drawn[:1000])  # the draws are a function of (seed, epoch): resumable
