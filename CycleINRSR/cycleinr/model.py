"""The CycleINR network (paper section 3.1): encoder, attention-enhanced latent code sampling, decoder.

Query positions are given along the slice axis only, in *LR slice-index units* (0 = centre of the first LR
slice, D - 1 = the last; the cell-centre convention, i.e. normalized coordinate ``(2 z + 1) / D - 1`` in
[-1, 1] over the volume's extent). In-plane, queries sit on the LR voxel centres, because upsampling is
along z only. That makes Eq. 3-4 cheap:

* trilinear sampling (Eq. 3) reduces to linear interpolation between the two bracketing LR slices;
* the 27 nearest LR codes of a query are the 3x3x3 block around its nearest LR voxel, i.e. fixed shifts;
* K and V are linear in the LR codes, so they are computed once per LR voxel, not once per query.

The decoder receives the query's offset from the centre of that nearest LR voxel, normalized to [-1, 1]
over one LR cell (LIIF's local coordinate). Unlike a coordinate normalized over the whole input, it does
not change with the size of the volume or the position of a sliding window, so windows stitch exactly.
Borders are clamped (replicated): a neighbour index outside the volume takes the nearest valid voxel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def conv3(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, padding=1)


class ResidualBlock(nn.Module):
    """``convs`` x (3x3x3 conv + ReLU), with an identity skip around them."""

    def __init__(self, features: int, convs: int):
        super().__init__()
        layers = []
        for _ in range(convs):
            layers += [conv3(features, features), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


class Encoder(nn.Module):
    """Residual 3D CNN giving every LR voxel a latent code (Eq. 2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head = conv3(1, cfg.features)
        self.blocks = nn.Sequential(*[ResidualBlock(cfg.features, cfg.convs_per_block)
                                      for _ in range(cfg.encoder_blocks)])
        self.tail = conv3(cfg.features, cfg.code_length)

    def forward(self, x):
        return self.tail(self.blocks(self.head(x)))


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

    def forward(self, x):
        h = x
        for n, layer in enumerate(self.layers):
            if n == self.skip_layer:
                h = torch.cat([h, x], dim=-1)
            h = layer(h)
            if n < len(self.layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)


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

    def keys_values(self, codes: torch.Tensor):
        """K and V of every LR voxel, padded by one replicated voxel in-plane for the 3x3 shifts."""
        if self.attention is None:
            return None
        def padded(linear):  # replicate one voxel on each side in H and W, none in D
            t = linear(codes).permute(0, 4, 1, 2, 3)
            return nn.functional.pad(t, (1, 1, 1, 1, 0, 0), mode="replicate").permute(0, 2, 3, 4, 1)

        k, v = padded(self.attention.k), padded(self.attention.v)
        return k, v

    def decode(self, lr: torch.Tensor, codes: torch.Tensor, kv, z: torch.Tensor) -> torch.Tensor:
        """Intensities (B, Q, H, W) at slice positions ``z`` (Q,) in LR index units, in-plane at LR centres."""
        depth, height, width = codes.shape[1:4]
        z = z.to(codes.device, torch.float32).clamp(0, depth - 1)
        lo = torch.floor(z).long().clamp(max=max(depth - 2, 0))
        hi = (lo + 1).clamp(max=depth - 1)
        t = (z - lo).view(1, -1, 1, 1, 1).to(codes.dtype)
        code = codes[:, lo] * (1 - t) + codes[:, hi] * t                       # Eq. 3, (B, Q, H, W, C)
        centre = torch.floor(z + 0.5).long().clamp(0, depth - 1)
        if kv is not None:
            code = self._attend(code, kv, centre, depth, height, width)       # Eq. 4
        local = torch.zeros(*code.shape[:-1], 3, dtype=code.dtype, device=code.device)
        local[..., 0] = (2 * (z - centre)).view(1, -1, 1, 1).to(code.dtype)
        out = self.decoder(torch.cat([local, code], dim=-1))                    # Eq. 5
        if self.config.residual == "linear":
            t4 = t.squeeze(-1)
            out = out + lr[:, 0, lo] * (1 - t4) + lr[:, 0, hi] * t4
        return out

    def _attend(self, code, kv, centre, depth, height, width):
        keys, values = kv
        q = self.attention.q(code) * self.attention.scale
        shifts = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (0, 1, 2) for dx in (0, 1, 2)]
        planes = {dz: (centre + dz).clamp(0, depth - 1) for dz in (-1, 0, 1)}

        def shifted(t, dz, dy, dx):
            return t[:, planes[dz], dy:dy + height, dx:dx + width]

        scores = torch.stack([(q * shifted(keys, *s)).sum(-1) for s in shifts], dim=-1)
        weights = torch.softmax(scores, dim=-1)
        out = torch.zeros_like(code)
        for n, s in enumerate(shifts):
            out = out + weights[..., n:n + 1] * shifted(values, *s)
        return out

    def forward(self, lr: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        codes = self.encode(lr)
        return self.decode(lr, codes, self.keys_values(codes), z)
