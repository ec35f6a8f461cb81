"""vLLM as the rollout engine: the only package of ral_dist that imports vllm (tests/test_imports.py checks it).

engine (sampling on vllm.LLM, p_old from the worker's transformers replica), inputs (our encoding as vLLM
prompts), byte_sync and worker_extension (weights as safetensors bytes into the running engine), broadcast_sync
(weights by broadcast from learner rank 0 through vLLM's weight-transfer API), logprob_mismatch (vLLM vs
transformers, per step), config_check (the engine's config rules). Nothing here imports vllm at package import:
the main environment, which has no vllm, imports inputs, byte_sync, logprob_mismatch and config_check.
"""
