"""Time `lss build-concepts`' encoding: 530 categories x the default templates + N descriptions each.

Old and new in the same run, interleaved, `--repeats` times each, medians and the ratio printed:
*full* is open_clip's `encode_text` over the whole 77-token context for every text (what
build-concepts did before), *trimmed* is today's `encode_texts` (texts sorted by length, each
batch encoded only up to its longest text; exact for causal towers read at end-of-text). The
embeddings of both are compared (largest difference printed). Random-init weights are fine for
timing (same FLOPs).

With `--limit` about that many texts are encoded and the time extrapolated linearly to the full
set (the output says so): whole batches of those the full trimmed run makes, sorted by length,
spread over the length range (so a text costs what it costs in the full run), or a strided sample
for a tower that is not trimmed.

    python benchmarks/concepts_encode.py                       # ViT-B-16, everything
    python benchmarks/concepts_encode.py --limit 1024          # a subset, extrapolated
    python benchmarks/concepts_encode.py --model lss-tiny
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default="none", help="random init by default (timing only)")
    p.add_argument("--templates", default="action_templates_v1")
    p.add_argument("--per-class", type=int, default=10, help="descriptions per category")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=None, help="encode only this many texts and extrapolate")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (interleaved)")
    args = p.parse_args()

    # Imported after parse_args: torch and open_clip take ~4 s to import, `--help` 0.04 s without them.
    import torch  # noqa: PLC0415 -- a fast --help

    from lss_cli.concepts.encode import encode_texts, tokenize_checked  # noqa: PLC0415 -- a fast --help
    from lss_cli.concepts.templates import load_templates, render_prompts  # noqa: PLC0415 -- a fast --help
    from lss_cli.labels import load_label_set  # noqa: PLC0415 -- a fast --help
    from lss_cli.models.clip import load_clip, text_pool_positions, text_trim_refusal  # noqa: PLC0415 -- a fast --help
    from lss_cli.runtime.device import resolve_device  # noqa: PLC0415 -- a fast --help

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    clip = load_clip(args.model, args.pretrained, device=device)
    load_s = time.perf_counter() - t0
    names = load_label_set("lss530").names
    templates = load_templates(args.templates).templates
    texts = render_prompts(names, templates) + [d for n in names for d in fake_descriptions(n, args.per_class)]
    n_prompts, n_total = len(names) * len(templates), len(texts)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}{gpu}")
    print(f"model {args.model} ({clip.weights_id}) loaded in {load_s:.1f} s; "
          f"trimming: {text_trim_refusal(clip.model) or 'exact for this tower'}")
    print(f"texts: {len(names)} categories x {len(templates)} templates = {n_prompts} prompts "
          f"+ {n_total - n_prompts} descriptions = {n_total}")

    t0 = time.perf_counter()
    tokens, cut = tokenize_checked(clip, texts)  # as build-concepts does: these tokens are then encoded
    tok_s = time.perf_counter() - t0
    print(f"truncation check (tokenise at ctx and ctx + 1) of all {n_total} texts: {tok_s:.2f} s, "
          f"{int(cut.sum())} truncated")
    # The subset: with trimming, a sample of the very batches the full run makes (every k-th of the
    # length-sorted batches, whole), so its cost per text is the full run's; otherwise a strided
    # sample (prompts and descriptions in proportion). Either way the time extrapolates linearly.
    rows = torch.arange(n_total)
    if text_trim_refusal(clip.model) is None:
        lengths = text_pool_positions(clip.model, tokens) + 1
        print(f"tokens per text: mean {lengths.float().mean():.1f}, max {int(lengths.max())} "
              f"(prompts mean {lengths[:n_prompts].float().mean():.1f}, descriptions "
              f"{lengths[n_prompts:].float().mean():.1f}); context {tokens.shape[1]}")
        batches = torch.argsort(lengths, stable=True).split(args.batch_size)
        run_tokens = sum(int(lengths[b].max()) * len(b) for b in batches)
        print(f"positions run for all texts: full context {n_total * tokens.shape[1]}, trimmed batches "
              f"{run_tokens} ({n_total * tokens.shape[1] / run_tokens:.2f}x fewer)")
        if args.limit is not None and args.limit < n_total:
            k = max(1, round(args.limit / args.batch_size))
            picks = torch.linspace(0, len(batches) - 1, k + 2)[1:-1].round().long().unique()  # spread out
            rows = torch.cat([batches[i] for i in picks.tolist()])
    elif args.limit is not None and args.limit < n_total:
        rows = rows[:: max(1, n_total // args.limit)][: args.limit]
    subset, sub_tokens = [texts[i] for i in rows.tolist()], tokens[rows]

    def run(trim: bool) -> tuple[float, torch.Tensor]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        emb = encode_texts(clip, subset, args.batch_size, tokens=sub_tokens, trim=trim)  # copied to CPU: synced
        return time.perf_counter() - t0, emb

    for trim in (False, True):  # warm-up (allocator, kernels)
        encode_texts(clip, subset[: args.batch_size], args.batch_size, tokens=sub_tokens[: args.batch_size], trim=trim)
    times: dict[bool, list[float]] = {False: [], True: []}
    embeddings: dict[bool, torch.Tensor] = {}
    for r in range(args.repeats):
        for trim in ((False, True) if r % 2 == 0 else (True, False)):  # alternate which goes first
            seconds, embeddings[trim] = run(trim)
            times[trim].append(seconds)
    diff = (embeddings[False] - embeddings[True]).abs().max().item()
    how = "measured" if len(subset) == n_total else f"extrapolated from {len(subset)} texts"
    med = {trim: statistics.median(v) for trim, v in times.items()}
    for trim, label in ((False, "full context (before)"), (True, "trimmed, sorted (now)")):
        rate = len(subset) / med[trim]
        total = n_total / rate
        print(f"{label:24s} {len(subset)} texts: median {med[trim]:.2f} s of {args.repeats} "
              f"({', '.join(f'{t:.2f}' for t in times[trim])}), {rate:.1f} texts/s; all {n_total} texts: "
              f"{total:.1f} s ({how})")
    scale = n_total / len(subset)
    speedup = med[False] / med[True]
    whole = (tok_s + med[False] * scale) / (tok_s + med[True] * scale)
    print(f"largest difference between the two banks' rows: {diff:.2e}")
    print(f"RESULT: {args.model} on {device}: encoding {speedup:.2f}x faster trimmed; with the truncation "
          f"check (tokenising, {tok_s:.1f} s) {whole:.2f}x")


if __name__ == "__main__":
    main()
