"""`save_preview_grid`: the augmented preview PNG is written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.data.photo_transforms import save_preview_grid
from cnnlab.models._pretrained import PretrainedCfg


def test_preview_stopped_while_written_keeps_the_earlier_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed while it wrote augmented_preview.png left a truncated PNG at that path (the report and the lab
    showed a broken image); the file is now written under a temporary name and renamed once whole."""
    cfg = PretrainedCfg.for_model(nn.Identity())
    images = [torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]
    path = save_preview_grid(images, tmp_path / "augmented_preview.png", cfg)
    before = path.read_bytes()
    original = Image.Image.save

    def stopped_halfway(image: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        original(image, fp, *args, **kwargs)
        with open(fp, "r+b") as written:  # what the writer had put down when the stop came: half of it
            written.truncate(len(Path(fp).read_bytes()) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", stopped_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_preview_grid([-image for image in images], path, cfg)
    monkeypatch.undo()
    assert path.read_bytes() == before
    with Image.open(path) as image:
        image.load()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left beside it
