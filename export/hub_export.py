r"""Save an NPE model as a Hugging Face Hub folder (config.json, model.safetensors, README.md), optionally uploading it.

    python export/hub_export.py resnet20_npe16 --weights model.safetensors --merge -o hub/resnet20_npe16 \
        --metric top1=80.1 --metric many=91 --dataset "CIFAR-10 test set" --dataset-id cifar10
    python export/hub_export.py resnet32_npe16.cifar10_lt_r100_hp2 --pretrained -o hub/   # a shipped checkpoint

The same as ``npe-models export hub`` (its library calls: ``npe_models.loading.load_model``, then
``npe_models.hub.save_for_hub`` / ``push_to_hub``, or ``save_pretrained_for_hub`` for a shipped one).
"""

import sys

from npe_models.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["export", "hub", *sys.argv[1:]]))
