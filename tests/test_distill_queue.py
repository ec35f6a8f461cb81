"""TeacherQueue's bound (back-pressure): calls beyond teacher.queue_size wait until a step's targets are consumed.
Real Ray objects (ray.init); the teachers are stand-ins that record each call (the real TeacherActor is in
test_teacher.py and test_distill_job.py)."""

import ray

from ral_dist.distill.queue import TeacherQueue


class _Teacher:
    def __init__(self, calls: list):
        self.calls = calls
        self.targets = self

    def options(self, num_returns: int):
        assert num_returns == 3  # the stats, then 2 ranks' targets
        return self

    def remote(self, accounting, *shards, audit_path):
        self.calls.append((accounting, audit_path))
        return [ray.put({"seconds": 0.5, "trajectories": 1})] + [ray.put([f"{accounting}{r}"]) for r in range(2)]


def test_calls_beyond_the_queue_size_wait_for_consumption():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        calls: list = []
        queue = TeacherQueue([_Teacher(calls), _Teacher(calls)], size=2, ranks=2, audit=lambda s, c: f"{s}-{c}")
        queue.put(0, [["a", "a-0", "a-1"], ["b", "b-0", "b-1"]])  # a chunk: its accounting and 2 ranks' shares
        queue.put(1, [["c"], ["d"]])  # one_step_off: the next step's chunks, while step 0's are not consumed
        assert calls == [("a", "0-0"), ("b", "0-1")]  # bounded: c and d wait for a slot
        assert queue.depth() == {"in_flight": 0, "ready": 2, "waiting": 2}
        assert [ray.get(r) for r in queue.targets(0, rank=1)] == [["a1"], ["b1"]]  # each rank: its own targets
        assert queue.consumed(0, timeout_s=30) == {"teacher_s": 1.0, "teacher_trajectories": 2}
        assert calls[2:] == [("c", "1-0"), ("d", "1-1")]  # slots freed: step 1's calls go out, in order
        assert [ray.get(r) for r in queue.targets(1, rank=0)] == [["c0"], ["d0"]]
        assert queue.depth()["waiting"] == 0
    finally:
        ray.shutdown()
