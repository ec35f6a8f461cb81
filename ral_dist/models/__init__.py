"""VLM family adapters: one interface (`VLMAdapter`), one implementation per family."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ral_dist.models.base import PromptBatch, VisualPrompt, VLMAdapter, append_response
from ral_dist.models.idefics3 import Idefics3Adapter
from ral_dist.models.qwen_vl import QwenVLAdapter

ADAPTERS = {
    "qwen2_5_vl": lambda: QwenVLAdapter("2.5"),
    "qwen2_vl": lambda: QwenVLAdapter("2"),
    "idefics3": Idefics3Adapter,
}


def get_adapter(family: str) -> VLMAdapter:
    """The adapter of a family name (``qwen2_5_vl``, ``qwen2_vl``, ``idefics3``)."""
    if family not in ADAPTERS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[family]()


def adapter_for_checkpoint(path: str | Path) -> VLMAdapter:
    """The adapter of a saved checkpoint, from the ``model_type`` in its ``config.json``."""
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint (no config.json)")
    return get_adapter(json.loads(config_file.read_text())["model_type"])


def tiny_architecture(family: str, tiny: dict | None = None) -> dict:
    """The full config (JSON-able) of the tiny random model that ``build_policy(family, None, tiny)`` builds."""
    adapter = get_adapter(family)
    config = adapter.tiny_config(adapter.build_processor(), **copy.deepcopy(tiny or {}))
    return json.loads(config.to_json_string(use_diff=False))


__all__ = ["ADAPTERS", "PromptBatch", "VLMAdapter", "VisualPrompt", "adapter_for_checkpoint", "append_response",
           "build_policy", "enable_gradient_checkpointing", "freeze_vision_tower", "get_adapter", "tiny_architecture"]


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer in the backward instead of keeping its activations (non-reentrant)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # the newer name; older 5.x only has the alias
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # it makes every input embedding's output require grad, the vision tower's patches too: a frozen tower would then
    # save its blocks' inputs and run its backward; non-reentrant checkpoints need none of those hooks
    model.disable_input_require_grads()


def freeze_vision_tower(model) -> None:
    """No gradients for the vision tower (Qwen-VL's ``visual``, Idefics3's ``vision_model``), as the paper trains."""
    for name, p in model.named_parameters():
        if "visual" in name or "vision_model" in name:
            p.requires_grad_(False)


def build_policy(family: str, checkpoint: str | None, tiny: dict | None = None, seed: int = 0,
                 dtype=None):
    """(adapter, model, processor): a checkpoint when given, else a tiny random model of ``family``."""
    import torch

    if checkpoint:
        adapter = adapter_for_checkpoint(checkpoint)
        model, processor = adapter.load(checkpoint, dtype=dtype or torch.float32)
    else:
        adapter = get_adapter(family)
        model, processor = adapter.build_tiny(seed=seed, **(tiny or {}))
        if dtype is not None:
            model.to(dtype)
    return adapter, model, processor
