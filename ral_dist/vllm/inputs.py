"""Our adapters' prompt encoding as vLLM prompt dicts, and the check that vLLM ran exactly our tokens.

vLLM's multimodal processor expands one placeholder token per image itself, so it is given our token ids with
each visual block collapsed back to that placeholder, plus the pixels in ``multi_modal_data``. After generation
the ids vLLM actually ran (``RequestOutput.prompt_token_ids``) must equal our adapter's encoding exactly;
anything else fails loudly. No vllm import here: the main environment tests this module.
"""

from __future__ import annotations

import numpy as np

from ral_dist.models import VisualPrompt


def collapse_idefics3(ids: list[int], fake: int, glob: int, image: int) -> list[int]:
    """``<fake><global-img><image>×k<fake>`` → ``<image>`` (what Idefics3's prompt update expands again)."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] == fake and i + 1 < len(ids) and ids[i + 1] == glob:
            j = i + 2
            while j < len(ids) and ids[j] == image:
                j += 1
            if j >= len(ids) or ids[j] != fake or j == i + 2:
                raise ValueError(f"malformed Idefics3 image block at token {i}")
            out.append(image)
            i = j + 1
        else:
            out.append(ids[i])
            i += 1
    return out


def collapse_runs(ids: list[int], placeholders: set[int]) -> list[int]:
    """Each run of one placeholder token → a single one (Qwen-VL's ``<|image_pad|>``/``<|video_pad|>``)."""
    return [t for k, t in enumerate(ids) if not (t in placeholders and k > 0 and ids[k - 1] == t)]


def collapse_visual_blocks(family: str, processor, ids: list[int]) -> list[int]:
    tok = processor.tokenizer
    if family == "idefics3":
        return collapse_idefics3(ids, *tok.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>", "<image>"]))
    # Qwen-VL (GPU machines only: its vLLM processor needs torchvision); the exact-token check guards it.
    return collapse_runs(ids, set(tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>"])))


def multi_modal_data(family: str, prompt: VisualPrompt) -> dict:
    frames = [f.convert("RGB") for f in prompt.frames]
    if family == "idefics3":  # our Idefics3 encoding passes video frames as images
        return {"image": frames}
    if prompt.kind == "video":
        return {"video": np.stack([np.asarray(f) for f in frames])}
    return {"image": frames[0]}


def vllm_prompt(family: str, processor, prompt: VisualPrompt, ids: list[int]) -> dict:
    """The vLLM prompt dict for one prompt whose unpadded ids (our adapter's encoding) are ``ids``."""
    return {"prompt_token_ids": collapse_visual_blocks(family, processor, ids),
            "multi_modal_data": multi_modal_data(family, prompt)}


def check_prompt_tokens(expected: list[int], got: list[int], what: str) -> None:
    """vLLM must run our adapter's exact tokens: p_old and the learner's positions index them."""
    if list(expected) == list(got):
        return
    first = next((k for k, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
                 min(len(expected), len(got)))
    raise RuntimeError(f"{what}: vLLM's prompt tokens differ from the adapter's encoding at position {first} "
                       f"(lengths {len(got)} vs {len(expected)}; vLLM {list(got[first:first + 8])} vs ours "
                       f"{list(expected[first:first + 8])})")
