"""Synthetic grounded VQA data: scenes, questions with ground-truth regions, prompts, token masks, JSONL I/O.

Modules: ``scene`` (objects, layout, rendering), ``questions`` (question types, :func:`ask`), ``planting`` (scenes
planted per question type), ``vqa_config`` (generator settings, curriculum), ``grounded_vqa`` (splits and sample
generation), ``dataset_io`` (JSONL + PNG reading/writing), ``cache`` (generated datasets on disk), ``prompts``,
``regions`` (regions → visual-token masks), ``sample`` and ``question_limits``.
"""

from .cache import generate_dataset
from .dataset_io import Skipped, image_filename, read_dataset, read_jsonl, write_dataset
from .grounded_vqa import generate, iter_samples, sample_from_scene, split_of_layout
from .planting import plant
from .prompts import MODES, SYSTEM_PROMPT, chat_messages, format_instruction, target_text, user_text
from .questions import DIRECTIONS, IMAGE_QTYPES, QA, QTYPES, RELATIONS, VIDEO_QTYPES, ask
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
from .vqa_config import CURRICULUM, GroundedVQAConfig

__all__ = [
    "ALL_COLORS", "COLORS", "CURRICULUM", "DIRECTIONS", "IMAGE_QTYPES", "MODES", "QA", "QTYPES", "RECORD_FIELDS",
    "RELATIONS", "SHAPES", "SYSTEM_PROMPT", "VIDEO_QTYPES", "GroundedVQAConfig", "Sample", "Scene",
    "SceneObject", "Skipped", "ask", "box_in_cell", "cell_bounds", "cell_name", "cell_phrase", "chat_messages",
    "format_instruction", "generate", "generate_dataset", "image_filename", "iter_samples", "on_target_mass",
    "plant", "read_dataset", "read_jsonl", "region_token_mask", "render_scene", "sample_from_scene",
    "split_of_layout", "target_fraction", "target_text", "user_text", "write_dataset",
]
