"""An independent zero-shot reference for the exactness tests.

It uses open_clip, torchvision and torchcodec directly, the way their own documentation does, and
shares no code with lss_cli: frames at the centres of equal segments decoded with torchcodec,
open_clip's own eval transform per frame (PIL: short side to the input size with bicubic
resampling, centre crop, mean/std), `encode_image` per frame, mean over frames, L2 normalise,
cosine with `open_clip.build_zero_shot_classifier`, softmax at the model's logit scale.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import open_clip
import PIL.Image
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
import yaml
from torchcodec.decoders import VideoDecoder

ROOT = Path(__file__).resolve().parents[1]


def shipped_templates(name: str = "action_templates_v1") -> list[str]:
    return yaml.safe_load((ROOT / "lss_cli" / "prompts" / f"{name}.yaml").read_text())["templates"]


def segment_frames(n: int, num_frames: int, clip: int = 0, num_clips: int = 1) -> list[int]:
    """Frame i of clip k: floor((i + (k + 0.5) / K) * n / T), in exact rational arithmetic."""
    return [math.floor((i + Fraction(2 * clip + 1, 2 * num_clips)) * n / num_frames) for i in range(num_frames)]


class Reference:
    def __init__(self, model: torch.nn.Module, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        pp = model.visual.preprocess_cfg
        size = pp["size"]
        self.size = size if isinstance(size, int) else size[0]
        self.transform = open_clip.image_transform(self.size, is_train=False, mean=pp["mean"], std=pp["std"])
        self.logit_scale = float(model.logit_scale.detach().exp())

    def classifier(self, classnames: list[str], templates: list[str]) -> torch.Tensor:
        """[D, K], unit columns (open_clip's convention)."""
        with torch.no_grad():
            return open_clip.build_zero_shot_classifier(self.model, self.tokenizer, classnames, templates,
                                                        num_classes_per_batch=10, device="cpu")

    def _crops(self, image: PIL.Image.Image, num_crops: int) -> list[torch.Tensor]:
        """Each crop as open_clip's transform finishes it: 1 = the transform itself; 3 = after its
        resize, three squares at the start, middle and end of the long side."""
        if num_crops == 1:
            return [self.transform(image)]
        resize, finish = self.transform.transforms[0], self.transform.transforms[2:]
        image = resize(image)
        w, h, s = image.width, image.height, self.size
        if w >= h:
            boxes = [(round((h - s) / 2), left) for left in (0, round((w - s) / 2), w - s)]
        else:
            boxes = [(top, round((w - s) / 2)) for top in (0, round((h - s) / 2), h - s)]
        out = []
        for top, left in boxes:
            x = TF.crop(image, top, left, s, s)
            for t in finish:
                x = t(x)
            out.append(x)
        return out

    def view_embeddings(self, path: str | Path, num_frames: int, num_clips: int = 1, num_crops: int = 1) -> torch.Tensor:
        """[V, D] unit rows, view k * num_crops + c = temporal clip k, spatial crop c."""
        decoder = VideoDecoder(str(path))
        n = decoder.metadata.num_frames
        views = []
        for k in range(num_clips):
            frames = decoder.get_frames_at(indices=segment_frames(n, num_frames, k, num_clips)).data  # [T, 3, H, W]
            images = [PIL.Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
            per_crop = list(zip(*[self._crops(im, num_crops) for im in images], strict=True))  # crops x T
            for crop_frames in per_crop:
                with torch.no_grad():
                    emb = self.model.encode_image(torch.stack(crop_frames))  # [T, D]
                views.append(F.normalize(emb.mean(0), dim=-1))
        return torch.stack(views)

    def probs(self, path: str | Path, classifier: torch.Tensor, num_frames: int, num_clips: int = 1,
              num_crops: int = 1) -> torch.Tensor:
        """[K]: softmax over classes per view, averaged over views."""
        z = self.view_embeddings(path, num_frames, num_clips, num_crops)  # [V, D]
        return (self.logit_scale * z @ classifier).softmax(-1).mean(0)


# --------------------------------------------------------------------------------------------
# A small zero-shot test set, built once per test session
# --------------------------------------------------------------------------------------------

_SETS: dict[str, dict] = {}


def zero_shot_set(tmp_path_factory) -> dict:
    """Synthetic clips at 96 px (resized to the tiny model's 64 px) plus non-square clips (72x96
    landscape, 96x56 portrait) as a `list` dataset, and a random-init lss-tiny weights file.

    Returns {"root", "list", "classes", "videos" (relative paths), "labels", "weights", "ref"}.
    Built once per session and shared by test_eval.py and test_predict.py."""
    if "set" in _SETS:
        return _SETS["set"]
    from safetensors.torch import save_file
    from torchcodec.encoders import VideoEncoder

    from lss_cli.data.synth import MOTIONS, SynthSpec, clip_generator, generate, render_clip

    root = tmp_path_factory.mktemp("zeroshot")
    generate(root, SynthSpec(classes=4, videos_per_class=3, frames=10, size=96, seed=1))
    lines = (root / "train.txt").read_text().splitlines() + (root / "test.txt").read_text().splitlines()
    spec = SynthSpec(classes=4, frames=10, size=96, seed=7)
    (root / "odd").mkdir()
    for c in range(4):
        frames = render_clip(MOTIONS[c], spec, clip_generator(spec, c, 0))  # [T, 3, 96, 96]
        for tag, crop in (("wide", frames[:, :, 12:84, :]), ("tall", frames[:, :, :, 20:76])):
            rel = f"odd/{c}_{tag}.mp4"
            VideoEncoder(crop.contiguous(), frame_rate=8).to_file(str(root / rel), pixel_format="yuv420p", crf=18)
            lines.append(f"{rel} {c}")
    (root / "all.txt").write_text("\n".join(lines) + "\n")
    open_clip.add_model_config(ROOT / "lss_cli" / "models" / "configs")
    torch.manual_seed(3)  # a seed whose random model does not predict one class for everything
    model = open_clip.create_model("lss-tiny")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "weights.safetensors"))
    _SETS["set"] = {
        "root": root, "list": root / "all.txt", "classes": (root / "classes.txt").read_text().splitlines(),
        "videos": [ln.rsplit(" ", 1)[0] for ln in lines], "labels": [int(ln.rsplit(" ", 1)[1]) for ln in lines],
        "weights": root / "weights.safetensors", "ref": Reference(model, open_clip.get_tokenizer("lss-tiny")),
    }
    return _SETS["set"]
