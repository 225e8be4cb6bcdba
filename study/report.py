"""Build a study's report: `python -m study.report <study> [--compare <study> ...]`.

Writes reports/<study>.ipynb, executed by a real Jupyter kernel, and reports/<study>.html, from
MLflow alone (the study directory is not read). The notebook's cells are short: the work is in
study.records (MLflow -> frames) and study.figures, so a reader can edit and re-run it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from gan.errors import ConfigError, GanError
from gan.fileio import atomic_write_text
from gan.train import OneLineParser

KERNEL_TIMEOUT_S = 600


def notebook(studies: list[str], tracking_uri: str) -> nbformat.NotebookNode:
    main = studies[0]
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(f"# Study report: `{main}`\n\nRebuilt from the MLflow tracking store alone. Change the "
           "parameters below and re-run to report another study."),
        code(f"STUDIES = {studies!r}\nTRACKING_URI = {tracking_uri!r}"),
        code("import warnings\n\nimport optuna\nimport pandas as pd\n\n"
             "from study import figures, records\nfrom study.confirm import confirmation_table, "
             "verdict\n\n"
             "warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)\n"
             "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
             "pd.set_option('display.max_columns', 40, 'display.width', 200,\n"
             "              'display.max_colwidth', 120)\n"
             "studies = [records.load_study(name, TRACKING_URI) for name in STUDIES]\n"
             "record = studies[0]\nspec = record.spec"),
        md("## Summary"),
        code("records.summary(record)"),
        md("## Leaderboard\n\nWith several objectives, the Pareto front comes first: the "
           "completed trials that no other trial beats in every objective (Optuna's best "
           "trials), plotted with the baseline marked. Then every search trial; completed ones "
           "best first. The metric is each "
           "trial's best checkpoint re-scored with `final_n` samples; `fid_floor` is the FID of "
           "two real samples of that size, the best a generator can score; `train_s` is its "
           "training time in seconds. Trials stopped early "
           "have no final score: `best_eval_fid` (with `eval_n` samples) shows how far they got. "
           "The second table holds each trial's searched values, in the same order; a column "
           "with one value for every trial is left out."),
        code("front = records.pareto(record)\n"
             "if not front.empty:\n"
             "    print(f'Pareto front on {\", \".join(spec.targets)}: {len(front)} trials')\n"
             "    for table in records.board_views(front):\n        display(table)\n"
             "    fig = figures.pareto_front(record)"),
        code("board = records.leaderboard(record)  # completed only: the figures below use it\n"
             "ranking = records.ranking(record)\n"
             "results, searched = records.board_views(ranking)\n"
             "display(results)\ndisplay(searched)"),
        md("## Confirmation\n\nThe top configurations and the baseline re-trained with new seeds: "
           "mean and sd of the final metric. Claims are made from this table."),
        code("confirm = record.phase('confirm')\n"
             "if confirm.empty:\n    print('no confirmation phase in this study')\n"
             "else:\n    table = confirmation_table(confirm, spec)\n"
             "    print(verdict(table, spec))\n    display(table)"),
        md("## The study's product\n\nThe generator the study hands over (`best_generator.pt`): "
           "the chosen configuration's final run, trained longer than the search's budget "
           "with a whole node, scored with `final_n` samples beside the floor; its samples "
           "beside the baseline's search trial, same latent seed."),
        code("best = records.product(record)\n"
             "if best is None:\n    print('no trial completed: no product')\nelse:\n"
             "    facts = ['trial_id', 'phase', 'seed', 'steps', spec.metric,\n"
             "             f'{spec.metric}_floor', 'kid', 'precision', 'recall', 'density',\n"
             "             'coverage', 'modes']\n"
             "    display(best[facts].to_frame('product').T.assign(\n"
             "        over_floor=best[spec.metric] / best[f'{spec.metric}_floor']))\n"
             "    pair = pd.concat([best.to_frame().T, board[board['baseline']]])\n"
             "    fig = figures.sample_grids(pair.drop_duplicates('run_id'), spec.metric)"),
        md("## Optimisation history"),
        code("study = records.optuna_study(record, [spec.metric])  # the first objective\n"
             "ax = optuna.visualization.matplotlib.plot_optimization_history(study)\n"
             "ax.set_yscale('log')\nax.figure.set_size_inches(8, 4)"),
        md("## Parameter importances\n\nOn the search rebuilt in memory from the runs (pruned "
           "trials count with their evaluations; importances use completed ones)."),
        code("fig = figures.importances(study)\n"
             "if fig is None:\n    print('fewer than two completed trials: nothing to attribute')"),
        md("## Parallel coordinates"),
        code("if len(board) >= 2:\n"
             "    ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study)\n"
             "    ax.figure.set_size_inches(12, 4)"),
        md("## Results by choice\n\nThe final metric of every completed search trial by the "
           "value of each searched parameter (numeric ones by thirds of the values sampled): "
           "each trial a dot, the median a bar, the baseline a red cross. A choice that wins "
           "shows it with its spread (Lucic et al. 2018); a search concentrates on what it "
           "found good, so the counts per value differ."),
        code("fig = figures.by_choice(record)\n"
             "if fig is None:\n    print('no trial completed: nothing to show by choice')"),
        md("## Best result to expect from k trials\n\nThe best final metric among k trials drawn "
           "from this study's (with replacement, 2000 times): median and 90% band. Trials the "
           "scheduler stopped count with their last evaluation, failed and diverged ones as "
           "finding nothing. With several studies compared, one curve each."),
        code("fig = figures.expected_best(studies)"),
        md("## Curves of the top trials and the baseline"),
        code("if board.empty:\n    print('no trial completed: nothing to plot below')\n"
             "else:\n    fig = figures.curves(record, top=4)"),
        md("## Samples of the top generators\n\nSampled now from the generators logged in MLflow "
           "(same latent seed for each); the baseline beside them."),
        code("top = pd.concat([board.head(4), board[board['baseline']]]).drop_duplicates('run_id')"
             "\nif not board.empty:\n    fig = figures.sample_grids(top, spec.metric)"),
        md("## Latent interpolation of the product\n\nLeft, each row walks from one random point "
           "to another; right, each row adds 0.05 to every coordinate of one z per frame, the "
           "faces tutorial's walk. Smooth rows mean a smooth latent space."),
        code("if best is not None:\n    fig = figures.interpolation(best)"),
        md("## Memorisation check\n\nDoes the product copy its training images? Left, 16 "
           "samples, each followed by its three nearest training images in the metrics' feature "
           "space; right, each of 2000 samples' distance to its nearest training image against "
           "the same distance for 2000 held-out real images. Copies sit far left of the "
           "held-out distances (median ratio well under 1)."),
        code("if best is not None:\n    fig = figures.memorisation(best)"),
        md("## Training progress of the product\n\nThe fixed-noise sample grid logged at each "
           "evaluation of its run."),
        code("if best is not None:\n    fig = figures.progress_strip(record, best)"),
    ]
    if len(studies) > 1:
        cells += [
            md("## Across studies\n\nOne leaderboard over every study, then the best generator "
               "of each side by side."),
            code("both = pd.concat([records.ranking(r).assign(study=r.name) for r in studies])"
                 "\nboth = both.sort_values(spec.metric, ascending=spec.direction == 'min')\n"
                 "for table in records.board_views(both, lead=('study', 'trial_id')):\n"
                 "    display(table)"),
            code("fig = figures.compare_best(studies)"),
        ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def build_report(studies: list[str], tracking_uri: str, out_dir: Path) -> tuple[Path, Path]:
    """Execute the notebook in a fresh kernel; write the .ipynb and .html only if it ran."""
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    from study.records import load_study

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    load_study(studies[0], tracking_uri)  # a missing study fails here, in one line
    nb = notebook(studies, tracking_uri)
    # The kernel samples generators on CPU: one thread, as a trial has, oversubscribes nothing.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           # tqdm's notice that ipywidgets is absent: noise in a shared report
           "PYTHONWARNINGS": "ignore:IProgress not found"}
    # IPC sockets: the kernel listens on no network port at all. They go in a folder of their
    # own: by default they are made in the working directory, and outlive a killed kernel.
    with tempfile.TemporaryDirectory(prefix="ganstudy-kernel-") as sockets:
        km = KernelManager(kernel_name="python3", transport="ipc",
                           ip=os.path.join(sockets, "kernel"))
        try:
            NotebookClient(nb, km=km, timeout=KERNEL_TIMEOUT_S).execute(env=env)
        except CellExecutionError as err:
            raise ConfigError(f"report for {studies[0]}: a cell failed: "
                              f"{str(err).strip().splitlines()[-1]}") from None
        finally:
            if km.has_kernel:  # nbclient leaves a kernel it did not create running
                km.shutdown_kernel(now=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    ipynb, html = out_dir / f"{studies[0]}.ipynb", out_dir / f"{studies[0]}.html"
    atomic_write_text(ipynb, nbformat.writes(nb))
    body, _ = HTMLExporter().from_notebook_node(nb)
    atomic_write_text(html, body)
    return ipynb, html


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study name (its MLflow experiment)")
    parser.add_argument("--compare", nargs="+", default=[], metavar="STUDY",
                        help="other studies: one leaderboard across all, best against best")
    parser.add_argument("--mlflow-uri", help="tracking URI (default: MLFLOW_TRACKING_URI, else "
                        "sqlite:///runs/mlflow.db under the working directory)")
    parser.add_argument("--out-dir", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    uri = (args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{Path('runs/mlflow.db').resolve()}")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"error: {uri}: no MLflow store there (--mlflow-uri)", file=sys.stderr)
        return 2
    try:
        ipynb, html = build_report([args.study, *args.compare], uri, args.out_dir)
    except GanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{ipynb}\n{html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
