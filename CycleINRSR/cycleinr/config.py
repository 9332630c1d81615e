"""Model configuration: every size of the network, the presets, and the intensity normalization.

The ``paper`` preset holds the values of the paper (section 4.1); ``fast`` is a small network for CPUs.
The whole configuration is saved next to the weights, so a weights file is self-describing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the encoder, local attention and decoder, plus how intensities are scaled."""

    preset: str = "paper"
    encoder_blocks: int = 3          # residual blocks
    convs_per_block: int = 6         # 3x3x3 conv + ReLU per block
    features: int = 64               # encoder feature channels
    code_length: int = 128           # latent code |z|
    neighbours: int = 27             # N of Eq. 4: 27 = 3x3x3 attention, 0 = plain trilinear (INR only)
    decoder_layers: int = 8          # fully connected layers of Eq. 5
    decoder_width: int = 256
    skip_layer: int = 4              # decoder input is concatenated into this layer (ArSSR / NeRF style)
    residual: str = "linear"         # "linear": predict a correction to linear interpolation; "none": paper
    blend_band: float = 0.5          # local-ensemble blend half-width around mid-cell (0.5: LIIF's linear weights)
    window_margin: int = 0           # measured sliding-window context (LR voxels); 0: the full context_radius
    intensity_offset: float = 0.0    # normalized = (value - offset) / scale
    intensity_scale: float = 1000.0  # HU / 1000: air -1, water 0, dense bone ~2

    def __post_init__(self):
        for name in ("encoder_blocks", "convs_per_block", "features", "code_length", "decoder_layers",
                     "decoder_width", "skip_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.window_margin, bool) or not isinstance(self.window_margin, int):
            raise ValueError(f"window_margin must be a whole number, got {self.window_margin!r}")
        if self.neighbours not in (0, 27):
            raise ValueError("neighbours must be 27 (3x3x3 local attention) or 0 (plain trilinear sampling)")
        if self.residual not in ("linear", "none"):
            raise ValueError("residual must be 'linear' or 'none'")
        if not 1 <= self.skip_layer < self.decoder_layers:
            raise ValueError("skip_layer must lie inside the decoder")
        if not 0 < self.blend_band <= 0.5:
            raise ValueError("blend_band must lie in (0, 0.5]: the half-width of the blend around mid-cell")
        if not 0 <= self.window_margin <= self.context_radius:
            raise ValueError("window_margin must lie between 0 and the context radius")
        if self.intensity_scale <= 0:
            raise ValueError("intensity_scale must be positive")

    @property
    def receptive_radius(self) -> int:
        """LR voxels on each side that influence one latent code (head + blocks + tail convs, each 3x3x3)."""
        return self.encoder_blocks * self.convs_per_block + 2

    @property
    def context_radius(self) -> int:
        """LR voxels on each side that influence one output value: the encoder's reach plus one for the
        3x3x3 attention neighbourhood. Windows with this much context match whole-volume inference."""
        return self.receptive_radius + (1 if self.neighbours else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; the weights need a newer cycleinr")
        return cls(**data)


PRESETS = {
    "paper": ModelConfig(),
    "fast": ModelConfig(preset="fast", encoder_blocks=2, convs_per_block=2, features=24, code_length=32,
                        decoder_layers=5, decoder_width=64, skip_layer=3),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name].to_dict(), **overrides})
