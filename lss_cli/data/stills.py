"""Captioned still images of the synthetic world: the tiny model's stand-in for CLIP's web data.

The motion videos of `lss data synth` show one shape on a plain or textured background. A CLIP
that is to "know its world" must ground the words that describe such frames: where the object is
(a 3 x 3 grid), how large it is, which way it points, its shape and colour. This module draws
random stills of that world together with captions that name a random subset of those attributes,
so contrastive pretraining (lss_cli/train/pretrain.py) teaches the image and text towers each word
separately. `attribute_prompts` gives, per attribute, one prompt per value: the zero-shot check
that the pretrained model knows its words.

Geometry is the video generator's (`synth.shape_mask`: same shapes, same object coordinates,
same orientation convention), so a video frame is an in-distribution still.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lss_cli.data.synth import SHAPES, WORLD_COLOURS, plain_grey, shape_mask, world_colour

# 3 x 3 grid of the object's centre: (row, column) -> phrase. Rows top..bottom, columns left..right.
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the centre", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
SIZES = ("small", "medium", "large")  # half-size < 0.12, 0.12..0.2, > 0.2 of the frame (log-uniform draw)
SIZE_EDGES = (0.12, 0.2)
RADIUS_RANGE = (0.06, 0.4)  # object half-size range, fraction of the frame
# Where the object's +u axis points on screen, in steps of a quarter turn (angle 0 = right, clockwise).
POINTING = ("right", "down", "left", "up")
# How often a caption names each attribute (size, colour, shape, pointing, position). Where the object
# is and how large it is are what motion changes, so they are named most; colour is learnt easily.
KEEP_P = torch.tensor([0.8, 0.3, 0.5, 0.6, 0.9])


@dataclass
class Stills:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    captions: list[str]  # N captions
    attributes: dict[str, torch.Tensor]  # name -> [N] int64 index into attribute_values(name)


def attribute_values() -> dict[str, tuple[str, ...]]:
    """The values of each captioned attribute, in index order."""
    return {"position": tuple(p for row in POSITIONS for p in row), "size": SIZES, "shape": SHAPES,
            "colour": tuple(WORLD_COLOURS), "pointing": POINTING}


def attribute_prompts() -> dict[str, list[str]]:
    """One zero-shot prompt per value of each attribute (same order as `attribute_values`)."""
    v = attribute_values()
    return {"position": [f"a shape {p}" for p in v["position"]], "size": [f"a {s} shape" for s in v["size"]],
            "shape": [f"a {s}" for s in v["shape"]], "colour": [f"a {c} shape" for c in v["colour"]],
            "pointing": [f"a shape pointing {d}" for d in v["pointing"]]}


def _caption(values: dict[str, str], keep: dict[str, bool]) -> str:
    """'a [size] [colour] <shape|shape> [pointing D] [position]'; the noun is always there."""
    words = ["a"]
    words += [values["size"]] if keep["size"] else []
    words += [values["colour"]] if keep["colour"] else []
    words += [values["shape"] if keep["shape"] else "shape"]
    words += [f"pointing {values['pointing']}"] if keep["pointing"] else []
    words += [values["position"]] if keep["position"] else []
    return " ".join(words)


def _draw(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The random parameters of n stills."""
    log_lo, log_hi = math.log(RADIUS_RANGE[0]), math.log(RADIUS_RANGE[1])
    radius = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, generator=g))  # [N]
    # Keep the centre inside the frame; a large object may still be cut by the border, as in the videos.
    cx, cy = (0.1 + 0.8 * torch.rand(2, n, generator=g)).unbind(0)
    return {"cx": cx, "cy": cy, "radius": radius, "angle": 2 * math.pi * torch.rand(n, generator=g),
            "shape": torch.randint(len(SHAPES), (n,), generator=g),
            "colour": torch.randint(len(WORLD_COLOURS), (n,), generator=g),
            "background": plain_grey(n, g)[:, None].expand(n, 3), "keep": torch.rand(n, 5, generator=g) < KEEP_P}


def _render(p: dict[str, torch.Tensor], size: int, g: torch.Generator) -> torch.Tensor:
    """uint8 [N, 3, S, S]: plain background, one shape, mild sensor noise (as the videos)."""
    n = len(p["cx"])
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    py, px = torch.meshgrid(coords, coords, indexing="ij")  # [S, S]
    dx, dy = px[None] - p["cx"][:, None, None], py[None] - p["cy"][:, None, None]  # [N, S, S]
    cos, sin = torch.cos(p["angle"])[:, None, None], torch.sin(p["angle"])[:, None, None]
    r = p["radius"][:, None, None]
    u, v = (cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r
    masks = torch.stack([shape_mask(s, u, v) for s in SHAPES], 1)  # [N, n_shapes, S, S]
    mask = masks[torch.arange(n), p["shape"]].float()[:, None]  # [N, 1, S, S]
    colour = world_colour(p["colour"], g)  # [N, 3]
    img = p["background"][:, :, None, None] * (1 - mask) + colour[:, :, None, None] * mask  # [N, 3, S, S]
    img = img + 0.02 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _labels(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    col = (p["cx"] * 3).long().clamp(0, 2)
    row = (p["cy"] * 3).long().clamp(0, 2)
    size = torch.bucketize(p["radius"], torch.tensor(SIZE_EDGES))
    # Quarter turn nearest to the angle (0 = right, clockwise on screen since y points down).
    pointing = torch.round(p["angle"] / (math.pi / 2)).long() % 4
    return {"position": row * 3 + col, "size": size, "shape": p["shape"], "colour": p["colour"], "pointing": pointing}


def draw_stills(n: int, size: int, g: torch.Generator) -> Stills:
    """n random captioned stills of `size` pixels, deterministic for the generator's state."""
    p = _draw(n, g)
    labels = _labels(p)
    values = attribute_values()
    names = ("size", "colour", "shape", "pointing", "position")
    captions = []
    for i in range(n):
        vals = {k: values[k][int(labels[k][i])] for k in names}
        captions.append(_caption(vals, dict(zip(names, p["keep"][i].tolist(), strict=True))))
    return Stills(images=_render(p, size, g), captions=captions, attributes=labels)


def world_vocabulary() -> list[str]:
    """Every text the pretraining can produce or check, for the tokens the text tower learns."""
    v = attribute_values()
    return ["a shape pointing " + " ".join(v["pointing"]), " ".join(v["size"] + v["colour"] + v["shape"]),
            *v["position"]]
