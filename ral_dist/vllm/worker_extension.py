"""Methods added to every vLLM worker (``LLM(worker_extension_cls=...)``), called through ``llm.collective_rpc``.

Runs inside vLLM's worker process, where ``self`` is the worker. Weights go through the worker's
``reload_weights`` (in place, checkpoint format): it re-runs the kernel post-processing that loading did at
start-up (the CPU backend repacks linear weights, so writing parameters directly would not reach the kernels).

Every load in vLLM, ours or its weight-transfer engines' (the broadcast), passes (name, tensor) pairs in
checkpoint format to the model's ``load_weights``: `_LoadRecorder` wraps it to record which parameters were
written and, for the sync check, the `weight_digest` of the tensors as they pass (before vLLM repacks them).
"""

from __future__ import annotations

import time

from safetensors.torch import load

from ral_dist.vllm.weight_digest import tensor_digest

EXTENSION = "ral_dist.vllm.worker_extension.WeightUpdateExtension"
RECORD_DIGEST, TAKE_DIGEST = "ral_record_digest", "ral_take_digest"  # the broadcast's sync check


class _LoadRecorder:
    """Wraps ``model.load_weights`` (an instance attribute, removed by `remove`): the parameter names it wrote
    and, with ``digest``, the digest of every tensor it was given."""

    def __init__(self, model, digest: bool):
        self.model, self.digest = model, digest
        self.loaded: set[str] = set()
        self.digests: dict[str, tuple[float, float, float]] = {}
        self.seconds = 0.0  # spent digesting
        self._load_weights = model.load_weights
        model.load_weights = self._recording

    def _recording(self, weights):
        names = self._load_weights(self._passing(weights))
        self.loaded.update(names or ())
        return names

    def _passing(self, weights):
        for name, tensor in weights:
            if self.digest:
                t0 = time.perf_counter()
                self.digests[name] = tensor_digest(tensor)
                self.seconds += time.perf_counter() - t0
            yield name, tensor

    def remove(self) -> None:
        del self.model.load_weights


class WeightUpdateExtension:
    def ral_load_weights(self, data: bytes, digest: bool = False) -> dict:
        """Load a full HF-named state dict (safetensors bytes) in place; every parameter must be written. With
        ``digest`` the report carries the digest of the tensors loaded."""
        state = load(data)
        model = self.model_runner.get_model()
        expected = {name for name, _ in model.named_parameters()}
        recorder = _LoadRecorder(model, digest)  # vLLM only warns about parameters a reload missed; we fail
        try:
            self.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)
        finally:
            recorder.remove()
        missing = sorted(expected - recorder.loaded)
        if missing:
            raise RuntimeError(f"{len(missing)} vLLM parameters were not in the new weights, e.g. {missing[:5]}")
        return {"tensors": len(state), "params_loaded": len(recorder.loaded),
                "digest": recorder.digests if digest else None, "digest_s": recorder.seconds}

    def ral_record_digest(self) -> None:
        """Digest every tensor the next loads pass (a broadcast: vLLM's transfer engine calls load_weights)."""
        if getattr(self, "_ral_recorder", None) is not None:
            raise RuntimeError("a digest is already being recorded (a previous broadcast never finished)")
        self._ral_recorder = _LoadRecorder(self.model_runner.get_model(), digest=True)

    def ral_take_digest(self) -> dict:
        """Stop recording; the digest of every tensor loaded since `ral_record_digest`, and its seconds."""
        recorder, self._ral_recorder = getattr(self, "_ral_recorder", None), None
        if recorder is None:
            raise RuntimeError("ral_take_digest without ral_record_digest")
        recorder.remove()
        return {"digest": recorder.digests, "digest_s": recorder.seconds}
