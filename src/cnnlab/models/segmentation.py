"""Semantic segmentation networks: FCN-32s/16s/8s on a zoo backbone and U-Net.

- FCN (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015): class
  scores from a classifier's stride-32 features, upsampled back to the input. FCN-16s and FCN-8s add scores from the
  stride-16 and stride-8 features ("skips"), recovering the detail that the strided trunk lost.
- U-Net (Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI
  2015): an encoder-decoder whose decoder concatenates the encoder's map of the same resolution at every level.

Upsampling is either learned transposed convolutions (initialised to bilinear interpolation, as in the FCN paper) or
fixed bilinear interpolation. An input whose sides are not a multiple of the network's stride is zero-padded on the
bottom and right to the next multiple and the output is cropped back, so every input size works.

All models map [N, C, H, W] float images to [N, num_classes, H, W] logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cnnlab.errors import CnnlabError
from cnnlab.layers.conv_bn_act import ConvBnAct
from cnnlab.models._registry import create_model, register_model

__all__ = [
    "FCN",
    "EncoderUNet",
    "UNet",
    "features_with_taps",
    "find_stride_taps",
    "bilinear_kernel",
    "crop_to",
    "pad_to_multiple",
    "UPSAMPLE_MODES",
]

UPSAMPLE_MODES = ("transposed", "bilinear")


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad the bottom and right of `x` to the next multiple of `multiple`; returns it and the original (H, W).

    Always padded (by zero when already a multiple): a branch on the sizes would be frozen into a traced export. The
    padded size is written as a whole number of strides (a floor division, not a remainder), so torch.export can
    prove each level's size is half the one above (`crop_to` has the rest).
    """
    height, width = x.shape[-2:]
    bottom = (height + multiple - 1) // multiple * multiple - height
    right = (width + multiple - 1) // multiple * multiple - width
    return F.pad(x, (0, right, 0, bottom)), (height, width)


def crop_to(x: Tensor, height: int, width: int) -> Tensor:
    """The top-left `height` x `width` of `x`'s last two dimensions (what `pad_to_multiple` padded, taken back).

    Under torch.export it gathers the rows and columns instead of slicing: a slice's layout depends on whether it
    keeps the whole row, so an export would be valid only for inputs padded as its example was.
    """
    if torch.compiler.is_exporting():
        rows, columns = (torch.arange(size, device=x.device) for size in (height, width))
        return x.index_select(-2, rows).index_select(-1, columns)
    return x[..., :height, :width]


def bilinear_kernel(channels: int, factor: int) -> Tensor:
    """Weights [channels, 1, 2f, 2f] that make a stride-f transposed convolution (groups=channels, padding=f/2)
    perform bilinear upsampling, as in the FCN paper's initialisation."""
    size = 2 * factor
    center = (size - 1) / 2
    coords = torch.arange(size, dtype=torch.float32)
    filt = 1 - (coords - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    return kernel.expand(channels, 1, size, size).clone()


@torch.no_grad()
def find_stride_taps(
    backbone: nn.Module, in_chans: int, strides: tuple[int, ...]
) -> tuple[dict[int, str], dict[int, int]]:
    """Names of the `backbone` modules whose outputs are the *last* maps at each of `strides`, and the channels of
    those maps and of the stride-32 map that `forward_features` ends with (key 32).

    Found by running a 128x128 probe through the backbone with a forward hook on every module.

    Raises:
        CnnlabError: when `forward_features` does not end at stride 32 or a stride has no map.
    """
    side = 128
    probe = torch.zeros(1, in_chans, side, side)
    outputs: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in backbone.named_modules():
        if name:
            hook = lambda mod, args, out, name=name: outputs.append((name, tuple(out.shape)))  # noqa: E731
            handles.append(module.register_forward_hook(hook))
    was_training = backbone.training
    backbone.eval()
    try:
        final = backbone.forward_features(probe)  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    if final.shape[-1] != side // 32:
        raise CnnlabError(f"a stride-32 backbone is needed; {type(backbone).__name__} ends at a different stride")
    taps, channels = {}, {32: final.shape[1]}
    for stride in strides:
        matches = [(n, s) for n, s in outputs if len(s) == 4 and s[-1] == side // stride]
        if not matches:
            raise CnnlabError(f"no stride-{stride} map found in {type(backbone).__name__}")
        taps[stride], channels[stride] = matches[-1][0], matches[-1][1][1]
    return taps, channels


def _trunk(name: str, pretrained: bool, in_chans: int, strides: tuple[int, ...]) -> tuple[nn.Module, dict, dict]:
    """A zoo classifier without its head, the names of its last modules at `strides` and the channels there (plus
    key 32, the map `forward_features` ends with); see `find_stride_taps`."""
    backbone = create_model(name, pretrained=pretrained, in_chans=in_chans)
    backbone.reset_classifier(0)  # type: ignore[operator]
    taps, channels = find_stride_taps(backbone, in_chans, strides)
    return backbone, taps, channels


def features_with_taps(backbone: nn.Module, x: Tensor, taps: dict[int, str]) -> tuple[Tensor, dict[int, Tensor]]:
    """`backbone.forward_features(x)` and the outputs of the modules named in `taps` ({stride: module name})."""
    tapped: dict[int, Tensor] = {}
    handles = []
    for stride, name in taps.items():
        hook = lambda mod, args, out, stride=stride: tapped.__setitem__(stride, out)  # noqa: E731
        handles.append(backbone.get_submodule(name).register_forward_hook(hook))
    try:
        features = backbone.forward_features(x)  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    return features, tapped


class Upsample(nn.Module):
    """Upsample a score map by an integer factor: a per-channel transposed convolution initialised to bilinear
    interpolation (learnable), or fixed bilinear interpolation."""

    def __init__(self, channels: int, factor: int, mode: str = "transposed") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise CnnlabError(f"upsample mode {mode!r} is not one of {', '.join(UPSAMPLE_MODES)}")
        self.factor, self.mode = factor, mode
        if mode == "transposed":
            self.deconv = nn.ConvTranspose2d(
                channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=channels, bias=False
            )
            with torch.no_grad():
                self.deconv.weight.copy_(bilinear_kernel(channels, factor))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "transposed":
            return self.deconv(x)  # N x C x fH x fW (even factors)
        return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)


class FCN(nn.Module):
    """FCN-32s / 16s / 8s: a zoo classifier's trunk, 1x1 score layers on its stride-32/16/8 maps, upsampling.

    Args:
        backbone: registered zoo classifier whose `forward_features` ends at stride 32 (resnet18, ...).
        num_classes: segmentation classes (background included).
        in_chans: input channels.
        skips: 32 (FCN-32s), 16 (FCN-16s) or 8 (FCN-8s): the finest stride whose scores are fused.
        upsample: "transposed" (learned, bilinear-initialised) or "bilinear" (fixed).
        pretrained: load the backbone's pretrained weights.
        drop_rate: dropout on the stride-32 features.
    """

    output_stride = 32
    pretrained_cfg = None  # the backbone's record is `backbone.pretrained_cfg`
    model_info = None

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 11,
        in_chans: int = 1,
        skips: int = 8,
        upsample: str = "transposed",
        pretrained: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if skips not in (32, 16, 8):
            raise CnnlabError(f"FCN skips must be 32, 16 or 8 (FCN-32s/16s/8s), not {skips}")
        self.num_classes, self.skips, self.default_input_size = num_classes, skips, (in_chans, 64, 64)
        self.backbone, self.taps, channels = _trunk(backbone, pretrained, in_chans, (8, 16))
        self.dropout = nn.Dropout2d(drop_rate)
        self.score32 = nn.Conv2d(channels[32], num_classes, 1)
        self.score16 = nn.Conv2d(channels[16], num_classes, 1) if skips <= 16 else None
        self.score8 = nn.Conv2d(channels[8], num_classes, 1) if skips <= 8 else None
        self.up2_32 = Upsample(num_classes, 2, upsample) if skips <= 16 else None
        self.up2_16 = Upsample(num_classes, 2, upsample) if skips <= 8 else None
        self.up_final = Upsample(num_classes, skips, upsample)
        for score in (self.score16, self.score8):  # skips start silent: training begins from FCN-32s (paper, 4.2)
            if score is not None:
                nn.init.zeros_(score.weight)
                nn.init.zeros_(score.bias)

    def forward(self, x: Tensor) -> Tensor:
        x, (height, width) = pad_to_multiple(x, self.output_stride)
        taps = {stride: name for stride, name in self.taps.items() if stride >= self.skips}
        features, tapped = features_with_taps(self.backbone, x, taps)  # N x C32 x H/32 x W/32, {stride: map}
        scores = self.score32(self.dropout(features))  # N x classes x H/32 x W/32
        if self.score16 is not None:
            scores = self.up2_32(scores) + self.score16(tapped[16])  # N x classes x H/16 x W/16
        if self.score8 is not None:
            scores = self.up2_16(scores) + self.score8(tapped[8])  # N x classes x H/8 x W/8
        scores = self.up_final(scores)  # N x classes x H x W (padded)
        return crop_to(scores, height, width)


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBnAct(in_channels, out_channels, 3), ConvBnAct(out_channels, out_channels, 3))


class UNet(nn.Module):
    """U-Net with batch norm: `len(widths) - 1` max-pool downsamplings, a decoder that upsamples (transposed conv
    or bilinear + 1x1 conv) and concatenates the encoder map of the same size, then two 3x3 convs per level.

    Args:
        num_classes: segmentation classes (background included).
        in_chans: input channels.
        widths: channels per level, finest first (the paper's 64-128-256-512-1024 is 5 levels).
        upsample: "transposed" or "bilinear".
    """

    pretrained_cfg = None
    model_info = None

    def __init__(
        self,
        num_classes: int = 11,
        in_chans: int = 1,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        upsample: str = "transposed",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise CnnlabError(f"upsample mode {upsample!r} is not one of {', '.join(UPSAMPLE_MODES)}")
        self.num_classes, self.default_input_size = num_classes, (in_chans, 64, 64)
        self.output_stride = 2 ** (len(widths) - 1)
        self.widths = tuple(widths)
        self.encoders = nn.ModuleList()
        channels = in_chans
        for width in widths:
            self.encoders.append(_DoubleConv(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            if upsample == "transposed":
                self.ups.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            else:
                self.ups.append(
                    nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(channels, width, 1))
                )
            self.decoders.append(_DoubleConv(2 * width, width))
            channels = width
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def encode(self, x: Tensor) -> list[Tensor]:
        """The encoder's maps, finest first: level i is N x widths[i] x H/2^i x W/2^i (H, W multiples of the stride).

        Used by `forward` and by encoder pretraining (`cnnlab.tasks.segmentation.pretrain_encoder`).
        """
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            skips.append(x)
        return skips

    def forward(self, x: Tensor) -> Tensor:
        x, (height, width) = pad_to_multiple(x, self.output_stride)
        skips = self.encode(x)
        x = skips[-1]
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))  # N x width x (2x the previous size)
        return crop_to(self.classifier(x), height, width)  # N x classes x H x W


class EncoderUNet(nn.Module):
    """A U-Net whose encoder is a zoo classifier's trunk (resnet18 by default): its last maps at strides 2, 4, 8 and
    16 are the skips, its stride-32 map the bottleneck; the decoder upsamples (transposed conv), concatenates the
    skip and applies two 3x3 conv-BN-ReLU per level, up to a full-resolution level whose skip is a 3x3 conv of the
    image itself (the trunk has no stride-1 map), so strokes a few pixels wide keep exact boundaries.

    From scratch on the small digit canvases it learns more slowly than the plain `UNet` and runs at about half its
    speed per step (docs/BENCHMARKS.md, Segmentation); its purpose is a pretrained trunk (`pretrained=True`).

    Args:
        encoder: registered zoo classifier whose `forward_features` ends at stride 32.
        num_classes: segmentation classes (background included).
        in_chans: input channels.
        decoder_widths: channels of the decoder levels at strides 16, 8, 4, 2 and 1.
        pretrained: load the encoder's pretrained weights.
    """

    output_stride = 32
    pretrained_cfg = None
    model_info = None

    def __init__(
        self,
        encoder: str = "resnet18",
        num_classes: int = 11,
        in_chans: int = 1,
        decoder_widths: tuple[int, int, int, int, int] = (128, 64, 48, 32, 16),
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if len(decoder_widths) != 5:
            raise CnnlabError(f"decoder_widths needs 5 values (strides 16, 8, 4, 2, 1), got {tuple(decoder_widths)}")
        self.num_classes, self.default_input_size = num_classes, (in_chans, 64, 64)
        self.backbone, self.taps, channels = _trunk(encoder, pretrained, in_chans, (2, 4, 8, 16))
        self.stem = ConvBnAct(in_chans, decoder_widths[-1], 3)  # the full-resolution skip
        skip_channels = [channels[16], channels[8], channels[4], channels[2], decoder_widths[-1]]
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        previous = channels[32]
        for width, skip in zip(decoder_widths, skip_channels, strict=True):
            self.ups.append(nn.ConvTranspose2d(previous, width, 2, stride=2))
            self.decoders.append(_DoubleConv(width + skip, width))
            previous = width
        self.classifier = nn.Conv2d(previous, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x, (height, width) = pad_to_multiple(x, self.output_stride)
        features, tapped = features_with_taps(self.backbone, x, self.taps)  # N x C x H/32 x W/32, {stride: map}
        skips = [tapped[16], tapped[8], tapped[4], tapped[2], self.stem(x)]
        for up, decoder, skip in zip(self.ups, self.decoders, skips, strict=True):
            features = decoder(torch.cat([up(features), skip], dim=1))  # N x width x (2x the previous size)
        return crop_to(self.classifier(features), height, width)  # N x classes x H x W


def _fcn(skips: int, kwargs: dict[str, Any]) -> FCN:
    return FCN(skips=skips, **kwargs)


@register_model
def fcn32s(pretrained: bool = False, **kwargs: Any) -> FCN:
    """FCN-32s on a zoo backbone (resnet18 by default): stride-32 scores upsampled 32x in one step."""
    return _fcn(32, {"pretrained": pretrained, **kwargs})


@register_model
def fcn16s(pretrained: bool = False, **kwargs: Any) -> FCN:
    """FCN-16s: FCN-32s plus the stride-16 skip."""
    return _fcn(16, {"pretrained": pretrained, **kwargs})


@register_model
def fcn8s(pretrained: bool = False, **kwargs: Any) -> FCN:
    """FCN-8s: FCN-16s plus the stride-8 skip."""
    return _fcn(8, {"pretrained": pretrained, **kwargs})


@register_model
def unet(pretrained: bool = False, **kwargs: Any) -> UNet:
    """U-Net, 4 levels of 16-32-64-128 channels (about 0.47 M parameters at 1 input channel)."""
    if pretrained:
        raise CnnlabError("unet has no pretrained weights; train one with `cnnlab train segment`")
    return UNet(**kwargs)


@register_model
def unet_encoder(pretrained: bool = False, **kwargs: Any) -> EncoderUNet:
    """U-Net with a zoo classifier's trunk as encoder (resnet18 by default; `encoder=` picks another)."""
    return EncoderUNet(pretrained=pretrained, **kwargs)
