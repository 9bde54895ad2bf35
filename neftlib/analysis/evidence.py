"""The README's key figures, drawn by the same code as a run's figures from the committed evidence snapshots
(docs/evidence/): never drawn by hand, rebuilt by

    python -m neftlib.analysis.evidence            # or: make readme-figures

A snapshot is a flat folder of a run's tables (config.json, winrates.csv, diversity.csv, arm_metrics.csv, ...).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from neftlib.analysis.draw import draw_alpha_sweep, draw_lengths, draw_win_rates
from neftlib.analysis.plots import save
from neftlib.analysis.results_block import REFERENCE, STUDY, SWEEPS, calibrated, readme_text, sweep_files
from neftlib.base.paths import PROJ_ROOT, run_dir

EVIDENCE = PROJ_ROOT / "docs" / "evidence"
OUT = PROJ_ROOT / "docs" / "figures"
# figure -> (snapshot it is drawn from, the snapshot whose published-answer table it also reads)
SNAPSHOTS = {"alpha_sweep": STUDY, "win_rates": REFERENCE, "length_diversity": REFERENCE}
PUBLISHED = REFERENCE  # the paper's published answers, measured by that run's stage 05
# a run's files a snapshot keeps: results/<run>/<source> -> docs/evidence/<name>/<target>
SNAPSHOT_FILES = {"config.json": "config.json", "train/summary.csv": "train_summary.csv",
                  "qlora/summary.csv": "qlora_summary.csv", "eval/winrates.csv": "winrates.csv",
                  "analysis/overfitting.csv": "overfitting.csv", "analysis/diversity.csv": "diversity.csv",
                  "analysis/published_diversity.csv": "published_diversity.csv",
                  "analysis/length_only.csv": "length_only.csv", "report/claims.csv": "claims.csv",
                  "report/claim_evidence.csv": "claim_evidence.csv", "report/paper_vs_ours.csv": "paper_vs_ours.csv",
                  "report/summary.md": "summary.md"}


def _existing(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the snapshot holds {sorted(p.name for p in folder.iterdir())}")
    return path


def read(folder: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(_existing(folder, name))


# a recipe's train_data -> the data a committed snapshot trained on (every snapshot here read real Alpaca or the mini set)
DATA_NAMES = {"auto": "Alpaca", "alpaca": "Alpaca", "mini": "the embedded mini set"}


def snapshot_about(folder: Path) -> dict[str, str]:
    """Our side of a figure in words, from the snapshot's config.json and its judge's agreement."""
    config = json.loads(_existing(folder, "config.json").read_text(encoding="utf-8"))
    data = DATA_NAMES.get(str(config.get("train_data")), Path(str(config.get("train_data"))).name)
    wins = read(folder, "winrates.csv") if (folder / "winrates.csv").exists() else pd.DataFrame()
    judge = "none"  # a run that judged nothing (the study measures the judge-free claims)
    if not wins.empty and "judge" in wins:
        judge = str(wins["judge"].iloc[0])
        if "judge_agreement" in wins and pd.notna(wins["judge_agreement"].iloc[0]):
            judge += (f" (agrees with GPT-4 on {wins['judge_agreement'].iloc[0]:.0%} of "
                      f"{int(wins['agreement_n'].iloc[0])} published pairs)")
    epochs = f"{config['epochs']:g} epoch{'s' if config['epochs'] != 1 else ''}" if config.get("epochs") else ""
    scale = ", ".join(p for p in (f"{config.get('train_limit')} training examples", epochs,
                                  f"max length {config.get('max_length')}", f"{config.get('eval_limit')} prompts") if p)
    return {"model": str(config["model"]), "train_data": data, "scale": scale, "judge": judge}


def labelled_wins(folder: Path) -> pd.DataFrame:
    """winrates.csv with each arm's noise in its label and its stage named, as a run's figures label them."""
    wins, config = read(folder, "winrates.csv"), json.loads((folder / "config.json").read_text())
    summaries = [read(folder, f"{name}.csv").assign(stage=stage) for name, stage in
                 (("train_summary", "train"), ("qlora_summary", "qlora")) if (folder / f"{name}.csv").exists()]
    arms = pd.concat(summaries, ignore_index=True)[["stage", "arm", "alpha", "distribution"]]
    wins = wins.merge(arms, how="left")
    wins["label"] = [f"{a} (no noise)" if al == 0 else f"{a} ({d}, alpha {al:g})"
                     for a, al, d in zip(wins["arm"], wins["alpha"], wins["distribution"])]
    wins["stage_name"] = wins["stage"].map({"train": f"{config['method']} fine-tune", "qlora": "QLoRA"})
    return wins


def figures(evidence: Path = EVIDENCE) -> dict[str, Figure]:
    """The README's figures from the snapshots under `evidence`."""
    sweep, alpaca = evidence / SNAPSHOTS["alpha_sweep"], evidence / SNAPSHOTS["win_rates"]
    about = snapshot_about(sweep)
    made = {"alpha_sweep": draw_alpha_sweep(read(sweep, "arm_metrics.csv"),
                                            f"{about['model']} on {about['train_data']}, {about['scale']}",
                                            judge=about["judge"].split(" (")[0]),
            "win_rates": draw_win_rates(labelled_wins(alpaca), snapshot_about(alpaca), calibrated(evidence)),
            "length_diversity": draw_lengths(read(alpaca, "diversity.csv"),
                                             read(evidence / PUBLISHED, "published_diversity.csv"),
                                             snapshot_about(alpaca))}
    missing = [name for name, fig in made.items() if fig is None]
    if missing:
        raise ValueError(f"the snapshots hold nothing to draw for {missing}")
    return made


def snapshot(run: str, name: str, evidence: Path = EVIDENCE) -> Path:
    """Copy a finished run's tables (SNAPSHOT_FILES, those it has) into `evidence`/<name>/; an existing snapshot
    is never overwritten."""
    source, target = run_dir(run), evidence / name
    if not (source / "report" / "DONE.json").exists():
        raise FileNotFoundError(f"{source} has no finished report (report/DONE.json): run it through 06 first")
    if target.exists():
        raise FileExistsError(f"{target} exists: choose another name, or move it aside yourself")
    tmp = target.with_name(f".{name}.tmp")
    tmp.mkdir(parents=True, exist_ok=False)
    for rel, out in SNAPSHOT_FILES.items():
        if (source / rel).exists():
            (tmp / out).write_bytes((source / rel).read_bytes())
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neftlib.analysis.evidence",
                                     description="the README's figures and results block, from the committed evidence")
    parser.add_argument("what", nargs="?", choices=("figures", "readme", "snapshot"), default="figures",
                        help="figures: redraw docs/figures/ (make readme-figures); readme: rewrite README.md's results "
                        "block and the study summary (make readme-results); snapshot RUN NAME: copy a run's tables "
                        "into docs/evidence/NAME/")
    parser.add_argument("names", nargs="*", help="snapshot: the run (under results/) and the snapshot's name")
    parser.add_argument("--evidence", type=Path, default=EVIDENCE, help="folder of evidence snapshots")
    parser.add_argument("--out", type=Path, default=OUT, help="where the PNGs go")
    parser.add_argument("--readme", type=Path, default=PROJ_ROOT / "README.md", help="the README to rewrite")
    parser.add_argument("--check", action="store_true", help="readme: change nothing, exit 1 when a file differs")
    args = parser.parse_args(argv)
    if args.what == "snapshot":
        if len(args.names) != 2:
            parser.error("snapshot needs RUN NAME, e.g. snapshot reference cpu-reference-2026-12-03")
        print(snapshot(*args.names, evidence=args.evidence))
        return 0
    if args.what == "figures":
        for name, fig in figures(args.evidence).items():
            print(save(fig, args.out / f"{name}.png"))
        return 0
    targets = {args.readme: readme_text(args.readme.read_text(encoding="utf-8"), args.evidence)}
    for name in SWEEPS:
        targets.update(sweep_files(args.evidence, name))
    stale = [path for path, text in targets.items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path} differs from what `make readme-results` writes", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(targets[path], encoding="utf-8")
        tmp.replace(path)
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
