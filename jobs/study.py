"""`ray job submit -- python jobs/study.py --config configs/study.yaml [key=value ...]`: the MLLM prompting study."""
import argparse
import logging
import sys

from rayiqa.config import ConfigError
from rayiqa.pipeline.study import main_study

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True)
    args, overrides = ap.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(main_study(args.config, overrides))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
