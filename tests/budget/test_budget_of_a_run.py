"""`cnnlab budget RUN`: a trained run's network, sized at the run's own input, without reading its weights."""

import re
from pathlib import Path
from unittest import mock

import pytest
import torch

from cnnlab.budget.core import budget
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train.saved import save_ensemble, save_model


def _parameters(arch: str, **kwargs: object) -> int:
    return sum(p.numel() for p in create_model(arch, **kwargs).parameters())


def test_a_run_is_sized_at_its_own_input_without_its_weights(tmp_path: Path) -> None:
    """It was "unknown model 'runs/transfer/NAME'": only zoo names, layer strings and spec files were taken."""
    run = tmp_path / "runs" / "transfer" / "cells"
    meta = {"task": "transfer", "classes": ["a", "b", "c"], "preprocessing": {"input_size": [3, 96, 96]}}
    kwargs = {"num_classes": 3}
    save_model(create_model("efficientnet_lite0", **kwargs), run, "efficientnet_lite0", kwargs, meta)
    (run / "model.safetensors").unlink()  # the record is enough: nothing is loaded
    report = budget(str(run))
    assert report.input_shape == (3, 96, 96)  # the run's crop, not the architecture's 224x224 default
    assert report.params == _parameters("efficientnet_lite0", **kwargs)
    assert report.output_shape[-1] == 3
    assert budget(str(run / "model.json"), input_shape=(3, 64, 64)).input_shape == (3, 64, 64)
    with pytest.raises(CnnlabError, match="takes 3-channel input"):
        budget(str(run), input_shape=(1, 96, 96))


def test_an_mnist_ensemble_is_sized_as_all_its_members(tmp_path: Path) -> None:
    members = []
    for seed in range(2):
        member = tmp_path / "ens" / f"member{seed}"
        save_model(create_model("mnist_net"), member, "mnist_net", {}, {"task": "mnist", "seed": seed})
        members.append(member)
    save_ensemble(tmp_path / "ens", members, {"task": "mnist"})
    single = budget(str(members[0]))
    assert single.input_shape == (1, 28, 28) and single.params == _parameters("mnist_net")
    both = budget(str(tmp_path / "ens"))
    assert both.params == 2 * single.params and both.macs == 2 * single.macs


def test_a_folder_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="holds no model.json or ensemble.json"):
        budget(str(tmp_path))


def test_an_fcn_folder_is_sized_as_the_network_that_scans_an_image(tmp_path: Path) -> None:
    """It said "holds no model.json or ensemble.json; is it a finished cnnlab run?" of a folder `fcn convert` wrote."""
    import json

    from typer.testing import CliRunner

    from cnnlab.cli import app

    run = tmp_path / "run"
    save_model(create_model("mnist_net_small"), run, "mnist_net_small", {}, {"task": "mnist"})
    runner = CliRunner()
    assert runner.invoke(app, ["fcn", "convert", str(run)]).exit_code == 0
    sized = runner.invoke(app, ["budget", str(run / "fcn"), "--input", "1x92x124", "--json"])
    assert sized.exit_code == 0, sized.output
    report = json.loads(sized.output)
    assert report["input_shape"] == [1, 92, 124] and report["model"] == f"{run / 'fcn'} (fully convolutional)"
    assert report["params"] == _parameters("mnist_net_small")  # a dense layer as a convolution: the same weights
    assert report["output_shape"] == [10, (92 - 28) // 8 + 1, (124 - 28) // 8 + 1]  # a score every 8 px
    default = json.loads(runner.invoke(app, ["budget", str(run / "fcn" / "fcn.json"), "--json"]).output)
    assert default["input_shape"] == [1, 28, 28] and default["output_shape"] == [10, 1, 1]
    wrong = runner.invoke(app, ["budget", str(run / "fcn"), "--input", "3x92x124"])
    assert wrong.exit_code != 0 and "takes 1-channel input" in str(wrong.exception)
    # it was refused without the smallest input: that search runs only on networks without real weights
    small = runner.invoke(app, ["budget", str(run / "fcn"), "--input", "1x16x16"])
    assert isinstance(small.exception, CnnlabError)
    assert "the smallest square input it takes is 1x24x24" in str(small.exception)  # its padding lets 24 run


def _cached_run(
    tmp_path: Path,
    unfreeze: int,
    method: str = "cached",
    optimizer: str = "adamw",
    device: str = "cpu",
    precision: str = "fp32",
    batch: int = 8,
) -> Path:
    import json

    run = tmp_path / "runs" / "transfer" / f"{method}{unfreeze}{optimizer}{device}{precision}{batch}"
    meta = {"task": "transfer", "classes": ["a", "b"], "preprocessing": {"input_size": [3, 96, 96]}}
    save_model(create_model("efficientnet_lite0", num_classes=2), run, "efficientnet_lite0", {"num_classes": 2}, meta)
    recipe = {"name": "default", "method": method, "train": {"batch_size": 64, "optimizer": "adamw"}}
    train = {"batch_size": batch} | ({"optimizer": optimizer} if optimizer != "adamw" else {})
    train |= {"precision": precision} if precision != "fp32" else {}
    record = {"recipe": recipe, "unfreeze": unfreeze, "device": device, "config": {"train": train}}
    (run / "results.json").write_text(json.dumps(record))
    return run


@pytest.mark.parametrize("unfreeze", [0, 2])
def test_a_cached_transfer_run_also_sizes_the_step_it_trained(tmp_path: Path, unfreeze: int) -> None:
    """`budget RUN` sized a default-recipe run as if it trained every layer on images; it trained its top blocks on
    cached maps, with the rest frozen. That step is traced too, and matches a real CPU step of the part trained."""
    import copy
    import json

    from typer.testing import CliRunner

    from cnnlab.budget.trace import trace
    from cnnlab.cli import app
    from cnnlab.cli.budget import _trained_step_note
    from cnnlab.models import split_classifier
    from cnnlab.tasks.transfer_cost import _groups_by_name, trained_step_memory
    from cnnlab.train import top_param_groups

    run = _cached_run(tmp_path, unfreeze)
    step = trained_step_memory(run, memory_limit=2**30 if unfreeze else 2**50)
    # the head alone in 1 PB: the planner stops at its cap, marked as `budget --memory` marks it (a bare 1,048,576)
    assert step is not None and step["max_batch_capped"] == (unfreeze == 0)
    fit = "batches of >= 1,048,576 (search cap)" if unfreeze == 0 else f"batches up to {step['max_batch']:,}."
    assert fit in _trained_step_note(step)
    assert step is not None and step["blocks_trained"] == unfreeze and step["batch"] == 8  # the run's own batch
    model = create_model("efficientnet_lite0", num_classes=2)
    split = split_classifier(model, unfreeze, (3, 96, 96))
    top_param_groups(model, unfreeze, 1.0, 0.0)
    assert step["feature_shape"] == list(split.feature_shape)
    assert step["trained_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert step["trained_parameters"] < step["parameters"] == _parameters("efficientnet_lite0", num_classes=2)
    groups = _groups_by_name(split.upper, top_param_groups(model, unfreeze, 1.0, 0.0))  # the run's, one per block
    upper = copy.deepcopy(split.upper).train()
    real = trace(upper, split.feature_shape, 8, "float32", "cpu", "adamw", inference=False, param_groups=groups)
    assert step["peak_bytes"] == real.peak_live_bytes and step["device"] == "cpu"
    assert step["max_batch"] > 8
    result = CliRunner().invoke(app, ["budget", str(run), "--no-layers"])
    assert result.exit_code == 0, result.output
    assert "training the whole network" in result.output and f"{step['trained_parameters']:,} of" in result.output
    document = json.loads(CliRunner().invoke(app, ["budget", str(run), "--json"]).output)
    assert document["run_training_step"]["peak_bytes"] == step["peak_bytes"]


def test_a_cached_run_is_sized_with_its_own_optimizer_on_its_own_device(tmp_path: Path) -> None:
    """A run trained with sgd was sized as plain SGD, where the engine's SGD keeps a Nesterov momentum buffer per
    parameter, and every run was sized as stepping on the CPU, even one trained on a GPU (or with --device cuda)."""
    import copy

    from typer.testing import CliRunner

    from cnnlab.budget.trace import trace
    from cnnlab.cli import app
    from cnnlab.models import split_classifier
    from cnnlab.tasks.transfer_cost import _groups_by_name, trained_step_memory
    from cnnlab.train import top_param_groups

    sgd, adamw = (trained_step_memory(_cached_run(tmp_path, 2, optimizer=name)) for name in ("sgd", "adamw"))
    assert sgd is not None and adamw is not None and sgd["optimizer"] == "sgd" and sgd["momentum"] == 0.9
    model = create_model("efficientnet_lite0", num_classes=2)
    split = split_classifier(model, 2, (3, 96, 96))
    groups = _groups_by_name(split.upper, top_param_groups(model, 2, 1.0, 0.0))
    trained_bytes, tensors = 4 * sgd["trained_parameters"], sum(p.requires_grad for p in model.parameters())
    assert sgd["optimizer_state_bytes"] == trained_bytes  # one momentum buffer per trained parameter
    assert adamw["optimizer_state_bytes"] == 2 * trained_bytes + 4 * tensors  # two moments, and a step count each
    real = trace(copy.deepcopy(split.upper), split.feature_shape, 8, "float32", "cpu", "momentum", inference=False,
                 param_groups=groups)  # fmt: skip
    assert sgd["peak_bytes"] == real.peak_live_bytes  # a real CPU step with the engine's SGD (it was 4 MB short)
    gpu = trained_step_memory(_cached_run(tmp_path, 2, device="cuda"))
    # CUDA steps each group with multi-tensor kernels: other temporaries than the CPU's loop (lower here, per block)
    assert gpu is not None and gpu["device"] == "cuda" and gpu["peak_bytes"] != adamw["peak_bytes"]
    asked = trained_step_memory(_cached_run(tmp_path, 2), device="cuda")  # a CPU run sized for a GPU (--device cuda)
    assert asked is not None and asked["peak_bytes"] == gpu["peak_bytes"]
    shown = CliRunner().invoke(app, ["budget", str(_cached_run(tmp_path, 2, optimizer="sgd")), "--no-layers"])
    assert "with sgd (Nesterov momentum 0.9) on cpu peaks at" in shown.output, shown.output


def test_a_cached_run_is_sized_at_its_own_precision(tmp_path: Path) -> None:
    """A run trained with --precision bf16 had its step sized in float32 (at batch 64, 56.2 MB where a real CPU step
    under bf16 autocast holds 41.5 MB), and its largest batch too: it is the planner's bf16 remedy, here exact."""
    import copy

    from cnnlab.budget.trace import trace
    from cnnlab.cli.budget import _trained_step_note
    from cnnlab.models import split_classifier
    from cnnlab.tasks.transfer_cost import _groups_by_name, trained_step_memory
    from cnnlab.train import top_param_groups

    model = create_model("efficientnet_lite0", num_classes=2)
    split = split_classifier(model, 2, (3, 96, 96))
    groups = _groups_by_name(split.upper, top_param_groups(model, 2, 1.0, 0.0))
    upper = copy.deepcopy(split.upper).train()
    real = trace(upper, split.feature_shape, 64, "float32", "cpu", "adamw", inference=False, param_groups=groups,
                 autocast=torch.bfloat16)  # fmt: skip
    fp32 = trace(upper, split.feature_shape, 64, "float32", "meta", "adamw", inference=False, param_groups=groups)
    step = trained_step_memory(_cached_run(tmp_path, 2, precision="bf16", batch=64), memory_limit=real.peak_live_bytes)
    assert step is not None and step["precision"] == "bf16"
    assert step["peak_bytes"] == real.peak_live_bytes < fp32.peak_live_bytes
    assert step["max_batch"] == 64  # in float32 batch 64 does not fit in what bf16's batch 64 holds
    assert "with adamw on cpu in bf16 autocast peaks at" in _trained_step_note(step)
    assert "checked" not in _trained_step_note(step) and "as for bf16" not in _trained_step_note(step)
    # fp16 is sized as bf16 (a real CPU step under fp16 autocast holds the same bytes), and a GPU step this machine
    # lacks is an estimate it cannot check: both were printed as plain figures
    with mock.patch.object(torch.cuda, "is_available", lambda: False):
        half_on_gpu = _trained_step_note({**step, "precision": "fp16", "device": "cuda"})
    assert "in fp16 autocast peaks at" in half_on_gpu and "as for bf16, whose sizes fp16 shares" in half_on_gpu
    assert "checked against CPU steps only, with no GPU here to check it on cuda" in half_on_gpu


def test_a_small_cached_run_is_sized_at_the_batch_it_trained(tmp_path: Path) -> None:
    """A run with fewer training samples than the recipe's batch trains one batch of them all; it was sized at the
    recipe's batch (64 where a 24-image run trained 32: 888 MB against 463 MB), and with --accum at the whole batch
    rather than the micro-batch each backward runs on."""
    import json

    from cnnlab.tasks.transfer_cost import trained_step_memory

    run = _cached_run(tmp_path, 0)
    record = json.loads((run / "results.json").read_text())
    record["config"]["train"] = {}  # the recipe's batch of 64
    record |= {"counts": {"train": {"a": 2, "b": 3}}, "views": ["identity", "hflip"]}
    (run / "results.json").write_text(json.dumps(record))
    step = trained_step_memory(run)
    assert step is not None and step["batch"] == 10  # 5 images x 2 views
    # the engine's own record of the phase wins: a batch found by --batch-size auto, or accumulated (--accum 3)
    (run / "head").mkdir()
    (run / "head" / "config.yaml").write_text(json.dumps({"config": {"batch_size": 12, "accum_steps": 3}}))
    (run / "results.json").write_text(json.dumps(record | {"phases": {"head": {}}}))
    step = trained_step_memory(run)
    assert step is not None and (step["batch"], step["accum_steps"]) == (4, 3)  # a micro-batch per backward


def test_a_run_that_trained_the_whole_network_has_no_second_step(tmp_path: Path) -> None:
    from cnnlab.tasks.transfer_cost import trained_step_memory

    assert trained_step_memory(_cached_run(tmp_path, 2, method="full")) is None
    assert trained_step_memory(tmp_path) is None


@pytest.mark.parametrize("name", ["runs/mnist/lenet5x", "mymodel.pt", "runs\\mnist\\one"])
def test_a_path_that_is_not_there_is_said_to_be_missing(tmp_path: Path, monkeypatch, name: str) -> None:
    """It was looked up in the zoo: "unknown model 'runs/mnist/lenet5x'; did you mean lenet5, resnet50?"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CnnlabError, match=rf"^{re.escape(name)}: no such file or folder; give a run"):
        budget(name)
    with pytest.raises(CnnlabError, match="unknown model 'resnet5'; did you mean"):  # a name is still a zoo name
        budget("resnet5")
