"""The meta-kernel cache changes how fast a trace runs, never what it counts.

Each case traces the same model twice, with the cache and without it (the meta kernels run for every call), and
compares everything the trace reports: per-row shapes, MACs and saved bytes, the timeline of live bytes op by op, the
peaks, and the optimizer's share.
"""

from __future__ import annotations

import contextlib
import copy
import importlib

import pytest
import torch

from cnnlab.models import create_model

trace_module = importlib.import_module("cnnlab.budget.trace")


def _both_ways(monkeypatch: pytest.MonkeyPatch, run):  # noqa: ANN001, ANN202
    cached = run()
    with monkeypatch.context() as patch:
        patch.setattr(trace_module, "_MetaKernelCache", contextlib.nullcontext)
        uncached = run()
    return cached, uncached


@pytest.mark.parametrize(
    "name,optimizer,dtype",
    [
        ("resnet50", "adam", torch.float32),  # batch norm, residual adds, in-place ReLU
        ("googlenet", "sgd", torch.float32),  # concatenated branches, LRN-free Inception modules
        ("efficientnet_lite0", "momentum", torch.bfloat16),  # depthwise convs, ReLU6, another dtype
        ("xception", "adamw", torch.float32),  # separable convs
        ("alexnet", "adam", torch.float32),  # dropout masks, a large classifier
        ("unet", "adam", torch.float32),  # upsampling and skip concatenation
    ],
)
def test_trace_is_the_same_with_and_without_the_cache(monkeypatch, name, optimizer, dtype):
    with torch.device("meta"):
        model = create_model(name)
    shape = model.default_input_size

    def run() -> trace_module.TraceResult:
        return trace_module.trace(model, shape, 3, dtype, "meta", optimizer)

    cached, uncached = _both_ways(monkeypatch, run)
    assert cached.live_timeline and cached.peak_live_bytes > 0
    assert cached == uncached


def test_checkpointed_step_and_planner_helpers_are_the_same(monkeypatch):
    from cnnlab.train.activation_checkpointing import checkpoint_stages

    with torch.device("meta"):
        model = create_model("resnet18")
    checkpointed = copy.deepcopy(model)
    checkpoint_stages(checkpointed)

    def run() -> tuple:
        return (
            trace_module.trace(checkpointed, (3, 64, 64), 5, torch.float32, "meta", "none", inference=False),
            trace_module.forward_saved_bytes(checkpointed, (3, 64, 64), 2, torch.bfloat16),
            trace_module.optimizer_step_bytes(model, torch.float32, "adam"),
        )

    cached, uncached = _both_ways(monkeypatch, run)
    assert cached == uncached


def test_calls_that_resize_or_view_an_input_are_never_replayed():
    cache = trace_module._MetaKernelCache()
    a, b = torch.empty(4, 3, device="meta"), torch.empty(4, 3, device="meta")
    with cache:
        for _ in range(2):  # the second call has the first one's key
            out = torch.empty(0, device="meta")
            torch.add(a, b, out=out)  # resizes `out` from 0 to 4 x 3 elements
            assert out.shape == (4, 3) and out.untyped_storage().nbytes() == 48
            view = a.t()
            assert view.untyped_storage()._cdata == a.untyped_storage()._cdata
