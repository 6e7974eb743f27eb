"""A faster forward for AtomAI's ``Unet`` on the CPU: same weights, same maps.

Rewrites that are each exact in real arithmetic (float32 class probabilities agree with the
module's own forward to ~1e-6; checked on a small input when built, see `fuse_member`):

- convolution + LeakyReLU in one oneDNN call (``mkldnn._convolution_pointwise``), so the
  activation is applied while the output is still in cache;
- the upsampling block's 1x1 convolution BEFORE its bilinear upsampling: both are linear per
  pixel and bilinear weights sum to 1, so they commute, and the convolution then runs on a
  quarter of the pixels and the upsampling on half of the channels;
- skip concatenation + convolution as two convolutions whose sum oneDNN accumulates in place
  (conv(cat(a, b)) = conv_a(a) + conv_b(b)): the concatenated copy is never written;
- a BatchNorm that feeds a 1x1 convolution (the bottleneck's and the decoder blocks' last one)
  folded into that convolution's weights and bias; 1x1 convolutions in oneDNN (torch's own
  convolution takes a slow path for them);
- 2x2 max pooling as the maximum of strided views (no argmax indices computed).

Measured on one core at 512 px: one member 78 -> 50 ms (``make bench`` has the ensemble's).
The other BatchNorms stay separate passes: they follow the activation and feed zero-padded
convolutions or max pooling, so no exact fold exists. `FusedUnet.to` gives the same forward
in bf16 for fast mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: largest difference of class probabilities (softmax of the logits) between this forward and
#: the module's own accepted when it is built
TOLERANCE = 1e-4


@dataclass(frozen=True)
class _Layer:
    """One convolution of a block: its weight (channels-last), bias, padding, the LeakyReLU
    slope after it, and the BatchNorm after that (None: none). ``split``: for the first layer
    of a decoder block, its weight cut at the skip's channels: (on the skip, on the rest)."""

    weight: Any
    bias: Any
    padding: list[int]
    slope: float
    norm: Any
    split: tuple[Any, Any] | None = None

    def cut(self, channels: int) -> _Layer:
        """This layer with ``split`` at ``channels`` input channels."""
        import dataclasses

        import torch

        parts = (self.weight[:, :channels], self.weight[:, channels:])
        return dataclasses.replace(
            self, split=tuple(w.contiguous(memory_format=torch.channels_last) for w in parts)
        )

    def cast(self, dtype: Any) -> _Layer:
        """This layer's convolution in ``dtype``; its BatchNorm keeps float32 parameters (torch
        normalises a ``dtype`` input with them and returns ``dtype``)."""
        import dataclasses

        split = None if self.split is None else tuple(_cast(w, dtype) for w in self.split)
        return dataclasses.replace(
            self, weight=_cast(self.weight, dtype), bias=_cast(self.bias, dtype), split=split
        )


class FusedUnet:
    """Calls like the ``Unet`` it was built from on (1, 1, H, W) channels-last float32 input,
    H and W multiples of 8; returns the (1, classes, H, W) logits (channels-last) in ``dtype``
    (float32 as built; see `to`)."""

    def __init__(self, unet: Any):
        import torch

        self.dtype = torch.float32
        self._down = [_block(unet.c1), _block(unet.c2), _block(unet.c3)]
        # each block before a 1x1 convolution hands its last BatchNorm to that convolution
        self._bottom, norm = _without_last_norm(_block(unet.bn))
        ups = (unet.upsample_block1, unet.upsample_block2, unet.upsample_block3)
        self._up = []
        self._mode = [b.mode for b in ups]
        self._decode = []
        for up, block, skip in zip(ups, (unet.c4, unet.c5, unet.c6), reversed(self._down)):
            self._up.append(_pointwise(up.conv, norm))
            first, *rest = _block(block)
            layers, norm = _without_last_norm([first.cut(skip[-1].weight.shape[0]), *rest])
            self._decode.append(layers)
        self._px = _pointwise(unet.px, norm)

    def to(self, dtype: Any) -> FusedUnet:
        """A copy whose convolutions, pooling and upsampling run in ``dtype`` (e.g. bfloat16 on
        CPUs with AMX: about twice as fast as float32, probabilities within a few 0.01 like
        autocast's); BatchNorm parameters stay float32."""
        import copy

        other = copy.copy(self)
        other.dtype = dtype
        other._down = [[layer.cast(dtype) for layer in layers] for layers in self._down]
        other._bottom = [layer.cast(dtype) for layer in self._bottom]
        other._decode = [[layer.cast(dtype) for layer in layers] for layers in self._decode]
        other._up = [(_cast(w, dtype), _cast(b, dtype)) for w, b in self._up]
        other._px = (_cast(self._px[0], dtype), _cast(self._px[1], dtype))
        return other

    def __call__(self, x):
        import torch.nn.functional as F

        x = x.to(self.dtype)
        skips = []
        for layers in self._down:
            x = _run(layers, x)
            skips.append(x)
            x = _max_pool(x)
        x = _run(self._bottom, x)
        for up, mode, layers, skip in zip(self._up, self._mode, self._decode, reversed(skips)):
            x = F.interpolate(_conv1x1(x, *up), scale_factor=2, mode=mode)
            x = _run(layers, x, skip=skip)
        return _conv1x1(x, *self._px)


def fuse_member(member: Any) -> FusedUnet | None:
    """`FusedUnet` of an AtomAI ``Unet`` in eval mode, or None where it does not apply (another
    architecture, a dilated bottleneck, no oneDNN) or its class probabilities differ from the
    module's own by more than `TOLERANCE` on a random 48x48 input. The member must be in eval
    mode (its BatchNorms' running statistics are used)."""
    import torch

    if getattr(member, "training", True) or not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    ):
        return None
    try:
        fused = FusedUnet(member)
        x = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(0))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            diff = float((fused(x).softmax(1) - member(x).softmax(1)).abs().max())
    except (AttributeError, TypeError, ValueError, RuntimeError) as exc:
        log.debug("no fused forward for this member (%s: %s)", type(exc).__name__, exc)
        return None
    if not diff <= TOLERANCE:
        log.warning("fused forward differs from the member's own by %.1e; not used", diff)
        return None
    return fused


# -- internals --------------------------------------------------------------------------------


def _block(block: Any) -> list[_Layer]:
    """The layers of an AtomAI ``ConvBlock`` (conv, [Dropout], LeakyReLU, [BatchNorm2d])*;
    Dropout is the identity in eval mode. Anything else raises TypeError."""
    import torch
    from torch import nn

    layers: list[_Layer] = []
    mods = [m for m in block.block if not isinstance(m, nn.Dropout)]
    i = 0
    while i < len(mods):
        conv, act = mods[i], mods[i + 1] if i + 1 < len(mods) else None
        if not (isinstance(conv, nn.Conv2d) and isinstance(act, nn.LeakyReLU)):
            raise TypeError(f"unexpected layers in {type(block).__name__}")
        if (
            conv.stride != (1, 1)
            or conv.dilation != (1, 1)
            or conv.groups != 1
            or conv.padding_mode != "zeros"
            or not isinstance(conv.padding, tuple)
        ):
            raise TypeError("only plain stride-1 convolutions are fused")
        norm = (
            mods[i + 2] if i + 2 < len(mods) and isinstance(mods[i + 2], nn.BatchNorm2d) else None
        )
        weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        bias = None if conv.bias is None else conv.bias.detach()
        layers.append(_Layer(weight, bias, list(conv.padding), float(act.negative_slope), norm))
        i += 3 if norm is not None else 2
    if not layers:
        raise TypeError("empty block")
    return layers


def _cast(t: Any, dtype: Any) -> Any:
    """A weight or bias in ``dtype`` (4-d weights channels-last); None stays None."""
    import torch

    if t is None:
        return None
    t = t.to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _without_last_norm(layers: list[_Layer]) -> tuple[list[_Layer], Any]:
    """(the layers with the last one's BatchNorm removed, that BatchNorm or None)."""
    import dataclasses

    *head, last = layers
    return [*head, dataclasses.replace(last, norm=None)], last.norm


def _pointwise(conv: Any, norm: Any = None) -> tuple[Any, Any]:
    """(weight (out, in, 1, 1) channels-last, bias (out,)) of a 1x1 convolution, with the
    eval-mode BatchNorm ``norm`` that feeds it folded in: conv(a * x + b) = (W a) x + (W b + c)."""
    import torch

    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0):
        raise TypeError("expected a 1x1 convolution")
    weight = conv.weight.detach()[:, :, 0, 0].double()
    bias = (
        torch.zeros(weight.shape[0], dtype=torch.float64)
        if conv.bias is None
        else conv.bias.detach().double()
    )
    if norm is not None:
        scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
        shift = norm.bias.detach().double() - norm.running_mean.double() * scale
        bias = bias + weight @ shift
        weight = weight * scale
    dtype = conv.weight.dtype
    return (
        weight.to(dtype)[:, :, None, None].contiguous(memory_format=torch.channels_last),
        bias.to(dtype),
    )


def _conv1x1(x, weight, bias):
    """A 1x1 convolution of a channels-last (N, C, H, W) tensor in oneDNN."""
    import torch

    one = [1, 1]
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [0, 0], one, one, 1, "none", [], ""
    )


def _max_pool(x):
    """2x2 max pooling, stride 2, of (N, C, H, W) with H and W even (inputs are multiples of
    8): the maximum of four strided views, no argmax indices."""
    import torch
    import torch.nn.functional as F

    if x.shape[2] % 2 or x.shape[3] % 2:
        return F.max_pool2d(x, kernel_size=2, stride=2)
    rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
    return torch.maximum(rows[:, :, :, 0::2], rows[:, :, :, 1::2])


def _run(layers: list[_Layer], x, skip=None):
    """A block's layers on ``x``; with ``skip``, the first layer's input is cat([skip, x])
    (that layer has its ``split`` weights)."""
    import torch
    import torch.nn.functional as F

    conv, one = torch.ops.mkldnn._convolution_pointwise, [1, 1]
    for k, layer in enumerate(layers):
        if k == 0 and skip is not None:
            assert layer.split is not None  # `_Layer.cut` set it for every block with a skip
            w_skip, w_x = layer.split
            acc = conv(skip, w_skip, layer.bias, layer.padding, one, one, 1, "none", [], "")
            x = torch.ops.mkldnn._convolution_pointwise_.binary(
                acc, x, w_x, None, layer.padding, one, one, 1, "add", 1.0, None, [], None
            )
            x = F.leaky_relu_(x, layer.slope)
        else:
            x = conv(
                x,
                layer.weight,
                layer.bias,
                layer.padding,
                one,
                one,
                1,
                "leaky_relu",
                [layer.slope],
                "",
            )
        if layer.norm is not None:
            x = layer.norm(x)
    return x
