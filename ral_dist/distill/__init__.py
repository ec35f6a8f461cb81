"""On-policy (attention) distillation (RAL.md §5): the student samples as in the RL job, a frozen teacher scores its
samples. teacher (TeacherActor), pairing (the teacher/student check), targets (what the teacher returns), queue
(teacher calls in flight), learner (DistillLearner: the RL learner with the distillation loss), controller, job."""
