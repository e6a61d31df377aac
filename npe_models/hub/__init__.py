"""Hugging Face Hub folders for NPE models: a timm-compatible config, safetensors weights and a model card.

``save_for_hub`` writes ``config.json``, ``model.safetensors`` and ``README.md`` atomically;
``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``"hf-hub:ORG/NAME"`` once
uploaded with ``push_to_hub``) loads a classifier back. A merged model is saved under its
base architecture (``resnet32``) so it reloads as the plain model; an unmerged one keeps its
NPE name (``resnet32_npe16``). ``load_from_hub`` loads any saved model, classifier or
segmentation, after checking that the config names a known architecture and that the
weights fit it. ``save_pretrained_for_hub(name, DIR)`` writes the folder of a checkpoint shipped
with the package, with the model card its manifest entry describes (the folders are generated,
not stored). What a model is (``describe_model``) comes from ``npe_models.describe``.

The modules: :mod:`.card` (the model card's prose), :mod:`.folder` (writing and uploading folders),
:mod:`.load` (reading them back).
"""

from ..describe import ModelDescription, describe_model
from .card import CITATION, DATASET_NAMES, has_pretrained_card, pretrained_card
from .folder import push_to_hub, save_for_hub, save_pretrained_for_hub
from .load import (
    CARD_NAME,
    CONFIG_NAME,
    HUB_FILES,
    hub_folder,
    hub_segmentation_config,
    hub_task,
    is_hub_folder,
    load_from_hub,
    read_hub_config,
)

__all__ = [
    "CONFIG_NAME",
    "CARD_NAME",
    "has_pretrained_card",
    "HUB_FILES",
    "CITATION",
    "DATASET_NAMES",
    "ModelDescription",
    "describe_model",
    "save_for_hub",
    "pretrained_card",
    "save_pretrained_for_hub",
    "push_to_hub",
    "load_from_hub",
    "hub_folder",
    "read_hub_config",
    "is_hub_folder",
    "hub_task",
    "hub_segmentation_config",
]
