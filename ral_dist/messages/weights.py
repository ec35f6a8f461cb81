"""The learner's full state dict as it travels to the rollout workers through Ray's object store.

Pickled as it is, a dict of tensors is copied into a pickle stream by the learner and out of it again by each
worker. `WireState` sends each distinct tensor's bytes as a uint8 numpy view instead, which pickle 5 hands to Ray
out of band: one copy into the store, none out of it (the worker's tensors are read-only views of the stored bytes,
and ``load_state_dict`` copies them into its own parameters). A tied tensor (SmolLM2's embedding is its LM head)
goes once, its other names pointing at it again on arrival.
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
