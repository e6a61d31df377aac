"""Export an NPE model to ONNX (merged where the PEMs merge), optionally checking it against ONNX Runtime.

    python export/onnx_export.py resnet32_npe16 --weights model.safetensors -o resnet32_npe16.onnx --check

The same as ``npe-models export onnx``; see ``npe_models.export_cli``.
"""
import argparse

from npe_models.export_cli import add_onnx_arguments, run_onnx


def main() -> int:
    parser = add_onnx_arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return run_onnx(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
