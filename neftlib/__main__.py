"""Command line: `python -m neftlib run|train|estimate|winrate|analyze ...`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neftlib.profiles import PROFILES

WINRATE_KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "avg_length")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neftlib", description="NEFTune replication pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebooks in order with papermill")
    run.add_argument("--profile", default="cpu", help=", ".join(PROFILES))
    run.add_argument("--run", default="", help="results/<run>/ folder (default: the profile name)")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--alpha", type=float, default=None, help="NEFTune alpha of the noised arms")
    run.add_argument("--only", nargs="+", default=None, help="notebook prefixes to run, e.g. 01 02")
    run.add_argument("--force", action="store_true", help="rerun everything; the earlier run is moved aside")
    tr = sub.add_parser("train", help="prepare the data and train a stage's arms, no notebooks; runs as one "
                        "process or under accelerate launch / torchrun (every rank runs this same command)")
    tr.add_argument("--profile", default="cpu", help=", ".join(PROFILES))
    # --run-name: torchrun takes any --run... before the module's own arguments for its --run-path.
    tr.add_argument("--run", "--run-name", dest="run", default="",
                    help="results/<run>/ folder (default: the profile name); use --run-name under torchrun")
    tr.add_argument("--seed", type=int, default=None)
    tr.add_argument("--alpha", type=float, default=None, help="NEFTune alpha of the noised arms (paper: 5 for 7B, 15 for 70B)")
    tr.add_argument("--stage", choices=("train", "qlora"), default="train",
                    help="train: the profile's method (notebook 02); qlora: the QLoRA variant (notebook 03)")
    tr.add_argument("--arm", nargs="+", default=None, help="arms to train (default: all arms of the stage)")
    tr.add_argument("--grad-accum", type=int, default=None,
                    help="micro-batches per optimizer step and process; effective batch = batch_size x this x processes "
                    "(kept by a later `run` of the same run)")
    tr.add_argument("--model", default=None,
                    help="another model for the profile (hub id or local folder; kept by a later `run` of the same run)")
    est = sub.add_parser("estimate", help="peak GPU memory of each stage of a profile, from the model's config "
                         "alone, as JSON: whether it fits, and what to change when not")
    est.add_argument("--profile", default="cpu", help=", ".join(PROFILES))
    est.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                     help="memory of one GPU in GB as GPUs are sold (GiB: a T4 is 15, an A100 40 or 80)")
    est.add_argument("--gpus", type=int, default=1, help="GPUs (processes) training together; FSDP for full fine-tunes")
    win = sub.add_parser("winrate", help="alpaca_eval metrics of an annotations file, as JSON")
    win.add_argument("annotations", type=Path)
    ana = sub.add_parser("analyze", help="length / repetition / log-diversity of model_outputs.json files")
    ana.add_argument("outputs", type=Path, nargs="+")
    ana.add_argument("--cutoff", type=int, default=50, help="whitespace tokens kept per answer (paper: 50 for Alpaca)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from neftlib.runner import run_pipeline

            folder = run_pipeline(args.profile, args.run, seed=args.seed, alpha=args.alpha, force=args.force,
                                  only=args.only)
            print(f"results in {folder}")
        elif args.command == "train":
            _train(args)
        elif args.command == "estimate":
            from neftlib.estimate import estimate_profile

            print(json.dumps(estimate_profile(args.profile, gpu_memory_gib=args.gpu_memory, gpus=args.gpus), indent=2))
        elif args.command == "winrate":
            from neftlib.winrate import summarize_annotations

            stats = summarize_annotations(args.annotations)
            print(json.dumps({k: stats[k] for k in WINRATE_KEYS}))
        elif args.command == "analyze":
            from neftlib.textstats import analyze_files

            print(json.dumps(analyze_files(args.outputs, cutoff=args.cutoff), indent=2))
    except (ValueError, OSError, MemoryError, RuntimeError) as err:  # OSError covers missing files and a full disk
        print(f"neftlib {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _train(args: argparse.Namespace) -> None:
    """start_run + prepare_data + train_arms; every rank of a launch runs this, the main one reports."""
    from neftlib.paths import data_notice
    from neftlib.stages import prepare_data, stage_dir, start_run, train_arms
    from neftlib.train import process_state

    notice = data_notice()  # raises before the run folder is made when NEFTLIB_DATA_DIR is not a folder
    cfg = start_run(args.profile, args.run, seed=args.seed, alpha=args.alpha, grad_accum=args.grad_accum,
                    model=args.model)
    if process_state().is_main_process:
        print(notice, flush=True)
    prepare_data(cfg)
    table = train_arms(cfg, args.stage, arms=args.arm)
    if process_state().is_main_process:
        for row in table.to_dict("records"):
            # .get: arms finished by an earlier version have no world_size / effective_batch
            print(f"{args.stage}/{row['arm']}: final loss {row['final_loss']:.4f} after {row['steps']} steps, "
                  f"{row.get('world_size', 1)} process(es), effective batch {row.get('effective_batch', '?')}")
        print(f"results in {stage_dir(cfg, args.stage)}")


if __name__ == "__main__":
    sys.exit(main())
