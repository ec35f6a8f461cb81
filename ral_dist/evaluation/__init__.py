"""Greedy evaluation of a policy (reward terms, grounding, per question type) and attention heatmaps."""
