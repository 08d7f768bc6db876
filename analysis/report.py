"""After a grid run: leaderboard and plots on disk and attached to the invocation's parent run, so they
can be browsed in the MLflow UI next to the runs they summarise; and `index.html`, which shows every figure
under the question it answers."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from mlflow.tracking import MlflowClient

from analysis.headline import REAL, SYNTHETIC
from analysis.leaderboard import KEY_RESULTS, TEMPLATES, write_leaderboard
from analysis.plots import write_plots
from analysis.schema import DATA_SOURCES_PARAM
from analysis.style import SCREEN

UI = "http://127.0.0.1:5000"  # where `segleak ui` serves the MLflow UI by default
INDEX = "index.html"
# figure file stem prefix -> (the question it answers, how to read it); the longest matching prefix wins
QUESTIONS = {
    "roc_": ("At which false-positive rate does each attack start finding members, for each defense?",
             "Log-log ROC with equal decades, one panel per defense, one line style per attack; the numbers in the "
             "lower right are each attack's TPR at 1% and 0.1% FPR; grey: rates too low for the number of "
             "non-members to resolve."),
    "frontier_": ("Which defenses leak least for the utility they keep?",
                  "Each point a defense setting at the attacker's worst case; circled: the Pareto front."),
    "matched_frontier_": ("Along each defense's parameter sweep, how much leakage does each point of mIoU buy?",
                          "One curve per defense family; star: undefended; vertical lines: the undefended mIoU "
                          "minus 0.05 and 0.1, where the matched-utility tables read off the least leakage."),
    "heatmap_overlap_arch": ("Does the undefended victim leak more when the attacker's shadow data overlap its "
                             "training data, or share its architecture?",
                             "Each panel compares the same attacks at every overlap."),
    "auc_vs_gaussian_sigma": ("How much Gaussian output noise does it take to bring the attack to chance?",
                              "The defense's colour, one line style per setting; flat lines: undefended."),
    "auc_vs_dp_epsilon": ("How does leakage fall with the DP-SGD privacy budget ε?",
                          "The defense's colour, one line style per setting; flat lines: undefended."),
    "dependent_vs_independent": ("Does the attack need shadow data from the victim's own distribution?",
                                 "Each defense's AUC with shadow data from the victim's dataset and from another."),
    "audit_epsilon": ("Is the DP accountant's ε consistent with what canaries show empirically?",
                      "Empirical lower bound against the accountant's ε; points above the diagonal are violations."),
    "leakage_": ("Where in the image, and in which classes, do members and non-members differ?",
                 "The victim's per-pixel loss on member and non-member images, and the per-class loss gap."),
}


def question(stem: str) -> tuple[str, str]:
    """The question a figure answers and how to read it, from its file name."""
    prefix = max((p for p in QUESTIONS if stem.startswith(p)), key=len, default=None)
    if prefix is None:
        raise KeyError(f"figure {stem!r} has no question in analysis.report.QUESTIONS")
    return QUESTIONS[prefix]


def write_index(tracking_uri: str, out_dir: Path, parent_run_id: str, ui: str = UI) -> Path:
    """`<out_dir>/index.html`: the key results, then every PNG under `out_dir` (plots, leakage maps) with the
    question it answers and links to its other formats and to the invocation's MLflow run."""
    run = MlflowClient(tracking_uri).get_run(parent_run_id)
    experiment = MlflowClient(tracking_uri).get_experiment(run.info.experiment_id)
    sources = json.loads(run.data.params.get(DATA_SOURCES_PARAM, "{}"))
    figures = []
    for png in sorted(out_dir.glob("*/*.png")):
        ask, reading = question(png.stem)
        others = [p.relative_to(out_dir).as_posix() for p in sorted(png.parent.glob(f"{png.stem}.*")) if p != png]
        figures.append({"stem": png.stem, "png": png.relative_to(out_dir).as_posix(), "question": ask,
                        "reading": reading, "others": others})
    order = list(QUESTIONS)
    figures.sort(key=lambda f: (order.index(max((p for p in order if f["stem"].startswith(p)), key=len)), f["stem"]))
    key_results = out_dir / "leaderboard" / KEY_RESULTS
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    page = env.get_template("index.html.j2").render(
        experiment=experiment.name, parent_run_id=parent_run_id, ui=ui,
        run_url=f"{ui}/#/experiments/{experiment.experiment_id}/runs/{parent_run_id}",
        source_badges=[s for s in (SYNTHETIC, REAL) if s in set(sources.values())],
        summary=key_results.read_text(encoding="utf-8").splitlines() if key_results.exists() else [],
        figures=figures)
    path = out_dir / INDEX
    path.write_text(page, encoding="utf-8")
    return path


def write_report(tracking_uri: str, experiment: str | None, out_dir: Path, parent_run_id: str,
                 log: bool = True, style: str = SCREEN) -> dict[str, list[Path]]:
    """Write <out_dir>/leaderboard, <out_dir>/plots (in `style`, analysis.style) and <out_dir>/index.html for
    `parent_run_id`; log them under the same names (`log=False`: the caller logs them once the report is
    complete, as the runner does, and writes the index again after adding its figures)."""
    written = {
        "leaderboard": write_leaderboard(tracking_uri, experiment, out_dir / "leaderboard", parent_run_id),
        "plots": write_plots(tracking_uri, experiment, out_dir / "plots", parent_run_id, style=style),
    }
    written["index"] = [write_index(tracking_uri, out_dir, parent_run_id)]
    if not log:
        return written
    client = MlflowClient(tracking_uri)
    for name, paths in written.items():
        for path in paths:
            client.log_artifact(parent_run_id, str(path), artifact_path=None if name == "index" else name)
    return written
