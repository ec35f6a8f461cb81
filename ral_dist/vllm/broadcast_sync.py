"""Weight sync by broadcast from learner rank 0 into the running vLLM engines, through vLLM's weight-transfer API
(``rollout.vllm.weight_sync``: ``nccl`` on GPUs; ``gloo``, the same handshake over gloo, on CPU).

vLLM drives the protocol (its `NCCLTrainerWeightTransferEngine.send_weights` runs on learner rank 0): once,
``init_weight_transfer_engine`` forms a stateless process group (learner rank 0 = rank 0, each engine's workers
after it); per sync, ``start_weight_update`` → ``update_weights`` on the engines (they receive) concurrently with
the broadcast → ``finish_weight_update`` (vLLM's layerwise reload re-runs the kernels' weight post-processing), and
then we reset the engine's encoder and prefix caches, as the bytes path does.

- ``nccl``: vLLM's own `NCCLWeightTransferEngine` (in the engine's workers) and `NCCLTrainerWeightTransferEngine`
  (learner rank 0), over `PyNcclCommunicator`. GPU-only, never run here: those two classes' communicator and
  broadcast lines (`open_trainer_endpoint`, `worker_init_process_group`, the packed NCCL producer/consumer).
- ``gloo``: the same two classes with only the communicator swapped (`_GlooGroup`, a vLLM stateless gloo group,
  one CPU tensor per broadcast): vLLM's handshake, the client, the learner-side source, rank layout, timeouts and
  cache resets all run for real in the vllm-cpu stage.

One engine per rollout worker, so each engine's workers get their own rank offset (`RolloutActorsClient`). The
rollout workers' transformers replicas still load the state dict from the object store
(`ral_dist.actors.weight_sync`).

The sync check: learner rank 0 digests every tensor as it sends it (`ral_dist.vllm.weight_digest`, on the
learner's device) and hands the digest to the rollout workers with ``finish_weight_update``; their engines'
workers digest what they received, on theirs. Every wait is bounded (`_bounded`); a transfer that outlives its
bound fails the step and is never retried (the run's recovery restarts the actors, which ends it).
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import ClassVar

import ray
import torch
from vllm.distributed.utils import stateless_init_torch_distributed_process_group
from vllm.distributed.weight_transfer.base import ModuleSource, ParamMeta
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
    NCCLWeightTransferEngine,
    NCCLWeightTransferInitInfo,
)

from ral_dist.config import ConfigError
from ral_dist.vllm.weight_digest import Digest, tensor_digest
from ral_dist.vllm.worker_extension import WeightUpdateExtension

GLOO_BACKEND = "ral_gloo"  # our vLLM weight-transfer backend name (registered below, in every process)
BACKENDS = {"nccl": "nccl", "gloo": GLOO_BACKEND}  # SyncPlan.broadcast -> vLLM backend
GLOO_EXTENSION = "ral_dist.vllm.broadcast_sync.GlooWeightUpdateExtension"


def _bounded(fn, timeout_s: float, what: str):
    """Run ``fn`` on a thread and stop waiting after ``timeout_s`` (a blocked NCCL/gloo call cannot be
    interrupted; the thread is left to the actor's restart, and nothing is retried on top of it)."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"{what} did not finish within {timeout_s:.0f}s") from None
    finally:
        pool.shutdown(wait=False)


def require_cuda(backend: str, where: str) -> None:
    """NCCL broadcasts between GPUs: the process that joins it (an engine's worker, a learner) must have CUDA."""
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError(f"rollout.vllm.weight_sync=nccl needs CUDA on {where} and this machine has none; use "
                          "'bytes', or 'gloo' (the same handshake on CPU)")


def llm_kwargs(backend: str) -> dict:
    """Extra ``vllm.LLM`` arguments of a broadcast mode: the worker-side transfer engine, and for gloo the worker
    extension whose import registers it in vLLM's worker process."""
    from vllm.config import WeightTransferConfig

    require_cuda(backend, "the rollout worker")
    out: dict = {"weight_transfer_config": WeightTransferConfig(backend=BACKENDS[backend])}
    if backend == "gloo":
        out["worker_extension_cls"] = GLOO_EXTENSION
    return out


# ------------------------------------------------------------------------------------------- gloo twin

class _GlooGroup:
    """What the NCCL engines use of `PyNcclCommunicator` (``broadcast``, ``destroy``), over a vLLM stateless gloo
    group: ranks are the group's own, independent of any global torch.distributed group in the process."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float):
        self.pg = stateless_init_torch_distributed_process_group(host, port, rank, world_size, "gloo",
                                                                 timeout=timedelta(seconds=timeout_s))

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        self.pg.broadcast(tensor, src).wait()

    def destroy(self) -> None:
        self.pg = None


@dataclass(kw_only=True)
class GlooInitInfo(NCCLWeightTransferInitInfo):
    timeout_s: float = 600.0  # a worker blocked in a broadcast whose sender died gives up after this


class GlooWeightTransferEngine(NCCLWeightTransferEngine):
    """vLLM's NCCL worker engine (layerwise reload in start/finish) receiving one CPU tensor per gloo broadcast."""

    init_info_cls = GlooInitInfo

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        pc = self.parallel_config  # the rank layout of vLLM's worker_init_process_group
        rank = init_info.rank_offset + pc.data_parallel_index * pc.world_size + pc.rank
        self.packed = False
        self.model_update_group = _GlooGroup(init_info.master_address, init_info.master_port, rank,
                                             init_info.world_size, init_info.timeout_s)

    def receive_weights(self, update_info) -> None:
        if self.model_update_group is None:
            raise RuntimeError("gloo weight transfer not initialized: call init_weight_transfer_engine first")
        for name, dtype_name, shape in zip(update_info.names, update_info.dtype_names, update_info.shapes,
                                           strict=True):
            weight = torch.empty(shape, dtype=getattr(torch, dtype_name), device=self.device)
            self.model_update_group.broadcast(weight, src=0)
            self.model.load_weights([(name, weight)])

    def update_weights(self, update_info: dict) -> None:
        self.receive_weights(self.parse_update_info(update_info))  # CPU: no device to synchronize


@dataclass
class GlooTrainerInitInfo(NCCLTrainerInitInfo):
    backend: ClassVar[str] = GLOO_BACKEND
    timeout_s: float = 600.0


class GlooTrainerWeightTransferEngine(NCCLTrainerWeightTransferEngine):
    """vLLM's NCCL trainer engine (its ``send_weights`` orchestration unchanged) over a gloo group."""

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None):
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, packed=False)
        if not engine.is_sender:
            return engine
        worker_info = GlooInitInfo(master_address=init_info.master_address, master_port=init_info.master_port,
                                   rank_offset=1, world_size=init_info.world_size, timeout_s=init_info.timeout_s)
        payload = {k: v for k, v in asdict(worker_info).items() if v is not None}

        def open_endpoint():  # both sides must rendezvous together, as in vLLM's trainer_init
            engine.model_update_group = _GlooGroup(init_info.master_address, init_info.master_port, 0,
                                                   init_info.world_size, init_info.timeout_s)

        _concurrently(lambda: client.init_weight_transfer_engine(payload), open_endpoint)
        return engine

    def _broadcast(self, source, meta: list[ParamMeta]) -> None:
        if not self.is_sender:
            for _ in source:
                pass
            return
        for _name, tensor in self._checked_iter(source, meta):
            self.model_update_group.broadcast(tensor.detach().contiguous(), src=0)


def _concurrently(remote, local) -> None:
    """Run ``remote`` on a thread while ``local`` runs here; raise the first error of either."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(remote)
        local()
        future.result()


class GlooWeightUpdateExtension(WeightUpdateExtension):
    """The worker extension of the gloo mode: importing this module registers the gloo engine in vLLM's worker
    process before the worker builds its transfer engine."""


def _register() -> None:
    if GLOO_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO_BACKEND, GlooWeightTransferEngine)


_register()


# ------------------------------------------------------------------------------------------- learner side

class _ZeroSource(ModuleSource):
    """The learner's parameters with their full shapes; under ZeRO-3 each is gathered while it is sent (a collective:
    every learner rank iterates in the same order, as vLLM's non-sender ranks do). The sender digests each tensor
    it yields (``sent_digest``: the last iteration's)."""

    def __init__(self, engine, sender: bool):
        super().__init__(engine.module)
        self.zero3 = engine.zero_optimization_stage() == 3
        self.sender = sender
        self.sent_digest: Digest = {}

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(n, p.dtype, tuple(p.ds_shape) if self.zero3 else tuple(p.shape))
                for n, p in self._module.named_parameters()]

    def __iter__(self):
        self.sent_digest = {}
        for name, tensor in self._tensors():
            if self.sender:
                self.sent_digest[name] = tensor_digest(tensor)
            yield name, tensor

    def _tensors(self):
        for name, p in self._module.named_parameters():
            if not self.zero3:
                yield name, p.detach()
                continue
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                yield name, p.detach().clone()  # the gathered storage is freed when the context exits


class RolloutActorsClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our rollout worker actors (one engine each, so each gets its own
    rank offset); every call is bounded by ``timeout_s`` and names what it waited for."""

    def __init__(self, actors: list, ranks_per_engine: int, timeout_s: float, source: _ZeroSource | None = None):
        self.actors, self.ranks, self.timeout_s = actors, ranks_per_engine, timeout_s
        self.source = source  # its digest of what was sent goes to the workers with finish_weight_update

    def _all(self, method: str, args: list[tuple], **kwargs) -> None:
        refs = [a.vllm_weight_transfer.remote(method, *x, **kwargs) for a, x in zip(self.actors, args, strict=True)]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        if pending:
            raise TimeoutError(f"vLLM {method}: {len(pending)} of {len(refs)} rollout workers did not answer within "
                               f"{self.timeout_s:.0f}s")
        ray.get(ready)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._all("init_weight_transfer_engine", [
            ({"init_info": init_info | {"rank_offset": init_info["rank_offset"] + i * self.ranks}},)
            for i in range(len(self.actors))])

    def start_weight_update(self) -> None:
        self._all("start_weight_update", [()] * len(self.actors))

    def update_weights(self, update_info: dict) -> None:
        self._all("update_weights", [({"update_info": update_info},)] * len(self.actors))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        sent = self.source.sent_digest if self.source is not None else None
        self._all("finish_weight_update", [()] * len(self.actors), sent_digest=sent)


def open_sender(rank: int, ds_engine, backend: str, rollout_actors: list, ranks_per_engine: int,
                timeout_s: float):
    """The trainer side of the transfer, in a learner actor (`Learner.open_weight_sender`): rank 0 opens the group
    on a free port of its node and drives the handshake, the other ranks only join the ZeRO-3 gathers."""
    require_cuda(backend, "the learner")
    address, port = "", 0
    if rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            address, port = ray.util.get_node_ip_address(), s.getsockname()[1]
    world = 1 + len(rollout_actors) * ranks_per_engine
    source = _ZeroSource(ds_engine, sender=rank == 0)
    client = RolloutActorsClient(rollout_actors, ranks_per_engine, timeout_s, source)
    if backend == "nccl":
        info = NCCLTrainerInitInfo(master_address=address, master_port=port, world_size=world, rank=rank)
        init = NCCLTrainerWeightTransferEngine.trainer_init
    else:
        info = GlooTrainerInitInfo(master_address=address, master_port=port, world_size=world, rank=rank,
                                   timeout_s=timeout_s)
        init = GlooTrainerWeightTransferEngine.trainer_init
    return _bounded(lambda: init(info, client=client, source=source), timeout_s,
                    f"opening the {backend} weight-transfer group")


def send_weights(sender, backend: str, version: int, timeout_s: float) -> None:
    """One full sync (vLLM's start → broadcast → finish) from a learner actor, bounded in time."""
    t0 = time.time()
    _bounded(sender.send_weights, timeout_s, f"{backend} weight broadcast of version {version}")
    if sender.is_sender:
        print(f"[vllm] v{version} {backend} broadcast from learner rank 0: {len(sender.source.metadata())} "
              f"tensors in {time.time() - t0:.2f}s", flush=True)
