"""`ray job submit -- python jobs/score.py --config configs/score.yaml [key=value ...]`."""
import argparse
import sys

from rayiqa.cli import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True)
    args, overrides = ap.parse_known_args()
    sys.exit(main(["score", args.config, *overrides]))
