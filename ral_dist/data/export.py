"""The synthetic grounded task written in the Video-R1 schema with real media files (:func:`export_synthetic`), so
the CPU demo, tests and CI read the real format end to end.

Per split: ``OUT/{split}.json`` (a JSON array of Video-R1 records with integer ``problem_id``s, unique across
splits, and our ``regions``), videos as lossless mp4 (``OUT/media/{split}/*.mp4``, frame k at k / fps s, so decoding
at ``data.video.fps`` = the same fps returns exactly the scene's frames) and images as PNG. Question types map to
Video-R1's: a colour, shape or direction answer becomes multiple choice (the answer among up to 3 distractors,
options ``"A. red"``, answer the letter), a count or frame number numerical, the rest (yes/no) free-form.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

from .dataset_io import image_filename
from .grounded_vqa import generate
from .questions import DIRECTIONS
from .sample import Sample
from .scene import COLORS, SHAPES
from .video import encode_video
from .video_r1 import to_video_r1
from .vqa_config import GroundedVQAConfig

SOURCE = "ral_dist.grounded_vqa"
_N_OPTIONS = 4


def video_r1_question(sample: Sample) -> tuple[str, list[str], str]:
    """(problem_type, options, answer) of a synthetic sample in Video-R1's terms."""
    pool: tuple[str, ...] = ()
    if sample.answer in COLORS:
        pool = tuple(COLORS)
    elif sample.answer in SHAPES:
        pool = SHAPES
    elif sample.qtype == "direction":
        pool = DIRECTIONS
    if pool:
        rng = random.Random(f"{SOURCE}:options:{sample.id}")  # fixed per sample: re-exports are identical
        choices = [sample.answer, *rng.sample([c for c in pool if c != sample.answer], min(_N_OPTIONS, len(pool)) - 1)]
        rng.shuffle(choices)
        letters = string.ascii_uppercase
        return ("multiple choice", [f"{letters[i]}. {c}" for i, c in enumerate(choices)],
                letters[choices.index(sample.answer)])
    if sample.answer.isdigit():
        return "numerical", [], sample.answer
    return "free-form", [], sample.answer


def _write_media(sample: Sample, out: Path, split: str, fps: float) -> str:
    folder = out / "media" / split
    folder.mkdir(parents=True, exist_ok=True)
    stem = image_filename(split, sample.id, 0).removesuffix("_0.png")
    if sample.kind == "video":
        encode_video(sample.images, folder / f"{stem}.mp4", fps)
        return f"./media/{split}/{stem}.mp4"
    sample.images[0].convert("RGB").save(folder / f"{stem}.png", format="PNG")
    return f"./media/{split}/{stem}.png"


def export_synthetic(task: GroundedVQAConfig, out_dir: str | Path, sizes: dict[str, int], fps: float = 1.0
                     ) -> dict[str, Path]:
    """Generate ``sizes`` samples per split of ``task`` and write them in the Video-R1 schema; returns split →
    JSON path. Also writes ``generator_config.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    problem_id = 0
    for split, n in sizes.items():
        records = []
        for s in generate(task, split, n):
            problem_id += 1
            ptype, options, answer = video_r1_question(s)
            exported = s.model_copy(update={"media": [_write_media(s, out, split, fps)], "problem_type": ptype,
                                            "options": options, "answer": answer, "source": SOURCE})
            records.append(to_video_r1(exported, problem_id))
        paths[split] = out / f"{split}.json"
        # one record per line: greppable, and still one JSON array as Video-R1 ships it
        paths[split].write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    info = {"generator": SOURCE, "schema": "video_r1", "fps": fps, "config": task.model_dump(mode="json"),
            "sizes": dict(sizes)}
    (out / "generator_config.json").write_text(json.dumps(info, indent=1) + "\n")
    return paths
