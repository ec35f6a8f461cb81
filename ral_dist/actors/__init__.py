"""The actors of an RL run, thin: state plus calls into `ral_dist.algorithms`, `models`, `rewards` and `messages`.

controller (the step loop, placement, advantages, checkpoints), rollout_worker (samples with p_old), reward_worker
(the registered reward terms), learner (DeepSpeed ranks; the loss is a hook), weight_sync (learner -> rollout).
"""
