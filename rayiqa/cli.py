"""The `rayiqa` command: one entry point with a subcommand per job.

Every config-driven job is `rayiqa <command> [CONFIG] [key.sub=value ...]` and maps to a library
function `main_*(config_path, overrides) -> exit code`, imported only when its command runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rayiqa.config import ConfigError

# command words -> (module, function, help)
JOBS: dict[tuple[str, ...], tuple[str, str, str]] = {
    ("score",): ("rayiqa.pipeline.score_job", "main_score", "score an image collection with LLM-IQA (streaming Ray Data job)"),
    ("eval", "study"): ("rayiqa.pipeline.study", "main_study",
                          "the MLLM prompting study: systems x engines -> answers, SRCC table, heat-map"),
    ("train", "promptiqa"): ("rayiqa.train.promptiqa", "main_train_promptiqa", "PromptIQA mixed-dataset training on Ray Train"),
    ("train", "grmp"): ("rayiqa.train.grmp", "main_grmp", "GRMP-IQA meta-prompt pre-training on Ray Train"),
    ("train", "grmp-finetune"): ("rayiqa.train.grmp", "main_grmp_finetune", "GRMP-IQA fine-tuning with QGR (and the few-shot protocol)"),
    ("train", "tiny-iqa"): ("rayiqa.train.tiny_iqa", "main_train_tiny_iqa",
                              "teach the tiny Qwen2.5-VL rayiqa's quality prompts on Ray Train"),
    ("serve",): ("rayiqa.serve.app", "main_serve", "the Ray Serve HTTP endpoint"),
}


def _run_job(args: argparse.Namespace) -> int:
    module, func, _ = JOBS[args.job]
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # `rayiqa score key=value ...` without a config file
        config, overrides = None, [config, *overrides]
    return getattr(importlib.import_module(module), func)(config, overrides)


def _eval_scores(args: argparse.Namespace) -> int:
    from rayiqa.evaluate import evaluate_files

    try:
        agreement = evaluate_files(args.predictions, args.mos, args.mos_column, args.key, args.score_column,
                                   args.lower_is_better, args.by)
    except (ValueError, FileNotFoundError) as e:  # a missing file or column, nothing to join
        if args.debug:
            raise
        print(f"eval error: {e}", file=sys.stderr)
        return 2
    print(agreement.render())
    return 0


def _report(args: argparse.Namespace) -> int:
    from rayiqa.report import write_report

    try:
        agreement = None
        if args.mos:
            from rayiqa.evaluate import evaluate_files

            agreement = evaluate_files(args.output, args.mos, args.mos_column, args.key)
        uri = write_report(args.output, args.out, args.n, agreement, args.mos_column)
    except (ValueError, FileNotFoundError) as e:
        print(f"report error: {'no such file or folder: ' if isinstance(e, FileNotFoundError) else ''}{e}", file=sys.stderr)
        return 2
    print(f"report written: {uri}" + (f"\nopen it in a browser: file://{uri}" if "://" not in uri else ""))
    return 0


def _add_job(sub: argparse._SubParsersAction, words: tuple[str, ...]) -> None:
    p = sub.add_parser(words[-1], help=JOBS[words][2])
    p.add_argument("config", nargs="?", help="YAML config (see configs/); omitted: all defaults")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. input.uri=s3://bucket/imgs")
    p.set_defaults(func=_run_job, job=words)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayiqa", description="No-reference image quality assessment on Ray.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true", help="show the traceback of a failure (user errors print one line)")
    sub = p.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words in JOBS:
        if len(words) == 1:
            _add_job(sub, words)
        else:
            if words[0] not in groups:
                groups[words[0]] = sub.add_parser(words[0]).add_subparsers(dest="what", required=True)
            _add_job(groups[words[0]], words)
    e = groups["eval"].add_parser("scores", help="join predictions with MOS and print SRCC/KRCC/PLCC")
    e.add_argument("predictions", help="prediction Parquet file or folder (from rayiqa score)")
    e.add_argument("mos", help="CSV or Parquet with a key column and a MOS column")
    e.add_argument("--mos-column", default="mos")
    e.add_argument("--score-column", default="score")
    e.add_argument("--key", default="name", choices=["name", "path"], help="join on file name or full path")
    e.add_argument("--lower-is-better", action="store_true", help="the MOS column is a DMOS or a distortion level")
    e.add_argument("--by", help="also report each value of this MOS-table column (e.g. source, distortion) alone")
    e.set_defaults(func=_eval_scores)
    r = sub.add_parser("report", help="a static HTML report of a score run: scores, errors, the best and worst images' evidence")
    r.add_argument("output", help="the score run's output.uri (local or s3://)")
    r.add_argument("--out", help="folder for report.html and its PNGs (default: OUTPUT/_report)")
    r.add_argument("-n", type=int, default=8, help="images shown in each of the lowest / highest lists (1-24)")
    r.add_argument("--mos", help="CSV or Parquet of human scores: adds score vs MOS and SRCC/KRCC/PLCC/RMSE")
    r.add_argument("--mos-column", default="mos")
    r.add_argument("--key", default="name", choices=["name", "path"], help="join with --mos on file name or full path")
    r.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as e:
        known = next(((label, code) for kind, (label, code) in _user_errors().items() if isinstance(e, kind)), None)
        if known is None or args.debug:
            raise
        print(f"{known[0]}: {e}", file=sys.stderr)
        return known[1]


def _user_errors() -> dict[type, tuple[str, int]]:
    """Failures that are the user's to fix -> (label, exit code): printed in a line or two naming the key,
    without a traceback (`--debug` shows it)."""
    from rayiqa.data import DatasetError
    from rayiqa.io.errors import InputError, OutputError, StorageError

    return {
        ConfigError: ("config error", 2),
        InputError: ("input error", 2),
        OutputError: ("output error", 2),
        DatasetError: ("dataset error", 2),
        StorageError: ("storage error", 3),
    }


def job_main(command: list[str]) -> None:
    """The body of a `jobs/*.py` entrypoint: `--config PATH [key=value ...]` -> `rayiqa <command> ...`."""
    ap = argparse.ArgumentParser(description=f"rayiqa {' '.join(command)} for `ray job submit`")
    ap.add_argument("--config", required=True)
    args, overrides = ap.parse_known_args()
    sys.exit(main([*command, args.config, *overrides]))


if __name__ == "__main__":
    sys.exit(main())
