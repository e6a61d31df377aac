"""The files of a run directory and the tasks a run can be: the names every part of the run folder uses."""

from ..files import WEIGHTS_FILE

__all__ = ["CONFIG_FILE", "LOG_FILE", "CHECKPOINT_FILE", "WEIGHTS_FILE", "METRICS_FILE", "WEIGHTS_SHA256", "TASKS"]

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
WEIGHTS_SHA256 = "weights_sha256"  # the config.json key recording the sha256 of the run's model.safetensors
TASKS = ("classification", "segmentation")
