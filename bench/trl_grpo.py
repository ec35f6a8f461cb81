"""TRL's GRPOTrainer on our model and the grounded VQA task: the end-to-end baseline of bench/rl_loop.py.

Runs in the bench environment (`make setup-bench`: .venv-bench with trl), never in .venv:

    .venv-bench/bin/python bench/trl_grpo.py --steps 10 [--prompts 8 --group 4 --max-new-tokens 32 --json out.json]
        [--threads 2 | --processes 2] [--config jobs/configs/small_real_cpu.yaml [--set KEY=VALUE ...]]

What a user would do with TRL: the tiny random Qwen2.5-VL (seed 0, the weights our benchmark starts from) saved as
a Hugging Face checkpoint and given to GRPOTrainer by path; a conversational dataset with an ``image`` column
(the same cached task split our job reads); reward functions = the paper's reward (0.9 exact match + 0.1 format,
our `exact_match` / `format_score`). One TRL step = one optimizer step over ``prompts × group / minibatches``
completions; a generation round of ``prompts × group`` completions (``steps_per_generation = minibatches``)
feeds ``minibatches`` optimizer steps, the same shape as one step of our job. Gradient checkpointing off (we do
not use it), beta 0.04 (a reference model, as ours), temperature 1, top-p 1.

``--config PATH`` runs a job config's model instead (e.g. jobs/configs/small_real_cpu.yaml, the 135M
SmolLM2-in-SmolVLM checkpoint): loaded and its checkpoint resolved as the driver does (bench/real_size.py's way,
``--set`` overrides applied), the resolved directory given to GRPOTrainer by path, fp32. From the config: the
system prompt and prompt mode, temperature, top-p, lr, beta, clip, grad clip, the vision tower frozen or not,
and the shapes (``--prompts`` = rollout.prompts_per_step, ``--group`` = rollout.group_size, ``--max-new-tokens``,
``--minibatches`` = learner.num_minibatches; a flag given explicitly wins). Rewards: TRL computes only the
response-text terms, so the config's task (exact match) and format weights are kept and every other term
(small_real_cpu.yaml's sparsity and consistency, which read the rollout's attention maps) is left out and listed
in the result's ``reward_terms_left_out``: TRL then sees all-zero advantages wherever the model never writes the
tags, but its step costs the same (it does not skip such groups), so the throughput comparison stands. TRL stops
generation at every id our adapter stops at (SmolVLM's <end_of_utterance> and SmolLM2's <|im_end|>), not only at
the tokenizer's eos, so both sides sample responses of the same lengths. Idefics3's own processor (PIL image
processor, no torchvision) is TRL's ``processing_class`` as it is. Without ``--config``: the tiny setup above.

transformers' own Qwen2_5_VLProcessor needs a video processor, which needs torchvision (not installable beside
CPU torch): `ImageOnlyProcessor` is that class with the video half left out; its output equals our adapter's
encoding (checked at start: the prompt token ids, and the pixels, of the first sample). Prints, and writes to ``--json``: samples/s and CPU seconds per sample over whole
generation rounds after the first (warm-up) round, and each round's seconds.

``--processes 2`` is how TRL would use a second core with data parallelism. The script re-executes itself under
``accelerate launch --multi_gpu`` (in accelerate 1.x the one launcher that spawns local ranks itself, through
torchrun; ``--cpu`` starts a single process and leaves the rest to mpirun), and ``use_cpu`` makes accelerate pick
MULTI_CPU over gloo. The global shapes stay those of one process (each rank generates and trains on half of every
round; TRL gathers rewards over the ranks for the advantages), and the trainer's ``num_processes`` is checked
against the launch. Rank 0 alone reports, with the CPU seconds of the whole launch tree (launcher and both ranks,
psutil at its step marks), as bench/rl_loop.py counts our driver and Ray's own processes beside the actors; each
rank's own ``process_time`` between the same marks (``cpu_s_by_rank``) shows what the launcher adds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def image_only_processor(tokenizer, image_processor, chat_template):
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def tiny_checkpoint(seed: int = 0) -> Path:
    """The tiny random Qwen2.5-VL as a Hugging Face checkpoint, cached outside the repo."""
    from ral_dist.models import get_adapter
    from ral_dist.paths import cache_dir

    out = cache_dir("bench", f"tiny_qwen2_5_vl_seed{seed}")
    if not (out / "model.safetensors").exists():
        model, processor = get_adapter("qwen2_5_vl").build_tiny(seed=seed)
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)
    return out


def job_config(path: str, sets: list[str], resolve: bool = True):
    """The config file with ``sets`` applied; ``resolve``: its checkpoint resolved as the driver does (a
    ``small-real:`` or ``sft:`` reference becomes the cached checkpoint's directory, built if missing)."""
    from ral_dist.config import RLJobConfig, load_config
    from ral_dist.driver import resolve_student

    cfg = load_config(RLJobConfig, path, sets)
    return resolve_student(cfg, Path(__file__).resolve().parents[1]) if resolve else cfg


def text_rewards(weights: dict[str, float], task: str) -> tuple[list[float], list[str]]:
    """(TRL's weights of [exact match, format], the config's other nonzero terms, which TRL cannot compute)."""
    if task != "exact":
        raise SystemExit(f"reward.task {task!r}: only 'exact' (the paper's exact match) is wired to TRL here")
    return [weights.get("task", 0.0), weights.get("format", 0.0)], sorted(
        k for k, w in weights.items() if w and k not in ("task", "format"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps (a multiple of --minibatches)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per generation round (default 8)")
    p.add_argument("--group", type=int, default=None, help="G (default 4)")
    p.add_argument("--minibatches", type=int, default=None, help="optimizer steps per generation round (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="(default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--processes", type=int, default=1, help="data-parallel processes (accelerate launch, gloo)")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--config", default=None, help="a job config (YAML): its model, prompt, sampling, optimiser "
                                                  "and shapes (default: the tiny Qwen2.5-VL setup)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override the --config file's settings, as a job's --set")
    args = p.parse_args(argv)
    if args.sets and not args.config:
        raise SystemExit("--set needs --config")
    cfg = job_config(args.config, args.sets, resolve=False) if args.config else None
    shapes = {"prompts": 8, "group": 4, "minibatches": 2, "max_new_tokens": 32} if cfg is None else {
        "prompts": cfg.rollout.prompts_per_step, "group": cfg.rollout.group_size,
        "minibatches": cfg.learner.num_minibatches, "max_new_tokens": cfg.rollout.max_new_tokens}
    for key, value in shapes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps % args.minibatches or args.steps < 2 * args.minibatches:
        raise SystemExit("--steps must be a multiple of --minibatches and cover at least 2 generation rounds")
    per_step, rest = divmod(args.prompts * args.group, args.minibatches * args.processes)
    if rest:
        raise SystemExit("prompts × group must divide into --minibatches × --processes per-device batches")
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                  "--num_processes", str(args.processes), "--num_cpu_threads_per_process", str(args.threads),
                  "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                  str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
        sys.stdout.flush()
        os.execv(sys.executable, launch)  # this process becomes the launcher, the root of the measured tree

    import psutil
    import torch

    torch.set_num_threads(args.threads)
    import trl
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import TrainerCallback

    from ral_dist.algorithms.answer_rewards import exact_match, format_score
    from ral_dist.data import read_dataset, user_text
    from ral_dist.data.cache import ensure_dataset
    from ral_dist.models import adapter_for_checkpoint, freeze_vision_tower, get_adapter
    from ral_dist.models.prompting import visual_prompt
    from ral_dist.models.qwen_vl import CHAT_TEMPLATE

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    state = PartialState(cpu=True)  # with ranks: gloo's process group, so rank 0 alone fills the caches
    if state.num_processes != args.processes:
        raise SystemExit(f"{state.num_processes} processes started, --processes {args.processes}")
    rank0 = state.is_main_process
    with state.main_process_first():
        if args.config:
            cfg = job_config(args.config, args.sets)
            ckpt = Path(cfg.model.checkpoint)
        else:
            cfg = common.tiny_config()
            ckpt = tiny_checkpoint(cfg.run.seed)
        samples, _ = read_dataset(ensure_dataset(cfg.data.task, cfg.data.sizes), "train")
    adapter = adapter_for_checkpoint(str(ckpt)) if args.config else get_adapter("qwen2_5_vl")
    ours = adapter.load_processor(ckpt)
    if adapter.family == "qwen2_5_vl":
        processor = image_only_processor(ours.tokenizer, ours.image_processor, CHAT_TEMPLATE)
    else:
        processor = ours  # Idefics3Processor with the PIL image processor: no video half to leave out
    mode, system = cfg.data.prompt.mode, cfg.data.prompt.system
    if args.config:
        weights, left_out = text_rewards(cfg.reward.weights, cfg.reward.task)
    else:
        weights, left_out = [0.9, 0.1], []

    def prompt(s):
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_text(s, cfg.data.prompt)}]

    # Same prompt tokens and pixels as our rollout worker's (else the comparison is off from the first token).
    import numpy as np
    from trl.data_utils import prepare_multimodal_messages

    s0 = samples[0]
    theirs = processor.apply_chat_template(conversation=[prepare_multimodal_messages(prompt(s0), s0.get_images())],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)
    mine = adapter.encode(ours, [visual_prompt(s0, cfg.data)])
    assert list(theirs["input_ids"][0]) == mine.inputs["input_ids"][0].tolist(), "TRL's prompt differs from ours"
    assert np.allclose(np.asarray(theirs["pixel_values"]), mine.inputs["pixel_values"].numpy()), "pixels differ"

    n_rows = args.prompts * (args.steps // args.minibatches + 1)
    data = Dataset.from_list([{"prompt": prompt(s), "image": s.get_images()[0], "answer": s.answer}
                              for s in samples[:n_rows]])

    def task_reward(completions, answer, **_):
        return [exact_match(c[0]["content"], a).value for c, a in zip(completions, answer, strict=True)]

    def format_reward(completions, **_):
        return [format_score(c[0]["content"], mode).value for c in completions]

    eos_ids = adapter.eos_token_ids(ours)  # where our rollout stops: TRL's own list is the tokenizer's eos alone
    config = trl.GRPOConfig(
        output_dir=str(common.RESULTS / ".trl_tmp"), per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1, steps_per_generation=args.minibatches, num_generations=args.group,
        num_iterations=1, max_completion_length=args.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, beta=cfg.learner.beta, epsilon=cfg.learner.clip_eps, learning_rate=cfg.learner.lr,
        max_grad_norm=cfg.learner.grad_clip, reward_weights=weights, max_steps=args.steps,
        gradient_checkpointing=False, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=cfg.run.seed, shuffle_dataset=False,
        ddp_find_unused_parameters=False,  # every trained parameter gets a gradient: no extra graph walk per step
        model_init_kwargs={"dtype": torch.float32}, generation_kwargs={"eos_token_id": eos_ids})

    ends: list[float] = []
    cpu_ends: list[float] = []  # CPU seconds (every thread) of this process, or on rank 0 of the launch tree
    own_cpu_ends: list[float] = []  # this process's own, on every rank
    root = psutil.Process().parent() if args.processes > 1 else psutil.Process()

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())
            own_cpu_ends.append(time.process_time())
            if rank0:
                cpu_ends.append(common.tree_cpu_seconds(root) if args.processes > 1 else own_cpu_ends[-1])

    trainer = trl.GRPOTrainer(model=str(ckpt), reward_funcs=[task_reward, format_reward], args=config,
                              train_dataset=data, processing_class=processor, callbacks=[StepClock()])
    trainer.eos_token_ids = eos_ids  # the completion mask ends at the first of them, as generation does
    if cfg.model.freeze_vision:  # before train(), which builds the optimizer and the DDP wrapper
        freeze_vision_tower(trainer.model)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    # Whole generation rounds after the first: ends[k-1] closes round 1, ends[-1] the last one.
    k = args.minibatches
    rounds = (len(ends) - k) // k
    n_samples = args.prompts * args.group * rounds  # global: every rank's completions
    own_cpu = [own_cpu_ends[-1] - own_cpu_ends[k - 1]]
    if args.processes > 1:
        gathered = [None] * args.processes
        torch.distributed.all_gather_object(gathered, own_cpu[0])
        own_cpu = gathered
    if not rank0:
        return {}
    round_s = [ends[k * (i + 2) - 1] - ends[k * (i + 1) - 1] for i in range(rounds)]
    result = {"trl": trl.__version__, "torch_threads": torch.get_num_threads(), "steps": len(ends),
              "processes": trainer.accelerator.num_processes,
              "distributed_type": str(trainer.accelerator.distributed_type),
              "backend": trainer.accelerator.state.backend, "per_device_train_batch_size": per_step,
              "samples_per_round": args.prompts * args.group, "round_s": round_s,
              "samples_per_s": n_samples / (ends[-1] - ends[k - 1]),
              "cpu_s_per_sample": (cpu_ends[-1] - cpu_ends[k - 1]) / n_samples,
              "cpu_s_by_rank": own_cpu, "cpu_processes": len(root.children(recursive=True)) + 1,
              "wall_s": wall, "loss_type": config.loss_type, "checkpoint": str(ckpt), "job_config": args.config,
              "overrides": args.sets, "family": adapter.family, "dtype": str(trainer.model.dtype),
              "freeze_vision": cfg.model.freeze_vision, "max_new_tokens": args.max_new_tokens,
              "eos_token_ids": eos_ids, "prompt_ids_equal_ours": True,  # asserted above
              "reward_weights": {"task": weights[0], "format": weights[1]}, "reward_terms_left_out": left_out}
    if result["processes"] != args.processes:
        raise SystemExit(f"TRL's accelerator runs {result['processes']} processes, --processes {args.processes}")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
