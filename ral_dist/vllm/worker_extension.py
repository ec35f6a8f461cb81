"""Methods added to every vLLM worker (``LLM(worker_extension_cls=...)``), called through ``llm.collective_rpc``.

Runs inside vLLM's worker process, where ``self`` is the worker. Weights go through the worker's
``reload_weights`` (in place, checkpoint format): it re-runs the kernel post-processing that loading did at
start-up (the CPU backend repacks linear weights, so writing parameters directly would not reach the kernels).
"""

from __future__ import annotations

from safetensors.torch import load

EXTENSION = "ral_dist.vllm.worker_extension.WeightUpdateExtension"


class WeightUpdateExtension:
    def ral_load_weights(self, data: bytes) -> dict:
        """Load a full HF-named state dict (safetensors bytes) in place; every parameter must be written."""
        state = load(data)
        model = self.model_runner.get_model()
        expected = {name for name, _ in model.named_parameters()}
        loaded: set[str] = set()
        load_weights = model.load_weights

        def recording(weights):  # vLLM only warns about parameters a reload missed; we fail instead
            names = load_weights(weights)
            loaded.update(names or ())
            return names

        model.load_weights = recording  # an instance attribute for this call only
        try:
            self.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)
        finally:
            del model.load_weights
        missing = sorted(expected - loaded)
        if missing:
            raise RuntimeError(f"{len(missing)} vLLM parameters were not in the new weights, e.g. {missing[:5]}")
        return {"tensors": len(state), "params_loaded": len(loaded)}
