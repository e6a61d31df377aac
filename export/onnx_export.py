r"""Export an NPE model to ONNX (merged where the PEMs merge), optionally checking it against ONNX Runtime.

    python export/onnx_export.py resnet32_npe16 --weights model.safetensors -o resnet32_npe16.onnx --check

The same as ``npe-models export onnx`` (its library calls: ``npe_models.loading.load_model``, then
``npe_models.onnx.export_onnx`` and ``check_parity``).
"""

import sys

from npe_models.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["export", "onnx", *sys.argv[1:]]))
