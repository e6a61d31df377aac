r"""Ship finished CIFAR-LT runs as pretrained checkpoints (maintainers' tool; see ``export/zoo.py``).

    python export/package_pretrained.py zoo/resnet32_npe16_r100_hp2 --data-dir ../shared/data
    python export/package_pretrained.py --hub-only resnet32_npe16.cifar10_lt_r100_hp2 --hub-dir hub/
    python export/package_pretrained.py --skip-shipped $(dirname zoo/*/metrics.json)   # finished, not yet shipped

For each run: bundled weights in ``npe_models/weights/`` (unmerged, plus the merged plain model
for NPE runs) with their sha256 and measured accuracy in ``manifest.json``, and a ready-to-upload
Hub folder per checkpoint under ``--hub-dir`` (default ``zoo/hub/``, which git ignores). Refuses
runs that are unfinished or shortened. ``--hub-only NAME ...`` only regenerates the Hub folders of
checkpoints already shipped (``npe_models.hub.save_pretrained_for_hub``); ``--skip-shipped`` leaves out
runs whose checkpoint names the manifest lists already (the zoo driver ships what finished while it was off).
"""

import argparse
from pathlib import Path

from npe_models.hub import save_pretrained_for_hub
from zoo import HUB_DIR, is_shipped, package_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs",
        nargs="+",
        help="finished run directories of `npe-models train` (with --hub-only: "
        "shipped checkpoint names, see `npe-models list --pretrained`)",
    )
    parser.add_argument("--data-dir", help="CIFAR data directory (default: the one each run was trained with)")
    parser.add_argument("--hub-dir", type=Path, default=HUB_DIR, help=f"where the Hub folders go (default: {HUB_DIR})")
    parser.add_argument(
        "--hub-only", action="store_true", help="only regenerate the Hub folders of shipped checkpoints"
    )
    parser.add_argument(
        "--skip-shipped", action="store_true", help="leave out runs whose checkpoint names the manifest lists already"
    )
    args = parser.parse_args()
    for run in args.runs:
        if args.hub_only:
            print(f"wrote {save_pretrained_for_hub(run, args.hub_dir / run, overwrite=True)}")
            continue
        if args.skip_shipped and is_shipped(run):
            continue
        for name in package_run(run, data_dir=args.data_dir, hub_dir=args.hub_dir):
            print(f"shipped {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
