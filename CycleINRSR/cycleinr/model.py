"""The CycleINR network (paper section 3.1): encoder, attention-enhanced latent code sampling, decoder.

Query positions are given along the slice axis only, in *LR slice-index units* (0 = centre of the first LR
slice, D - 1 = the last; the cell-centre convention, i.e. normalized coordinate ``(2 z + 1) / D - 1`` in
[-1, 1] over the volume's extent). In-plane, queries sit on the LR voxel centres, because upsampling is
along z only. A query at ``z`` between LR planes ``lo`` and ``hi = lo + 1`` (``t = z - lo``):

* Eq. 3: trilinear sampling reduces to linear interpolation between the two planes, ``(1 - t) z_lo + t z_hi``;
* Eq. 4: local attention over the 3x3x3 block of LR codes around an anchor plane;
* Eq. 5: the decoder gets (local coordinate, attended code); the local coordinate is the query's offset
  from the anchor plane, ``2 (z - anchor)`` (LIIF's, 1 = half a cell), so it does not depend on the
  volume's size or a sliding window's position and windows stitch exactly.

**Continuity (local ensemble).** Anchoring on the nearest plane alone makes the output jump at every
half-slice position ``k + 1/2``, where the anchor and its attention block switch planes. Instead, every
query is decoded from *both* bracketing planes and the two results are blended, LIIF's local ensemble
along z: weight ``w_hi = clip((t - 1/2) / (2 band) + 1/2, 0, 1)`` on the ``hi`` anchor, ``1 - w_hi`` on the
``lo`` one. ``band = 1/2`` gives LIIF's linear weights ``w_hi = t``; a smaller band blends only within
``band`` of the mid-point and decodes the rest from the nearest plane alone (cheaper, and identical to
nearest-plane decoding outside the band). Either way the output is continuous in ``z``.

**Fused attention.** Q is affine in the code, so ``q(z) = (1 - t) q_lo + t q_hi``, and
``q . k_j = (W_K^T q) . z_j + q . b_K`` (the last term cancels in the softmax). So the scores need only
[W_K^T q, q . b_K] per LR voxel (one linear map of its code), blended for each entry from the 3 planes
around its anchor, and the value sum is ``W_V (sum_j a_j z_j) + b_V``. The entries anchored on a plane sit
in a (planes x entries) grid of slots (``entry_slots``): per LR voxel of an anchor plane, two small
matmuls over the 27 codes of its block serve all of its entries. Nothing of size 27 x C exists per
query; the same code serves inference and training. Borders are clamped (replicated). CPU inference
calls oneDNN's fused primitives (``use_onednn``)."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .config import ModelConfig


def conv3(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, padding=1)


# ATen's CPU convolution takes oneDNN for a single (batch 1) 3x3x3 input only when channels * dim 2 * dim 3
# exceeds this (``ConvParams::use_mkldnn``); otherwise a generic path runs 3-6x slower.
ONEDNN_MIN_LEADING = 20480


def aten_conv(layer: nn.Conv3d, x: torch.Tensor, relu: bool = False, slice_last: bool = False) -> torch.Tensor:
    """``layer(x)`` (then ReLU); with ``slice_last`` x is laid out (B, C, H, W, D) and the kernel is turned
    alike."""
    weight = layer.weight.permute(0, 1, 3, 4, 2) if slice_last else layer.weight
    out = nn.functional.conv3d(x, weight, layer.bias, padding=1)
    return torch.relu_(out) if relu else out


class ResidualBlock(nn.Module):
    """``convs`` x (3x3x3 conv + ReLU), with an identity skip around them."""

    def __init__(self, features: int, convs: int):
        super().__init__()
        layers = []
        for _ in range(convs):
            layers += [conv3(features, features), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x, conv=aten_conv):
        """``conv(layer, h, relu=True)`` runs each convolution with the ReLU that follows it in ``body``."""
        h = x
        for layer in self.body:
            if isinstance(layer, nn.Conv3d):
                h = conv(layer, h, relu=True)
        return x + h


class Encoder(nn.Module):
    """Residual 3D CNN giving every LR voxel a latent code (Eq. 2).

    A thin window (few LR slices) on a CPU falls below ATen's oneDNN threshold (``ONEDNN_MIN_LEADING``) and
    would run on the slow generic path: the fast preset encoded 8 x 101 x 118 LR voxels in 716 ms instead
    of 121 ms. Then the volume is convolved with the slice axis last and the kernels turned alike (the
    same arithmetic), and turned back. Training on a CPU convolves channels-last: the paper preset's
    training step ran 0.237 -> 0.301 it/s. Inference on a CPU calls oneDNN's convolution directly
    (``onednn_conv``), channels-last with the ReLU fused: 1.65x faster than the default layout (fast
    preset, 64 x 126 x 126 LR voxels: 1.40 -> 0.86 s); ATen's threshold does not apply, and the codes
    come out in the (B, D, H, W, C) memory order decoding reads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head = conv3(1, cfg.features)
        self.blocks = nn.Sequential(*[ResidualBlock(cfg.features, cfg.convs_per_block)
                                      for _ in range(cfg.encoder_blocks)])
        self.tail = conv3(cfg.features, cfg.code_length)
        self.features = cfg.features

    def forward(self, x):
        batch, _, depth, height, width = x.shape
        onednn = use_onednn(x)
        slice_last = (not onednn and x.device.type == "cpu" and batch == 1   # ATen takes oneDNN for batch > 1
                      and self.features * depth * height <= ONEDNN_MIN_LEADING < self.features * height * width)
        conv = onednn_conv if onednn else functools.partial(aten_conv, slice_last=slice_last)
        if slice_last:
            x = x.permute(0, 1, 3, 4, 2)
        elif onednn or (self.training and x.device.type == "cpu"):  # oneDNN's backward is faster channels-last
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = conv(self.head, x)
        if onednn:                                                   # a 1-channel input gives no layout
            x = x.contiguous(memory_format=torch.channels_last_3d)
        for block in self.blocks:
            x = block(x, conv)
        x = conv(self.tail, x)
        return x.permute(0, 1, 4, 2, 3) if slice_last else x


class LocalAttention(nn.Module):
    """Eq. 4: softmax(W_Q(z_hat) . W_K(z_i) / sqrt(d)) weighted sum of W_V(z_i) over the neighbours."""

    def __init__(self, code_length: int):
        super().__init__()
        self.q = nn.Linear(code_length, code_length)
        self.k = nn.Linear(code_length, code_length)
        self.v = nn.Linear(code_length, code_length)
        self.scale = 1.0 / math.sqrt(code_length)


class Decoder(nn.Module):
    """Eq. 5: ``layers`` fully connected layers with ReLU; the input is concatenated again after layer
    ``skip_layer`` (the residual link of ArSSR / NeRF). The last layer outputs one intensity."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        in_dim, width = 3 + cfg.code_length, cfg.decoder_width
        dims_in = [in_dim] + [width] * (cfg.decoder_layers - 1)
        dims_in[cfg.skip_layer] = width + in_dim
        dims_out = [width] * (cfg.decoder_layers - 1) + [1]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.skip_layer = cfg.skip_layer

    def forward(self, local_z: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The MLP applied to ``cat([local_z, 0, 0, code])`` (3 local-coordinate channels, of which only z
        is non-zero for z-only queries) as 2D products on ``[code, z]``: the zero channels are dropped,
        each bias and the skip layer's second input are added inside a product, and z rides along as one
        extra input channel instead of separate elementwise passes. CPU inference runs the products as
        oneDNN inner products with bias, ReLU and the skip sum fused (``onednn_linear``: MKL's GEMM ran
        these skinny N x 64 products at a quarter of the machine's peak); otherwise aten's addmm.
        ``local_z`` has the shape of ``code`` without its last axis."""
        shape, channels = code.shape[:-1], code.shape[-1]
        inputs = torch.cat([code.reshape(-1, channels), local_z.reshape(-1, 1).to(code.dtype)], dim=1)
        linear = onednn_linear if use_onednn(inputs) else aten_linear
        first, hidden = self.layers[0], len(self.layers) - 1
        h = linear(inputs, _code_then_z(first.weight, 0), first.bias, relu=hidden > 0)
        for n, layer in enumerate(self.layers[1:], start=1):
            relu = n < hidden                                          # the last layer outputs intensity
            if n == self.skip_layer:
                width = h.shape[-1]
                skip = linear(inputs, _code_then_z(layer.weight, width), layer.bias)
                h = linear(h, layer.weight[:, :width], None, relu=relu, add=skip)
            else:
                h = linear(h, layer.weight, layer.bias, relu=relu)
        return h.view(shape)


# Inference on a CPU calls oneDNN's fused primitives (``onednn_linear``, ``onednn_conv``) when this is on.
# A switch for A/B benchmarks and for the tests that hold both paths equal.
USE_ONEDNN = True


def use_onednn(x: torch.Tensor) -> bool:
    """Whether ``onednn_linear`` and ``onednn_conv`` may replace aten's ops for ``x``: float32 on a CPU, no
    autograd (they have no backward) and no autocast, and the ops present and working in this torch build
    (checked once)."""
    return (USE_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_grad_enabled() and not _cpu_autocast() and _onednn_works())


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:                                   # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


@functools.cache
def _onednn_works() -> bool:
    try:
        x, w, b = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
        conv = conv3(2, 3)
        volume = torch.randn(1, 2, 3, 4, 5)
        with torch.no_grad():
            return bool(torch.allclose(onednn_linear(x, w, b, relu=True), torch.relu(x @ w.t() + b), atol=1e-5)
                        and torch.allclose(onednn_linear(x, w, None, add=b.expand(5, 3)), x @ w.t() + b, atol=1e-5)
                        and torch.allclose(onednn_conv(conv, volume, relu=True), torch.relu(conv(volume)), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):   # a build without them
        return False


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False,
                  add: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` (or ``+ add``; then ReLU) as one oneDNN inner product (inference only; the
    ReLU after a sum is a separate pass)."""
    op = torch.ops.mkldnn._linear_pointwise
    weight = weight.contiguous()
    if add is not None:
        out = op.binary(x, add, weight, bias, "add")
        return out.relu_() if relu else out
    return op(x, weight, bias, "relu" if relu else "none", [], "")


def aten_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False,
                add: torch.Tensor | None = None) -> torch.Tensor:
    """``onednn_linear`` with aten's addmm (training, autocast, CUDA): the bias or ``add`` enters the
    product."""
    base = bias if add is None else (add if bias is None else add + bias)
    h = torch.mm(x, weight.t()) if base is None else torch.addmm(base, x, weight.t())
    return torch.relu_(h) if relu else h


def onednn_conv(layer: nn.Conv3d, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``layer(x)`` (a 3x3x3 convolution, padding 1; then ReLU) as one oneDNN primitive (inference only)."""
    one = [1, 1, 1]
    return torch.ops.mkldnn._convolution_pointwise(x, layer.weight, layer.bias, one, one, one, 1,
                                                   "relu" if relu else "none", [], "")


def _code_then_z(weight: torch.Tensor, start: int) -> torch.Tensor:
    """The columns of a layer that read ``[local z, 0, 0, code]`` from column ``start``, reordered to
    read ``[code, local z]``."""
    return torch.cat([weight[:, start + 3:], weight[:, start:start + 1]], dim=1)


def ensemble_entries(lo: torch.Tensor, hi: torch.Tensor, t: torch.Tensor, band: float):
    """The local ensemble's decoder work: one entry (query row, anchor plane, weight) per query and
    bracketing plane with a non-zero weight ``w_hi = clip((t - 1/2) / (2 band) + 1/2, 0, 1)``, sorted by
    anchor. Queries on an LR plane, or outside the band, have one entry; the others two."""
    w_hi = ((t - 0.5) / (2 * band) + 0.5).clamp(0, 1)      # t = 0 (also with a single plane) gives 0
    from_lo, from_hi = torch.nonzero(w_hi < 1).squeeze(1), torch.nonzero(w_hi > 0).squeeze(1)
    rows = torch.cat([from_lo, from_hi])
    anchor = torch.cat([lo[from_lo], hi[from_hi]])
    weight = torch.cat([1 - w_hi[from_lo], w_hi[from_hi]])
    order = torch.argsort(anchor, stable=True)
    return rows[order], anchor[order], weight[order]


def entry_slots(group, anchor, rows, weight, z, lo, hi, t):
    """The entries anchored on the planes ``group`` (sorted; entries sorted by anchor as
    ``ensemble_entries`` gives them) in a (G, M) grid of slots, M the most entries one of these planes
    anchors. Per slot: the weights ``mix`` (G, M, 3) of the anchor's planes a - 1, a, a + 1 that give the
    entry's ``(1 - t) lo + t hi``, its local coordinate ``2 (z - a)``, output row and ensemble weight.
    Empty slots have weight 0: they are decoded but add nothing."""
    rank = torch.arange(len(anchor), device=anchor.device) - torch.searchsorted(anchor, anchor)
    count, most = len(group), int(rank.max()) + 1
    slot = torch.searchsorted(group, anchor) * most + rank
    mix = torch.zeros(count * most, 3, dtype=t.dtype, device=t.device)
    mix.index_put_((slot, lo - anchor + 1), 1 - t, accumulate=True)
    mix.index_put_((slot, hi - anchor + 1), t, accumulate=True)

    def in_slots(values):
        return values.new_zeros(count * most).index_copy(0, slot, values).view(count, most)

    return mix.view(count, most, 3), in_slots(2 * (z - anchor)), in_slots(rows), in_slots(weight)


def blend_planes(x: torch.Tensor, group: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """The M blends ``sum_p mix[g, m, p] x[a_g + p]`` of the three planes around each anchor plane a_g of
    ``group``, for x (B, D + 2, h, w, C) padded by one plane on each side: (B, G, h, w, M, C). Consecutive
    anchors at inference: one matmul per plane on a view of x, no copy of it. Otherwise the planes are
    gathered (the cycle pass anchors every few planes; autograd's backward of ``unfold`` was slow)."""
    batch, _, h, w, channels = x.shape
    mix, count, g0 = mix.to(x.dtype), len(group), int(group[0])
    if _trains(x) or not _consecutive(group):
        near = group[:, None] + torch.arange(3, device=x.device)
        planes = x.index_select(1, near.flatten()).view(batch, count, 3, h * w * channels)
        blended = torch.matmul(mix, planes)                                # (B, G, M, h w C)
        return blended.view(batch, count, -1, h, w, channels).permute(0, 1, 3, 4, 2, 5)
    planes = x[:, g0:g0 + count + 2].unfold(1, 3, 1).reshape(batch, count, h * w * channels, 3)
    blended = torch.matmul(planes, mix.transpose(1, 2))                   # (B, G, h w C, M)
    return blended.view(batch, count, h, w, channels, -1).transpose(-1, -2)


def neighbour_blocks(padded: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """The 3x3x3 code blocks (B G h w, 27, C) around every LR voxel of the anchor planes ``group``, from
    codes (B, D + 2, h + 2, w + 2, C) padded by one voxel on every side: windows of a view copied once
    (consecutive anchors at inference), or one gather (its backward is an index_add, unfold's was slow)."""
    batch, _, h2, w2, channels = padded.shape
    h, w, count, g0 = h2 - 2, w2 - 2, len(group), int(group[0])
    if _trains(padded) or not _consecutive(group):
        arange = functools.partial(torch.arange, device=padded.device)
        start = ((group[:, None, None] * h2 + arange(h)[:, None]) * w2 + arange(w)).flatten()
        offsets = ((arange(3)[:, None, None] * h2 + arange(3)[:, None]) * w2 + arange(3)).flatten()
        flat = padded.reshape(batch, -1, channels).index_select(1, (start[:, None] + offsets).flatten())
        return flat.view(-1, 27, channels)
    block = padded[:, g0:g0 + count + 2].unfold(1, 3, 1).unfold(2, 3, 1).unfold(3, 3, 1)
    return block.permute(0, 1, 2, 3, 5, 6, 7, 4).reshape(-1, 27, channels)


def _trains(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _consecutive(planes: torch.Tensor) -> bool:
    return int(planes[-1] - planes[0]) + 1 == len(planes)


def padded_region(codes: torch.Tensor, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """Codes (B, D, H, W, C) of rows y0 .. y1 - 1 and columns x0 .. x1 - 1 with one more voxel on every side,
    replicated at the volume's borders: (B, D + 2, h + 2, w + 2, C), contiguous, one gather. Every 3x3x3
    block around the region is a window of it."""
    depth, height, width = codes.shape[1:4]
    arange = functools.partial(torch.arange, device=codes.device)
    planes = arange(-1, depth + 1).clamp(0, depth - 1)
    rows, columns = arange(y0 - 1, y1 + 1).clamp(0, height - 1), arange(x0 - 1, x1 + 1).clamp(0, width - 1)
    return codes[:, planes[:, None, None], rows[:, None], columns]


def bracket(z: torch.Tensor, depth: int):
    """Clamped positions, the LR planes lo <= z <= hi = lo + 1 around them, and t = z - lo (float32)."""
    z = z.to(torch.float32).clamp(0, depth - 1)
    lo = torch.floor(z).long().clamp(0, max(depth - 2, 0))
    hi = (lo + 1).clamp(max=depth - 1)
    return z, lo, hi, z - lo


class CycleINR(nn.Module):
    """G_theta of the paper: LR volume + query slice positions -> intensities at those positions."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.attention = LocalAttention(config.code_length) if config.neighbours else None
        self.decoder = Decoder(config)
        if config.residual == "linear":
            # Start exactly at linear interpolation; training learns the correction.
            nn.init.zeros_(self.decoder.layers[-1].weight)
            nn.init.zeros_(self.decoder.layers[-1].bias)

    def encode(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) normalized LR -> channels-last latent codes (B, D, H, W, C)."""
        return self.encoder(lr).permute(0, 2, 3, 4, 1).contiguous()

    def decode(self, lr: torch.Tensor, codes: torch.Tensor, z: torch.Tensor, region=None,
               chunk: int | None = None, points: int | None = None) -> torch.Tensor:
        """Intensities (B, Q, h, w) at slice positions ``z`` (Q,) in LR index units, in-plane at the LR
        centres of ``region`` = (y0, y1, x0, x1) (half-open; default: the whole plane). Decoding only a
        region lets a sliding window skip its context margin; codes outside it serve as neighbours.
        ``chunk`` bounds the work per step (LR voxels per group of anchor planes), ``points`` that of a
        decoder call (default: ``chunk``); None does everything at once (training)."""
        depth, height, width = codes.shape[1:4]
        y0, y1, x0, x1 = region or (0, height, 0, width)
        z, lo, hi, t = bracket(z.to(codes.device), depth)               # t stays fp32 under autocast
        rows, anchor, weight = ensemble_entries(lo, hi, t, self.config.blend_band)
        points = points or chunk

        padded = padded_region(codes, y0, y1, x0, x1)
        inner = padded[:, :, 1:-1, 1:-1]
        if self.attention is not None:
            queries = self._queries(inner)
        else:
            inner = inner.contiguous()
        h, w = y1 - y0, x1 - x0
        planes = torch.unique(anchor)
        per_group = len(planes) if chunk is None else max(1, chunk // (h * w))
        out = torch.zeros(codes.shape[0], len(z), h, w, device=codes.device, dtype=torch.float32)
        for group in torch.split(planes, per_group):
            sel = (anchor >= group[0]) & (anchor <= group[-1])
            g_rows = rows[sel]
            mix, local, slot_rows, slot_weight = entry_slots(group, anchor[sel], g_rows, weight[sel], z[g_rows],
                                                             lo[g_rows], hi[g_rows], t[g_rows])
            count = len(group)
            if self.attention is None:                                 # Eq. 3 alone (no attention)
                attended = blend_planes(inner, group, mix)
            else:
                attended = self._attend(padded, queries, group, mix)                              # Eq. 4
            filled = slot_weight > 0                       # ensemble_entries gives only non-zero weights
            if bool(filled.all()):                         # decode the (B, G, h, w, M) grid as it is
                local = local.view(1, count, 1, 1, -1).expand(attended.shape[:-1])
                value = self._decode_points(local, attended, points) * slot_weight.view(1, count, 1, 1, -1)
                value = value.permute(0, 1, 4, 2, 3).reshape(codes.shape[0], -1, h, w)
                out.index_add_(1, slot_rows.flatten(), value)
            else:                                          # skip empty slots: (E, B, h, w) entries
                g, m = torch.nonzero(filled, as_tuple=True)
                attended = attended[:, g, :, :, m]
                local = local[g, m].view(-1, 1, 1, 1).expand(attended.shape[:-1])
                value = self._decode_points(local, attended, points) * slot_weight[g, m].view(-1, 1, 1, 1)
                out.index_add_(1, slot_rows[g, m], value.transpose(0, 1))
        if self.config.residual == "linear":
            image = lr[:, 0, :, y0:y1, x0:x1].float()
            t4 = t.view(1, -1, 1, 1)
            out = out + image[:, lo] * (1 - t4) + image[:, hi] * t4
        return out

    def _decode_points(self, local: torch.Tensor, code: torch.Tensor, chunk: int | None) -> torch.Tensor:
        if chunk is None or local.numel() <= chunk:
            return self.decoder(local, code).float()
        flat, where = code.reshape(-1, code.shape[-1]), local.reshape(-1)
        parts = [self.decoder(where[i:i + chunk], flat[i:i + chunk]).float()
                 for i in range(0, len(flat), chunk)]
        return torch.cat(parts).view(local.shape)

    def _queries(self, inner: torch.Tensor) -> torch.Tensor:
        """[W_K^T q, q . b_K] (C + 1 channels) of every LR voxel (q = W_Q z + b_Q, scaled), so that q . k_j =
        (W_K^T q) . z_j + q . b_K for raw codes z_j (Eq. 4): one linear map of z, its weights folded from
        W_Q and W_K. The second term is the same for all 27 neighbours and cancels in the softmax; it is
        kept so that b_K stays in the graph, as DistributedDataParallel requires of every parameter."""
        att = self.attention
        k = torch.cat([att.k.weight.t(), att.k.bias[None]])                # (C + 1, C)
        weight, bias = att.scale * (k @ att.q.weight), att.scale * (k @ att.q.bias)
        if use_onednn(inner):
            flat = onednn_linear(inner.reshape(-1, inner.shape[-1]), weight, bias)
            return flat.view(*inner.shape[:-1], -1)
        return nn.functional.linear(inner, weight, bias)

    def _attend(self, padded, queries, group: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """Eq. 4 for the entries anchored on the planes ``group``, laid out (B, G, h, w, M, C)
        as ``entry_slots`` orders them: softmax over the 27 codes of the anchor's 3x3x3 block with
        q = (1 - t) q_lo + t q_hi. Per LR voxel of an anchor plane: its block (27 x C), the M entries'
        queries (``mix`` applied to the 3 planes' ``_queries``), and two small matmuls (scores, values)."""
        batch, h, w, channels = padded.shape[0], padded.shape[2] - 2, padded.shape[3] - 2, padded.shape[-1]
        most = mix.shape[1]
        block = neighbour_blocks(padded, group)                           # (B G h w, 27, C)
        q = blend_planes(queries, group, mix).reshape(-1, most, channels + 1)
        scores = torch.matmul(q[..., :channels], block.transpose(1, 2)) + q[..., channels:]  # (B G h w, M, 27)
        weights = torch.softmax(scores.float(), dim=-1).to(block.dtype)
        mixed = torch.matmul(weights, block).view(batch, len(group), h, w, most, channels)
        v = self.attention.v
        if use_onednn(mixed):
            return onednn_linear(mixed.view(-1, channels), v.weight, v.bias).view(mixed.shape)
        return v(mixed)

    def forward(self, lr: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decode(lr, self.encode(lr), z)
