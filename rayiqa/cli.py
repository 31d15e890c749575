"""The `rayiqa` command: one entry point with a subcommand per job."""
from __future__ import annotations

import argparse
import logging
import sys

from rayiqa.config import ConfigError


def _score(args: argparse.Namespace) -> int:
    from rayiqa.config import ScoreConfig, load_config
    from rayiqa.pipeline.score_job import run_score

    cfg = load_config(ScoreConfig, args.config, args.overrides)
    summary = run_score(cfg)
    print(summary.render())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rayiqa.evaluate import evaluate_files

    print(evaluate_files(args.predictions, args.mos, args.mos_column, args.key, args.score_column).render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayiqa", description="No-reference image quality assessment on Ray.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score an image collection with LLM-IQA (streaming Ray Data job)")
    s.add_argument("config", nargs="?", help="YAML config (see configs/score.yaml); omitted: all defaults")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. input.uri=s3://bucket/imgs output.uri=out")
    s.set_defaults(func=_score)

    e = sub.add_parser("eval", help="join predictions with MOS and print SRCC/KRCC/PLCC")
    e.add_argument("predictions", help="prediction Parquet file or folder (from rayiqa score)")
    e.add_argument("mos", help="CSV or Parquet with a key column and a MOS column")
    e.add_argument("--mos-column", default="mos")
    e.add_argument("--score-column", default="score")
    e.add_argument("--key", default="name", choices=["name", "path"], help="join on file name or full path")
    e.set_defaults(func=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
