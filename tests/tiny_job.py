"""The tiny RL job the cluster tests submit: a random tiny Qwen2.5-VL, 2+2+2 actors, a few steps."""

TINY_JOB = {
    "model": {"family": "qwen2_5_vl", "checkpoint": None},
    "data": {"task": {"seed": 3}, "sizes": {"train": 48, "val": 8, "test": 8}, "prompt": {"mode": "think"}},
    "rollout": {"num_workers": 2, "prompts_per_step": 2, "group_size": 3, "max_new_tokens": 8,
                "cpus_per_worker": 0.25},
    "reward": {"num_workers": 2, "cpus_per_worker": 0.1,
               "weights": {"task": 0.9, "format": 0.1, "sparsity": 0.5, "consistency": 0.5}},
    "learner": {"num_ranks": 2, "zero_stage": 2, "lr": 1e-3, "num_minibatches": 2, "lambda_attn": 1.0,
                "cpus_per_rank": 0.5},
    "run": {"steps": 3, "checkpoint_every": 2, "heatmap_every": 2, "heatmap_prompts": 2, "timeout_s": 300},
}
