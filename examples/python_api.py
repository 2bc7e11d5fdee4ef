"""The Python API on a laptop: the tiny model, a synthetic video, its feature and zero-shot scores.

    python examples/python_api.py [WORK_DIR]

With a real model, swap the `load_video_model` line for e.g.
`load_video_model("lss-k400-vitb16.safetensors", device="cuda")` (an `lss export` file) or
`load_video_model(None, model="ViT-B-16", pretrained="openai")` (the frame-average CLIP baseline).
The test suite runs this file (tests/test_features_api.py).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from lss_cli.api import encode_video, export_features, load_features, load_video_model, zero_shot_scores
from lss_cli.config import EvalConfig
from lss_cli.data.synth import SynthSpec, generate


def main(work: Path) -> None:
    # 4 motion classes x 4 clips of 8 frames, 64 px: a few seconds on a CPU.
    generate(work / "data", SynthSpec(classes=4, videos_per_class=4, frames=8, size=64, seed=0))
    classes = (work / "data" / "classes.txt").read_text().splitlines()
    video = next((work / "data" / "videos").rglob("*.mp4"))

    # lss-tiny with the weights shipped for it; None = no trained checkpoint, the CLIP baseline.
    model = load_video_model(None, model="lss-tiny", pretrained="synthetic-world")
    feature = encode_video(model, video, num_frames=8)  # [D], L2-normalised
    probs = zero_shot_scores(model, feature, classes)  # [K], sums to 1
    print(f"{video.relative_to(work)}: feature {tuple(feature.shape)}")
    for name, p in sorted(zip(classes, probs.tolist(), strict=True), key=lambda x: -x[1]):
        print(f"  {p:.3f}  {name}")

    # A whole list's features for your own probe (what `lss features` writes).
    cfg = EvalConfig(dataset="synthetic", root=str(work / "data"), model="lss-tiny", pretrained="synthetic-world",
                     features="pre-proj", num_workers=0, cache_dir=str(work / "cache"), device="cpu")
    summary = export_features(cfg, work / "test-features.safetensors")
    data = load_features(summary["out"])
    print(f"{summary['out']}: features {tuple(data['features'].shape)}, labels {data['labels'].tolist()}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
