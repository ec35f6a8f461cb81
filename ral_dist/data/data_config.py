"""``data:`` of the job configs (:class:`DataConfig`, re-exported by :mod:`ral_dist.config`): where samples come
from, how media become frames, and the prompt. It lives here so that :func:`~ral_dist.data.readers.read_split` can
take it without the data package importing the config tree."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .media import ImageConfig, MediaConfig, VideoConfig
from .prompts import PromptConfig
from .sample import RECORD_FIELDS
from .video_r1 import FIELD_NAMES as VIDEO_R1_COLUMNS
from .vqa_config import GroundedVQAConfig


class DataConfig(BaseModel):
    """Where the samples come from (``ral_dist.data.readers.read_split``), how media become frames
    (``ral_dist.data.media.load_frames``: ``video``, ``image``, ``media_cache_mb``) and the prompt (``prompt``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as every section of ral_dist.config

    format: Literal["auto", "jsonl_png", "video_r1", "parquet", "hf"] = Field(
        "auto", description="jsonl_png: ours; video_r1: Video-R1's JSON array / JSONL; parquet; hf: a save_to_disk "
                            "dir or local json/parquet through datasets; auto: detected per split file")
    dir: str | None = Field(None, description="dataset folder (split files {split}.jsonl / .json / .parquet, or a "
                                              "save_to_disk dir) or one file (the train split); None and no `files` "
                                              "generates `task` (cached)")
    files: dict[str, str] = Field(default_factory=dict, description="split -> file, e.g. {train: "
                                                                    "Video-R1-260k.json}; relative to `dir`")
    root: str | None = Field(None, description="folder relative media paths resolve against (Video-R1: the folder "
                                               "holding ./Video-R1-data); None: the split file's folder")
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="parquet/hf: our field -> the table's column, e.g. {question: "
                                                "problem, answer: solution, media: path}")
    duplicate_ids: Literal["skip", "number"] = Field(
        "skip", description="a repeated id: skip the row (reason 'duplicate id') or keep it as id#2, id#3")
    read_workers: int = Field(8, ge=1, description="threads checking media headers at read time")
    task: GroundedVQAConfig = Field(default_factory=GroundedVQAConfig)
    sizes: dict[str, int] = Field(default_factory=lambda: {"train": 4000, "val": 200, "test": 200})
    prompt: PromptConfig = Field(default_factory=PromptConfig,
                                 description="mode (think | answer_only = RAL-zero), preset (ral | video_r1), "
                                             "template (Jinja), type_suffix")
    video: VideoConfig = Field(default_factory=VideoConfig, description="fps, max_frames, per-frame pixel budget")
    image: ImageConfig = Field(default_factory=ImageConfig, description="pixel budget of an image")
    media_cache_mb: int = Field(256, ge=0, description="decoded frames cached per process (0: none)")
    max_question_chars: int = Field(512, ge=1, description="longer questions are truncated or skipped")
    long_questions: Literal["truncate", "skip"] = "truncate"

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(columns) - set(RECORD_FIELDS) - set(VIDEO_R1_COLUMNS.values()))
        if unknown:
            raise ValueError(f"columns maps unknown fields {unknown}; known: {list(RECORD_FIELDS)} or "
                             f"Video-R1's {sorted(VIDEO_R1_COLUMNS.values())}")
        return columns

    @property
    def media(self) -> MediaConfig:
        return MediaConfig(video=self.video, image=self.image, cache_mb=self.media_cache_mb)
