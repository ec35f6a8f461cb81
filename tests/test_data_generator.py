"""Synthetic grounded VQA generator: determinism, planted answers, splits, qtypes, prompts."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from ral_dist.data import (
    COLORS,
    CURRICULUM,
    DIRECTIONS,
    IMAGE_QTYPES,
    QTYPES,
    SHAPES,
    VIDEO_QTYPES,
    GroundedVQAConfig,
    Sample,
    Scene,
    SceneObject,
    ask,
    box_in_cell,
    cell_bounds,
    format_instruction,
    generate,
    render_scene,
    sample_from_scene,
    split_of_layout,
    target_text,
    user_text,
)

ALL = {q: 1.0 for q in QTYPES}


@pytest.fixture(scope="module")
def mixed_train() -> list[Sample]:
    cfg = GroundedVQAConfig(seed=3, qtype_weights=ALL, n_distractors=1, background="mixed")
    return generate(cfg, "train", 240)


def _pixel(img, box) -> tuple[int, int, int]:
    x0, y0, x1, y1 = box
    return img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2))


def _fingerprint(samples: list[Sample]) -> list[tuple]:
    return [(s.id, s.question, s.answer, s.qtype, s.regions, s.layout_key, s.rationale,
             [np.asarray(im).tobytes() for im in s.images]) for s in samples]


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_identical_and_different_seed_differs():
    cfg = GroundedVQAConfig(seed=7, qtype_weights=ALL, background="noise", n_distractors=1)
    a, b = generate(cfg, "train", 40), generate(cfg, "train", 40)
    assert _fingerprint(a) == _fingerprint(b)
    c = generate(cfg.model_copy(update={"seed": 8}), "train", 40)
    assert [s.layout_key for s in a] != [s.layout_key for s in c]
    assert [np.asarray(s.images[0]).tobytes() for s in a] != [np.asarray(s.images[0]).tobytes() for s in c]


def test_prefix_property_and_ids_unique():
    cfg = GroundedVQAConfig(seed=1, qtype_weights=ALL)
    short, long = generate(cfg, "val", 10), generate(cfg, "val", 25)
    assert _fingerprint(short) == _fingerprint(long[:10])
    assert len({s.id for s in long}) == 25


def test_does_not_touch_global_rng():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate(GroundedVQAConfig(qtype_weights=ALL, background="noise"), "train", 5)
    assert random.random() == expected


# ------------------------------------------------------------------------------------------ planted scenes


def test_planted_color_at_red_circle_top_left():
    box = box_in_cell(112, 2, 0, 0, 40, 0.5, 0.5)
    scene = Scene.image(112, 2, [SceneObject("circle", "red", box)])
    qa = ask(scene, "color_at", cell=(0, 0))
    assert qa.question == "What colour is the object in the top-left cell?"
    assert qa.answer == "red"
    assert qa.regions == [[0, *box]]
    assert "top-left" in qa.rationale and "red circle" in qa.rationale
    (img,) = render_scene(scene)
    assert img.size == (112, 112) and img.mode == "RGB"
    assert _pixel(img, box) == COLORS["red"]
    x0, y0, x1, y1 = cell_bounds(112, 2, 0, 0)
    assert (x0, y0, x1, y1) == (0, 0, 56, 56) and x1 >= box[2] and y1 >= box[3]
    s = sample_from_scene(scene, qa, "t-1", "train")
    assert s.kind == "image" and s.answer == "red" and len(s.images) == 1 and s.layout_key == scene.layout_key()
    with pytest.raises(ValueError):
        ask(scene, "color_at", cell=(1, 1))  # empty cell


def _two_by_two() -> Scene:
    g = 2
    objs = [
        SceneObject("circle", "red", box_in_cell(112, g, 0, 0, 40, 0.2, 0.3), oid=0),
        SceneObject("square", "blue", box_in_cell(112, g, 0, 1, 40, 0.7, 0.1), oid=1),
        SceneObject("triangle", "red", box_in_cell(112, g, 1, 1, 44, 0.5, 0.5), oid=2),
        SceneObject("cross", "gray", box_in_cell(112, g, 1, 0, 20, 0.5, 0.5), oid=3, distractor=True),
    ]
    return Scene.image(112, g, objs)


def test_planted_image_questions():
    sc = _two_by_two()
    red_circle, blue_square, red_tri, _ = sc.objects
    assert ask(sc, "shape_at", cell=(1, 1)).answer == "triangle"
    assert ask(sc, "color_at", cell=(0, 1)).answer == "blue"
    with pytest.raises(ValueError):
        ask(sc, "color_at", cell=(1, 0))  # only a distractor there
    qa = ask(sc, "color_of_shape", shape="square")
    assert (qa.question, qa.answer, qa.regions) == ("What colour is the square?", "blue", [[0, *blue_square.box]])
    with pytest.raises(ValueError):
        ask(sc, "color_of_shape", shape="cross")  # the only cross is a distractor
    qa = ask(sc, "count_color", color="red")
    assert qa.answer == "2" and sorted(qa.regions) == sorted([[0, *red_circle.box], [0, *red_tri.box]])
    assert ask(sc, "count_color", color="blue").answer == "1"
    yes = ask(sc, "exists", color="blue", shape="square")
    assert yes.answer == "yes" and yes.regions == [[0, *blue_square.box]]
    no = ask(sc, "exists", color="blue", shape="circle")
    assert no.answer == "no" and no.regions == []


def test_planted_relative():
    sc = _two_by_two()
    with pytest.raises(ValueError):  # two red objects
        ask(sc, "relative", form="yesno", a="red", b="blue", relation="left")
    objs = [
        SceneObject("circle", "green", box_in_cell(112, 2, 0, 0, 40, 0.5, 0.5), oid=0),
        SceneObject("square", "blue", box_in_cell(112, 2, 1, 1, 40, 0.5, 0.5), oid=1),
    ]
    sc = Scene.image(112, 2, objs)
    q = ask(sc, "relative", form="yesno", a="green", b="blue", relation="left")
    assert (q.question, q.answer) == ("Is the green object left of the blue object?", "yes")
    assert q.regions == [[0, *objs[0].box], [0, *objs[1].box]]
    assert ask(sc, "relative", form="yesno", a="green", b="blue", relation="below").answer == "no"
    assert ask(sc, "relative", form="yesno", a="blue", b="green", relation="below").answer == "yes"
    w = ask(sc, "relative", form="which", a="square", b="circle", relation="left")
    assert (w.question, w.answer) == ("Which is further left, the square or the circle?", "circle")
    assert ask(sc, "relative", form="which", a="square", b="circle", relation="below").answer == "square"


def test_planted_video_questions():
    n, g = 4, 2
    frames = []
    for f in range(n):
        x0 = 5 + 15 * f
        objs = [SceneObject("triangle", "green", (x0, 60, x0 + 30, 90), oid=0),
                SceneObject("circle", "red" if f < 2 else "blue", box_in_cell(112, g, 0, 1, 30, 0.5, 0.5), oid=1)]
        if f >= 2:
            objs.append(SceneObject("square", "yellow", box_in_cell(112, g, 0, 0, 30, 0.5, 0.5), oid=2))
        frames.append(objs)
    sc = Scene(canvas=112, grid=g, frames=frames)
    d = ask(sc, "direction", color="green", shape="triangle")
    assert d.answer == "right" and [r[0] for r in d.regions] == [0, 1, 2, 3]
    assert d.regions[3] == [3, 50, 60, 80, 90]
    a = ask(sc, "appear_frame", shape="square")
    assert a.answer == "3" and [r[0] for r in a.regions] == [0, 1, 2, 3]
    c = ask(sc, "color_change", shape="circle")
    assert (c.question, c.answer) == ("What colour does the circle turn into?", "blue")
    imgs = render_scene(sc)
    assert len(imgs) == 4
    assert _pixel(imgs[0], frames[0][1].box) == COLORS["red"] and _pixel(imgs[3], frames[3][1].box) == COLORS["blue"]
    with pytest.raises(ValueError):
        ask(sc, "color_at", cell=(0, 0))  # image question on a video


def test_ask_rejects_unknown_qtype_and_wrong_kind():
    image = _two_by_two()
    video = Scene(canvas=112, grid=2, frames=[list(image.objects), list(image.objects)])
    with pytest.raises(ValueError, match="unknown qtype 'nope'"):
        ask(image, "nope")
    with pytest.raises(ValueError, match="^direction is a video question$"):
        ask(image, "direction", color="red", shape="circle")
    with pytest.raises(ValueError, match="^exists is an image question$"):
        ask(video, "exists", color="red", shape="circle")


# ------------------------------------------------------------------------------------------ generated data


def test_every_qtype_appears_and_answers_are_words(mixed_train):
    counts = Counter(s.qtype for s in mixed_train)
    assert set(counts) == set(QTYPES)
    for s in mixed_train:
        assert re.fullmatch(r"[a-z]+|[0-9]+", s.answer), s.answer
        assert s.kind == ("video" if s.qtype in VIDEO_QTYPES else "image")
        assert len(s.images) == (4 if s.kind == "video" else 1) == len(s.media) == s.n_frames
        assert s.question.endswith("?") and s.rationale.endswith(".")


def test_generated_answers_consistent_with_scene(mixed_train):
    for s in mixed_train:
        scene = Scene.from_dict(s.meta["scene"])
        qa = ask(scene, s.qtype, **s.meta["params"])
        assert (qa.question, qa.answer, qa.regions) == (s.question, s.answer, s.regions)
        assert scene.layout_key() == s.layout_key
        # regions: inside the frame, empty only for "no"
        assert s.regions or s.answer == "no"
        for f, x0, y0, x1, y1 in s.regions:
            assert 0 <= f < len(s.images) and 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
        if s.qtype in ("color_at", "color_of_shape"):
            assert _pixel(s.images[0], s.regions[0][1:]) == COLORS[s.answer]
        if s.qtype == "color_change":
            f, *box = s.regions[-1]
            assert _pixel(s.images[f], box) == COLORS[s.answer]
        if s.qtype == "count_color":
            assert int(s.answer) == len(s.regions) >= 1
        if s.qtype == "direction":
            assert s.answer in DIRECTIONS
        if s.qtype == "shape_at":
            assert s.answer in SHAPES


def test_answers_balanced_enough(mixed_train):
    yn = Counter(s.answer for s in mixed_train if s.qtype == "exists")
    assert yn["yes"] > 0 and yn["no"] > 0
    big = generate(GroundedVQAConfig(seed=5), "train", 300)  # stage 0: color_at only
    assert {s.qtype for s in big} == {"color_at"}
    counts = Counter(s.answer for s in big)
    assert set(counts) == set(COLORS) and min(counts.values()) >= 25


def test_splits_disjoint_by_layout():
    cfg = GroundedVQAConfig(seed=11, qtype_weights=ALL)
    splits = {name: generate(cfg, name, n) for name, n in (("train", 200), ("val", 60), ("test", 60))}
    keys = {k: {s.layout_key for s in v} for k, v in splits.items()}
    pairs = {k: {(s.layout_key, s.question) for s in v} for k, v in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not keys[a] & keys[b]
        assert not pairs[a] & pairs[b]
    for name, samples in splits.items():
        assert all(split_of_layout(s.layout_key, cfg.split_fractions) == name for s in samples)
    ids = [s.id for v in splits.values() for s in v]
    assert len(ids) == len(set(ids))


def test_layout_key_ignores_jitter_but_not_content():
    a = Scene.image(112, 2, [SceneObject("circle", "red", box_in_cell(112, 2, 0, 0, 40, 0.1, 0.1))])
    b = Scene.image(96, 2, [SceneObject("circle", "red", box_in_cell(96, 2, 0, 0, 30, 0.9, 0.6))],
                    background="noise")
    c = Scene.image(112, 2, [SceneObject("circle", "blue", box_in_cell(112, 2, 0, 0, 40, 0.1, 0.1))])
    assert a.layout_key() == b.layout_key() != c.layout_key()


@pytest.mark.parametrize("canvas,grid", [(64, 2), (96, 3), (128, 4), (112, 3)])
def test_canvas_and_grid_sizes(canvas, grid):
    cfg = GroundedVQAConfig(canvas=canvas, grid=grid, qtype_weights=ALL, n_distractors=2)
    for s in generate(cfg, "train", 30):
        assert all(im.size == (canvas, canvas) for im in s.images)
        for _, x0, y0, x1, y1 in s.regions:
            assert 0 <= x0 < x1 <= canvas and 0 <= y0 < y1 <= canvas
        if s.qtype in ("color_at", "color_of_shape"):
            assert _pixel(s.images[0], s.regions[0][1:]) == COLORS[s.answer]


def test_curriculum_and_fraction_video():
    assert CURRICULUM[0] == {"color_at": 1.0}
    s1 = generate(GroundedVQAConfig.at_stage(1, seed=2), "train", 60)
    assert {s.qtype for s in s1} == {"color_at", "shape_at"}
    last = GroundedVQAConfig.at_stage(99)
    assert set(last.qtype_weights) == set(QTYPES)
    vids = generate(GroundedVQAConfig(fraction_video=1.0), "train", 12)  # no video weights: uniform fallback
    assert all(s.kind == "video" for s in vids)
    imgs = generate(GroundedVQAConfig(qtype_weights=ALL, fraction_video=0.0), "train", 30)
    assert all(s.qtype in IMAGE_QTYPES for s in imgs)
    v6 = generate(GroundedVQAConfig(fraction_video=1.0, video_frames=6, qtype_weights={"direction": 1.0}),
                  "test", 5)
    assert all(len(s.images) == 6 and len(s.regions) == 6 for s in v6)


def test_config_validation():
    for bad in ({"qtype_weights": {"nope": 1.0}}, {"qtype_weights": {"color_at": 0.0}}, {"grid": 5},
                {"canvas": 40, "grid": 4}, {"min_objects": 5}, {"split_fractions": {"train": -1.0}},
                {"unknown_field": 1}):
        with pytest.raises(ValueError):
            GroundedVQAConfig(**bad)
    with pytest.raises(ValueError):
        generate(GroundedVQAConfig(), "dev", 1)


# ------------------------------------------------------------------------------------------ prompts


def test_prompt_texts():
    s = Sample(id="x", kind="image", media=["x.png"], question="What colour is the square?", answer="blue",
               rationale="The square is blue.")
    assert target_text(s, "think") == "<think>The square is blue.</think><answer>blue</answer>"
    assert target_text(s, "answer_only") == "<answer>blue</answer>"
    assert user_text(s, "think") == f"What colour is the square? {format_instruction('think')}"
    assert "<answer>" in format_instruction("answer_only") and "<think>" not in format_instruction("answer_only")
    with pytest.raises(ValueError):
        target_text(s, "cot")
