"""Synthetic grounded VQA generator: questions whose answer depends on *where* the model looks.

Every question names or implies the objects that decide it, and their boxes are the ground-truth ``regions``.
A sample is made in three steps: draw a question type (:class:`~ral_dist.data.vqa_config.GroundedVQAConfig`
weights), plant a scene for it (:mod:`~ral_dist.data.planting`), and ask it (:func:`~ral_dist.data.questions.ask`,
the single source of truth for answers, also usable on hand-built scenes).

Splits: ``layout_key`` hashes the semantic layout (grid, objects' cells, shapes, colours, per frame); each key maps
to exactly one split by its hash bucket, and a split's generator keeps only candidates of its own bucket. So a
layout (and any (layout, question) pair) never appears in two splits. ``generate(config, split, n)`` is
deterministic for (config, split, n) and ``generate(.., n)`` is a prefix of ``generate(.., n + k)``.

Curriculum: :data:`~ral_dist.data.vqa_config.CURRICULUM` lists qtype weights from the easy location-named types
(``color_at``) up to all types; :meth:`GroundedVQAConfig.at_stage` builds a config for a stage.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from .dataset_io import image_filename
from .planting import plant
from .questions import IMAGE_QTYPES, QA, QTYPES, VIDEO_QTYPES, ask
from .sample import Sample
from .scene import Scene, render_scene
from .vqa_config import GroundedVQAConfig

_SPLIT_BUCKETS = 10_000
_MAX_ATTEMPTS_PER_SAMPLE = 200_000


def split_of_layout(layout_key: str, split_fractions: dict[str, float]) -> str:
    """The one split a layout belongs to (hash bucket against the cumulative fractions, in dict order)."""
    total = sum(split_fractions.values())
    u = (int(layout_key[:12], 16) % _SPLIT_BUCKETS + 0.5) / _SPLIT_BUCKETS
    acc = 0.0
    last = None
    for name, frac in split_fractions.items():
        if frac <= 0:
            continue
        acc += frac / total
        last = name
        if u < acc:
            return name
    return last  # float rounding left u past the last cumulative fraction


def _pick_qtype(rng: random.Random, cfg: GroundedVQAConfig) -> str:
    w = cfg.qtype_weights
    if cfg.fraction_video is None:
        names = [q for q in QTYPES if w.get(q, 0.0) > 0]
        return rng.choices(names, weights=[w[q] for q in names])[0]
    kind_types = VIDEO_QTYPES if rng.random() < cfg.fraction_video else IMAGE_QTYPES
    weights = [w.get(q, 0.0) for q in kind_types]
    if sum(weights) <= 0:
        weights = [1.0] * len(kind_types)
    return rng.choices(kind_types, weights=weights)[0]


def sample_from_scene(scene: Scene, qa: QA, sample_id: str, split: str = "") -> Sample:
    """Render ``scene`` and wrap it with ``qa`` into a :class:`Sample`."""
    images = render_scene(scene)
    return Sample(
        id=sample_id,
        kind="video" if scene.is_video else "image",
        images=images,
        media=[f"images/{image_filename(split, sample_id, k)}" for k in range(len(images))],
        question=qa.question,
        answer=qa.answer,
        qtype=qa.qtype,
        regions=[list(r) for r in qa.regions],
        rationale=qa.rationale,
        layout_key=scene.layout_key(),
        frame_hw=(scene.canvas, scene.canvas),
        meta={"params": qa.params, "scene": scene.to_dict(), "split": split, "canvas": scene.canvas,
              "grid": scene.grid},
    )


def iter_samples(config: GroundedVQAConfig, split: str) -> Iterator[Sample]:
    """Endless deterministic stream of samples of ``split`` (seeded from (config.seed, split) only)."""
    if config.split_fractions.get(split, 0.0) <= 0:
        raise ValueError(f"split {split!r} not in split_fractions {config.split_fractions} (or fraction 0)")
    # a fixed seed string, not this module's path: changing it would change every generated sample
    rng = random.Random(f"ral_dist.grounded_vqa:{config.seed}:{split}")
    for i in itertools.count():
        for _ in range(_MAX_ATTEMPTS_PER_SAMPLE):
            qtype = _pick_qtype(rng, config)
            scene, params = plant(rng, config, qtype)
            if split_of_layout(scene.layout_key(), config.split_fractions) == split:
                break
        else:  # pragma: no cover
            raise RuntimeError(f"no layout of split {split!r} after {_MAX_ATTEMPTS_PER_SAMPLE} candidates")
        qa = ask(scene, qtype, **params)
        yield sample_from_scene(scene, qa, f"{split}-s{config.seed}-{i:06d}", split)


def generate(config: GroundedVQAConfig, split: str, n: int) -> list[Sample]:
    """``n`` samples of ``split``; deterministic for (config, split, n); a prefix of any larger ``n``."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return list(itertools.islice(iter_samples(config, split), n))
