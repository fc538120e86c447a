"""One trial of a search over a tabular benchmark (`evaluation: table`): the candidate is
looked up, not trained, so that a strategy is compared in seconds with many seeds.

The same engine as a real search (`nas.study.run_search`): the study, its sampler and
constraints, the budgets, `n_trials` and `n_trained`, workers, the trial records, fronts and
reports. What differs is where the figures come from: the space samples a cell
(`search_spaces.spaces.nb201`), or an architecture that a built table answers with its nearest
row (`nas.tables.SampledTable`); its params and latency are the table's (`costs`, with
`latency_source: table`), a candidate over a budget is `infeasible` as always, and one within
them gets the accuracy of one of the row's trainings in the table, drawn by the trial's seed
(`status: trained`; `table` says which training, of which table, and for a built table which
row at what distance). Nothing is stored as weights: a looked-up candidate cannot be exported.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import optuna

from nas.early_stop import promotion_reason
from nas.lifecycle import trial_seed
from nas.objective import Duplicate, Objective, check_budgets, claim
from nas.records import Status, TrialRecord, record_failure, set_status, write

__all__ = ["TableObjective"]


class TableObjective(Objective):
    """Optuna objective that looks each sampled cell up in `inputs.benchmark`."""

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            return self.look_up(trial)
        except Duplicate as d:  # the earlier trial's result, reused
            return d.values
        except optuna.TrialPruned:
            raise
        except BaseException as e:  # Ctrl-C, a lost storage, a bug: the trial says why
            record_failure(trial, e)
            raise

    def look_up(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        cfg, table = self.config, self.benchmark
        start = time.perf_counter()
        claim(trial, cfg.study.n_trials)
        write(trial, worker={"host": socket.gethostname(), "pid": os.getpid()})
        seed = trial_seed(cfg.study.seed, trial.number)
        key, line, match = table.lookup(self.space, trial)
        write(trial, arch_line=line, seed=seed)
        if match:  # a built table's row: its architecture (pictures, reports)
            write(trial, arch=table.arch(key).to_dict())
        if not cfg.study.repeats:  # a row looked up already: its result, not a new training
            self._reuse(
                trial,
                lambda r: (
                    r.arch_line == line
                    and "table" in r.attrs
                    and r.attrs["table"].get("row") == match.get("row")
                ),
            )
        costs = table.costs(key)
        write(trial, costs=costs)
        reasons = check_budgets(trial, cfg, costs)
        if reasons:
            write(trial, table={**table.info(), **match})
            self.reject(trial, None, costs, reasons)
        acc, which = table.draw(key, seed)
        if cfg.study.fidelity is not None:  # MO-ASHA over the training's recorded epochs
            info = {**table.info(), **match, "training": which}
            self._climb(trial, costs, table.curve(key, which), info)
        write(
            trial,
            table={**table.info(), **match, "training": which},
            train={
                "epochs": table.epochs,
                "seconds": round(table.row(key).train_seconds, 1),
                "looked_up_seconds": round(time.perf_counter() - start, 4),
            },
        )
        set_status(trial, Status.TRAINED)
        self.on_event(
            "trained",
            {
                "trial": trial.number,
                "record": TrialRecord.of(trial),
                "arch": None,
                "costs": costs,
                "val_acc": acc,
                "seconds": 0.0,
            },
        )
        self.ended(trial, [acc])
        return self._values(acc, costs)

    def _climb(
        self, trial: optuna.Trial, costs: dict[str, Any], curve: list[float], info: dict
    ) -> None:
        """Replay the rungs of `study.fidelity` on a looked-up training's epochs: at each, the
        candidate goes on or stops (PRUNED, `status: stopped`, paying that many epochs of
        the table's training), as it would have had it been trained."""
        for rung in self.config.study.fidelity.rungs:
            write(trial, curve=curve[:rung])
            reason = promotion_reason(trial, self.config, costs, rung, curve[rung - 1])
            if reason:
                write(trial, table=info, train={"epochs": rung, "of_epochs": len(curve)})
                set_status(trial, Status.STOPPED, reason)
                self.on_event(
                    "stopped",
                    {
                        "trial": trial.number,
                        "record": TrialRecord.of(trial),
                        "reason": reason,
                        "curve": curve[:rung],
                    },
                )
                self.ended(trial)
                raise optuna.TrialPruned(reason)
        write(trial, curve=curve)
