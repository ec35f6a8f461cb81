"""Synthetic grounded VQA data: scenes, questions with ground-truth regions, prompts, token masks, JSONL I/O."""

from .dataset_io import Skipped, generate_dataset, image_filename, read_dataset, read_jsonl, write_dataset
from .grounded_vqa import (
    CURRICULUM,
    DIRECTIONS,
    IMAGE_QTYPES,
    QA,
    QTYPES,
    RELATIONS,
    VIDEO_QTYPES,
    GroundedVQAConfig,
    ask,
    generate,
    iter_samples,
    plant,
    sample_from_scene,
    split_of_layout,
)
from .prompts import MODES, SYSTEM_PROMPT, chat_messages, format_instruction, target_text, user_text
from .regions import on_target_mass, region_token_mask, target_fraction
from .sample import RECORD_FIELDS, Sample
from .scene import (
    ALL_COLORS,
    COLORS,
    SHAPES,
    Scene,
    SceneObject,
    box_in_cell,
    cell_bounds,
    cell_name,
    cell_phrase,
    render_scene,
)

__all__ = [
    "ALL_COLORS", "COLORS", "CURRICULUM", "DIRECTIONS", "IMAGE_QTYPES", "MODES", "QA", "QTYPES", "RECORD_FIELDS",
    "RELATIONS", "SHAPES", "SYSTEM_PROMPT", "VIDEO_QTYPES", "GroundedVQAConfig", "Sample", "Scene",
    "SceneObject", "Skipped", "ask", "box_in_cell", "cell_bounds", "cell_name", "cell_phrase", "chat_messages",
    "format_instruction", "generate", "generate_dataset", "image_filename", "iter_samples", "on_target_mass",
    "plant", "read_dataset", "read_jsonl", "region_token_mask", "render_scene", "sample_from_scene",
    "split_of_layout", "target_fraction", "target_text", "user_text", "write_dataset",
]
