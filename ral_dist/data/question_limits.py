"""Questions the prompt cannot take: empty ones are skipped; over-long ones truncated (or skipped) by config."""

from __future__ import annotations

from .rows import Skipped
from .sample import Sample


def limit_questions(samples: list[Sample], max_chars: int, policy: str = "truncate"
                    ) -> tuple[list[Sample], list[Skipped], int]:
    """(kept samples, skipped with reasons, number truncated). ``policy``: ``truncate`` or ``skip``."""
    kept, skipped, truncated = [], [], 0
    for s in samples:
        question = s.question.strip()
        if not question:
            skipped.append(Skipped(line=s.meta.get("line", 0), id=s.id, reason="empty question"))
        elif len(question) > max_chars and policy == "skip":
            skipped.append(Skipped(line=s.meta.get("line", 0), id=s.id,
                                   reason=f"question longer than {max_chars} characters"))
        elif len(question) > max_chars:
            kept.append(s.model_copy(update={"question": question[:max_chars]}))
            truncated += 1
        else:
            kept.append(s)
    return kept, skipped, truncated
