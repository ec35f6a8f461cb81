"""The distillation job's teacher calls: one per rollout chunk, at most ``teacher.queue_size`` submitted and not yet
consumed by the learners; further chunks wait for a slot (back-pressure on the teacher, so targets never pile up in
the object store)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import ray

from ral_dist.runtime.ray_cluster import wait_all


class TeacherQueue:
    """Teacher calls per rollout chunk, at most ``size`` of them submitted and not yet consumed by the learners.

    A chunk is its rollout call's refs ([accounting, rank 0's trajectories, ...]); a call returns [stats, rank 0's
    targets, ...], cut like the trajectories, so that each learner rank fetches only its own targets.
    """

    def __init__(self, teachers: list, size: int, ranks: int, audit: Callable[[int, int], str | None]):
        self.teachers, self.size, self.ranks, self.audit = teachers, size, ranks, audit
        self.waiting: deque = deque()  # (step, chunk refs) without a slot yet
        self.submitted: dict[int, list[list]] = {}  # step -> [[stats ref, targets refs per rank]] in chunk order
        self._next = 0

    def put(self, step: int, chunks: list[list]) -> None:
        self.waiting.extend((step, chunk) for chunk in chunks)
        self._submit()

    def _submit(self) -> None:
        while self.waiting and sum(map(len, self.submitted.values())) < self.size:
            step, chunk = self.waiting.popleft()
            teacher = self.teachers[self._next % len(self.teachers)]
            self._next += 1
            path = self.audit(step, len(self.submitted.get(step, [])))
            call = teacher.targets.options(num_returns=self.ranks + 1).remote(*chunk, audit_path=path)
            self.submitted.setdefault(step, []).append(call)

    def targets(self, step: int, rank: int) -> list:
        """One rank's target refs of the step, in chunk order (every chunk of the step has a slot: queue_size >=
        chunks)."""
        if any(s == step for s, _ in self.waiting):  # DistillJobConfig refuses such a queue_size
            raise RuntimeError(f"step {step}: teacher.queue_size {self.size} cannot hold one step's chunks")
        return [call[1 + rank] for call in self.submitted.get(step, [])]

    def depth(self) -> dict[str, int]:
        """Teacher calls running or queued in a TeacherActor, done and not yet consumed, and waiting for a slot."""
        refs = [call[0] for calls in self.submitted.values() for call in calls]
        ready, running = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False) if refs else ([], [])
        return {"in_flight": len(running), "ready": len(ready), "waiting": len(self.waiting)}

    def consumed(self, step: int, timeout_s: float) -> dict:
        """The learners took the step's targets: free its slots, submit waiting calls; the teacher's own stats."""
        calls = self.submitted.pop(step, [])
        stats = wait_all([call[0] for call in calls], f"teacher stats of step {step}", timeout_s)
        self._submit()
        return {"teacher_s": sum(s["seconds"] for s in stats), "teacher_trajectories": sum(s["trajectories"]
                                                                                        for s in stats)}
