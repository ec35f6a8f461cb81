"""User reward functions (reward.custom): imported from a file or an importable module, once per process; their
scores and weights in the total; every way one can fail scores 0 with its reason; a bad path fails the config or
the driver's check, naming the field."""

import math
import textwrap

import pytest
import torch
from PIL import Image

from ral_dist.algorithms import Score
from ral_dist.config import ConfigError, RLJobConfig, load_config
from ral_dist.data import Sample
from ral_dist.evaluation.greedy import metric_names, report_row
from ral_dist.models import get_adapter
from ral_dist.rewards import (
    ResponseView,
    custom_score,
    load_reward_function,
    parse_reward_path,
    reward_terms,
    reward_weights,
    score_terms,
    total_reward,
)

USER_FILE = '''
import math
from pathlib import Path

Path(__file__).with_suffix(".imports").open("a").write("x")  # one x per import of this module


def mentions_answer(response_text, sample):
    return 1.0 if sample.answer in response_text else 0.0


def short_answer(response_text, sample):
    return (0.0, "too_short") if len(response_text) < 30 else 0.25


def boom(response_text, sample):
    raise ValueError("my bug")


def not_finite(response_text, sample):
    return math.nan


def a_string(response_text, sample):
    return "0.5"


def three_args(a, b, c):
    return 1.0
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


@pytest.fixture(scope="module")
def sample():
    return Sample(id="s0", kind="image", images=[Image.new("RGB", (56, 56), "red")], question="What color is it?",
                  answer="red", qtype="color_at")


def _view(text: str, sample) -> ResponseView:
    tok = get_adapter("qwen2_5_vl").build_processor().tokenizer
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    attention = torch.full((len(ids), 40), 1 / 40)
    return ResponseView(sample, text, ids, attention, attention[:2].clone(), torch.arange(10, 26), (1, 4, 4), 1, 1,
                        tok, "think")


def _config(*custom: str, task: str = "exact") -> RLJobConfig:
    return load_config(RLJobConfig, None, [f"reward.task={task}", f"reward.custom=[{', '.join(custom)}]"])


def test_a_file_function_scores_and_is_imported_once(user_file, sample):
    path = f"{user_file}:mentions_answer"
    right = f"<think>x</think><answer>{sample.answer}</answer>"
    assert custom_score(path, right, sample) == Score(1.0, None)
    assert custom_score(path, "<answer>nothing</answer>", sample) == Score(0.0, None)
    assert load_reward_function(path) is load_reward_function(f"{user_file}:mentions_answer")
    custom_score(f"{user_file}:short_answer", right, sample)  # another function of the same file
    assert user_file.with_suffix(".imports").read_text() == "x"


def test_an_importable_module_function(tmp_path, monkeypatch, sample):
    package = tmp_path / "ral_test_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(textwrap.dedent('''
        def answer_length(response_text, sample):
            return len(response_text) / 100
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert custom_score("ral_test_user_pkg.scoring:answer_length", "x" * 25, sample) == Score(0.25, None)


def test_every_failure_scores_zero_with_its_reason(user_file, sample):
    text = "<answer>red</answer>"
    assert custom_score(f"{user_file}:short_answer", text, sample) == Score(0.0, "too_short")  # a (value, reason)
    assert custom_score(f"{user_file}:boom", text, sample) == Score(0.0, "error_ValueError")
    assert custom_score(f"{user_file}:not_finite", text, sample) == Score(0.0, "non_finite_score")
    assert custom_score(f"{user_file}:a_string", text, sample) == Score(0.0, "not_a_number_str")
    assert custom_score(f"{user_file}:missing", text, sample) == Score(0.0, "import_failed")
    assert custom_score(f"{user_file.parent / 'nowhere.py'}:f", text, sample) == Score(0.0, "import_failed")


def test_custom_terms_in_the_registry_and_the_total(user_file, sample):
    cfg = _config(f"{{name: mentions, path: '{user_file}:mentions_answer', weight: 0.5}}",
                  f"{{name: brevity, path: '{user_file}:short_answer', weight: 2.0}}",
                  f"{{name: buggy, path: '{user_file}:boom', weight: 1.0}}")
    terms = reward_terms(cfg.reward)
    assert list(terms) == ["task", "format", "sparsity", "consistency", "mentions", "brevity", "buggy"]
    assert not any(terms[n].needs_attention for n in ("mentions", "brevity", "buggy"))
    weights = reward_weights(cfg.reward)
    assert weights == {"task": 0.9, "format": 0.1, "sparsity": 0.0, "consistency": 0.0, "mentions": 0.5,
                       "brevity": 2.0, "buggy": 1.0}
    view = _view(f"<think>look at it</think><answer>{sample.answer}</answer>", sample)
    values, notes = score_terms(view, terms)
    assert (values["task"], values["format"], values["mentions"], values["brevity"], values["buggy"]) == \
        (1.0, 1.0, 1.0, 0.25, 0.0)
    assert notes == {"buggy": "error_ValueError"}
    assert total_reward(values, weights) == pytest.approx(0.9 + 0.1 + 0.5 * 1.0 + 2.0 * 0.25)
    # evaluation reports custom terms under their names
    assert metric_names(terms)[-5:] == ("mentions", "brevity", "buggy", "attention_on_target", "target_fraction")
    row = report_row(view, terms)
    assert row["mentions"] == 1.0 and row["accuracy"] == 1.0 and row["brevity"] == 0.25


def test_the_default_registry_is_the_built_ins():
    default = RLJobConfig().reward
    assert default.task == "exact" and default.custom == []
    assert dict(reward_terms(default)) == dict(reward_terms(None))
    assert reward_weights(default) == reward_weights(None)


def test_path_syntax():
    assert parse_reward_path("pkg.mod:fn") == ("pkg.mod", "fn", False)
    assert parse_reward_path("dir/file.py:fn") == ("dir/file.py", "fn", True)
    assert parse_reward_path("file.py:fn") == ("file.py", "fn", True)


@pytest.mark.parametrize(("custom", "message"), [
    ("{name: r, path: 'pkg.mod', weight: 1}", r"reward\.custom\.0\.path: .*not 'pkg\.module:function'"),
    ("{name: r, path: 'pkg mod:fn', weight: 1}", r"reward\.custom\.0\.path: .*not a dotted module name"),
    ("{name: r, path: 'dir/file.txt:fn', weight: 1}", r"reward\.custom\.0\.path: .*must name a \.py file"),
    ("{name: r, path: 'pkg.mod:not-a-name', weight: 1}", r"reward\.custom\.0\.path"),
    ("{name: r, path: 'pkg.mod:fn'}", r"reward\.custom\.0\.weight: Field required"),
    ("{name: r, path: 'pkg.mod:fn', weight: .inf}", r"reward\.custom\.0\.weight: Input should be a finite number"),
    ("{name: 'my term', path: 'pkg.mod:fn', weight: 1}", r"reward\.custom\.0\.name: String should match"),
    ("{name: format, path: 'pkg.mod:fn', weight: 1}", r"reward\.custom: .*'format' is a built-in reward term"),
    ("{name: total, path: 'pkg.mod:fn', weight: 1}", r"reward\.custom: .*'total' is reserved"),
    ("{name: mean, path: 'pkg.mod:fn', weight: 1}", r"reward\.custom: .*'mean' is reserved"),
    ("{name: accuracy, path: 'pkg.mod:fn', weight: 1}", r"reward\.custom: .*'accuracy' is reserved"),
    ("{name: r, path: 'a.b:fn', weight: 1}, {name: r, path: 'a.b:g', weight: 1}",
     r"reward\.custom: .*entry 1: name 'r' is used twice"),
])
def test_a_bad_custom_entry_fails_the_config_naming_the_field(custom, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLJobConfig, None, [f"reward.custom=[{custom}]"])


def test_custom_names_are_not_reward_weights_keys():
    with pytest.raises(ConfigError, match=r"reward\.weights: .*unknown reward terms \['mine'\]"):
        load_config(RLJobConfig, None, ["reward.weights={task: 1.0, mine: 0.5}"])


def test_the_driver_check_imports_every_function_naming_the_field(user_file, tmp_path):
    _config(f"{{name: ok, path: '{user_file}:mentions_answer', weight: 1}}").reward.check_custom_imports()
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_anywhere\n")
    for path, message in [
        (f"{tmp_path / 'absent.py'}:f", r"reward\.custom\.1\.path: no file .*absent\.py"),
        (f"{user_file}:missing", r"reward\.custom\.1\.path: .*has no attribute 'missing'"),
        (f"{user_file}:three_args", r"reward\.custom\.1\.path: .*three_args\(a, b, c\) cannot be called as "
                                    r"fn\(response_text, sample\)"),
        (f"{broken}:f", r"reward\.custom\.1\.path: importing .*broken\.py failed: ModuleNotFoundError"),
        ("ral_no_such_package.mod:f", r"reward\.custom\.1\.path: importing ral_no_such_package\.mod failed"),
    ]:
        cfg = _config(f"{{name: ok, path: '{user_file}:mentions_answer', weight: 1}}",
                      f"{{name: bad, path: '{path}', weight: 1}}")
        with pytest.raises(ConfigError, match=message):
            cfg.reward.check_custom_imports()


def test_a_nan_total_never_comes_from_a_custom_term(user_file, sample):
    cfg = _config(f"{{name: nan_term, path: '{user_file}:not_finite', weight: 1.0}}")
    values, notes = score_terms(_view("<think>a</think><answer>b</answer>", sample), reward_terms(cfg.reward))
    assert values["nan_term"] == 0.0 and notes["nan_term"] == "non_finite_score"
    assert math.isfinite(total_reward(values, reward_weights(cfg.reward)))
