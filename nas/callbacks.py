"""What a trial's end adds for optuna-dashboard, as hooks the caller of `run_search` passes:
the trial's note (its architecture, costs and result in words, `nas.dashboard.trial_note`) and,
for a trained or scored trial, a drawing of its architecture (`architecture.png`, beside its
weights). `lvit search`, `lvit worker` and the benchmark scripts pass `dashboard_hooks()`; a
program that calls `run_search` without them gets the same trials without notes or pictures
(`lvit dashboard` adds the missing notes and pictures when it starts).

Each hook runs on the live trial before it is told (a finished trial takes no new artifacts).
"""

from __future__ import annotations

import os
import tempfile

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from nas.dashboard import trial_note
from nas.objective import TrialHook
from nas.plots import arch_plot
from nas.records import Status, TrialRecord
from search_spaces.arch import ArchConfig

__all__ = ["architecture_picture", "dashboard_hooks", "dashboard_note"]


def dashboard_note(trial: optuna.Trial, values: list[float] | None) -> None:
    """The trial's optuna-dashboard note."""
    from optuna_dashboard import save_note

    save_note(trial, trial_note(TrialRecord.of(trial), values))


def architecture_picture(trial: optuna.Trial, values: list[float] | None) -> None:
    """A trained or scored trial's architecture drawn, as an artifact of the trial in the
    study's artifact folder."""
    record = TrialRecord.of(trial)
    if record.status not in (Status.TRAINED, Status.SCORED) or record.arch is None:
        return
    arch = ArchConfig.from_dict(dict(record.arch))
    store = FileSystemArtifactStore(trial.study.user_attrs["artifact_dir"])
    with tempfile.TemporaryDirectory() as tmp:
        picture = arch_plot(arch, os.path.join(tmp, "architecture.png"), arch.describe())
        upload_artifact(artifact_store=store, file_path=picture, study_or_trial=trial)


def dashboard_hooks() -> list[TrialHook]:
    """The hooks `lvit search` runs on every trial: the picture, then the note."""
    return [architecture_picture, dashboard_note]
