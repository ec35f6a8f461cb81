"""What a job runs on: the Ray connection, DeepSpeed set-up, schedules, the run directory, metrics, the driver."""
