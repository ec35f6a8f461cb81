"""Small byte-level BPE tokenizers built locally, so that nothing is downloaded from a hub.

The tiny models of the embedded default need a tokenizer with their family's special tokens (Qwen's
``<|image_pad|>`` …, Idefics3's ``<image>`` …). We train one with ``tokenizers`` on a fixed corpus of the
grounded task's words; byte-level BPE encodes any text, the merges only make the task's words short.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ral_dist.paths import cache_dir

# Words of the synthetic task and the answer format; the BPE merges make each of these one or two tokens.
_CORPUS_WORDS = (
    "what which where how many is there are the a an of in on at to and or object objects cell image video frame "
    "frames colour color shape red green blue yellow purple orange white black gray circle square triangle cross "
    "diamond top bottom left right middle centre center upper lower first second third fourth last move moves "
    "moving up down turn turns into appear appears does do yes no zero one two three four five six seven eight "
    "nine ten 0 1 2 3 4 5 6 7 8 9 further than look looked looks answer think question because so it its "
    "please reason briefly then give final inside tags with count counted "
)
THINK_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _corpus() -> list[str]:
    words = _CORPUS_WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() + "?" for w in words] + [f"{w}." for w in words]
    return lines * 4


def build_tokenizer(
    special_tokens: list[str],
    eos_token: str,
    pad_token: str,
    chat_template: str,
    vocab_size: int = 1024,
    extra: dict | None = None,
) -> PreTrainedTokenizerFast:
    """Train (or load from the cache) a byte-level BPE with the given special tokens.

    The think/answer tags are added as ordinary added tokens so a tiny model emits each as one token.
    Training is deterministic, and the result is cached under a key of its inputs.
    """
    key_src = json.dumps([special_tokens, eos_token, pad_token, chat_template, vocab_size, _CORPUS_WORDS, extra])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    out = cache_dir("tokenizers") / key
    if (out / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(out)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        additional_special_tokens=[t for t in special_tokens if t not in (eos_token, pad_token)],
        **(extra or {}),
    )
    fast.add_tokens(list(THINK_TAGS))
    fast.chat_template = chat_template
    tmp = out.with_name(f"{key}.{os.getpid()}.tmp")
    fast.save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: concurrent builders (Ray actors) never see a half-written tokenizer
    except OSError:  # another process got there first with the same deterministic result
        shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(out)
