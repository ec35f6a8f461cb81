"""The learner's weights going out: the full state dict, a digest, the broadcast into the rollout workers' vLLM
engines, and checkpoints. Every method is collective under ZeRO-3 (each parameter is gathered): call it on every
rank."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch.distributed as dist

from ral_dist.messages.weights import WireState
from ral_dist.runtime.checkpoints import fsync_tree
from ral_dist.runtime.deepspeed_setup import full_state_dict, param_digest
from ral_dist.runtime.environment import process_environment
from ral_dist.runtime.object_store import Mirror


class LearnerWeights:
    """Mixed into `ral_dist.actors.learner.Learner` (which sets cfg, rank, ds_engine, processor, version and
    weight_sender / sender_backend)."""

    def state_dict(self) -> WireState | None:
        """Full weights (HF names) on rank 0, None elsewhere; zero-copy through Ray's object store (`WireState`).
        Collective under ZeRO-3: call on every rank."""
        # not copied here: Ray copies the returned tensors into its object store as this call returns, before the
        # actor runs its next update
        state = full_state_dict(self.ds_engine, copy=False)
        if self.rank != 0:
            return None
        return WireState({k: v.detach().cpu() for k, v in state.items()})

    def environment(self) -> dict:
        """This rank's libraries, CPU and numerics (`ral_dist.runtime.environment`)."""
        return process_environment()

    def state_nbytes(self) -> int:
        """Bytes of one weight sync: every parameter in model.dtype (under ZeRO-3 the full sizes, not the shards)."""
        size = 2 if self.cfg.model.dtype == "bfloat16" else 4
        return size * sum(getattr(p, "ds_numel", p.numel()) for p in self.ds_engine.module.parameters())

    def param_digest(self) -> float:
        """Sum of all parameters in float64: a cheap fingerprint of the weights."""
        return param_digest(self.ds_engine)

    def open_weight_sender(self, backend: str, rollout_actors: list, ranks_per_engine: int, timeout_s: float) -> None:
        """Broadcast weight sync (``rollout.vllm.weight_sync`` nccl / gloo): join the weight-transfer group of the
        rollout workers' vLLM engines. Every rank: under ZeRO-3 each parameter is gathered as it is sent."""
        from ral_dist.vllm.broadcast_sync import open_sender

        self.weight_sender = open_sender(self.rank, self.ds_engine, backend, rollout_actors, ranks_per_engine,
                                         timeout_s)
        self.sender_backend = backend

    def send_weights(self, version: int, timeout_s: float) -> None:
        """One broadcast of the current weights into the engines (every rank takes part)."""
        from ral_dist.vllm.broadcast_sync import send_weights

        if self.weight_sender is None:
            raise RuntimeError("send_weights before open_weight_sender")
        send_weights(self.weight_sender, self.sender_backend, version, timeout_s)

    def save_checkpoint(self, path: str, upload_to: str | None = None) -> list[str]:
        """HF checkpoint (rank 0) plus DeepSpeed optimizer state (every rank), fsynced by every rank before it
        returns (the controller renames the directory into place, `ral_dist.runtime.checkpoints`). With
        ``upload_to`` (a run directory on an object store), each rank writes to its own ``rank_N`` under ``path``
        on its node and uploads those files itself (ranks on one node must not upload each other's); returns the
        names it uploaded, which the controller checks before committing. Call on every rank."""
        out = Path(path) / f"rank_{self.rank}" if upload_to else Path(path)
        if upload_to:
            shutil.rmtree(out, ignore_errors=True)
        state = self.state_dict()  # collective under ZeRO-3
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            self.ds_engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
            self.processor.save_pretrained(str(out))
            (out / "learner_state.json").write_text(json.dumps({"version": self.version}) + "\n")
        # The version also travels in the client state, so a rank without rank 0's files still restores it.
        # save_latest=False: DeepSpeed's pointer file is also named "latest" and would collide with the tag dir.
        self.ds_engine.save_checkpoint(str(out / "deepspeed"), tag="latest", client_state={"version": self.version},
                                       save_latest=False)
        dist.barrier()
        if not upload_to:
            fsync_tree(out)  # each rank: what it wrote is on disk (on a shared filesystem too) before the rename
            return []
        uploaded = Mirror(upload_to).put_tree(out)
        shutil.rmtree(out)
        return uploaded

    def load_checkpoint(self, path: str) -> int:
        """Load a checkpoint directory, or the URL of one on an object store: then this rank downloads its
        DeepSpeed directory (every rank's files: ZeRO-1/2 reads them all) into a temporary directory first."""
        if "://" in path:
            with tempfile.TemporaryDirectory(prefix=f"ral-restore-rank{self.rank}-") as local:
                Mirror(path).pull(Path(local), only=("deepspeed", "learner_state.json"))
                return self._load_local(local)
        return self._load_local(path)

    def _load_local(self, path: str) -> int:
        load_path, client = self.ds_engine.load_checkpoint(str(Path(path) / "deepspeed"), tag="latest")
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}/deepspeed")
        if client and "version" in client:
            self.version = int(client["version"])
        else:
            self.version = int(json.loads((Path(path) / "learner_state.json").read_text())["version"])
        return self.version
