"""Faults on the way out (issue 44): weights that do not fit a name fail in one line, class names from folders are
escaped for each output (Hub card, predict's table; CSV and JSON stay exact), and `npe-models adapt` refuses what
would write a meaningless prior (segmentation models, images of another size, too few unlabeled images) and reads
image folders with the model's own eval transform."""

from __future__ import annotations

from pathlib import Path

from npe_models import cli

PACKAGE = Path(__file__).resolve().parents[1] / "npe_models"


def _error(capsys, argv: list[str]) -> str:
    """The command's error output, which must be one line without a traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_weights_that_do_not_fit_a_registered_name_fail_in_one_line(capsys, tmp_path) -> None:
    """The bundled STARE UNet (16 channels, fcn PEM) given to unet_fcn_npe1 (64 channels, linear PEM): one line with
    the counts, one example each and the fix, instead of torch's 119-line state_dict report."""
    weights = next((PACKAGE / "weights").glob("unet_fcn*.safetensors"))
    err = _error(capsys, ["export", "onnx", "unet_fcn_npe1", "--weights", str(weights), "-o", str(tmp_path / "m.onnx")])
    assert "2 tensors missing (e.g. 'classifier.4.pem_weight')" in err
    assert "12 unexpected (e.g. 'aux_classifier.0.weight')" in err
    assert "of another shape (e.g. 'backbone.encoder.0.0.weight': (16, 3, 3, 3) in the file, (64, 3, 3, 3)" in err
    assert "--pem-type" in err and "records its model" in err
    assert not (tmp_path / "m.onnx").exists()
