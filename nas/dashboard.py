"""optuna-dashboard for our studies: `lvit dashboard --storage URL`.

Each finished trial gets a note (optuna-dashboard's Markdown notes) that describes its
architecture in words (stem, position encoding, each stage's mixer, depth, width, heads and MLP
ratio, token reduction, exits) and its costs with their measurement conditions. The search
writes the note when a trial ends; the dashboard command adds the missing ones for studies made
earlier. The server binds to 127.0.0.1 unless told otherwise, and serves the study's trained
weights through Optuna's artifact store.
"""

from __future__ import annotations

import os
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.export import latency_line
from nas.optuna_api import live_trial, storage_of
from nas.records import Status, TrialRecord, fail_reason
from search_spaces.arch import ATTENTION_MIXERS, MIXER_SPECS

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

__all__ = ["trial_note", "annotate", "attach_pictures", "serve"]


def _stage_words(i: int, s: dict[str, Any]) -> str:
    spec = MIXER_SPECS.get(s["mixer"])
    mixer = spec.words if spec else s["mixer"]
    option = f", {spec.option_words} {s.get(spec.option)}" if spec and spec.option else ""
    heads = f", {s['heads']} heads" if s["mixer"] in ATTENTION_MIXERS else ""
    extra = ""
    if s.get("merge_r"):
        extra += f", ToMe merging {s['merge_r']} tokens per block"
    if s.get("keep_rate", 1.0) < 1:
        extra += f", EViT keeping {s['keep_rate']:g} of the tokens"
    down = ", halving the grid first" if s.get("downsample") else ""
    return (
        f"- stage {i}: {s['depth']} block(s) of {mixer}{option}{heads}, width {s['dim']}, "
        f"MLP ratio {s['mlp_ratio']:g}{extra}{down}"
    )


def trial_note(r: TrialRecord, values: list[float] | None, failed: str | None = None) -> str:
    """The Markdown note for a trial, from its record and values (and, for a FAIL trial, why it
    failed: `nas.storage.fail_reason`)."""
    arch = r.arch
    status = Status.FAILED if failed else r.status
    lines = [f"## Trial {r.number}: {status}", "", f"`{r.arch_line}`", ""]
    if arch:
        lines += [
            f"- input {arch['in_chans']}x{arch['img_size']}x{arch['img_size']}, "
            f"{arch['num_classes']} classes",
            f"- stem `{arch['stem']}` of stride {arch['patch_size']}, position encoding "
            f"`{arch['pos_enc']}`",
            *(_stage_words(i, s) for i, s in enumerate(arch["stages"], 1)),
        ]
        if arch.get("exits"):
            lines.append(f"- early exits after blocks {', '.join(map(str, arch['exits']))}")
        if arch.get("distill_head"):
            lines.append("- a distillation head beside the classifier")
    costs = r.costs
    if costs:
        lines += ["", "### Costs"]
        flops = f", {costs['flops']:,} FLOPs" if "flops" in costs else ""
        lines.append(f"- {costs['params']:,} parameters{flops}")
        lines.append(f"- latency: {latency_line(costs)}")
    reason = failed or r.reason
    if reason:
        lines += ["", f"**Why:** {reason}"]
    table = r.attrs.get("table")
    if status is Status.TRAINED and values and table:
        lines += [
            "",
            f"**Validation accuracy {values[0]:.4f}**, looked up: training "
            f"{table.get('training')} of this cell in {table.get('source')}, "
            f"{table.get('dataset')}, {table.get('epochs')} epochs; not trained here.",
        ]
    elif status is Status.TRAINED and values:
        train = r.train
        lines += [
            "",
            f"**Validation accuracy {values[0]:.4f}** after {train.get('epochs')} epochs "
            f"({train.get('seconds')} s on {train.get('device')}).",
        ]
    if status is Status.SCORED and values:
        inherited = r.inherited
        lines += [
            "",
            f"**Validation accuracy {values[0]:.4f} with weights inherited** from the supernet "
            f"in {inherited.get('supernet')} ({inherited.get('seconds')} s; batch norms "
            f"recalibrated on {inherited.get('calib_batches')} batches); not trained on its own.",
        ]
    if r.from_trial is not None:
        lines.append(
            f"Retrained from scratch: candidate #{r.from_trial} of the supernet search "
            f"scored {r.attrs.get('inherited_accuracy', 0):.4f} with inherited weights."
        )
    return "\n".join(lines) + "\n"


def annotate(study: optuna.Study) -> int:
    """Add a note to every finished or failed trial that has none; returns how many."""
    from optuna_dashboard import get_note, save_note

    added = 0
    for frozen in study.get_trials(deepcopy=False, states=(*_FINISHED, TrialState.FAIL)):
        trial = live_trial(study, frozen)
        if get_note(trial):
            continue
        failed = fail_reason(frozen) if frozen.state == TrialState.FAIL else None
        save_note(trial, trial_note(TrialRecord.of(frozen), frozen.values, failed))
        added += 1
    return added


def attach_pictures(study: optuna.Study, store: Any) -> int:
    """Attach the report's pictures to the study as artifacts (a finished trial takes no new
    artifacts, so they go on the study): its current `pareto-N.png` (N finished trials), and
    `arch-K.png` for each trained trial K that the search did not give its own
    `architecture.png`. Returns how many were added."""
    import tempfile

    from optuna.artifacts import get_all_artifact_meta, upload_artifact

    from nas.plots import arch_plot
    from nas.report import pareto_plot
    from search_spaces.arch import ArchConfig

    storage = storage_of(study)
    have = {m.filename for m in get_all_artifact_meta(study)}
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = study.get_trials(deepcopy=False, states=states)
    added = 0
    with tempfile.TemporaryDirectory() as tmp:
        for t in finished:
            name = f"arch-{t.number}.png"
            record = TrialRecord.of(t)
            if t.state != optuna.trial.TrialState.COMPLETE or record.arch is None:
                continue
            if name in have or "architecture.png" in {
                m.filename for m in get_all_artifact_meta(t, storage=storage)
            }:
                continue
            arch = ArchConfig.from_dict(dict(record.arch))
            path = arch_plot(arch, os.path.join(tmp, name), f"trial {t.number}: {arch.describe()}")
            upload_artifact(artifact_store=store, file_path=path, study_or_trial=study)
            added += 1
        name = f"pareto-{len(finished)}.png"
        if finished and name not in have:
            path = pareto_plot(study, os.path.join(tmp, name))
            upload_artifact(artifact_store=store, file_path=path, study_or_trial=study)
            added += 1
    return added


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Annotate every study in the storage, then run optuna-dashboard (blocks)."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from nas.storage import open_storage, scrub_credentials

    storage = open_storage(storage_url, create=False)
    store = None
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        scrub_credentials(study)  # studies from versions that stored the full storage URL
        annotate(study)
        artifact_dir = study.user_attrs.get("artifact_dir")
        if artifact_dir and os.path.isdir(artifact_dir):
            store = store or FileSystemArtifactStore(artifact_dir)
            attach_pictures(study, FileSystemArtifactStore(artifact_dir))
    run_server(storage, host=host, port=port, artifact_store=store)
