"""The ``run:`` settings of operating a run: validation during training, experiment trackers, checkpoint retention
and the report. `ral_dist.config.RLRunConfig` inherits them (a separate module keeps config.py small)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

LOGGERS = ("jsonl", "tensorboard", "mlflow", "wandb")


class RunOperations(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    val_every: int | None = Field(
        None, ge=1, description="validate (greedy decoding of the val split on the rollout workers) after every step "
                                "whose index is a multiple of N, and always after the last step; None: no validation "
                                "unless val_before_train")
    val_before_train: bool = Field(
        False, description="also validate the starting policy before the first step (a row with step -1, "
                           "policy_version 0); on a fresh run only, not on --resume")
    val_samples: int = Field(200, ge=1, description="validate on the first N samples of the val split (sharded over "
                                                    "the rollout workers)")
    val_alert_drop: float = Field(
        0.05, ge=0, le=1, description="alert RalValidationDrop fires when validation accuracy is more than this "
                                      "below its best of the run (exported beside it as a gauge)")
    loggers: list[Literal["jsonl", "tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="where each step's scalars, the validation rows, the resolved config and the heatmaps go: jsonl "
                    "(metrics.jsonl, always on: --resume and the report read it), tensorboard (RUN/tensorboard), "
                    "mlflow (run.mlflow_uri), wandb (WANDB_MODE and the other WANDB_* variables apply; files under "
                    "RUN/wandb). Needs `pip install ral_dist[trackers]`; a logger that fails is reported once and "
                    "disabled, training goes on")
    tracker_project: str = Field("ral_dist", min_length=1,
                                 description="the MLflow experiment and W&B project the run is logged under")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; None: the file store RUN/mlruns")
    keep_checkpoints: int | None = Field(
        None, ge=1, description="keep the newest N checkpoints (plus keep_best); older ones are deleted once a new one "
                                "is written and verified; None: keep every one")
    keep_best: int = Field(0, ge=0, description="also keep the N checkpoints of the highest validation accuracy (a "
                                                "checkpoint's step validated; ties: the later step)")
    keep_optimizer_state: Literal["all", "last"] = Field(
        "all", description="last: DeepSpeed's optimizer state only in the newest checkpoint (the one --resume and "
                           "recovery load); older kept checkpoints keep the model weights")
    report: bool = Field(True, description="write RUN/report.html and its PNGs at the end of the job "
                                           "(python jobs/report.py RUN_DIR writes it at any time)")

    @property
    def validates(self) -> bool:
        return self.val_every is not None or self.val_before_train

    @field_validator("loggers")
    @classmethod
    def _jsonl_once(cls, loggers: list[str]) -> list[str]:
        if "jsonl" not in loggers:
            raise ValueError(f"{loggers} must include 'jsonl': metrics.jsonl is the run's own record (--resume, "
                             "recovery and the report read it)")
        if len(set(loggers)) != len(loggers):
            raise ValueError(f"{loggers} names one twice")
        return loggers

    @field_validator("keep_best")
    @classmethod
    def _best_needs_validation(cls, keep_best: int, info: ValidationInfo) -> int:
        if keep_best and info.data.get("val_every") is None and not info.data.get("val_before_train"):
            raise ValueError(f"{keep_best} ranks checkpoints by validation accuracy: set run.val_every")
        return keep_best
