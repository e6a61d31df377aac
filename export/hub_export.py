r"""Save an NPE model as a Hugging Face Hub folder (config.json, model.safetensors, README.md), optionally uploading it.

    python export/hub_export.py resnet32_npe16 --weights model.safetensors --merge -o hub/resnet32_npe16 \
        --metric top1=80.1 --metric many=91 --dataset "CIFAR-10 test set" --dataset-id cifar10

The same as ``npe-models export hub``; see ``npe_models.export_cli``.
"""
import argparse

from npe_models.export_cli import add_hub_arguments, run_hub


def main() -> int:
    parser = add_hub_arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return run_hub(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
