"""The options of each ``npe-models`` subcommand, grouped by task; :mod:`npe_models.cli` dispatches them.

Options shared by both tasks (data, hardware, optimisation, NPE) are defined once; each task adds
its own group, so no option is defined twice and one spelling has one meaning.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from .classification.config import COMPILE_MODES
from .data import resolve_data_dir
from .runs import LOG_FILE

__all__ = [
    "reject_other_task_options",
    "add_train_arguments",
    "add_evaluate_arguments",
    "add_export_arguments",
    "add_list_arguments",
    "add_predict_arguments",
    "add_adapt_parser",
    "adapt_options",
    "not_none",
    "classification_evaluate_options",
]

EPILOG_TRAIN = """examples:
  npe-models train --model resnet32_npe16 --data-dir ../shared/data --out runs/npe16_hp2   # NPE(16), HP-2
  npe-models train --model resnet32 --method la --tau 1 --out runs/la_hp2                  # logit-adjusted loss
  npe-models train --method crt --init runs/ce_hp2 --out runs/crt_hp2                      # cRT from a CE run
  npe-models train --out runs/npe16_hp2 --resume                                           # continue a run
  npe-models train --model unet_fcn_npe1 --init runs/unet --freeze-decode-head --out runs/unet_npe1  # STARE
  torchrun --nproc_per_node 2 -m npe_models.cli train --model resnet32_npe16 --out runs/ddp
"""
EPILOG_EVALUATE = """examples:
  npe-models evaluate runs/npe16_hp2                  # a run directory (final or latest weights)
  npe-models evaluate runs/npe16_hp2/checkpoint.pt --merge
  npe-models evaluate runs/ce_hp2 --posthoc-tau 1     # also score post-hoc logit adjustment
  npe-models evaluate resnet32_npe16.cifar10_lt_r100_hp2 --pretrained
  npe-models evaluate runs/unet_npe1 --npe-alpha 0 1 0.2  # segmentation: several NPE-LA strengths in one pass
"""
EPILOG_PREDICT = """examples:
  npe-models predict resnet32_npe16 --pretrained cat.png dog.jpg   # top-5 classes of each image, as a table
  npe-models predict runs/npe16_hp2 photos/ --top-k 3 --json       # a folder, searched recursively; JSON for scripts
  npe-models predict runs/npe16_hp2 photos/ --npe-alpha 0 --csv        # the unadjusted logits (no NPE-LA)
  npe-models predict resnet32_npe16.onnx photos/                   # an ONNX export, run with ONNX Runtime
  npe-models predict runs/unet_npe1 scans/ --out masks/ --overlays --json  # segmentation: mask PNGs, class shares
"""
EPILOG_ADAPT = """DATA: cifar10:test, cifar10:heldout (training images CIFAR-LT leaves out; --rho), cifar100:...,
an .npz file with x (N, H, W, 3) uint8 images at the model's input size and y labels (y needed for --calibration),
or a folder of image files, resized by the model's eval transform: for --unlabeled any tree of images, for
--calibration one folder per class named as the model's classes (DIR/<class>/*).
examples:
  npe-models adapt resnet32_npe16.cifar10_lt_r100_hp2 --pretrained --unlabeled target.npz \\
      --calibration cifar10:heldout --data-dir ../shared/data --out adapted/npe16   # NPE-LA logits are balanced
  npe-models adapt resnet32.cifar10_lt_r100_hp2 --pretrained --source-prior train --unlabeled target.npz \\
      --calibration cifar10:heldout --out adapted/ce                               # plain CE: remove its training prior
  npe-models adapt runs/mine --unlabeled photos/ --calibration held_out/ --out adapted/mine   # image folders
  npe-models evaluate adapted/npe16 --data-dir ../shared/data --target-prior adapted/npe16/prior.json
"""


def _size(text: str) -> tuple[int, int]:
    """argparse type for ``128`` or ``128x96`` (height x width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected a size like 128 or 128x96, got {text!r}")
    return int(parts[0]), int(parts[-1])


def _key_value(text: str) -> tuple[str, Any]:
    """argparse type for ``KEY=VALUE``: VALUE read as JSON when it parses (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# shared data options that only classification training reads (segmentation sources take their own sizes)
_CLASSIFIER_DATA_OPTIONS = ("split_dir", "image_size", "download", "eval_batch_size")
# ... and evaluation: segmentation evaluates image by image, in fp32, in the main process
_CLASSIFIER_EVALUATION_OPTIONS = (*_CLASSIFIER_DATA_OPTIONS, "amp", "channels_last", "workers")


def _add_data_and_hardware(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and hardware")
    data.add_argument(
        "--dataset",
        help="data set (default: cifar10 for classifiers, stare for segmentation, or the run's); "
        "segmentation: stare, seg_folder, ade20k",
    )
    data.add_argument(
        "--data-dir",
        help="folder with the data sets (default: $NPE_DATA_DIR, else ./data); for folder: "
        "the tree with train/<class>/* and val/<class>/*; for the split lists: the images' root",
    )
    data.add_argument(
        "--split-dir", help="folder with the split lists, e.g. ImageNet_LT_train.txt (default: --data-dir)"
    )
    data.add_argument(
        "--image-size", type=int, help="input size of file data sets (default: the model's pretrained cfg)"
    )
    data.add_argument(
        "--workers", type=int, help="DataLoader workers per process for file data sets (default: CPUs, <= 8)"
    )
    data.add_argument("--download", action="store_true", default=None, help="download CIFAR with torchvision")
    data.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: auto)")
    data.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast")
    data.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: on for classification training, off for segmentation)",
    )
    data.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default: 500)")
    data.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    """Options of ``train``: the run, shared data/hardware/optimisation/NPE groups, then each task's group."""
    train.add_argument("--model", help="timm or segmentation model, e.g. resnet32_npe16, resnet32, unet_fcn_npe1")
    train.add_argument("--out", required=True, help="run directory (config.json, log.jsonl, checkpoint.pt, results)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    _add_data_and_hardware(train)
    _add_optimisation_arguments(train)
    _add_npe_arguments(train)
    cls, seg = _add_classification_arguments(train), _add_segmentation_arguments(train)
    classification = {**_options_of(cls), **_shared_options(train, _CLASSIFIER_DATA_OPTIONS)}
    train.set_defaults(task_options={"classification": classification, "segmentation": _options_of(seg)})


def _add_optimisation_arguments(train: argparse.ArgumentParser) -> None:
    """``train``'s optimisation options, shared by both tasks (defaults from the recipe)."""
    optim = train.add_argument_group("optimisation (defaults from the task's recipe)")
    optim.add_argument("--batch-size", type=int, help="global batch size (split over torchrun processes)")
    optim.add_argument("--lr", type=float, help="initial SGD learning rate")
    optim.add_argument("--momentum", type=float, help="SGD momentum (default: 0.9)")
    optim.add_argument("--weight-decay", type=float, help="L2 weight decay on every parameter")
    optim.add_argument(
        "--schedule",
        "--lr-schedule",
        dest="schedule",
        choices=("step", "cosine", "multistep", "poly"),
        help="lr schedule: step/cosine (classification), multistep/poly (segmentation)",
    )
    optim.add_argument(
        "--milestones", type=int, nargs="*", help="epochs (iterations) at which lr is multiplied by --gamma"
    )
    optim.add_argument("--gamma", type=float, help="step schedule factor (default: 0.1)")
    optim.add_argument("--seed", type=int, help="random seed (default: 0)")
    optim.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels")


def _add_npe_arguments(train: argparse.ArgumentParser) -> None:
    """``train``'s NPE settings and the run it starts from."""
    npe = train.add_argument_group("NPE and initialisation")
    npe.add_argument(
        "--npe-alpha",
        "--alpha",
        dest="npe_alpha",
        type=float,
        help="NPE-LA strength stored in the model (default: 1 classification, 0.1 segmentation)",
    )
    npe.add_argument("--npe-t", type=int, choices=(0, 1), help="PEM sign convention t (default: 1)")
    npe.add_argument("--init", help="trained run directory or weights to start from (crt, posthoc_la, frozen PEMs)")


def _add_classification_arguments(train: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``train``'s classification-only options; the group, for refusing them on a segmentation run."""
    cls = train.add_argument_group(
        "classification (CIFAR-LT, image folders, ImageNet-LT / Places-LT / iNaturalist lists)"
    )
    cls.add_argument(
        "--method", choices=("ce", "la", "posthoc_la", "crt", "npe"), help="default: npe with PEMs, else ce"
    )
    cls.add_argument(
        "--recipe",
        choices=("hp1", "hp2", "imagenet_lt", "inat2018", "places_lt"),
        help="the paper's recipe: hp1/hp2 (CIFAR-LT) or a large data set's (default: the data set's, else hp2)",
    )
    cls.add_argument("--accum-steps", type=int, help="micro-batches per SGD step (gradient accumulation, default: 1)")
    cls.add_argument("--backbone-weights", help="start from 'imagenet' (timm's pretrained weights) or a weights file")
    cls.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    cls.add_argument(
        "--rho",
        type=float,
        help="imbalance ratio, largest / smallest class (default: 100 for CIFAR; "
        "folder: a long-tailed subset of train/ when given, else train/ as it is)",
    )
    cls.add_argument("--max-per-class", type=int, help="images in the largest class (default: all)")
    cls.add_argument("--tau", type=float, help="logit-adjustment strength of la and posthoc_la (default: 1)")
    cls.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        help="torch.compile the training step (default: off; bare --compile: mode default); "
        "reduce-overhead adds CUDA graphs and needs a GPU",
    )
    cls.add_argument("--eval-every", type=int, help="test every N epochs, 0 for the last only (default: 10)")
    cls.add_argument(
        "--tensorboard",
        action="store_true",
        default=None,
        help="also log each epoch's losses, lr and "
        "accuracies to RUN/tensorboard (needs: pip install npe-models[tensorboard])",
    )
    return cls


def _add_segmentation_arguments(train: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``train``'s segmentation-only options; the group, for refusing them on a classification run."""
    seg = train.add_argument_group(
        "segmentation (STARE; seg_folder: --data-dir ROOT with images/{train,val}/NAME.* and "
        "masks/{train,val}/NAME.png of class indices, classes.txt optional; ade20k: --data-dir ADEChallengeData2016)"
    )
    seg.add_argument("--num-pems", type=int, help="PEMs for a plain architecture name (default: from the name)")
    seg.add_argument("--pem-type", choices=("linear", "fcn", "replica"), help="PEM architecture (default: linear)")
    seg.add_argument("--num-classes", type=int, help="default: the data set's class count")
    seg.add_argument("--aux-loss", action="store_true", default=None, help="add the auxiliary FCN head")
    seg.add_argument(
        "--model-arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra builder argument, e.g. base_channels=32 for unet_fcn (repeatable)",
    )
    seg.add_argument("--weights", help="torchvision weights of the base model, e.g. DEFAULT (downloads)")
    seg.add_argument("--weights-backbone", help="torchvision backbone weights, e.g. IMAGENET1K_V1 (downloads)")
    seg.add_argument("--annotation", choices=("ah", "vk"), help="STARE training masks (default: ah)")
    seg.add_argument(
        "--ignore-index", type=int, help="mask value that is no class, left out of loss and metrics (default: 255)"
    )
    seg.add_argument(
        "--reduce-zero-label",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="seg_folder / ade20k: mask value 0 is ignored and the rest shift down by one "
        "(default: on for ade20k, off for seg_folder)",
    )
    seg.add_argument("--iterations", type=int, help="SGD steps (default: 600)")
    seg.add_argument(
        "--crop-size", type=_size, help="random training crop, e.g. 128 or 128x96 (default: 512 for ade20k, else 128)"
    )
    _add_augment_arguments(seg)
    seg.add_argument(
        "--aux-weight", type=float, help="auxiliary loss weight (default: 0.4; 0 freezes the auxiliary head)"
    )
    seg.add_argument(
        "--freeze-backbone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freeze the backbone, BatchNorm in eval mode (default: on)",
    )
    seg.add_argument("--freeze-decode-head", action="store_true", default=None, help="also freeze the decode heads")
    seg.add_argument("--no-flip", dest="flip", action="store_false", default=None, help="no random horizontal flips")
    seg.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints (default: 100)")
    return seg


def _add_augment_arguments(seg: argparse._ArgumentGroup) -> None:
    """The training augmentation: today's crop and flip, or MMSegmentation's ADE20K pipeline and its settings."""
    seg.add_argument(
        "--augment",
        choices=("crop", "mmseg"),
        help="training augmentation: crop (a uniform crop and flip) or mmseg (MMSegmentation's ADE20K pipeline: "
        "random rescale, crop with the class-ratio check, flip, photometric distortion, pad); "
        "default: mmseg for ade20k, else crop",
    )
    seg.add_argument(
        "--scale",
        type=_size,
        metavar="LONGxSHORT",
        help="mmseg: base scale of the random rescale, bounds of the longer x shorter side (default: 2048x512)",
    )
    seg.add_argument(
        "--ratio-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="mmseg: the rescale ratio's range around --scale (default: 0.5 2.0)",
    )
    seg.add_argument(
        "--cat-max-ratio",
        type=float,
        help="mmseg: redraw a crop (up to 10 times) while one class covers this share of its labelled pixels "
        "(default: 0.75; 1 turns it off)",
    )
    seg.add_argument(
        "--no-photometric",
        dest="photometric",
        action="store_false",
        default=None,
        help="mmseg: no photometric distortion (brightness, contrast, saturation, hue)",
    )


def _options_of(group: argparse._ArgumentGroup) -> dict[str, str]:
    """``{dest: --flag}`` of the options in an argument group (to reject them when the other task trains)."""
    return {action.dest: action.option_strings[0] for action in group._group_actions}


def _shared_options(parser: argparse.ArgumentParser, dests: tuple[str, ...]) -> dict[str, str]:
    """``{dest: --flag}`` of the shared options named by ``dests`` (those only one task's training reads)."""
    return {action.dest: action.option_strings[0] for action in parser._actions if action.dest in dests}


def add_evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    """Options of ``evaluate``: the source, shared data/hardware options, then each task's group."""
    evaluate.add_argument("source", help="run directory, checkpoint.pt / .safetensors, model name[.tag] or Hub folder")
    evaluate.add_argument("--pretrained", action="store_true", help="load the named model's pretrained weights")
    evaluate.add_argument("--merge", action="store_true", help="fold the PEMs into the classifier first")
    evaluate.add_argument("--model", help="model name, for .safetensors weights that do not record it")
    evaluate.add_argument(
        "--npe-alpha",
        "--alpha",
        dest="npe_alpha",
        type=float,
        nargs="+",
        help="NPE-LA strength (segmentation: several, 0 = main logits; default: the model's)",
    )
    evaluate.add_argument("--out", help="output folder (default: RUN/eval, or ./eval/<name>)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    _add_data_and_hardware(evaluate)
    cls = evaluate.add_argument_group("classification (long-tailed CIFAR)")
    cls.add_argument("--rho", type=float, help="imbalance ratio of the training set (default: the run's)")
    cls.add_argument("--max-per-class", type=int, help="largest training class size (default: the run's)")
    cls.add_argument("--posthoc-tau", type=float, help="also score post-hoc LA, logits - tau * log prior")
    cls.add_argument("--sets", nargs="+", choices=("full", "exact", "jpeg_twins"), help="test sets (default: all)")
    cls.add_argument(
        "--target-prior",
        metavar="MIX",
        help="also report the expected top-1 under a class mix: uniform, "
        "train, inverse, dirichlet:A (seed 0) or a .json file of per-class weights (e.g. adapt's prior.json)",
    )
    seg = evaluate.add_argument_group("segmentation (STARE, seg_folder, ade20k; data set and folder: the run's)")
    seg.add_argument("--split", choices=("train", "val"), help="images to score (default: val)")
    seg.add_argument("--annotation", nargs="+", choices=("ah", "vk"), help="masks to score against (default: ah vk)")
    seg.add_argument(
        "--mode", choices=("whole", "slide"), help="whole-image or sliding-window (default: slide; ade20k: whole)"
    )
    seg.add_argument("--crop-size", type=_size, help="slide window (default: 128)")
    seg.add_argument("--stride", type=_size, help="slide stride (default: 85)")
    seg.add_argument(
        "--scale",
        type=_size,
        metavar="LONGxSHORT",
        help="resize each image to fit LONGxSHORT, keeping its aspect ratio, before inference; scored at the "
        "masks' size (default: none; ade20k: 2048x512, as MMSegmentation tests)",
    )
    seg.add_argument("--overlays", type=int, help="overlay PNGs for the first N images (default: 0)")
    classification = {**_options_of(cls), **_shared_options(evaluate, _CLASSIFIER_EVALUATION_OPTIONS)}
    evaluate.set_defaults(task_options={"classification": classification, "segmentation": _options_of(seg)})


def add_export_arguments(onnx: argparse.ArgumentParser, hub: argparse.ArgumentParser) -> None:
    """Options of ``export onnx`` and ``export hub``: the model to load, then each format's own."""
    for parser in (onnx, hub):
        parser.add_argument(
            "model",
            help="registered name[.tag], run directory, weights file, Hub folder, local-dir:DIR or hf-hub:ORG/NAME",
        )
        parser.add_argument("--num-classes", type=int, help="class count for a registered name")
        parser.add_argument("--pem-type", choices=("linear", "fcn", "replica"), help="PEMs of a segmentation name")
        parser.add_argument("--pretrained", action="store_true", help="load the registered name's pretrained weights")
        parser.add_argument("--weights", type=Path, help="weights for a registered name (.safetensors or state dict)")
        parser.add_argument(
            "--npe-alpha", "--alpha", dest="npe_alpha", type=float, help="NPE-LA strength to export with"
        )
        parser.add_argument("--label-names", type=Path, help="class names: JSON list or one name per line")
    onnx.add_argument("-o", "--output", type=Path, help="ONNX file to write (default: <model>.onnx)")
    onnx.add_argument("--overwrite", action="store_true", help="replace an earlier export at --output")
    onnx.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="example input size")
    onnx.add_argument("--no-merge", dest="merge", action="store_false", help="export the unmerged NPE-LA graph")
    onnx.add_argument(
        "--dynamic-size",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dynamic height and width (default: on for segmentation)",
    )
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    onnx.add_argument("--check", action="store_true", help="compare with ONNX Runtime after exporting")
    hub.add_argument("-o", "--output-dir", type=Path, help="folder to write (config, weights, card)")
    hub.add_argument("--repo-id", help="ORG/NAME on the Hugging Face Hub (usage snippet; target of --push)")
    hub.add_argument("--push", action="store_true", help="upload to --repo-id (token: HF_TOKEN or --token)")
    hub.add_argument("--token", help="Hugging Face token (default: huggingface_hub's stored one)")
    hub.add_argument("--private", action="store_true", help="create the Hub repository as private")
    hub.add_argument("--merge", action="store_true", help="fold the PEMs in and save the deployment form")
    hub.add_argument(
        "--metric",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="evaluation result for the card, e.g. top1=80.1 (repeatable)",
    )
    hub.add_argument("--dataset", help="readable name of the evaluation data, e.g. 'CIFAR-10 test set'")
    hub.add_argument("--dataset-id", help="Hub dataset id of the evaluation data, e.g. cifar10")
    hub.add_argument("--split", default="test", help="evaluation split (default: test)")
    hub.add_argument(
        "--recipe",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training setting for the card, e.g. epochs=200 (repeatable)",
    )
    hub.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier Hub folder (nothing else in it)"
    )


def add_list_arguments(listing: argparse.ArgumentParser) -> None:
    """Options of ``list``."""
    listing.add_argument("filter", nargs="?", help="wildcard filter, e.g. 'resnet32*'")
    listing.add_argument("--pretrained", action="store_true", help="list pretrained tags only")


def add_predict_arguments(predict: argparse.ArgumentParser) -> None:
    """Options of ``predict``: the model, the images, NPE-LA, the output format and the hardware."""
    predict.add_argument(
        "source",
        help="run directory, checkpoint.pt / .safetensors, model name[.tag] (with "
        "--pretrained), Hub folder or .onnx file",
    )
    predict.add_argument("images", nargs="+", help="image files, or folders searched recursively")
    predict.add_argument("--pretrained", action="store_true", help="load the named model's pretrained weights")
    predict.add_argument("--model", help="model name, for .safetensors weights that do not record it")
    predict.add_argument(
        "--npe-alpha",
        "--alpha",
        dest="npe_alpha",
        type=float,
        help="NPE-LA strength of an unmerged NPE model (0: unadjusted logits; default: the model's)",
    )
    predict.add_argument("--top-k", type=int, help="classes per image, at most the class count (default: 5)")
    masks = predict.add_argument_group("segmentation models: class-index mask PNGs")
    masks.add_argument(
        "--out", help="folder for the masks (OUT/<path below the input folder>.png): new, empty or earlier masks"
    )
    masks.add_argument("--overlays", action="store_true", help="also write OUT/overlays/<name>.png, masks over images")
    masks.add_argument("--overwrite", action="store_true", help="replace the masks of an earlier prediction in --out")
    masks.add_argument("--mode", choices=("whole", "slide"), help="whole-image or sliding-window (default: slide)")
    masks.add_argument("--crop-size", type=_size, help="slide window (default: 128)")
    masks.add_argument("--stride", type=_size, help="slide stride (default: 85)")
    output = predict.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        default="table",
        help="a JSON list on stdout, one object per image",
    )
    output.add_argument(
        "--csv", dest="format", action="store_const", const="csv", help="CSV on stdout, one row per class of each image"
    )
    predict.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    predict.add_argument("--device", help="cpu, cuda, cuda:N or auto for PyTorch models (default: auto)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar (shown for folders, on stderr)")


def add_adapt_parser(commands: Any) -> argparse.ArgumentParser:
    """The ``adapt`` subcommand and its options: estimate a deployment prior and fold it into the model."""
    adapt = commands.add_parser(
        "adapt",
        help="estimate the class mix of unlabeled data and fold it into the model",
        epilog=EPILOG_ADAPT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fit BCTS on labeled calibration data, estimate the prior of the unlabeled "
        "data (EM or BBSE), fold both into the final bias; writes a Hub folder and prior.json.",
    )
    adapt.add_argument("source", help="run directory, checkpoint, model name[.tag] (with --pretrained) or Hub folder")
    adapt.add_argument("--pretrained", action="store_true", help="load the named model's pretrained weights")
    adapt.add_argument(
        "--unlabeled",
        required=True,
        metavar="DATA",
        help="images from the deployment class mix, at least 10 per class: a folder of images (any tree), an .npz "
        "file or cifar10:test",
    )
    adapt.add_argument(
        "--calibration",
        required=True,
        metavar="DATA",
        help="labeled images from the training distribution, every class present (never the test set): a folder "
        "of class folders named as the model's classes, an .npz file with labels, cifar10:heldout",
    )
    adapt.add_argument(
        "--out", required=True, help="folder to write (config.json, model.safetensors, README.md, prior.json)"
    )
    adapt.add_argument("--method", choices=("em", "bbse"), default="em", help="estimator (default: em, with BCTS)")
    adapt.add_argument(
        "--source-prior",
        choices=("uniform", "train"),
        default="uniform",
        help="uniform for balanced "
        "logits (NPE-LA, LA, post-hoc LA; default), train for plain cross-entropy (its training counts)",
    )
    adapt.add_argument("--data-dir", help="folder with the data sets (default: $NPE_DATA_DIR, else ./data)")
    adapt.add_argument(
        "--rho", type=float, default=100.0, help="CIFAR-LT imbalance ratio of cifar10:heldout (default: 100)"
    )
    adapt.add_argument("--batch-size", type=int, default=500, help="images per forward pass (default: 500)")
    adapt.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    adapt.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier --out (nothing else in it)"
    )
    return adapt


def adapt_options(args: argparse.Namespace) -> dict[str, Any]:
    """``adapt_source``'s arguments from the ``adapt`` options."""
    return dict(
        source=args.source,
        unlabeled=args.unlabeled,
        calibration=args.calibration,
        out=args.out,
        pretrained=args.pretrained,
        method=args.method,
        source_prior=args.source_prior,
        data_dir=resolve_data_dir(args.data_dir),
        rho=args.rho,
        batch_size=args.batch_size,
        device=args.device,
        overwrite=args.overwrite,
    )


def not_none(**options: Any) -> dict[str, Any]:
    """The options that were given (not None), so the library's defaults apply to the rest."""
    return {name: value for name, value in options.items() if value is not None}


def _training_log(loaded: Any) -> Optional[Path]:
    """The ``log.jsonl`` of the training run a loaded model comes from (its directory, or a file in it), if any."""
    if loaded.config is None:
        return None
    source = Path(loaded.source)
    log = (source if source.is_dir() else source.parent) / LOG_FILE
    return log if log.is_file() else None


def segmentation_evaluate_options(args: argparse.Namespace, loaded: Any, about: dict[str, Any]) -> dict[str, Any]:
    """``segmentation.evaluate_run``'s arguments (but the model, its config, the folder and the inputs) from the
    ``evaluate`` options and what the loaded run records: its data set, folder, ignore index, zero-label reduction
    and training pixels per class (used only when the evaluation is on the run's own data set)."""
    run_data = loaded.config.data if loaded.config is not None else {}
    dataset = args.dataset or loaded.dataset or "stare"
    same_data = dataset == loaded.dataset
    return {
        "data_dir": resolve_data_dir(args.data_dir or (loaded.data_dir if same_data else None)),
        "dataset": dataset,
        "overlays": args.overlays or 0,
        "about": about,
        "overwrite": args.overwrite,
        **not_none(
            ignore_index=loaded.config.train.ignore_index if loaded.config is not None else None,
            reduce_zero_label=run_data.get("reduce_zero_label") if same_data else None,
            class_pixels=run_data.get("class_pixels") if same_data else None,
            split=args.split,
            annotations=args.annotation,
            alphas=args.npe_alpha,
            mode=args.mode,
            crop_size=args.crop_size,
            stride=args.stride,
            scale=args.scale,
            device=args.device,
        ),
    }


_MASK_ONLY = ("overlays", "overwrite", "mode", "crop_size", "stride")
"""``predict`` options that apply only to masks (``--out``)."""


def check_predict_options(args: argparse.Namespace) -> None:
    """Refuse ``predict`` options of the other output: classifier options with ``--out`` (masks), mask options
    without it."""
    if args.out is not None:
        given = [f"--{name.replace('_', '-')}" for name in ("top_k", "model") if getattr(args, name) is not None]
        if given or args.format == "csv":
            raise ValueError(f"{' and '.join(given) or '--csv'} apply to classifiers, not to masks (--out).")
        return
    given = [f"--{name.replace('_', '-')}" for name in _MASK_ONLY if getattr(args, name) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} apply to masks: give --out DIR with a segmentation model.")


def classification_evaluate_options(args: argparse.Namespace, loaded: Any, about: dict[str, Any]) -> dict[str, Any]:
    """``classification.evaluate_run``'s arguments (but the model and folder) from the ``evaluate`` options and what
    the loaded model records: its data, its training method (which names the plots' variants) and its run's log."""
    method = {"method": loaded.config.method} if loaded.config is not None else {}
    return {
        "data_dir": resolve_data_dir(),
        **loaded.data_settings(),
        **not_none(
            dataset=args.dataset,
            rho=args.rho,
            max_per_class=args.max_per_class,
            data_dir=args.data_dir,
            split_dir=args.split_dir,
            image_size=args.image_size,
            workers=args.workers,
            download=args.download,
            device=args.device,
            batch_size=args.eval_batch_size,
            channels_last=args.channels_last,
            amp=args.amp,
            target_prior=args.target_prior,
        ),
        "posthoc_tau": args.posthoc_tau,
        "sets": args.sets,
        "about": {**about, **method},
        "training_log": _training_log(loaded),
        "title": f"{loaded.name}{' merged' if args.merge else ''}",
    }


def reject_other_task_options(args: argparse.Namespace, task: str, step: str = "training") -> None:
    """Options that only the other task's ``step`` (training, evaluation) reads are an error, not silently ignored."""
    other = "classification" if task == "segmentation" else "segmentation"
    given = [flag for dest, flag in args.task_options[other].items() if getattr(args, dest) not in (None, [])]
    if given:
        subject = "run" if step == "training" else "model"
        raise ValueError(
            f"option(s) {', '.join(given)} belong to {other} {step}, but this is a {task} {subject}; remove them."
        )
