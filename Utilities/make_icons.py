"""Draw the extension and module icons: a few thick grey slices -> arrow -> many thin slices.

    python Utilities/make_icons.py   # writes CycleINR.png and CycleINRSR/Resources/Icons/CycleINRSR.png
"""

from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SCALE = 4  # draw large, then downsample for smooth edges


def _slab(draw, x, y, w, depth, thickness, shade):
    """One slice seen from slightly above: a parallelogram top and a darker front edge."""
    s = SCALE
    dx, dy = depth * 0.55, depth * 0.45
    top = [(x, y), (x + w, y), (x + w + dx, y - dy), (x + dx, y - dy)]
    front = [(x, y), (x + w, y), (x + w, y + thickness), (x, y + thickness)]
    side = [(x + w, y), (x + w + dx, y - dy), (x + w + dx, y - dy + thickness), (x + w, y + thickness)]
    light = tuple(min(255, int(c)) for c in (shade + 40, shade + 40, shade + 48))
    dark = tuple(int(c * 0.62) for c in (shade, shade, shade + 6))
    mid = tuple(int(c * 0.8) for c in (shade, shade, shade + 6))
    outline = (40, 44, 52, 255)
    for poly, color in ((front, dark), (side, mid), (top, light)):
        draw.polygon([(px * s, py * s) for px, py in poly], fill=color + (255,), outline=outline, width=s)


def _stack(draw, x, top, bottom, w, depth, count, thickness, shades):
    gap = (bottom - top - thickness) / max(count - 1, 1)
    for i in range(count):
        _slab(draw, x, top + i * gap, w, depth, thickness, shades[i % len(shades)])


def draw_icon(size: int) -> Image.Image:
    big = 128 * SCALE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    # left: 3 thick slices
    _stack(draw, 6, 30, 104, 34, 16, 3, 15, [175, 195, 160])
    # right: 9 thin slices covering the same extent
    _stack(draw, 80, 30, 104, 34, 16, 9, 4, [205, 185, 195, 175])
    # arrow
    s = SCALE
    y = 66
    draw.rectangle([50 * s, (y - 5) * s, 64 * s, (y + 5) * s], fill=(230, 120, 30, 255))
    draw.polygon([(62 * s, (y - 13) * s), (78 * s, y * s), (62 * s, (y + 13) * s)], fill=(230, 120, 30, 255))
    return image.resize((size, size), Image.LANCZOS)


def main() -> None:
    targets = {ROOT / "CycleINR.png": 128, ROOT / "CycleINRSR" / "Resources" / "Icons" / "CycleINRSR.png": 128}
    for path, size in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        draw_icon(size).save(path)
        print(path)


if __name__ == "__main__":
    main()
