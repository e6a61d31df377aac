r"""Ship finished CIFAR-LT runs as pretrained checkpoints (maintainers' tool; see ``npe_models.zoo``).

    python export/package_pretrained.py zoo/resnet32_npe16_r100_hp2 --data-dir ../shared/data

For each run: bundled weights in ``npe_models/weights/`` (unmerged, plus the merged plain model
for NPE runs) with their sha256 and measured accuracy in ``manifest.json``, and a ready-to-upload
Hub folder per checkpoint under ``--hub-dir``. Refuses runs that are unfinished or shortened.
"""
import argparse

from npe_models.zoo import package_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run directories of `npe-models train`")
    parser.add_argument("--data-dir", help="CIFAR data directory (default: the one each run was trained with)")
    parser.add_argument("--hub-dir", default="zoo/hub", help="where the Hub folders go (default: zoo/hub)")
    args = parser.parse_args()
    for run in args.runs:
        for name in package_run(run, data_dir=args.data_dir, hub_dir=args.hub_dir):
            print(f"shipped {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
