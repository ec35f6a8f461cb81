"""Idefics3 / SmolVLM (Llama-style text model, SigLIP vision tower, pixel-shuffle connector).

The official `Idefics3Processor` works here with its PIL image processor (no torchvision needed). Image
splitting is off: each image (or video frame) is resized to one square tile and becomes
``<fake_token_around_image><global-img><image>×image_seq_len<fake_token_around_image>``; after the pixel
shuffle its visual tokens form a row-major (rows, cols) grid of the tile. Video frames are passed as images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from ral_dist.models.base import PromptBatch, VisualPrompt, VLMAdapter
from ral_dist.models.processing import left_pad, tokenize_with_question
from ral_dist.models.tokenizer import build_tokenizer

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>",
]
CHATML_END = "<|im_end|>"
# SmolVLM's template, with the system turn optional.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}<image>{% endif %}{% endfor %}{% endif %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


class Idefics3Adapter(VLMAdapter):
    family = "idefics3"
    visual_special_tokens = ("<image>", "<fake_token_around_image>", "<global-img>")

    def model_class(self):
        return Idefics3ForConditionalGeneration

    def build_processor(self, tile: int = 112, patch_size: int = 14, scale_factor: int = 2,
                        tokenizer=None) -> Idefics3Processor:
        """``tokenizer``: a given one (the small real model's, `ral_dist.models.small_real`), else the tiny one."""
        tok = tokenizer or build_tokenizer(SPECIAL_TOKENS, eos_token="<end_of_utterance>",
                                           pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
        ip = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": tile},
                                       max_image_size={"longest_edge": tile})
        seq_len = (tile // patch_size) ** 2 // scale_factor**2
        return Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq_len,
                                 chat_template=CHAT_TEMPLATE)

    def load_processor(self, path: str | Path) -> Idefics3Processor:
        # the PIL image processor given explicitly: the saved config names the torchvision one
        processor = Idefics3Processor.from_pretrained(path, image_processor=Idefics3ImageProcessorPil.from_pretrained(path))
        # from_pretrained hands that keyword to the tokenizer too, which keeps it in its init kwargs: saving the
        # processor again (a checkpoint of a loaded model) would then fail to write it as JSON
        processor.tokenizer.init_kwargs.pop("image_processor", None)
        return processor

    def tiny_config(self, processor: Idefics3Processor, **overrides) -> Idefics3Config:
        tok = processor.tokenizer
        tile = processor.image_processor.max_image_size["longest_edge"]
        text = dict(model_type="llama", vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                    num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                    max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                    bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id)
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=tile, patch_size=14)
        text.update(overrides.pop("text", {}))
        vision.update(overrides.pop("vision", {}))
        return Idefics3Config(text_config=text, vision_config=vision, scale_factor=2,
                              image_token_id=tok.convert_tokens_to_ids("<image>"),
                              pad_token_id=tok.pad_token_id, **overrides)

    def eos_token_ids(self, processor) -> list[int]:
        """<end_of_utterance>, and <|im_end|> where the vocabulary has it: a text tower pretrained on ChatML (the
        small real model's SmolLM2) ends its turns with it."""
        tok = processor.tokenizer
        return [tok.eos_token_id] + ([tok.convert_tokens_to_ids(CHATML_END)] if CHATML_END in tok.get_vocab() else [])

    def temporal_patch(self, processor) -> int:
        return 1  # video frames are encoded as separate images

    def language_layers(self, model):
        return model.model.text_model.layers

    def encode(self, processor: Idefics3Processor, prompts: list[VisualPrompt]) -> PromptBatch:
        tok = processor.tokenizer
        image_id = tok.convert_tokens_to_ids("<image>")
        side = int(round(processor.image_seq_len**0.5))
        # what Idefics3Processor.replace_image_token writes for an unsplit image
        image_block = (processor.fake_image_token + processor.global_image_tag
                       + processor.image_token * processor.image_seq_len + processor.fake_image_token)
        id_lists, q_lists, pixels, pixel_masks, grids, texts = [], [], [], [], [], []
        for pr in prompts:
            content = [{"type": "image"} for _ in pr.frames] + [{"type": "text", "text": pr.user_text}]
            messages = ([{"role": "system", "content": pr.system}] if pr.system else []) + [
                {"role": "user", "content": content}]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            expanded = text.replace(processor.image_token, image_block)
            ids, q_pos = tokenize_with_question(tok, expanded, pr.question)
            enc = processor.image_processor([[f.convert("RGB") for f in pr.frames]], return_tensors="pt")
            id_lists.append(ids)
            q_lists.append(q_pos)
            pixels.append(enc["pixel_values"][0])
            pixel_masks.append(enc["pixel_attention_mask"][0])
            grids.append((len(pr.frames), side, side))
            texts.append(expanded)

        input_ids, attention_mask, pad_offsets = left_pad(id_lists, tok.pad_token_id)
        n_img = max(p.shape[0] for p in pixels)
        # pad every sample to the same number of images with all-zero images, which the model drops
        pv = torch.zeros(len(prompts), n_img, *pixels[0].shape[1:])
        pm = torch.zeros(len(prompts), n_img, *pixel_masks[0].shape[1:], dtype=pixel_masks[0].dtype)
        for b, (p, m) in enumerate(zip(pixels, pixel_masks, strict=True)):
            pv[b, : p.shape[0]] = p
            pm[b, : m.shape[0]] = m
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pv,
                  "pixel_attention_mask": pm}
        visual = [torch.nonzero(input_ids[b] == image_id).flatten() for b in range(len(prompts))]
        question = [torch.tensor(q, dtype=torch.long) + off for q, off in zip(q_lists, pad_offsets, strict=True)]
        return PromptBatch(inputs, visual, question, grids, texts, [len(pr.frames) for pr in prompts])
