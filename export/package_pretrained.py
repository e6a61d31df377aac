r"""Ship finished CIFAR-LT runs as pretrained checkpoints (maintainers' tool; see ``export/zoo.py``).

    python export/package_pretrained.py zoo/resnet32_npe16_r100_hp2 --data-dir ../shared/data
    python export/package_pretrained.py --hub-only resnet32_npe16.cifar10_lt_r100_hp2 --hub-dir hub/
    python export/package_pretrained.py --skip-shipped $(dirname zoo/*/metrics.json)   # finished, not yet shipped
    python export/package_pretrained.py --restore $(dirname zoo/*/config.json zoo/stare/*/config.json)   # a clone

For each run: bundled weights in ``npe_models/weights/`` (unmerged, plus the merged plain model
for NPE runs) with their sha256 and measured accuracy in ``manifest.json``, and a ready-to-upload
Hub folder per checkpoint under ``--hub-dir`` (default ``zoo/hub/``, which git ignores). Refuses
runs that are unfinished or shortened. ``--hub-only NAME ...`` only regenerates the Hub folders of
checkpoints already shipped (``npe_models.hub.save_pretrained_for_hub``); ``--skip-shipped`` leaves out
runs whose checkpoint names the manifest lists already (the zoo driver ships what finished while it was off).

Git keeps a zoo run's record, not its ``model.safetensors`` (each file is stored once: the shipped copy).
``--restore RUN ...`` writes the weights of finished runs back into their folders from the shipped files, byte for
byte (the sha256 their ``config.json`` records is checked; runs still holding theirs are left as they are), for
whatever reads a run folder: ``npe-models train --init``, ``evaluate``, the STARE benchmark. ``--skip-shipped``
does so for the shipped runs it leaves out, so that the zoo driver's cRT and post-hoc LA runs find their CE run's
weights in a clone.
"""

import argparse
import sys
from pathlib import Path

from npe_models.hub import save_pretrained_for_hub
from npe_models.runs import WEIGHTS_FILE
from zoo import HUB_DIR, is_shipped, package_run, restore_weights


def _restore(run: str) -> bool:
    """Write a finished run's weights back where they are missing; False, and why on stderr, where no shipped
    file holds them (an unfinished run, an unshipped variant, a rerun shipped instead)."""
    if (Path(run) / WEIGHTS_FILE).is_file():
        return True
    try:
        print(f"restored {restore_weights(run)}")
    except (OSError, ValueError) as error:
        print(f"not restored: {error}", file=sys.stderr)
        return False
    return True


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
        "--skip-shipped",
        action="store_true",
        help="leave out runs whose checkpoint names the manifest lists already (their weights restored where missing)",
    )
    parser.add_argument(
        "--restore", action="store_true", help="only write finished runs' model.safetensors back from the shipped files"
    )
    args = parser.parse_args()
    failed = False
    for run in args.runs:
        if args.hub_only:
            print(f"wrote {save_pretrained_for_hub(run, args.hub_dir / run, overwrite=True)}")
            continue
        if args.restore:
            failed |= not _restore(run)
            continue
        if args.skip_shipped and is_shipped(run):
            _restore(run)
            continue
        for name in package_run(run, data_dir=args.data_dir, hub_dir=args.hub_dir):
            print(f"shipped {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
