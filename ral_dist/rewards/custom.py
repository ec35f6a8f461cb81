"""User reward functions (`reward.custom`): ``fn(response_text, sample) -> float | (float, reason)``, named by
``"pkg.module:fn"`` or ``"path/to/file.py:fn"`` (a relative file path is read from the working directory, the job's
working_dir under ``ray job submit``).

Each function is imported once per process (a reward worker) and every call is guarded: a function that raises,
returns NaN / inf or something that is not a number scores 0 with a reason, counted like the built-in terms'.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ral_dist.algorithms import Score

log = logging.getLogger(__name__)

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_REASON = 60  # reasons are counted by value in metrics.jsonl: keep them short labels

_loaded: dict[str, Callable | Exception] = {}  # path -> the function, or why it could not be imported
_reported: set[tuple[str, str]] = set()  # (path, exception type) already logged with its traceback


class CustomRewardError(ValueError):
    """A custom reward path that is malformed or cannot be imported."""


def parse_reward_path(path: str) -> tuple[str, str, bool]:
    """``"pkg.mod:fn"`` -> ("pkg.mod", "fn", False); ``"dir/file.py:fn"`` -> ("dir/file.py", "fn", True).
    Raises `CustomRewardError` on any other shape."""
    target, sep, name = str(path).rpartition(":")
    if not sep or not target or not _IDENTIFIER.fullmatch(name):
        raise CustomRewardError(f"{path!r} is not 'pkg.module:function' or 'path/to/file.py:function'")
    is_file = target.endswith(".py") or "/" in target
    if is_file and not target.endswith(".py"):
        raise CustomRewardError(f"{path!r}: a file path must name a .py file")
    if not is_file and not _DOTTED.fullmatch(target):
        raise CustomRewardError(f"{path!r}: {target!r} is not a dotted module name")
    return target, name, is_file


def _import_file(file: str):
    resolved = Path(file).resolve()
    if not resolved.is_file():
        raise CustomRewardError(f"no file {file} (looked at {resolved})")
    # A stable, unique module name per file, registered before execution (importlib's recipe: dataclasses and
    # pickling inside the user's module need to find it in sys.modules).
    name = f"ral_dist_user_reward_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import(path: str) -> Callable:
    target, name, is_file = parse_reward_path(path)
    try:
        module = _import_file(target) if is_file else importlib.import_module(target)
    except CustomRewardError:
        raise
    except Exception as exc:
        raise CustomRewardError(f"importing {target} failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if fn is None:
        raise CustomRewardError(f"{target} has no attribute {name!r}")
    if not callable(fn):
        raise CustomRewardError(f"{target}.{name} is not callable")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise CustomRewardError(f"{target}.{name}{inspect.signature(fn)} cannot be called as "
                                "fn(response_text, sample)") from None
    except ValueError:  # no signature to read (some builtins): the call itself will tell
        pass
    return fn


def load_reward_function(path: str) -> Callable:
    """The function a path names, imported once per process (its failure too). Raises `CustomRewardError`."""
    if path not in _loaded:
        try:
            _loaded[path] = _import(path)
        except CustomRewardError as exc:
            _loaded[path] = exc
    found = _loaded[path]
    if isinstance(found, Exception):
        raise found
    return found


def as_score(result: Any) -> Score:
    """A user function's return value as a `Score`: a number, or (number, reason)."""
    reason = None
    if isinstance(result, tuple):
        if len(result) != 2:
            return Score(0.0, "bad_tuple")
        result, reason = result
        reason = None if reason is None else str(reason)[:_MAX_REASON]
    try:  # numbers, and one-element tensors / arrays; never a string, which float() would parse
        if not hasattr(result, "__float__"):
            raise TypeError
        value = float(result)
    except (TypeError, ValueError, RuntimeError):
        return Score(0.0, f"not_a_number_{type(result).__name__}"[:_MAX_REASON])
    if not math.isfinite(value):
        return Score(0.0, "non_finite_score")
    return Score(value, reason)


def custom_score(path: str, response_text: str, sample) -> Score:
    """``fn(response_text, sample)`` of the function at ``path``, never raising."""
    try:
        fn = load_reward_function(path)
    except CustomRewardError as exc:
        _report(path, "import_failed", exc)
        return Score(0.0, "import_failed")
    try:
        return as_score(fn(response_text, sample))
    except Exception as exc:  # noqa: BLE001 — a user's bug scores 0 with the reason; the worker goes on
        _report(path, type(exc).__name__, exc)
        return Score(0.0, f"error_{type(exc).__name__}"[:_MAX_REASON])


def _report(path: str, kind: str, exc: Exception) -> None:
    """Log each kind of failure of a function once per process, with its traceback: the counted reason says
    what failed, this says where."""
    if (path, kind) not in _reported:
        _reported.add((path, kind))
        log.warning("custom reward %s failed (%s); it scores 0 with the reason counted in metrics.jsonl",
                    path, kind, exc_info=exc)
