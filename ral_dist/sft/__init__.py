"""The SFT warm start: its batches, its Ray Train loop, and the job that trains or reuses a cached checkpoint."""
