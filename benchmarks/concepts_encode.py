"""Time `lss build-concepts`' encoding: 530 categories x the default templates + N descriptions each.

Prints one line per phase and the totals. Random-init weights are fine for timing (same FLOPs).
Every text costs the same (the text tower always runs the full 77-token context), so with
`--limit` the encode time of a subset is extrapolated linearly to the full set; the output says so.

    python benchmarks/concepts_encode.py                       # ViT-B-16, everything
    python benchmarks/concepts_encode.py --limit 1024          # a subset, extrapolated
    python benchmarks/concepts_encode.py --model lss-tiny
"""

from __future__ import annotations

import argparse
import platform
import time

PLACES = ("in a park", "in a gym", "at home", "on a street", "in a field")
DETAILS = ("using both hands while the body stays mostly upright",
           "with quick repeated movements of the arms and shoulders",
           "seen from the side, the legs bending and straightening",
           "while other people watch from a short distance",
           "the camera close enough to see the face and hands")


def fake_descriptions(name: str, n: int) -> list[str]:
    """Description-like sentences (15-30 tokens, the length LLM descriptions have)."""
    return [f"a person {name} {PLACES[i % len(PLACES)]}, {DETAILS[i % len(DETAILS)]}" + (" " + str(i) if i >= 5 else "")
            for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default="none", help="random init by default (timing only)")
    p.add_argument("--templates", default="action_templates_v1")
    p.add_argument("--per-class", type=int, default=10, help="descriptions per category")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="encode only this many texts and extrapolate")
    args = p.parse_args()

    # Imported after parse_args: torch and open_clip take ~4 s to import, `--help` 0.04 s without them.
    import torch  # noqa: PLC0415 -- a fast --help

    from lss_cli.concepts.encode import encode_texts, tokenize_checked  # noqa: PLC0415 -- a fast --help
    from lss_cli.concepts.templates import load_templates, render_prompts  # noqa: PLC0415 -- a fast --help
    from lss_cli.labels import load_label_set  # noqa: PLC0415 -- a fast --help
    from lss_cli.models.clip import load_clip  # noqa: PLC0415 -- a fast --help
    from lss_cli.runtime.device import resolve_device  # noqa: PLC0415 -- a fast --help

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    clip = load_clip(args.model, args.pretrained, device=device)
    load_s = time.perf_counter() - t0
    names = load_label_set("lss530").names
    templates = load_templates(args.templates).templates
    texts = render_prompts(names, templates) + [d for n in names for d in fake_descriptions(n, args.per_class)]
    n_prompts, n_total = len(names) * len(templates), len(texts)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}")
    print(f"model {args.model} ({clip.weights_id}) loaded in {load_s:.1f} s")
    print(f"texts: {len(names)} categories x {len(templates)} templates = {n_prompts} prompts "
          f"+ {n_total - n_prompts} descriptions = {n_total}")

    t0 = time.perf_counter()
    tokens, cut = tokenize_checked(clip, texts)  # as build-concepts does: these tokens are then encoded
    print(f"truncation check (tokenise at ctx and ctx + 1) of all {n_total} texts: {time.perf_counter() - t0:.2f} s, "
          f"{int(cut.sum())} truncated")

    # A subset interleaves prompts and descriptions in proportion, so it is a fair sample.
    if args.limit is None or args.limit >= n_total:
        subset, sub_tokens = texts, tokens
    else:
        step = max(1, n_total // args.limit)
        subset, sub_tokens = texts[::step][: args.limit], tokens[::step][: args.limit]
    encode_texts(clip, subset[: args.batch_size], args.batch_size)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    encode_texts(clip, subset, args.batch_size, tokens=sub_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    enc_s = time.perf_counter() - t0
    rate = len(subset) / enc_s
    print(f"encoded {len(subset)} texts in {enc_s:.2f} s: {rate:.1f} texts/s (batch {args.batch_size})")
    total = n_total / rate
    how = "measured" if len(subset) == n_total else f"extrapolated from {len(subset)} texts"
    print(f"RESULT: encoding {n_total} texts with {args.model} on {device}: {total:.1f} s ({total / 60:.1f} min, {how})")


if __name__ == "__main__":
    main()
