"""Command line: `python -m neftlib run|train|config|estimate|figures|report|recipes|winrate|analyze ...`."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
from pathlib import Path

from neftlib.base.config import RunConfig
from neftlib.base.io import read_json
from neftlib.base.paths import data_notice, results_root, run_dir
from neftlib.base.profiles import PROFILES
from neftlib.base.recipes import config_text, load_config, parse_sets, split_seed_alpha, write_recipes
from neftlib.evaluation.textstats import analyze_files
from neftlib.evaluation.winrate import summarize_annotations

# Commands that load torch, transformers or matplotlib import them when they run, so `--help`, `config`, `winrate`,
# `analyze` and `recipes` start in a fraction of a second instead of the ~13 s torch takes to import; `run` and
# `train` check their settings before that import, so a typo in --set is named at once.
REPLICATION_HINT = "the pipeline's packages come with the replication extra: pip install 'neftlib[replication]'"

# win_rate counts votes as alpaca_eval does (100 * (n_wins + n_draws / 2) / n_total); win_rate_soft averages
# the preferences (probabilities, where the annotations hold them: neftlib's preference_soft).
WINRATE_KEYS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "avg_length",
                "win_rate_soft")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neftlib", description="NEFTune replication pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebooks in order with papermill")
    _settings(run)
    run.add_argument("--run", default="", help="results/<run>/ folder (default: the profile name)")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--alpha", type=float, default=None, help="NEFTune alpha of the noised arms")
    run.add_argument("--only", nargs="+", default=None, help="notebook prefixes to run, e.g. 01 02")
    run.add_argument("--force", action="store_true", help="rerun everything; the earlier run is moved aside")
    tr = sub.add_parser("train", help="prepare the data and train a stage's arms, no notebooks; runs as one "
                        "process or under accelerate launch / torchrun (every rank runs this same command)")
    _settings(tr)
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
    conf = sub.add_parser("config", help="print the settings a run would use (profile or recipe, then --set) as YAML, "
                          "every TRL / TrainingArguments name resolved; loads no model")
    _settings(conf)
    conf.add_argument("--run", default="", help="results/<run>/ folder (default: the profile name)")
    conf.add_argument("--seed", type=int, default=None)
    conf.add_argument("--alpha", type=float, default=None, help="NEFTune alpha of the noised arms")
    fig = sub.add_parser("figures", help="rebuild every figure of a run from its results folder (figures/<run>/)")
    fig.add_argument("run", help="the run's name: the folder under results/")
    rep = sub.add_parser("report", help="rebuild a run's report (results/<run>/report/) from its results folder")
    rep.add_argument("run", help="the run's name: the folder under results/")
    est = sub.add_parser("estimate", help="peak GPU memory of each stage of a profile, from the model's config "
                         "alone, as JSON: whether it fits, and what to change when not")
    est.add_argument("--profile", default="cpu", help=", ".join(PROFILES))
    est.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                     help="memory of one GPU in GB as GPUs are sold (GiB: a T4 is 15, an A100 40 or 80)")
    est.add_argument("--gpus", type=int, default=1, help="GPUs (processes) training together; FSDP for full fine-tunes")
    rec = sub.add_parser("recipes", help="write configs/recipes/<profile>.yaml from the profiles (every setting with "
                         "its comment); tests fail when the two differ")
    rec.add_argument("--out", type=Path, default=None, help="another folder to write them to")
    win = sub.add_parser("winrate", help="alpaca_eval metrics of an annotations file, as JSON")
    win.add_argument("annotations", type=Path)
    ana = sub.add_parser("analyze", help="length / repetition / log-diversity of model_outputs.json files")
    ana.add_argument("outputs", type=Path, nargs="+")
    ana.add_argument("--cutoff", type=int, default=50, help="whitespace tokens kept per answer (paper: 50 for Alpaca)")
    return parser


def _settings(cmd: argparse.ArgumentParser) -> None:
    """--profile or --config, and --set: the settings of `run` and `train`."""
    which = cmd.add_mutually_exclusive_group()
    which.add_argument("--profile", default=None, help=f"a named profile (default cpu): {', '.join(PROFILES)}")
    which.add_argument("--config", default=None, metavar="PATH.yaml",
                       help="a recipe file instead of a profile (configs/recipes/ holds one per profile)")
    cmd.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE",
                     help="override any setting (repeatable), e.g. --set learning_rate=1e-4 --set arms=baseline,neftune")


def _resolve_settings(args: argparse.Namespace) -> dict:
    """Profile / recipe and overrides of `run`, `train` and `config`, checked before anything runs."""
    sets = parse_sets(args.set)
    sets, args.seed, args.alpha = split_seed_alpha(sets, args.seed, args.alpha)
    config = str(Path(args.config).expanduser().resolve()) if args.config else ""
    return {"profile": args.profile or ("" if config else "cpu"), "config": config, "sets": sets}


def _checked_config(args: argparse.Namespace, chosen: dict, **flags) -> RunConfig:
    """The whole config the command would run with, built without torch: every setting and combination is
    checked here, in a fraction of a second, before `run` or `train` import anything heavy."""
    return load_config(chosen["profile"], config=chosen["config"] or None, run=args.run or None, seed=args.seed,
                       alpha=args.alpha, **{**chosen["sets"], **{k: v for k, v in flags.items() if v is not None}})


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            chosen = _resolve_settings(args)
            _checked_config(args, chosen)
            from neftlib.pipeline.runner import run_pipeline

            folder = run_pipeline(chosen["profile"], args.run, seed=args.seed, alpha=args.alpha, force=args.force,
                                  only=args.only, config=chosen["config"], sets=chosen["sets"])
            print(f"results in {folder}")
        elif args.command == "train":
            _train(args)
        elif args.command == "config":
            cfg = _checked_config(args, _resolve_settings(args))
            print(config_text(cfg, [f"The settings of run {cfg.run_name!r}: profile {cfg.profile!r}"
                                    + (f", recipe {args.config}" if args.config else "")
                                    + (", with --set" if args.set else "") + ".",
                                    "Run them: python -m neftlib run with the same options, or save this as a "
                                    "recipe and use --config."]), end="")
        elif args.command == "figures":
            from neftlib.analysis.figures import rebuild_all

            _existing_run(args.run)
            for name, where in rebuild_all(args.run).items():
                print(f"{name}: {where}")
        elif args.command == "report":
            from neftlib.analysis.report import build_report

            folder = _existing_run(args.run)
            seed = read_json(folder / "config.json").get("seed", 0) if (folder / "config.json").exists() else 0
            print(build_report(args.run, seed=seed)["summary"])
            print(f"\nreport in {folder / 'report'}")
        elif args.command == "estimate":
            from neftlib.pipeline.estimate import estimate_profile

            print(json.dumps(estimate_profile(args.profile, gpu_memory_gib=args.gpu_memory, gpus=args.gpus), indent=2))
        elif args.command == "recipes":
            for written in write_recipes(*([args.out] if args.out else [])):
                print(written)
        elif args.command == "winrate":
            stats = summarize_annotations(args.annotations)
            print(json.dumps({k: stats[k] for k in WINRATE_KEYS}))
        elif args.command == "analyze":
            print(json.dumps(analyze_files(args.outputs, cutoff=args.cutoff), indent=2))
    except ModuleNotFoundError as err:
        # papermill stands for the replication extra: missing, this is a light install (the noise alone)
        hint = f"; {REPLICATION_HINT}" if importlib.util.find_spec("papermill") is None else ""
        print(f"neftlib {args.command}: error: {err}{hint}", file=sys.stderr)
        return 2
    except (ValueError, OSError, MemoryError, RuntimeError) as err:  # OSError covers missing files and a full disk
        print(f"neftlib {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def _existing_run(run: str) -> Path:
    """results/<run>/, or a FileNotFoundError listing the runs there are."""
    folder = run_dir(run)
    if not folder.is_dir():
        root = results_root()
        runs = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise FileNotFoundError(f"no run {run!r} under {root}; runs there: {', '.join(runs) or 'none'}")
    return folder


def _train(args: argparse.Namespace) -> None:
    """start_run + prepare_data + train_arms; every rank of a launch runs this, the main one reports."""
    chosen = _resolve_settings(args)
    for name, flag in (("grad_accum", args.grad_accum), ("model", args.model)):
        if flag is not None and chosen["sets"].get(name) not in (None, str(flag)):
            raise ValueError(f"{name} given twice: --{name.replace('_', '-')} {flag} and --set {name}={chosen['sets'][name]}")
    _checked_config(args, chosen, grad_accum=args.grad_accum, model=args.model)
    from neftlib.pipeline.lock import run_lock
    from neftlib.pipeline.stages import prepare_data, run_config, stage_dir, start_run, train_arms
    from neftlib.training.train import process_state

    overrides = {**chosen["sets"], **{k: v for k, v in (("grad_accum", args.grad_accum), ("model", args.model))
                                      if v is not None}}
    notice = data_notice()  # raises before the run folder is made when NEFTLIB_DATA_DIR is not a folder
    main_rank = process_state().is_main_process
    settings = dict(seed=args.seed, alpha=args.alpha, config=chosen["config"], **overrides)
    # The main rank holds the run folder's lock (the other ranks of a launch are its partners, not rivals).
    folder = run_dir(run_config(chosen["profile"], args.run, **settings).run_name)
    with run_lock(folder) if main_rank else contextlib.nullcontext():
        cfg = start_run(chosen["profile"], args.run, **settings)
        if main_rank:
            print(notice, flush=True)
        prepare_data(cfg)
        table = train_arms(cfg, args.stage, arms=args.arm)
    if main_rank:
        for row in table.to_dict("records"):
            # .get: arms finished by an earlier version have no world_size / effective_batch
            print(f"{args.stage}/{row['arm']}: final loss {row['final_loss']:.4f} after {row['steps']} steps, "
                  f"{row.get('world_size', 1)} process(es), effective batch {row.get('effective_batch', '?')}")
        print(f"results in {stage_dir(cfg, args.stage)}")


if __name__ == "__main__":
    sys.exit(main())
