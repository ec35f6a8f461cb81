"""The learner's full state dict as it travels to the rollout workers through Ray's object store.

Pickled as it is, a dict of tensors is copied into a pickle stream by the learner and out of it again by each
worker. `WireState` sends each distinct tensor's bytes as a uint8 numpy view instead, which pickle 5 hands to Ray
out of band: one copy into the store, none out of it (the worker's tensors are read-only views of the stored
bytes). A tied tensor (SmolLM2's embedding is its LM head) goes once, its other names pointing at it again on
arrival. `load_weights` lets a CPU model keep those views as its weights: no copy at all, and one copy of the policy
in the node's object store for all its rollout workers.
"""

from __future__ import annotations

import warnings

import torch


class WireState(dict):
    """A state dict (name -> CPU tensor) that pickles zero-copy; it unpickles into a plain dict."""

    def __reduce__(self):
        arrays, layout, first_name = {}, {}, {}
        for name, t in self.items():
            key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if key in first_name:  # the same tensor under another name (tied weights)
                layout[name] = first_name[key]
                continue
            first_name[key] = name
            t = t.detach().contiguous()
            arrays[name] = t.reshape(-1).view(torch.uint8).numpy()
            layout[name] = (str(t.dtype).removeprefix("torch."), tuple(t.shape))
        return _restore, (arrays, layout)


def _restore(arrays: dict, layout: dict) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the arrays are read-only (the object store's memory)
        for name, array in arrays.items():
            dtype, shape = layout[name]
            out[name] = torch.from_numpy(array).view(getattr(torch, dtype)).reshape(shape)
    return {name: out[spec] if isinstance(spec, str) else out[name] for name, spec in layout.items()}


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model`` strictly (a missing, unexpected or misshapen tensor raises). A model on the CPU
    whose tensors have the state's dtypes takes the handed tensors themselves instead of copying them: the rollout
    only reads its weights, and the next sync replaces them (the object store keeps a version while a worker holds
    it). Anywhere else (a GPU, another dtype) they are copied into the model's own."""
    held = model.state_dict()
    adopt = all(t.device.type == "cpu" and name in state and state[name].dtype == t.dtype
                and state[name].device.type == "cpu" for name, t in held.items())
    model.load_state_dict(state, strict=True, assign=adopt)
