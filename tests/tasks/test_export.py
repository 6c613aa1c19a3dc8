"""`cnnlab export`: what its self-check catches and what it exports (tiny networks, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import Tensor, nn

import cnnlab.tasks.export
from cnnlab.errors import CnnlabError
from cnnlab.tasks.predict import Predictor


class _OtherAtBatchOne(nn.Module):
    """A digit classifier whose forward branches on the batch size: the trace at batch 2 keeps the other branch, so
    the exported file gives batch 1 other logits than PyTorch does (and batch 3 the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.fc(x.flatten(1))
        return logits + 1.0 if x.shape[0] == 1 else logits


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_graph_that_differs_at_batch_1_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check ran batch 3 alone: a graph wrong at batch 1, the batch a server sends most, was written as checked."""
    predictor = Predictor(_OtherAtBatchOne().eval(), [str(digit) for digit in range(10)], None, "branchy")
    monkeypatch.setattr(cnnlab.tasks.export, "load_predictor", lambda model: predictor)
    output = tmp_path / "branchy.pt"
    with pytest.raises(CnnlabError, match=r"differ from PyTorch's by up to 1\.00e\+00 .* so it was deleted"):
        cnnlab.tasks.export.export_model("branchy", "torchscript", output)
    assert list(tmp_path.iterdir()) == []  # nothing unchecked is left to deploy
