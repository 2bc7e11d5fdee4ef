"""`lss predict`: classify your own videos with your own label names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lss_cli.cli import app
from lss_cli.cli.options import DEVICE_HELP, Json, Quiet


@app.command("predict")
def predict(
    videos: Annotated[list[Path], typer.Argument(help="Video files, or folders of them (the videos directly inside, by name).")],
    labels: Annotated[str, typer.Option("--labels", help='Label names: "a,b,c", a file (one per line) or a built-in set.')],
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="Exported model (file, folder or hf-hub:org/name[@rev]) or run dir [default: none = the CLIP baseline of --model and --pretrained].")] = None,
    model: Annotated[str, typer.Option("--model", help="CLIP model when no checkpoint is given (open_clip name or hf-hub:org/name).")] = "ViT-B-16",
    pretrained: Annotated[str, typer.Option("--pretrained", help="Its weights: tag, file, local-dir:PATH, hf-hub:org/name, none.")] = "openai",
    templates: Annotated[str, typer.Option("--templates", help="Prompt templates (prompts/ name or path).")] = "action_templates_v1",
    num_frames: Annotated[int, typer.Option("--num-frames", help="Frames per video.")] = 8,
    top_k: Annotated[int, typer.Option("--top-k", help="Labels shown per video.")] = 5,
    device: Annotated[str, typer.Option("--device", help=DEVICE_HELP)] = "auto",
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Zero-shot classify videos: ranked labels with probabilities per video.

    Examples:

        lss predict clip1.mp4 clip2.mp4 --labels "juggling,skateboarding,cooking" --checkpoint model.safetensors

        lss predict *.mp4 --labels ucf101 --model ViT-B-16 --pretrained /models/vit-b-16.safetensors --json

        lss predict clips/ --labels labels.txt --checkpoint model.safetensors
    """
    from lss_cli.errors import LssError
    from lss_cli.labels import parse_label_arg
    from lss_cli.predict import predict as run_predict
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    results = run_predict([str(v) for v in videos], parse_label_arg(labels), checkpoint=checkpoint, model=model,
                          pretrained=None if pretrained.lower() == "none" else pretrained, templates=templates,
                          num_frames=num_frames, top_k=top_k, device=device)
    from rich.text import Text

    from lss_cli.cli.render import print_json, stdout

    if json_out:
        print_json(results)
    else:
        for r in results:
            stdout.print(Text(r["video"], style="bold"))
            if "error" in r:
                stdout.print(Text.assemble("  ", ("unreadable:", "red"), " ", r["error"]))
            for p in r["predictions"]:
                stdout.print(f"  {p['prob']:6.1%}  {p['label']}")
    bad = [r["video"] for r in results if "error" in r]
    if bad:
        raise LssError(f"{len(bad)} video(s) could not be read: {', '.join(bad)}", hint="check them with `lss data check`")
