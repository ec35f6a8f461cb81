"""Data: the one record type, readers of every dataset format, media decoding, prompts, and the synthetic grounded
VQA task.

Records and reading: ``sample`` (:class:`Sample`, pydantic), ``readers`` (:func:`read_split`, ``data.format``
dispatch), ``rows`` (validation, header checks, :class:`Skipped` and per-reason counts), ``dataset_io`` (our JSONL
format), ``video_r1`` (the Video-R1 schema), ``tables`` (Parquet, Hugging Face datasets). Media: ``media``
(:func:`load_frames`, pixel budgets, the frame cache), ``video`` (PyAV). Text: ``prompts``, ``question_limits``.
The synthetic task: ``scene``, ``questions``, ``planting``, ``vqa_config``, ``grounded_vqa``, ``cache``, ``regions``;
``export`` writes it in the Video-R1 schema with mp4 files; ``convert`` is the command line.
"""

from .cache import generate_dataset
from .dataset_io import image_filename, read_dataset, read_jsonl, write_dataset
from .grounded_vqa import generate, iter_samples, sample_from_scene, split_of_layout
from .media import Frames, ImageConfig, MediaConfig, VideoConfig, load_frames
from .planting import plant
from .prompts import (
    MODES,
    SYSTEM_PROMPT,
    PromptConfig,
    chat_messages,
    format_instruction,
    question_span,
    target_text,
    user_text,
)
from .questions import DIRECTIONS, IMAGE_QTYPES, QA, QTYPES, RELATIONS, VIDEO_QTYPES, ask
from .readers import FORMATS, read_split
from .regions import on_target_mass, region_token_mask, target_fraction
from .rows import Skipped, skip_counts, write_skipped
from .sample import PROBLEM_TYPES, RECORD_FIELDS, Sample
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
from .video import MediaError
from .vqa_config import CURRICULUM, GroundedVQAConfig

__all__ = [
    "ALL_COLORS", "COLORS", "CURRICULUM", "DIRECTIONS", "FORMATS", "IMAGE_QTYPES", "MODES", "PROBLEM_TYPES", "QA",
    "QTYPES", "RECORD_FIELDS", "RELATIONS", "SHAPES", "SYSTEM_PROMPT", "VIDEO_QTYPES", "Frames", "GroundedVQAConfig",
    "ImageConfig", "MediaConfig", "MediaError", "PromptConfig", "Sample", "Scene", "SceneObject", "Skipped",
    "VideoConfig", "ask", "box_in_cell", "cell_bounds", "cell_name", "cell_phrase", "chat_messages",
    "format_instruction", "generate", "generate_dataset", "image_filename", "iter_samples", "load_frames",
    "on_target_mass", "plant", "question_span", "read_dataset", "read_jsonl", "read_split", "region_token_mask",
    "render_scene", "sample_from_scene", "skip_counts", "split_of_layout", "target_fraction", "target_text",
    "user_text", "write_dataset", "write_skipped",
]
