"""The study's outcome on the console, at the end of `python -m study.run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.confirm import best_choice
from study.pareto import pareto_front
from study.spec import StudySpec, length_text


def print_report(out: dict[str, Any], spec: StudySpec, study_dir: Path,
                 tracking_uri: str) -> None:
    from study.summary import leaderboard
    from study.tracking import ui_command

    rows = out["rows"]
    measured = ["fid", "kid", "precision", "recall"]
    columns = [c for c in rows.columns if c.startswith("param_")] + measured + [
        t for t in spec.targets if t not in measured] + ["steps", "status"]
    board = leaderboard(rows, spec)
    sessions = out["sessions"]
    each = (f" over {len(sessions)} sessions ({' + '.join(f'{t / 60:.1f}' for t in sessions)})"
            if len(sessions) > 1 else "")
    print(f"\nstudy {spec.name}: {len(rows)} trials in {sum(sessions) / 60:.1f} min{each}; "
          + ", ".join(f"{n} {s}" for s, n in rows["status"].value_counts().items()))
    if spec.objectives:
        front = pareto_front(board, spec)
        print(f"\nPareto front on {', '.join(spec.targets)}: {len(front)} trials")
        print(front[["trial_id", *columns]].to_string(index=False))
    print("\ntop 5 by final", spec.metric)
    print(board[columns].head(5).to_string(index=False))
    base = rows[rows["baseline"]]
    print(f"\nbaseline ({spec.baseline_name})")
    print(base[columns].to_string(index=False))
    if out["confirm_table"] is not None:
        print(f"\nconfirmation: mean and sd of final {spec.metric} over "
              f"{spec.confirm.seeds} new seeds")
        print(out["confirm_table"].to_string(index=False))
        print(out["verdict"])
    final = out.get("final_runs")
    if final is not None and not final.empty:
        run = final.iloc[0]
        metric = spec.metric
        if run["status"] == "completed":
            floor = run[f"{metric}_floor"]
            print(f"\nfinal run: {length_text(spec.final.steps, spec.budget.unit)} of the chosen "
                  f"configuration (seed {run['seed']}): {metric} {run[metric]:.4g} (floor "
                  f"{floor:.3g}, {run[metric] / floor:.1f}x), precision {run['precision']:.2f}, "
                  f"recall {run['recall']:.2f}")
        else:
            print(f"\nfinal run {run['status']}: {run['reason']}; the product is the chosen "
                  "configuration's confirmation run")
    if out["best"] is not None:
        finished = final is not None and (final["status"] == "completed").any()
        print(f"\nbest generator: {study_dir / 'best_generator.pt'}")
        print(f"best config:    {study_dir / 'best_config.yaml'}\n"
              f"                ({best_choice(out['confirm_table'], spec, finished)})")
    print(f"\nMLflow: experiment {spec.name!r} at {tracking_uri}; to browse it:\n"
          f"  {ui_command(tracking_uri)}")

