"""A U-Net backbone ``(x (B, C, H, W), t (B,), y (B,)) -> (B, C, H, W)`` for images, class-conditional.

The DDPM / ADM layout, small: a sinusoidal embedding of ``t`` through an MLP, plus a learned embedding
of the class label with one extra row for the null class; residual blocks (GroupNorm, SiLU, 3x3
convolutions, the embedding added between the two convolutions, dropout before the second) at each
resolution; self-attention at the chosen resolutions; stride-2 convolutions down and nearest-neighbour
upsampling back to the skip's size, so odd sizes (28 -> 14 -> 7 -> 4 and back) work. The last
convolution of each block and of the output is zero-initialised: the untrained network is the identity
through the skips and outputs zero, a standard, stable start.
"""

from __future__ import annotations

import math
from typing import cast

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowkit.errors import ConfigError
from flowkit.interfaces import BuildContext, Network
from flowkit.params import param


def _positive_list(instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if (
        not isinstance(value, list)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value)
    ):
        raise ValueError(
            f"{attribute.name} must be a non-empty list of positive ints, e.g. [1, 2]; got {value!r}"
        )


def _resolutions(instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if not isinstance(value, list) or any(
        isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value
    ):
        raise ValueError(f"{attribute.name} must list positive image sizes (e.g. [4]); got {value!r}")


def _zero(module: nn.Module) -> None:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)


def time_features(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of ``t (B,)`` in [0, 1], ``(B, dim)``: ``sin, cos(1000 t f_k)`` with
    frequencies ``f_k = 10000^(-k / (dim/2))`` (DDPM's embedding of its step index ``1000 t``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResBlock(nn.Module):
    """``x + conv(drop(silu(norm(conv(silu(norm(x))) + emb))))``; a 1x1 convolution on the skip where the
    widths differ. ``x (B, C_in, H, W)``, ``emb (B, E)`` -> ``(B, C_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int, emb: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        _zero(self.conv2)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, groups: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        _zero(self.out)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """The residual blocks (each followed by attention, where asked) at one resolution."""

    def __init__(self, blocks: list[ResBlock], attention: list[nn.Module]) -> None:
        super().__init__()
        self.blocks: list[ResBlock] = cast(list[ResBlock], nn.ModuleList(blocks))
        self.attention: list[nn.Module] = cast(list[nn.Module], nn.ModuleList(attention))


class UNet(Network):
    """``forward(x (B, C, H, W), t (B,), y (B,) = None) -> (B, C, H, W)``: a class-conditional U-Net.

    Widths ``channels * channel_mults[i]`` at level ``i`` (resolution ``H / 2^i``, rounded up);
    ``blocks`` residual blocks per level going down, ``blocks + 1`` coming up (one per skip); a middle
    of block, attention, block. ``y = num_classes`` (or no ``y``) is the null class. With
    ``class_conditional = true`` and labelled data, ``num_classes`` is the dataset's and the network
    declares the input ``y`` (``forward(x, t, y=y)``). With ``second_time = true`` it declares the
    input ``r`` too (a second time, ``forward(x, t, r=r)``): the sinusoidal features of the step
    ``r - t`` through an MLP of their own are added to the time embedding.

    The output has the loss's output shape ``context.output_shape``: the data's ``(C, H, W)``, or
    ``(C, H, W, K)`` (e.g. logits of ``K`` categories per pixel), which the last convolution gives as
    ``C * K`` channels.
    """

    @attrs.define(frozen=True)
    class Params:
        channels: int = param(
            32, doc="Width of the first level (a multiple of groups).", validator=attrs.validators.gt(0)
        )
        channel_mults: list[int] = param(
            factory=lambda: [1, 2],
            doc="Width multiplier of each level; their number is the depth.",
            validator=_positive_list,
        )
        blocks: int = param(
            1, doc="Residual blocks per level (going down).", validator=attrs.validators.gt(0)
        )
        attention: list[int] = param(
            factory=list,
            doc="Image sizes (e.g. [4]) at which self-attention follows each block; the middle "
            "always has it.",
            validator=_resolutions,
        )
        heads: int = param(1, doc="Attention heads (dividing every width).", validator=attrs.validators.gt(0))
        dropout: float = param(
            0.0,
            doc="Dropout in the residual blocks.",
            validator=[attrs.validators.ge(0), attrs.validators.lt(1)],
        )
        groups: int = param(
            8, doc="GroupNorm groups (dividing every width).", validator=attrs.validators.gt(0)
        )
        class_conditional: bool = param(
            True,
            doc="Condition on the dataset's class labels, where it has them (plus a null class "
            "for guidance).",
        )
        second_time: bool = param(
            False,
            doc="Take a second time r (input r, embedded as the step r - t and added to the time "
            "embedding): a two-time network, e.g. for the meanflow loss.",
        )

    def __init__(
        self,
        params: Params | None = None,
        *,
        data_shape: tuple[int, ...],
        num_classes: int = 0,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(params)
        p = self.params
        if len(data_shape) != 3 or any(int(s) <= 0 for s in data_shape):
            raise ConfigError(
                f"[model]: unet needs images of shape (C, H, W), but the data has shape {tuple(data_shape)}; "
                'use kind = "mlp" for vector data'
            )
        widths = [p.channels * m for m in p.channel_mults]
        for width in widths:
            if width % p.groups or width % p.heads:
                raise ConfigError(
                    f"[model]: unet width {width} (channels * channel_mults) is not a multiple of groups = "
                    f"{p.groups} and heads = {p.heads}; choose channels as a multiple of both"
                )
        self.data_shape = tuple(int(s) for s in data_shape)
        self.output_shape = self.data_shape if output_shape is None else tuple(int(s) for s in output_shape)
        if self.output_shape[:3] != self.data_shape or len(self.output_shape) > 4:
            raise ConfigError(
                f"[model]: unet predicts the data's shape {self.data_shape} or (C, H, W, K), but the loss "
                f"asks for {self.output_shape}; use a loss with one of these output shapes, or an mlp"
            )
        self.num_classes = int(num_classes) if p.class_conditional else 0
        self.inputs = (("r",) if p.second_time else ()) + (("y",) if self.num_classes else ())
        c_img, size = self.data_shape[0], self.data_shape[1]
        emb = 4 * p.channels
        self.time_mlp = nn.Sequential(nn.Linear(p.channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Embedding(self.num_classes + 1, emb) if self.num_classes else None
        self.conv_in = nn.Conv2d(c_img, p.channels, 3, padding=1)

        def attn(width: int, res: int) -> nn.Module:
            return Attention(width, p.groups, p.heads) if res in p.attention else nn.Identity()

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, width, res = [p.channels], p.channels, size
        sizes = []
        for i, out in enumerate(widths):
            blocks, attns = [], []
            for _ in range(p.blocks):
                blocks.append(ResBlock(width, out, emb, p.groups, p.dropout))
                attns.append(attn(out, res))
                width = out
                skips.append(width)
            self.down.append(Level(blocks, attns))
            sizes.append(res)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)
                res = (res + 1) // 2
        self.mid1 = ResBlock(width, width, emb, p.groups, p.dropout)
        self.mid_attn = Attention(width, p.groups, p.heads)
        self.mid2 = ResBlock(width, width, emb, p.groups, p.dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, out in reversed(list(enumerate(widths))):
            blocks, attns = [], []
            for _ in range(p.blocks + 1):
                blocks.append(ResBlock(width + skips.pop(), out, emb, p.groups, p.dropout))
                attns.append(attn(out, sizes[i]))
                width = out
            self.up.append(Level(blocks, attns))
            if i > 0:
                self.upsample.append(nn.Conv2d(width, width, 3, padding=1))
        self.norm_out = nn.GroupNorm(p.groups, width)
        self.conv_out = nn.Conv2d(
            width, math.prod(self.output_shape) // (size * self.data_shape[2]), 3, padding=1
        )
        _zero(self.conv_out)
        # Built last, so that every other layer of a two-time U-Net starts as the one-time one's.
        self.step_mlp: nn.Module | None = None
        if p.second_time:
            self.step_mlp = nn.Sequential(nn.Linear(p.channels, emb), nn.SiLU(), nn.Linear(emb, emb))

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> UNet:
        """Build for ``context.data_shape``, conditioned on the dataset's classes where it has labels."""
        classes = context.dataset.num_classes if context.dataset is not None else 0
        return cls(
            params, data_shape=context.data_shape, num_classes=classes, output_shape=context.output_shape
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, r: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)``, ``t (B,)``, labels ``y (B,)`` int64 (``None``: the null class), the
        second time ``r (B,)`` where ``second_time`` -> ``(B, C, H, W)``."""
        emb = self.time_mlp(time_features(t, self.params.channels).to(x.dtype))
        if self.step_mlp is not None:
            if r is None:
                raise ConfigError("unet with second_time = true needs the second time r (forward(x, t, r=r))")
            emb = emb + self.step_mlp(time_features(r - t, self.params.channels).to(x.dtype))
        if self.label_emb is not None:
            labels = y if y is not None else torch.full((x.shape[0],), self.num_classes, device=x.device)
            emb = emb + self.label_emb(labels)
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(cast(list[Level], self.down)):
            for block, attention in zip(level.blocks, level.attention, strict=True):
                h = attention(block(h, emb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(cast(list[Level], self.up)):
            for block, attention in zip(level.blocks, level.attention, strict=True):
                skip = skips.pop()
                h = attention(block(torch.cat([h, skip], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, size=skips[-1].shape[-2:], mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        if len(self.output_shape) == 3:
            return out
        # (B, C K, H, W) -> (B, C, H, W, K): the K values of a pixel's channel last
        batch, (c_img, height, width, k) = out.shape[0], self.output_shape
        return out.reshape(batch, c_img, k, height, width).permute(0, 1, 3, 4, 2)
