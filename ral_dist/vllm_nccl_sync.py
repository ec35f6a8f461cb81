"""GPU clusters only: learner rank 0 broadcasts the weights to the vLLM engines over NCCL, through vLLM's
weight-transfer API (``vllm.distributed.weight_transfer``, ``WeightTransferConfig(backend="nccl")``).

The CPU path (`ral_dist.vllm_weight_sync`: safetensors bytes through a worker extension) is what runs and is
tested here; NCCL needs CUDA, so this module is exercised on GPU clusters only (the vLLM stage checks that the
API it names exists in the installed vLLM). It is not yet wired into the controller (config load rejects
``rollout.vllm.weight_sync: nccl``). Wiring, for one engine per rollout worker:

- rollout workers start their engine with ``nccl_llm_kwargs()`` (VLLMEngine does so for ``weight_sync: nccl``)
  and expose an `EngineEndpoint`'s five methods as actor methods;
- learner rank 0 (ZeRO 0-2: it holds full parameters) builds ``NcclWeightSender(engine.module, rollout actors,
  address, port, engine_ranks)`` once and calls ``send(version, timeout_s)`` after every step; the endpoint's
  ``finish_weight_update`` resets vLLM's encoder and prefix caches, as the CPU path does.
"""

from __future__ import annotations

from ral_dist.vllm_weight_sync import reset_caches, with_timeout


def nccl_llm_kwargs() -> dict:
    from vllm.config import WeightTransferConfig

    return {"weight_transfer_config": WeightTransferConfig(backend="nccl")}


class EngineEndpoint:
    """The engine side of the handshake that vLLM's ``RayVLLMWeightSyncClient`` drives on each rollout actor."""

    def __init__(self, llm):
        self.llm = llm

    def init_weight_transfer_engine(self, request) -> None:
        self.llm.init_weight_transfer_engine(request)

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, request) -> None:
        self.llm.update_weights(request)

    def finish_weight_update(self) -> None:
        self.llm.finish_weight_update()
        reset_caches(self.llm)  # vision features and prefix KV of the old weights

    def update_weight_version(self, version: str) -> None:
        self.llm.update_weight_version(version)


class NcclWeightSender:
    """On learner rank 0: the NCCL group to the engines (rank 0 = this process), and one broadcast per sync."""

    def __init__(self, module, rollout_actors: list, master_address: str, master_port: int, engine_ranks: int):
        from vllm.distributed.weight_transfer.base import ModuleSource
        from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLTrainerInitInfo,
            NCCLTrainerWeightTransferEngine,
        )

        info = NCCLTrainerInitInfo(master_address=master_address, master_port=master_port,
                                   world_size=1 + engine_ranks, rank=0)
        self.transfer = NCCLTrainerWeightTransferEngine.trainer_init(
            info, client=RayVLLMWeightSyncClient(rollout_actors), source=ModuleSource(module))

    def send(self, version: int, timeout_s: float) -> None:
        """Broadcast every parameter (HF names; vLLM maps them in ``load_weights``), bounded in time. vLLM's
        sender runs start → update (concurrently with the broadcast) → finish on the engines itself."""
        with_timeout(self.transfer.send_weights, timeout_s, f"NCCL weight broadcast of version {version}")
