"""The distillation job's controller: the RL controller plus TeacherActors whose targets stream to the learners.

Streaming: one teacher call per rollout chunk, submitted with the chunk's ObjectRef when the rollout is launched,
so Ray starts it the moment that chunk is sampled (the teacher overlaps the other chunks' sampling, the reward
scoring and, in one_step_off, the previous step's learning); the controller never fetches targets, it hands the
refs to the learners (`DistillLearner`), which take them as they complete. `TeacherQueue` bounds the calls in
flight (back-pressure).
"""

from __future__ import annotations

import ray

from ral_dist.actors.controller import Controller
from ral_dist.distill.learner import DistillLearner
from ral_dist.distill.pairing import side_fingerprint
from ral_dist.distill.queue import TeacherQueue
from ral_dist.distill.teacher import TeacherActor
from ral_dist.runtime.placement import bundle
from ral_dist.runtime.ray_cluster import wait_all


class DistillController(Controller):
    learner_class = DistillLearner

    def _extra_roles(self) -> list[tuple[str, list[dict]]]:
        tc = self.cfg.teacher
        return [("teacher", [bundle(tc.cpus_per_worker, tc.gpus_per_worker)] * tc.num_workers)]

    def _start_extra(self, on, prefix: str, config: dict) -> None:
        c, tc = self.cfg, self.cfg.teacher
        student = side_fingerprint(c.model.family, c.model.checkpoint, c.model.tiny)
        # Frozen and stateless between calls: a restarted teacher loads the same weights, so a retry is exact.
        teacher_cls = ray.remote(max_restarts=3, max_task_retries=2)(TeacherActor)
        self.teachers = [
            teacher_cls.options(name=f"{prefix}-teacher-{i}", num_cpus=tc.cpus_per_worker,
                                num_gpus=tc.gpus_per_worker, **on("teacher", i)).remote(i, config, student)
            for i in range(tc.num_workers)]
        # A teacher that does not match the student fails in its constructor: here, before any step.
        wait_all([t.ready.remote() for t in self.teachers], "teachers to start", c.run.timeout_s)
        self.queue = TeacherQueue(self.teachers, tc.queue_size, c.learner.num_ranks, self._audit_path)

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

    def _learner_inputs(self, step: int, rank: int) -> dict:
        if rank == 0:
            self._depth = self.queue.depth()  # what the learners find when they start
        return {"teacher": self.queue.targets(step, rank)}

    def _after_learn(self, step: int) -> dict:
        # the learners returned, i.e. consumed the step's targets: free their slots
        return self.queue.consumed(step, self.cfg.run.timeout_s) | {
            f"teacher_queue_{k}": v for k, v in self._depth.items()}

    def _progress_line(self, r: dict, eta: float) -> str:
        line = super()._progress_line(r, eta)
        return line.replace(" | ETA", f" | teacher {r['teacher_s']:.1f}s (learners waited {r['teacher_wait_s']:.1f}s) "
                                      f"rkl {r['reverse_kl']:.3f} tjsd {r['teacher_attn_jsd']:.3f} | ETA", 1)
