"""A model's sizes and the bytes one forward of it holds: the arithmetic under the memory planner (`memory_plan`).

`Architecture` is read from a ``config.json`` (a checkpoint's, a fixture's, or a tiny model's) and counts its
parameters by building the model on the meta device (no memory, exact, tied weights counted once). The byte
formulas follow what autograd saves for the backward in transformers' Qwen2 / Llama decoder layers with SDPA,
read from the modules and checked against measured peaks (bench/memory_plan_check.py):

per decoder layer, N tokens in B padded sequences of T, s bytes per element of the compute dtype::

    2 RMSNorms      2 * N*h*(4 + 2s)       fp32 upcast of the input, the normed input, the scaled output
    attention       N*d*s*(2*nh + 2*kv)    post-RoPE q, k and v as SDPA gets them, SDPA's output
                    + 4*N*nh               SDPA's log-sum-exp
                    + B*T^2*s              padded batches only: SDPA's additive mask (the boolean padding
                                           mask converted to the dtype, one per layer); kv = nh there (the
                                           mask makes transformers repeat the KV heads), kv = nkv unpadded
    gated MLP       4*N*i*s                gate, up, SiLU(gate), their product

With gradient checkpointing a layer keeps only its input (N*h*s) and holds the above during its own backward.
`activation_peak` adds the rest of a learner micro-batch as the learner runs it (`forward_responses` and
`ral_loss`; bench/memory_plan_check.py measures it) (planned within 5 % of the measured peak there, fp32 and bf16, 1-8 sequences):
no KV cache (``use_cache=False``), log-probs of the response positions only through lm_head in checkpointed
chunks of LOGPROB_CHUNK_POSITIONS, the attention rows computed from the last layer's q and k outside the layer in
checkpointed chunks of CAPTURE_CHUNK_ROWS rows, and a frozen vision tower that saves nothing (transformers'
``activation_checkpointing_enable`` makes it save and run its backward unless ``disable_input_require_grads``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ral_dist.models.capture import CAPTURE_CHUNK_ROWS  # query rows of the attention capture per chunk
from ral_dist.models.generation import (
    LOGPROB_CHUNK as LOGPROB_CHUNK_POSITIONS,  # response log-probs per chunk
)

# [B, R, T] fp32 row tensors the RAL attention term holds for the backward: the captured rows, p_old and the five
# tensors JSD saves (clamped p, m, log m, log p - log m, the clamp inputs).
ATTN_ROW_COPIES = 7
FP32 = 4


@dataclass(frozen=True)
class TextDims:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int


@dataclass(frozen=True)
class VisionDims:
    depth: int
    hidden: int
    intermediate: int
    heads: int
    patch: int
    merge: int  # visual tokens are (merge x merge) patches: Qwen's spatial merge, Idefics3's pixel-shuffle scale
    temporal_patch: int  # frames per patch (Qwen: 2; Idefics3 encodes frames one by one: 1)
    gated_mlp: bool  # Qwen2.5-VL's SwiGLU blocks; Qwen2-VL / SigLIP blocks have fc1 -> GELU -> fc2
    image_size: int | None  # Idefics3: every image becomes one square tile of this side; Qwen: dynamic


@dataclass(frozen=True)
class ParamCounts:
    total: int
    vision: int
    lm_head: int  # 0 when tied to the input embeddings
    largest: int  # the largest single tensor (its gradient is materialised once, as a temporary, in the backward)

    def trainable(self, freeze_vision: bool) -> int:
        return self.total - (self.vision if freeze_vision else 0)


@dataclass(frozen=True)
class Architecture:
    family: str  # model_type: qwen2_5_vl, qwen2_vl, idefics3
    text: TextDims
    vision: VisionDims
    params: ParamCounts
    source: str  # where the config came from

    def to_dict(self) -> dict:
        return asdict(self)

    def visual_tokens(self, pixels: int, frames: int = 1) -> int:
        """Visual tokens of ``frames`` frames of ``pixels`` pixels each (at most; after the processor's resize)."""
        v = self.vision
        if v.image_size is not None:  # one tile per frame, whatever its size
            per_frame = (v.image_size // v.patch) ** 2 // v.merge**2
            return frames * per_frame
        token_px = (v.patch * v.merge) ** 2
        return -(-frames // v.temporal_patch) * max(1, pixels // token_px)

    def kv_bytes_per_token(self, dtype_bytes: int, tensor_parallel: int = 1) -> int:
        """KV cache of one token on one GPU: K and V of every layer, the KV heads split over the TP ranks."""
        t = self.text
        heads = max(1, t.kv_heads // tensor_parallel)
        return 2 * t.layers * heads * t.head_dim * dtype_bytes


def load_config_json(path: str | Path) -> dict:
    """A config.json file, or the config.json of a checkpoint directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    return json.loads(path.read_text())


def _build_meta(config: dict):
    """(config object, model) with every tensor on the meta device: counts without memory."""
    import torch
    from transformers import CONFIG_MAPPING

    from ral_dist.models import freeze_vision_tower, get_adapter

    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    config_obj = CONFIG_MAPPING[fields["model_type"]](**fields)
    with torch.device("meta"):
        model = get_adapter(fields["model_type"]).model_class()(config_obj)
    freeze_vision_tower(model)  # marks the vision tower the same way the learner does: what "vision" counts
    return config_obj, model


def architecture(config: dict, source: str = "config") -> Architecture:
    """The `Architecture` of a model config (the dict of a ``config.json``)."""
    cfg, model = _build_meta(config)
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    vision = sum(p.numel() for _, p in params if not p.requires_grad)
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    counts = ParamCounts(total, vision, 0 if tied else head.weight.numel(), max(p.numel() for _, p in params))
    tc, vc = cfg.text_config, cfg.vision_config
    heads = tc.num_attention_heads
    text = TextDims(tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, heads,
                    getattr(tc, "num_key_value_heads", None) or heads,
                    getattr(tc, "head_dim", None) or tc.hidden_size // heads, tc.vocab_size,
                    getattr(tc, "max_position_embeddings", 0) or 0)
    if cfg.model_type == "idefics3":
        vision_dims = VisionDims(vc.num_hidden_layers, vc.hidden_size, vc.intermediate_size,
                                 vc.num_attention_heads, vc.patch_size, cfg.scale_factor, 1, False, vc.image_size)
    elif cfg.model_type == "qwen2_vl":  # its vision config names the width embed_dim
        vision_dims = VisionDims(vc.depth, vc.embed_dim, int(vc.embed_dim * vc.mlp_ratio), vc.num_heads,
                                 vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size, False, None)
    else:
        vision_dims = VisionDims(vc.depth, vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.patch_size,
                                 vc.spatial_merge_size, vc.temporal_patch_size, True, None)
    return Architecture(cfg.model_type, text, vision_dims, counts, source)


# ---------------------------------------------------------------------------------------------- byte formulas


def layer_saved_bytes(t: TextDims, n_seqs: int, seq_len: int, s: int) -> int:
    """What one decoder layer saves for its backward (module docstring)."""
    n = n_seqs * seq_len
    padded = n_seqs > 1
    kv = t.heads if padded else t.kv_heads
    norms = 2 * n * t.hidden * (FP32 + 2 * s)
    attention = n * t.head_dim * s * (2 * t.heads + 2 * kv) + FP32 * n * t.heads
    mask = n_seqs * seq_len**2 * s if padded else 0
    return norms + attention + mask + 4 * n * t.intermediate * s


def layer_backward_transient(t: TextDims, n_tokens: int, s: int) -> int:
    """Gradients alive at once inside one layer's backward: the MLP's (d down-input, d up, d gate), the hidden
    state's, and the largest weight gradient as it is made before it is added into .grad."""
    return 3 * n_tokens * t.intermediate * s + 2 * n_tokens * t.hidden * s + t.hidden * t.intermediate * s


def vision_block_saved_bytes(v: VisionDims, n_patches: int, s: int) -> int:
    """One vision block: 2 RMSNorms (as the LM's), fused qkv output (v is a view of it), post-RoPE q and k,
    SDPA's output and the output projection's input, and the MLP (4 tensors gated, 2 with fc1 -> GELU)."""
    per_patch = 2 * v.hidden * (FP32 + 2 * s) + v.hidden * s * (3 + 2 + 2) + FP32 * v.heads
    mlp = (4 if v.gated_mlp else 2) * v.intermediate * s
    return n_patches * (per_patch + mlp)


def merger_saved_bytes(v: VisionDims, n_patches: int, s: int) -> int:
    """The patch merger (RMSNorm, Linear -> GELU -> Linear on merge^2 * hidden features per token)."""
    return n_patches * v.hidden * (FP32 + 2 * s) + 2 * n_patches * v.hidden * s


def logprob_chunk_transient(t: TextDims, positions: int, chunk: int, s: int) -> int:
    """A chunk of response log-probs in its backward: the recomputed fp32 log-softmax output with its gradient and
    its input's gradient; then the logits' gradient in the model dtype beside lm_head's weight gradient. With more
    than one chunk the autograd engine holds the weight gradient of the chunks done until the last one is."""
    c = min(chunk, positions)
    weight_grad = t.vocab * t.hidden * s
    held = weight_grad if positions > chunk else 0
    return held + max(3 * c * t.vocab * FP32, c * t.vocab * s + weight_grad)


def capture_chunk_transient(t: TextDims, n_seqs: int, seq_len: int, rows: int) -> int:
    """One chunk of capture rows recomputed in the backward: head-level fp32 q . K^T scores, their softmax and its
    gradient."""
    return 3 * n_seqs * t.heads * min(rows, CAPTURE_CHUNK_ROWS) * seq_len * FP32


def inference_peak_bytes(t: TextDims, n_seqs: int, seq_len: int, s: int) -> int:
    """A no-grad forward (reference, old-policy recompute, replica, teacher): one layer's tensors at a time, the
    residual stream, the normed input, q/k/v and the MLP's gate, up and product."""
    n = n_seqs * seq_len
    padded = n_seqs > 1
    kv = t.heads if padded else t.kv_heads
    mask = n_seqs * seq_len**2 * s if padded else 0
    return n * s * (3 * t.hidden + t.head_dim * (2 * t.heads + 2 * kv) + 3 * t.intermediate) + mask


@dataclass(frozen=True)
class ForwardShape:
    """One learner micro-batch: ``n_seqs`` sequences padded to ``seq_len`` (prompt + response), ``response_len``
    response positions each (log-probs and attention rows), ``patches_per_seq`` vision patches each."""

    n_seqs: int
    seq_len: int
    response_len: int
    patches_per_seq: int

    @property
    def n_tokens(self) -> int:
        return self.n_seqs * self.seq_len


@dataclass(frozen=True)
class ActivationPeak:
    """Bytes above weights, gradients and optimizer states at the peak of one micro-batch's forward + backward.

    The peak is the largest of three moments: the start of the backward (all the forward saved, plus the first
    log-prob chunk's or capture chunk's recompute and gradients); the last decoder layer's backward (the head
    and the attention rows freed; with checkpointing, that layer's tensors recomputed; its MLP's gradients); and,
    with a frozen vision tower, its forward (it saves nothing, so it peaks alone before the LM runs)."""

    inputs: int  # the micro-batch's pixels (fp32, as the processor makes them) and p_old rows
    layers: int  # decoder layers' saved tensors (checkpointing: their inputs)
    vision: int  # a trained vision tower's saved tensors
    head: int  # input embeddings, final norm, final hidden states, the response positions' hidden states
    capture: int  # the last layer's q and k kept for the capture, the [B, R, T] rows the RAL term saves
    head_backward: int  # the larger of a log-prob chunk's and a capture chunk's recompute + gradients
    layer_backward: int  # the last layer's MLP gradients (checkpointing: + its recomputed tensors)
    vision_forward: int  # a frozen vision tower's largest block, in the forward
    peak: int


def activation_peak(arch: Architecture, shape: ForwardShape, s: int, checkpointing: bool, train_vision: bool,
                    chunk: int = LOGPROB_CHUNK_POSITIONS) -> ActivationPeak:
    """The activation peak of one learner micro-batch (`ActivationPeak`)."""
    t, v = arch.text, arch.vision
    n, b = shape.n_tokens, shape.n_seqs
    rows = b * shape.response_len * shape.seq_len * FP32  # one [B, R, T] fp32 tensor of attention rows
    patches = b * shape.patches_per_seq
    pixels = patches * 3 * v.temporal_patch * v.patch**2
    inputs = pixels * FP32 + rows
    one_layer = layer_saved_bytes(t, b, shape.seq_len, s)
    layers = t.layers * (n * t.hidden * s if checkpointing else one_layer)
    if checkpointing and b > 1:
        layers += b * shape.seq_len**2  # the boolean padding mask every checkpoint keeps as an input
    block = vision_block_saved_bytes(v, patches, s)
    pixel_cast = pixels * s if s != FP32 else 0  # the patch embedding's input in the model dtype
    vision = 0  # a frozen tower saves nothing
    if train_vision:
        saved_blocks = v.depth * (patches * v.hidden * s if checkpointing else block)
        vision = pixel_cast + saved_blocks + merger_saved_bytes(v, patches, s)
    positions = b * shape.response_len
    embeddings = n * t.hidden * s
    # the final norm's fp32 input and normed output, the final hidden states, the response positions' copy
    head = embeddings + n * t.hidden * (FP32 + s) + n * t.hidden * s + positions * t.hidden * s
    qk = n * t.head_dim * (t.heads + t.kv_heads) * s
    capture = qk + (ATTN_ROW_COPIES - 1) * rows
    head_backward = max(logprob_chunk_transient(t, positions, chunk, s),
                        capture_chunk_transient(t, b, shape.seq_len, shape.response_len))
    layer_backward = 2 * n * t.intermediate * s + (one_layer if checkpointing else 0)
    start = inputs + layers + vision + head + capture + head_backward
    # left at the last layer's backward: the layers, the vision tower, the embeddings, the final hidden states
    # and their gradient, the gradients of the captured q and k, the rotary cos / sin every layer reads
    last_layer = inputs + layers + vision + embeddings + 2 * n * t.hidden * s + qk + 2 * n * t.head_dim * s
    vision_forward = 0 if train_vision else pixel_cast + block
    peak = max(start, last_layer + layer_backward, inputs + vision_forward)
    return ActivationPeak(inputs, layers, vision, head, capture, head_backward, layer_backward, vision_forward, peak)
