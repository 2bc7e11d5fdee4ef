"""Synthetic action videos: the class is the object's *motion*; everything else is a distractor.

Each clip shows one object on a textured (or, with `background="plain"`, a uniform) background.
The class decides only how the object moves over time (left, right, up, down, clockwise,
counter-clockwise, growing, shrinking, ...). Shape, colour, background, speed, start position,
start size and start orientation are drawn from the same distribution for every *forward* class,
so the first frame cannot tell those classes apart: a model has to look at time.

Classes come in time-reversal pairs (moving left / moving right, up / down, clockwise /
counterclockwise, growing / shrinking; "shaking" and "standing still" have no mate). Clip i of
the second member of a pair is exactly clip i of the first member played backwards: same random
draws, same frames (sensor noise included), reverse order, and the same split. Drawing the second
member's clips independently would not do: its start position would come from the same
distribution as its mate's, so its frames would sit elsewhere on average (a "moving right" clip
ends right of where a "moving left" one ends) and a model that ignores frame order could still
tell the two apart. By construction the two members of a pair hold the same set of frames, so any
frame-order-invariant model (a frame average, for one) gives a clip and its mate the same
features and is at chance on the direction; only a model of time order can beat it. `pairs.txt`
lists the pairs for `lss eval`'s direction accuracy.

Clips are written as real video files through torchcodec's encoder (H.264, lossless), so the demo
and the tests exercise the same decoding path as real datasets, with no downloads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lss_cli.data.video_io import encode_video
from lss_cli.describe.records import DescriptionRecord, write_records
from lss_cli.errors import ConfigError


@dataclass(frozen=True)
class MotionClass:
    name: str  # readable class name (what zero-shot prompts see)
    dx: float = 0.0  # displacement over the clip, in fractions of the frame width (+ = right)
    dy: float = 0.0  # (+ = down)
    turns: float = 0.0  # rotation over the clip, in turns (+ = clockwise on screen)
    growth: float = 1.0  # size at the end / size at the start
    shake: float = 0.0  # amplitude of a fast horizontal oscillation
    reverse_of: str | None = None  # time-reversal mate: this class's clips are that class's, reversed (no motion of its own)


# A reversed class has no motion of its own: it is rendered as its mate's motion, then flipped in
# time (`render_clip`), so it carries no parameters that could drift from its mate's.
MOTIONS: tuple[MotionClass, ...] = (
    MotionClass("moving left", dx=-0.3),
    MotionClass("moving right", reverse_of="moving left"),
    MotionClass("moving up", dy=-0.3),
    MotionClass("moving down", reverse_of="moving up"),
    MotionClass("rotating clockwise", turns=0.5),
    MotionClass("rotating counterclockwise", reverse_of="rotating clockwise"),
    MotionClass("growing", growth=2.2),
    MotionClass("shrinking", reverse_of="growing"),
    MotionClass("shaking", shake=0.08),
    MotionClass("standing still"),
)
MOTION_INDEX: dict[str, int] = {m.name: i for i, m in enumerate(MOTIONS)}
# (forward class, its time reversal), in MOTIONS order.
PAIRS: tuple[tuple[str, str], ...] = tuple((m.reverse_of, m.name) for m in MOTIONS if m.reverse_of is not None)
BACKGROUNDS = ("texture", "plain")

# Hand-written visual descriptions, the same kind of text `lss describe` asks an LLM for.
DESCRIPTIONS: dict[str, list[str]] = {
    "moving left": [
        "an object slides steadily from the right side of the frame toward the left side",
        "a shape travels horizontally to the left across a still background",
        "the object's position shifts leftward in every frame while its size stays the same",
    ],
    "moving right": [
        "an object slides steadily from the left side of the frame toward the right side",
        "a shape travels horizontally to the right across a still background",
        "the object's position shifts rightward in every frame while its size stays the same",
    ],
    "moving up": [
        "an object rises steadily from the bottom of the frame toward the top",
        "a shape travels vertically upward across a still background",
        "the object's position moves higher in every frame while its size stays the same",
    ],
    "moving down": [
        "an object falls steadily from the top of the frame toward the bottom",
        "a shape travels vertically downward across a still background",
        "the object's position moves lower in every frame while its size stays the same",
    ],
    "rotating clockwise": [
        "an object spins in place in the clockwise direction",
        "a shape turns around its centre like the hands of a clock",
        "the object stays in one spot while its orientation rotates to the right",
    ],
    "rotating counterclockwise": [
        "an object spins in place in the counterclockwise direction",
        "a shape turns around its centre against the direction of a clock",
        "the object stays in one spot while its orientation rotates to the left",
    ],
    "growing": [
        "an object expands and becomes larger with every frame",
        "a shape swells outward from its centre until it fills more of the frame",
        "the object stays in place while its size increases steadily",
    ],
    "shrinking": [
        "an object contracts and becomes smaller with every frame",
        "a shape shrinks toward its centre until it covers little of the frame",
        "the object stays in place while its size decreases steadily",
    ],
    "shaking": [
        "an object jitters quickly back and forth from side to side",
        "a shape vibrates horizontally in place with fast small movements",
        "the object trembles left and right without going anywhere",
    ],
    "standing still": [
        "an object rests motionless in the middle of a static scene",
        "a shape stays perfectly still; nothing in the frame moves",
        "the object keeps the same position, size and orientation in every frame",
    ],
}

SHAPES = ("triangle", "arrow", "ell", "tee", "bar")
# The "plain" world, shared with the captioned stills the tiny CLIP is pretrained on
# (lss_cli/data/stills.py): saturated named colours on a dark grey background, so an object
# stands out by content and a tiny ViT learns where it is quickly.
WORLD_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.15), "blue": (0.15, 0.25, 0.9), "yellow": (0.95, 0.85, 0.1),
    "cyan": (0.1, 0.8, 0.85), "magenta": (0.85, 0.15, 0.8), "orange": (0.95, 0.5, 0.05), "purple": (0.5, 0.1, 0.75),
}
PLAIN_GREY = (0.05, 0.3)  # range of the plain background's grey level
COLOUR_JITTER = 0.08  # std of the per-object jitter around its named colour


def world_colour(index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[N, 3] jittered named colours for colour indices [N]."""
    palette = torch.tensor(list(WORLD_COLOURS.values()))  # [C, 3]
    return (palette[index] + COLOUR_JITTER * torch.randn(len(index), 3, generator=g)).clamp(0, 1)


def plain_grey(n: int, g: torch.Generator) -> torch.Tensor:
    """[N] grey levels of plain backgrounds."""
    return PLAIN_GREY[0] + (PLAIN_GREY[1] - PLAIN_GREY[0]) * torch.rand(n, generator=g)


@dataclass(frozen=True)
class SynthSpec:
    classes: int = 8  # how many motion classes (the first N of MOTIONS)
    videos_per_class: int = 12  # clips per class
    frames: int = 16  # frames per clip, n; eval's frames floor((i + 1/2) * n / T) map onto themselves under time reversal only when n / T is an odd integer (n = 8 or 24 for T = 8, not 16), so only then does a reversed clip give exactly the reversed eval view
    size: int = 112  # square frame size in pixels (even, for yuv420p)
    fps: float = 8.0  # frame rate written into the file
    test_fraction: float = 0.25  # share of each class's clips listed in test.txt
    seed: int = 0  # same seed, same clips
    background: str = "texture"  # texture: smooth random texture, any object colour; plain: the stills' world (dark grey, named colours)

    @property
    def test_count(self) -> int:
        """Test clips per class (the last ones of each class)."""
        return max(1, round(self.videos_per_class * self.test_fraction))

    def validate(self) -> None:
        if not 2 <= self.classes <= len(MOTIONS):
            raise ConfigError(f"--classes must be between 2 and {len(MOTIONS)}, got {self.classes}")
        if self.videos_per_class < 2:
            raise ConfigError("--videos-per-class must be >= 2 (one for train, one for test)")
        if self.frames < 2:
            raise ConfigError("--frames must be >= 2 (motion needs time)")
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"--size must be even and >= 16, got {self.size}", hint="H.264 in yuv420p needs even sizes")
        if self.fps <= 0:
            raise ConfigError("--fps must be > 0")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("test fraction must be in (0, 1)")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"--background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}",
                              hint="plain: a uniform background per clip (easy to learn); texture: a smooth random texture")


def benchmark_spec(classes: int = 8, videos_per_class: int = 24, seed: int = 0) -> SynthSpec:
    """The learning benchmark of `lss demo` (and of `lss train` on a missing synthetic root): the
    pretrained tiny CLIP's world (plain, 64 px) with 24 frames, so that eval's 8 frames at
    floor((i + 1/2) * 24 / 8) = 1, 4, ..., 22 map onto themselves under time reversal (24 / 8 is
    odd) and a clip and its reversed mate give exactly the same view."""
    return SynthSpec(classes=classes, videos_per_class=videos_per_class, frames=24, size=64, background="plain",
                     seed=seed)


def shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test in object coordinates (u right, v down, unit half-size). No rotational symmetry
    below 180 degrees, so rotation is visible."""
    if shape == "triangle":  # apex up, base at the bottom, off-centre mass
        return (v <= 0.9) & (v >= -0.9) & (u.abs() <= (v + 0.9) / 1.8 * 0.9)
    if shape == "arrow":  # shaft + head pointing right
        shaft = (u >= -0.9) & (u <= 0.2) & (v.abs() <= 0.25)
        head = (u >= 0.2) & (u <= 0.9) & (v.abs() <= (0.9 - u) * 0.9)
        return shaft | head
    if shape == "ell":
        return ((u >= -0.8) & (u <= -0.3) & (v.abs() <= 0.9)) | ((v >= 0.4) & (v <= 0.9) & (u >= -0.8) & (u <= 0.8))
    if shape == "tee":
        return ((v >= -0.9) & (v <= -0.4) & (u.abs() <= 0.9)) | ((u.abs() <= 0.25) & (v >= -0.9) & (v <= 0.9))
    if shape == "bar":  # a bar with a notch at one end
        return (u.abs() <= 0.9) & (v.abs() <= 0.35) & ~((u >= 0.5) & (v <= 0.0))
    raise ValueError(shape)


def _background(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """`[3, S, S]` in [0, 1]: a smooth random texture (low-res noise upsampled, random palette), or
    for "plain" one dark grey level (the pretrained tiny CLIP's world)."""
    if kind == "plain":
        return plain_grey(1, g).view(1, 1, 1).expand(3, size, size)
    cells = int(torch.randint(3, 9, (1,), generator=g))
    noise = torch.rand(1, 3, cells, cells, generator=g)
    tex = torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[0]
    contrast = 0.2 + 0.5 * torch.rand(1, generator=g)
    base = torch.rand(3, 1, 1, generator=g)
    return (base * (1 - contrast) + tex * contrast).clamp(0, 1)


def render_clip(motion: MotionClass, spec: SynthSpec, g: torch.Generator) -> torch.Tensor:
    """One clip, uint8 `[T, 3, S, S]`. A reversed class renders its mate's clip with the same
    generator, then flips the time axis, so the two share every frame."""
    if motion.reverse_of is not None:
        return _render_forward(MOTIONS[MOTION_INDEX[motion.reverse_of]], spec, g).flip(0)
    return _render_forward(motion, spec, g)


def _render_forward(motion: MotionClass, spec: SynthSpec, g: torch.Generator) -> torch.Tensor:
    """uint8 `[T, 3, S, S]`. Every random draw below is the same for all classes."""
    S, T = spec.size, spec.frames
    shape = SHAPES[int(torch.randint(len(SHAPES), (1,), generator=g))]
    # Plain world: a named colour, as in the stills; texture world: any colour.
    colour = (world_colour(torch.randint(len(WORLD_COLOURS), (1,), generator=g), g)[0]
              if spec.background == "plain" else torch.rand(3, generator=g))
    bg = _background(spec.background, S, g)
    x0, y0 = (0.35 + 0.3 * torch.rand(2, generator=g)).tolist()  # start centre, fractions of the frame
    r0 = float(0.10 + 0.06 * torch.rand(1, generator=g))  # start half-size, fraction of the frame
    a0 = float(2 * math.pi * torch.rand(1, generator=g))  # start orientation
    speed = float(0.7 + 0.6 * torch.rand(1, generator=g))  # scales the class's motion
    phase = float(2 * math.pi * torch.rand(1, generator=g))
    noise_seed = int(torch.randint(2**31 - 1, (1,), generator=g))

    t = torch.linspace(0, 1, T)  # [T]
    # The shake term is 0 at t=0, so frame 0 never depends on the class.
    cx = x0 + speed * motion.dx * t + motion.shake * (torch.sin(phase + t * 6 * math.pi * speed) - math.sin(phase))
    cy = y0 + speed * motion.dy * t
    angle = a0 + 2 * math.pi * speed * motion.turns * t
    radius = r0 * motion.growth ** (speed * t)

    coords = (torch.arange(S, dtype=torch.float32) + 0.5) / S  # pixel centres in [0, 1]
    py, px = torch.meshgrid(coords, coords, indexing="ij")  # [S, S]
    dx = px[None] - cx[:, None, None]  # [T, S, S]
    dy = py[None] - cy[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    # Inverse rotation into object coordinates, then scale to unit half-size.
    u = (cos * dx + sin * dy) / radius[:, None, None]
    v = (-sin * dx + cos * dy) / radius[:, None, None]
    mask = shape_mask(shape, u, v).float()[:, None]  # [T, 1, S, S]

    frames = bg[None] * (1 - mask) + colour[:, None, None][None] * mask  # [T, 3, S, S]
    # Mild sensor noise so no two frames are pixel-identical (as in real video).
    ng = torch.Generator().manual_seed(noise_seed)
    frames = frames + 0.02 * torch.randn(frames.shape, generator=ng)
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8)


def clip_generator(spec: SynthSpec, class_idx: int, video_idx: int) -> torch.Generator:
    """Per-clip generator, independent of generation order. The class index is deliberately *not*
    mixed into the distractor draws' distribution, only into the seed, so statistics match. A
    reversed class (MOTIONS[class_idx]) gets its mate's generator: its clip i is its mate's, reversed."""
    mate = MOTIONS[class_idx].reverse_of
    source = MOTION_INDEX[mate] if mate is not None else class_idx
    return torch.Generator().manual_seed(spec.seed * 1_000_003 + source * 10_007 + video_idx)


def pairs_among(names: list[str]) -> list[tuple[str, str]]:
    """The PAIRS whose two members are both among `names`."""
    return [p for p in PAIRS if p[0] in names and p[1] in names]


def generate(out_dir: str | Path, spec: SynthSpec) -> dict:
    """Write the dataset: videos/<class>/<i>.mp4, classes.txt, train.txt, test.txt, descriptions.jsonl,
    pairs.txt (time-reversal pairs among the classes: `first<TAB>second` per line) and synth.json.

    Returns a summary dict. Deterministic for a seed.
    """
    spec.validate()
    out = Path(out_dir)
    motions = MOTIONS[: spec.classes]
    n_test = spec.test_count
    train, test = [], []
    for c, motion in enumerate(motions):
        folder = out / "videos" / motion.name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(spec.videos_per_class):
            rel = f"videos/{folder.name}/{folder.name}_{i:03d}.mp4"
            frames = render_clip(motion, spec, clip_generator(spec, c, i))
            # Lossless (crf 0): x264's lossy output was seen to change between two encodes of the
            # same frames in one process (161 of the demo's 192 clips, even on one thread), which
            # moved the demo's numbers from run to run; lossless files are identical every time.
            encode_video(frames, out / rel, fps=spec.fps, crf=0)
            # The split depends on i alone, so clip i and its reversal land in the same split.
            (test if i >= spec.videos_per_class - n_test else train).append(f"{rel} {c}")
    names = [m.name for m in motions]
    pairs = pairs_among(names)
    (out / "classes.txt").write_text("".join(name + "\n" for name in names))
    (out / "pairs.txt").write_text("".join(f"{a}\t{b}\n" for a, b in pairs))
    (out / "train.txt").write_text("".join(line + "\n" for line in train))
    (out / "test.txt").write_text("".join(line + "\n" for line in test))
    write_records(out / "descriptions.jsonl", [
        DescriptionRecord(category=m.name, descriptions=list(DESCRIPTIONS[m.name]), model="hand-written")
        for m in motions
    ])
    summary = {
        "root": str(out), "classes": names, "train": len(train), "test": len(test),
        "frames": spec.frames, "size": spec.size, "fps": spec.fps, "seed": spec.seed,
        "background": spec.background, "pairs": [list(p) for p in pairs],
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
