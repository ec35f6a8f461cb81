"""The distillation job's controller: the RL controller plus TeacherActors whose targets stream to the learners.

Streaming: one teacher call per rollout chunk, submitted with the chunk's ObjectRef when the rollout is launched,
so Ray starts it the moment that chunk is sampled (the teacher overlaps the other chunks' sampling, the reward
scoring and, in one_step_off, the previous step's learning); the controller never fetches targets, it hands the
refs to the learners, which take them as they complete. `TeacherQueue` bounds the calls submitted and not yet
consumed (``teacher.queue_size``): beyond it a chunk's call waits until a step's targets are consumed
(back-pressure on the teacher, so targets never pile up in the object store).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import ray

from ral_dist.controller import Controller
from ral_dist.ray_cluster import wait_all
from ral_dist.teacher import TeacherActor, side_fingerprint


class TeacherQueue:
    """Teacher calls per rollout chunk, at most ``size`` of them submitted and not yet consumed by the learners."""

    def __init__(self, teachers: list, size: int, audit: Callable[[int, int], str | None]):
        self.teachers, self.size, self.audit = teachers, size, audit
        self.waiting: deque = deque()  # (step, chunk ref) without a slot yet
        self.submitted: dict[int, list[tuple]] = {}  # step -> [(targets ref, stats ref)] in chunk order
        self._next = 0

    def put(self, step: int, chunk_refs: list) -> None:
        self.waiting.extend((step, ref) for ref in chunk_refs)
        self._submit()

    def _submit(self) -> None:
        while self.waiting and sum(map(len, self.submitted.values())) < self.size:
            step, chunk = self.waiting.popleft()
            teacher = self.teachers[self._next % len(self.teachers)]
            self._next += 1
            path = self.audit(step, len(self.submitted.get(step, [])))
            self.submitted.setdefault(step, []).append(teacher.targets.options(num_returns=2).remote(chunk, path))

    def targets(self, step: int) -> list:
        """The step's target refs, in chunk order (every chunk of the step has a slot: queue_size >= chunks)."""
        if any(s == step for s, _ in self.waiting):  # DistillJobConfig refuses such a queue_size
            raise RuntimeError(f"step {step}: teacher.queue_size {self.size} cannot hold one step's chunks")
        return [targets for targets, _ in self.submitted.get(step, [])]

    def depth(self) -> dict[str, int]:
        """Teacher calls running or queued in a TeacherActor, done and not yet consumed, and waiting for a slot."""
        refs = [targets for calls in self.submitted.values() for targets, _ in calls]
        ready, running = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False) if refs else ([], [])
        return {"in_flight": len(running), "ready": len(ready), "waiting": len(self.waiting)}

    def consumed(self, step: int, timeout_s: float) -> dict:
        """The learners took the step's targets: free its slots, submit waiting calls; the teacher's own stats."""
        calls = self.submitted.pop(step, [])
        stats = wait_all([s for _, s in calls], f"teacher stats of step {step}", timeout_s)
        self._submit()
        return {"teacher_s": sum(s["seconds"] for s in stats), "teacher_trajectories": sum(s["trajectories"]
                                                                                        for s in stats)}


class DistillController(Controller):
    def _extra_bundles(self) -> list[dict]:
        tc = self.cfg.teacher
        return [{"CPU": tc.cpus_per_worker, **({"GPU": tc.gpus_per_worker} if tc.gpus_per_worker else {})}
                ] * tc.num_workers

    def _start_extra(self, on, first_bundle: int, prefix: str, config: dict) -> None:
        c, tc = self.cfg, self.cfg.teacher
        student = side_fingerprint(c.model.family, c.model.checkpoint, c.model.tiny)
        # Frozen and stateless between calls: a restarted teacher loads the same weights, so a retry is exact.
        teacher_cls = ray.remote(max_restarts=3, max_task_retries=2)(TeacherActor)
        self.teachers = [
            teacher_cls.options(name=f"{prefix}-teacher-{i}", num_cpus=tc.cpus_per_worker,
                                num_gpus=tc.gpus_per_worker, **on(first_bundle + i)).remote(i, config, student)
            for i in range(tc.num_workers)]
        # A teacher that does not match the student fails in its constructor: here, before any step.
        wait_all([t.ready.remote() for t in self.teachers], "teachers to start", c.run.timeout_s)
        self.queue = TeacherQueue(self.teachers, tc.queue_size, self._audit_path)

    def _audit_path(self, step: int, chunk: int) -> str | None:
        if step >= self.cfg.teacher.audit_steps:
            return None
        return str(self.run.path / "teacher_audit" / f"step_{step:06d}_chunk_{chunk}.pt")

    def stop(self) -> None:
        for actor in getattr(self, "teachers", []):
            ray.kill(actor)
        super().stop()

    def _launch_rollout(self, step: int) -> tuple[list, float]:
        refs, t_launch = super()._launch_rollout(step)
        self.queue.put(step, refs)  # each call starts when its chunk is sampled
        return refs, t_launch

    def _learner_kwargs(self, step: int) -> dict:
        self._depth = self.queue.depth()  # what the learners find when they start
        return {"teacher": self.queue.targets(step)}

    def _record(self, step, results, stats, *args) -> dict:
        # Called once the learners returned, i.e. consumed the step's targets.
        record = super()._record(step, results, stats, *args)
        record.update(self.queue.consumed(step, self.cfg.run.timeout_s))
        record.update({f"teacher_queue_{k}": v for k, v in self._depth.items()})
        for key in ("reverse_kl", "teacher_attn_jsd", "teacher_wait_s"):
            record[key] = stats[key]
        return record

    def _progress_line(self, r: dict, eta: float) -> str:
        line = super()._progress_line(r, eta)
        return line.replace(" | ETA", f" | teacher {r['teacher_s']:.1f}s (learners waited {r['teacher_wait_s']:.1f}s) "
                                      f"rkl {r['reverse_kl']:.3f} tjsd {r['teacher_attn_jsd']:.3f} | ETA", 1)
