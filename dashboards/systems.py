"""The machinery: worker utilisation, weight sync, queues, restarts, skipped work, and Ray's node metrics."""

from __future__ import annotations

from ral_dist.runtime import metrics as m

from .common import RUN, SESSION, WINDOW, Query, dashboard, graph, mean_per_event

UID = "ral-systems"

# Ray's own node metrics (exported by every node's metrics agent; the GPU ones only on nodes with GPUs).
NODE_CPU = "ray_node_cpu_utilization"
NODE_MEM_USED, NODE_MEM_TOTAL = "ray_node_mem_used_host", "ray_node_mem_total_host"
OBJECT_STORE = "ray_object_store_memory"
GPU_UTIL, GPU_MEM_USED = "ray_node_gpus_utilization", "ray_node_gram_used"


def build():
    workers = [
        graph("Worker utilisation", "Share of wall time each actor spends in its work method "
              "(rollout, reward_batch, train_step).", "percentunit",
              Query(f"sum by (actor, WorkerId) (rate({m.BUSY.series}{{{RUN}}}[{WINDOW}]))", "{{actor}} {{WorkerId}}")),
        graph("Actor restarts", "Rollout and reward workers Ray restarted after a failure.", "none",
              Query(f"sum by (actor) (increase({m.RESTARTS.series}{{{RUN}}}[{WINDOW}]))", "{{actor}}"), bars=True),
        graph("Skipped work", "Prompts a rollout worker could not process, trajectories with a non-finite reward "
              "(advantage zeroed) and learner updates with a non-finite loss.", "none",
              Query(f"sum by (reason) (increase({m.SKIPPED.series}{{{RUN}}}[{WINDOW}]))", "{{reason}}"), bars=True),
    ]
    sync = [
        graph("Weight sync seconds", "Mean seconds from the learner's weights to every rollout worker holding them.",
              "s", Query(mean_per_event(m.SYNC_SECONDS.series, "JobId"), "sync {{JobId}}")),
        graph("Weight sync bandwidth", "Bytes pushed per second of sync.", "Bps",
              Query(f"sum by (JobId) (rate({m.SYNC_BYTES.series}{{{RUN}}}[{WINDOW}])) / "
                    f"sum by (JobId) (rate({m.SYNC_SECONDS.series}_sum{{{RUN}}}[{WINDOW}]))", "{{JobId}}")),
        graph("Rollout queue", "The next step's rollout chunks at the end of a step: still running, or done and "
              "waiting (one_step_off).", "none",
              Query(f"max by (JobId, queue) ({m.QUEUE_DEPTH.series}{{{RUN}}})", "{{queue}}")),
        graph("Policy staleness", "Most versions a step's trajectories lagged the learner (1 at most in "
              "one_step_off).", "none",
              Query(f"max by (JobId) ({m.STALENESS.series}{{{RUN}}})", "staleness {{JobId}}")),
    ]
    nodes = [
        graph("Node CPU", "CPU utilisation of each Ray node.", "percent",
              Query(f"avg by (instance) ({NODE_CPU}{{{SESSION}}})", "{{instance}}")),
        graph("Node memory", "Host memory in use on each Ray node.", "percentunit",
              Query(f"sum by (instance) ({NODE_MEM_USED}{{{SESSION}}}) / sum by (instance) "
                    f"({NODE_MEM_TOTAL}{{{SESSION}}})", "{{instance}}")),
        graph("Object store memory", "Bytes in Ray's object store (trajectories and weights travel through it).",
              "bytes", Query(f"sum by (instance, Location) ({OBJECT_STORE}{{{SESSION}}})", "{{instance}} {{Location}}")),
        graph("GPU utilisation", "Utilisation of each GPU (nodes with GPUs only).", "percent",
              Query(f"avg by (instance, GpuIndex) ({GPU_UTIL}{{{SESSION}}})", "{{instance}} GPU {{GpuIndex}}")),
        graph("GPU memory", "GPU memory in use (nodes with GPUs only).", "bytes",
              Query(f"sum by (instance, GpuIndex) ({GPU_MEM_USED}{{{SESSION}}}) * 1024 * 1024",
                    "{{instance}} GPU {{GpuIndex}}")),
    ]
    return dashboard(UID, "ral_dist / systems", "Actors, weight sync, queues and the Ray nodes under a run.", [
        ("Workers", workers), ("Weight sync and queues", sync), ("Nodes (Ray's own metrics)", nodes)])
