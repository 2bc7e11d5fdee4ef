"""CLIP loading. This is the only module that imports open_clip.

`pretrained` may be an open_clip tag (`openai`, `laion2b_s34b_b88k`, ...), a local weights file
(`.safetensors`, `.bin`, `.pt`), a `local-dir:PATH` folder holding `open_clip_config.json` and
weights, `hf-hub:org/name[@rev]` (that repo's open_clip weights), or None for random
initialisation (seeded: the same seed gives the same weights). The model name may itself be
open_clip's `hf-hub:org/name[@rev]` (config and weights from the repo; `pretrained` ignored).

Weights are identified by content (`Clip.weights_id`, `weights_content_id`): the sha256 of the
loaded state dict, so a tag, a weights file (.safetensors or .bin), a compact file and a
local-dir: folder holding the same tensors get the same id, and a concept bank built with one is
accepted with another. How the weights were named (`Clip.weights_source`: the tag, a file's
sha256, `random-init(seed=S)`) is kept beside it as provenance; it was the id before.

The package ships a tiny model config, `lss-tiny` (configs/lss-tiny.json), registered with
open_clip on import, so every command can run on a CPU in seconds without downloads.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from safetensors import safe_open
from safetensors.torch import load_file

from lss_cli.errors import ConfigError, InputFileError, LssError
from lss_cli.hashing import file_sha256
from lss_cli.models.hub import is_hub_name, snapshot
from lss_cli.runtime.tensor_io import save_safetensors

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)

TINY_MODEL = "lss-tiny"
LOCAL_DIR = "local-dir:"
# Weights shipped with the package: (model, tag) -> file. `lss pretrain-tiny` made this one (its
# command line and report are in the file's metadata); see lss_cli/train/pretrain.py.
WEIGHTS_DIR = Path(__file__).parent / "weights"
BUILTIN_WEIGHTS = {(TINY_MODEL, "synthetic-world"): WEIGHTS_DIR / "lss-tiny-synthetic-world.safetensors"}
# What an open_clip Hub repo holds (open_clip's hf-hub: loader reads these names, safetensors first).
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HUB_FILES = ["open_clip_config.json", *HUB_WEIGHTS]
# Compact weights files store only the token-embedding rows a small model knows, plus their ids.
VOCAB_KEY = "token_embedding.weight"
ROWS_KEY = "token_embedding.rows"


@dataclass
class Clip:
    """A loaded CLIP model with what the rest of the code needs to use it correctly."""

    model: Any  # open_clip.CLIP (or CustomTextCLIP); eval mode
    tokenizer: Any  # callable: list[str] -> LongTensor [N, context_length]
    name: str  # open_clip model name as given
    pretrained: str | None  # as given
    weights_id: str  # identity: "weights-sha256:<hex>" of the loaded tensors (`weights_content_id`)
    weights_source: str  # provenance: the tag, "sha256:<hex>" of a weights file, or "random-init(seed=S)"
    mean: tuple[float, float, float]  # image normalisation
    std: tuple[float, float, float]
    image_size: int  # the tower's native input resolution
    context_length: int  # text tokens

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)


def _resolve(name: str, pretrained: str | None) -> tuple[str, str | None, str]:
    """(open_clip model name, open_clip pretrained arg, weights source). Checks everything checkable."""
    if is_hub_name(name):
        # open_clip's `hf-hub:org/name` models (config + weights in one repo; `pretrained` is then
        # ignored, as open_clip does). Fetched through models/hub.py (the Hub cache, HF_HUB_OFFLINE,
        # @revision, errors naming the repo), then loaded as the local folder it is.
        folder, source = snapshot(name, allow_patterns=HUB_FILES)
        _hub_weights(folder, name)
        if not (folder / "open_clip_config.json").is_file():
            raise InputFileError(f"{name} has no open_clip_config.json", hint="an open_clip Hub model needs one")
        return f"{LOCAL_DIR}{folder}", None, source
    if pretrained and pretrained.startswith(LOCAL_DIR):
        folder = Path(pretrained[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ConfigError(f"--pretrained {pretrained}: {folder}/open_clip_config.json not found",
                              hint="a local-dir: folder needs open_clip_config.json and a weights file")
        weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        digest = hashlib.sha256("".join(file_sha256(p) for p in weights).encode()).hexdigest()
        return f"{LOCAL_DIR}{folder}", None, f"local-dir-sha256:{digest}"
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise ConfigError(f"unknown open_clip model {name!r}",
                          hint=(f"did you mean {', '.join(close)}? " if close else "")
                          + f"open_clip.list_models() lists them; {TINY_MODEL!r} is the tiny CPU model")
    if pretrained is None or pretrained.lower() in ("none", "random"):
        return name, None, "random-init"
    if is_hub_name(pretrained):  # the weights file of an open_clip Hub repo, into the `name` architecture
        folder, source = snapshot(pretrained, allow_patterns=HUB_FILES)
        return name, str(_hub_weights(folder, pretrained)), source
    if (name, pretrained) in BUILTIN_WEIGHTS:
        return name, str(BUILTIN_WEIGHTS[name, pretrained]), f"{pretrained}:sha256:{file_sha256(BUILTIN_WEIGHTS[name, pretrained])}"
    path = Path(pretrained).expanduser()
    if path.suffix in (".safetensors", ".bin", ".pt", ".pth") or os.sep in pretrained:
        if not path.is_file():
            raise ConfigError(f"weights file not found: {path}", hint="check --pretrained")
        try:
            return name, str(path), f"sha256:{file_sha256(path)}"
        except OSError as e:
            raise InputFileError(f"cannot read the weights file {path}: {e.strerror or e}",
                                 hint="check --pretrained and the file's permissions") from None
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ConfigError(f"{name!r} has no pretrained tag {pretrained!r}",
                          hint=f"known tags: {', '.join(tags) or 'none'}; or pass a local weights file")
    return name, pretrained, pretrained


def _hub_weights(folder: Path, name: str) -> Path:
    """The weights file of an open_clip Hub repo's snapshot (open_clip's own preference order)."""
    for file in HUB_WEIGHTS:
        if (folder / file).is_file():
            return folder / file
    raise InputFileError(f"{name} has no open_clip weights ({' or '.join(HUB_WEIGHTS)})",
                         hint="is it an open_clip model repo? an lss video model is loaded with --checkpoint")


@contextmanager
def _quiet_logging():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_clip(name: str = "ViT-B-16", pretrained: str | None = "openai", device: str | torch.device = "cpu",
              precision: str = "fp32", seed: int = 0, image_size: int | None = None) -> Clip:
    """Load an open_clip model for inference (eval mode), with its tokenizer and preprocessing stats.

    `image_size` overrides the tower's input resolution (open_clip's `force_image_size`; pretrained
    position embeddings are then resized by open_clip).
    """
    oc_name, oc_pretrained, source = _resolve(name, pretrained)
    if source == "random-init":
        torch.manual_seed(seed)  # random init is reproducible per seed
        source = f"random-init(seed={seed})"
    try:
        compact = oc_pretrained is not None and _is_compact(oc_pretrained)
        with _quiet_logging():  # open_clip/huggingface_hub log every retry; our error says it once
            model = open_clip.create_model(oc_name, pretrained=None if compact else oc_pretrained,
                                           precision=precision, device=device, force_image_size=image_size)
        if compact:
            _load_compact(model, oc_pretrained)
    except Exception as e:
        source = _local_weights(oc_name, oc_pretrained)  # the user's file: a failure to read it is about the file
        if source is not None and not isinstance(e, torch.cuda.OutOfMemoryError):
            raise _weights_file_error(source, name, e) from None
        if not isinstance(e, RuntimeError):
            raise
        if "download" in str(e).lower() or "hub" in str(e).lower():
            raise LssError(
                f"could not fetch the {name} / {pretrained} weights: {e}",
                hint="offline? download the open_clip weights on a connected machine and pass the file: "
                "--pretrained /path/to/open_clip_model.safetensors (or local-dir:/path/to/folder)",
            ) from None
        raise LssError(f"could not load {name} with weights {pretrained!r}: {e}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(oc_name)
    pp = model.visual.preprocess_cfg
    size = pp.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Clip(
        model=model, tokenizer=tokenizer, name=name, pretrained=pretrained, weights_id=weights_content_id(model),
        weights_source=source,
        mean=tuple(pp["mean"]), std=tuple(pp["std"]), image_size=int(size),
        context_length=int(getattr(model, "context_length", 77)),
    )


CONTENT_ID = "weights-sha256:"


def weights_content_id(model: torch.nn.Module) -> str:
    """`weights-sha256:<hex>`: the sha256 of the state dict's names, shapes and values, in sorted
    name order, floating-point values as float32 bytes. Equal for equal weights however they were
    stored or named. Computed once per load: ViT-B-16 (150M parameters, 600 MB) takes ~0.4 s on
    one CPU core with SHA extensions."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        value = value.detach().to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
        array = value.contiguous().reshape(-1).numpy()
        digest.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(array)
    return CONTENT_ID + digest.hexdigest()


def _local_weights(oc_name: str, oc_pretrained: str | None) -> Path | None:
    """The local weights file or local-dir: folder being loaded; None for a tag (a download).

    Whatever reading such a file raises in the one code path real weights take is about the file:
    torch.load's unpickler meets arbitrary bytes with UnpicklingError, EOFError, IndexError and
    more; a broken zip or safetensors header, or a state dict of another model (RuntimeError from
    load_state_dict), too."""
    if oc_name.startswith(LOCAL_DIR):
        return Path(oc_name[len(LOCAL_DIR):])
    if oc_pretrained is not None and Path(oc_pretrained).is_file():
        return Path(oc_pretrained)
    return None


def _weights_file_error(source: Path, name: str, e: BaseException) -> InputFileError:
    reason = _short_reason(e)
    if isinstance(e, RuntimeError) and "state_dict" in str(e):
        return InputFileError(f"{source} does not hold {name} weights ({reason})",
                              hint=f"pass weights of {name}, or the --model these weights are for")
    return InputFileError(f"{source} is not a readable weights file ({type(e).__name__}: {reason})",
                          hint=f"pass the open_clip weights of {name}: a .safetensors file, a state-dict .pt/.bin "
                               "(torch.save(model.state_dict(), ...)) or a local-dir: folder; re-download a damaged file")


def _short_reason(e: BaseException) -> str:
    """One line on why a weights file failed to load. torch.load's refusal of a pickle is a page
    about `weights_only`; its cause is the line after "WeightsUnpickler error:"."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        cause = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0] if "WeightsUnpickler error:" in text else ""
        text = "not a torch state dict" + (f": {cause}" if cause else "")
    elif isinstance(e, EOFError):
        text = "the file ends early"
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _is_compact(path: str) -> bool:
    """A safetensors file written by `save_compact` (only the known token rows)."""
    if not path.endswith(".safetensors"):
        return False
    with safe_open(path, framework="pt") as f:
        return ROWS_KEY in f.keys()


def _load_compact(model: torch.nn.Module, path: str) -> None:
    state = expand_state(load_file(path), vocab_size=model.token_embedding.weight.shape[0])
    model.load_state_dict(state)


def compact_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with only the non-zero rows of the token embedding, and their ids."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    table = state.pop(VOCAB_KEY)  # [V, D]
    rows = torch.nonzero(table.abs().sum(1) > 0).flatten()  # [R]
    state[VOCAB_KEY] = table[rows].contiguous()  # [R, D]
    state[ROWS_KEY] = rows
    return state


def expand_state(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Inverse of `compact_state`: a full open_clip state dict (zero rows for unknown tokens)."""
    state = dict(state)
    rows, stored = state.pop(ROWS_KEY), state.pop(VOCAB_KEY)
    table = torch.zeros(vocab_size, stored.shape[1], dtype=stored.dtype)
    table[rows] = stored
    state[VOCAB_KEY] = table
    return state


def save_compact(model: torch.nn.Module, path: str | Path, metadata: dict[str, str]) -> None:
    """Write a model whose unknown token rows are zero as a compact safetensors file (atomically)."""
    save_safetensors(path, compact_state(model), metadata=metadata)


def clip_loss() -> torch.nn.Module:
    """open_clip's contrastive loss (symmetric InfoNCE over a batch of image-text pairs), one process."""
    return open_clip.ClipLoss()


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Write a CLIP state dict as safetensors (the format `load_clip(pretrained=path)` reads)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_safetensors(path, state)


def check_model(name: str, pretrained: str | None) -> str:
    """Check that `name` / `pretrained` can be loaded, without building the model (for dry runs).

    Returns the weights source `load_clip` will record (its `weights_id` needs the weights loaded);
    for random init it lacks the `(seed=S)` suffix. A local weights file is hashed (cached by size
    and mtime), not loaded.
    """
    return _resolve(name, pretrained)[2]

def clip_token_counts(texts: list[str]) -> list[int]:
    """Tokens each text takes in CLIP's text context (OpenAI BPE, start/end tokens included).

    CLIP reads 77 tokens and silently drops the rest. It is the tokenizer of ViT-B-16 and most
    open_clip models. `lss describe` counts with `lss_cli.describe.bpe` instead, the same tokens
    without importing torch; this is the reference its tests compare with.
    """
    tokenizer = _bpe_tokenizer()
    return [len(tokenizer.encode(t)) + 2 for t in texts]


@lru_cache(maxsize=1)
def _bpe_tokenizer():
    return SimpleTokenizer()


# The text tower over a trimmed context. open_clip's `encode_text` runs every text through the
# whole context (77 positions), padding included. Under a causal attention mask a position sees
# only itself and the positions before it, and the embedding is read at the end-of-text position,
# so nothing after that position can change it: a batch run only up to its last end-of-text token
# gives the same embeddings (to float rounding) at a fraction of the cost. Whether a tower is such
# a tower is checked, not assumed: others (no causal mask, pooling at the first/last position or a
# class token, Hugging Face towers) read the whole context as before.


@dataclass(frozen=True)
class _TextTower:
    """The parts of open_clip's text forward, wherever the model keeps them."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor  # [ctx, width]
    transformer: torch.nn.Module  # open_clip.transformer.Transformer
    attn_mask: torch.Tensor | None  # additive [ctx, ctx]
    ln_final: torch.nn.Module
    text_projection: torch.nn.Module | torch.Tensor | None
    pool_type: str  # "argmax" (the highest token id: end-of-text in CLIP's BPE), "eos", "first", ...
    eos_id: int | None


def _text_tower(model: Any) -> _TextTower | str:
    """The text tower's parts, or why its context cannot be trimmed exactly."""
    if type(model).encode_text is open_clip.CLIP.encode_text:  # the text tower's parts sit on the model
        tower, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif type(model).encode_text is open_clip.CustomTextCLIP.encode_text:  # they sit on model.text
        tower = model.text
        if type(tower).forward is not open_clip.transformer.TextTransformer.forward:
            return f"its text tower is a {type(tower).__name__}, not open_clip's TextTransformer"
        if getattr(tower, "cls_emb", None) is not None:
            return "its text tower appends a class token and reads the embedding there"
        if getattr(tower, "use_pad_mask", False):
            return "its text tower masks padding (a bidirectional tower)"
        pool_type, eos_id = tower.pool_type, getattr(tower, "eos_id", None)
    else:
        return f"{type(model).__name__} is not open_clip's CLIP or CustomTextCLIP"
    if pool_type not in ("argmax", "eos"):
        return f"it reads the text embedding at {pool_type!r}, not at the end-of-text token"
    if not hasattr(tower.transformer, "batch_first"):  # older open_clip: encode_text permuted to [L, B, D]
        return "this open_clip version's text transformer is not the one this forward is written for"
    mask, n = tower.attn_mask, tower.positional_embedding.shape[0]
    if mask is None:
        return "its text transformer attends both ways (no causal mask)"
    causal = torch.full((n, n), float("-inf")).triu(1)
    if tuple(mask.shape) != (n, n) or not torch.equal(mask.detach().float().cpu(), causal):
        return "its attention mask is not the causal mask"
    return _TextTower(tower.token_embedding, tower.positional_embedding, tower.transformer, mask, tower.ln_final,
                      tower.text_projection, pool_type, eos_id)


def text_trim_refusal(model: Any) -> str | None:
    """None when `encode_text_trimmed` is exact for `model` (a causal text transformer read at the
    end-of-text token); otherwise why not, and texts must be encoded over the whole context."""
    tower = _text_tower(model)
    return tower if isinstance(tower, str) else None


def _pool_positions(tower: _TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """`[N]` int64: the position each row's embedding is read at, as open_clip's pooling finds it."""
    if tower.pool_type == "eos":
        return (tokens == tower.eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)  # argmax: the first highest token id (end-of-text)


def text_pool_positions(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """`[N]` int64: where each text's embedding is read (its end-of-text token), for a tower
    `text_trim_refusal` accepts; a batch costs as much as its largest position."""
    tower = _text_tower(model)
    if isinstance(tower, str):
        raise ValueError(f"the text context of {type(model).__name__} cannot be trimmed: {tower}")
    return _pool_positions(tower, tokens)


def encode_text_trimmed(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` (`[B, D]`, not normalised), computed over the first L positions
    only, L = the batch's last end-of-text position + 1. Raises ValueError for a tower where this
    is not exact (`text_trim_refusal`)."""
    tower = _text_tower(model)
    if isinstance(tower, str):
        raise ValueError(f"the text context of {type(model).__name__} cannot be trimmed: {tower}")
    pos = _pool_positions(tower, tokens)  # [B]
    length = int(pos.max()) + 1 if len(pos) else 1
    cast = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens[:, :length]).to(cast)  # [B, L, width]
    x = x + tower.positional_embedding[:length].to(cast)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pos]  # [B, width]
    if isinstance(tower.text_projection, torch.nn.Linear):
        return tower.text_projection(x)
    return x if tower.text_projection is None else x @ tower.text_projection
