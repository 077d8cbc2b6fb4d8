"""`EvalModule`: evaluation and prediction as Lightning loops, so `geor1 test|predict --config configs/eval/...yaml`
run under any strategy (one device, DDP over GPUs and nodes, FSDP2 for a model that does not fit one device).

    test_step:    generate -> read each answer through the task -> rows (predictions part) -> torchmetrics update
    predict_step: generate -> read each answer -> rows (no truth needed: photos without coordinates)

The data stream one batch at a time (nothing held beyond a batch); every rank reads every one of its samples (a rank
whose samples ran out steps with empty batches until all are done, so a sharded model's collectives stay matched);
rows go to per-rank parts as they come and a run started again skips the keys already written (`PredictionWriter`);
the metrics are torchmetrics Metrics, synchronised across ranks, fed the rows of this run and of the earlier run it
resumes. At the end rank 0 writes `predictions.csv` (sorted by key), `metrics.json`, `metrics.md` (with published
reference rows for a named benchmark) and the plots.

Departures and choices: greedy decoding by default (reproducible); with `do_sample`, each batch's generator is
seeded from `seed` and the batch's first key, so a rerun on the same device and batches repeats. Answers are read
by the free-form reader (`geor1.reading`: JSON, labels, final lines, the strict pair), not only the strict <answer>
format geor1's rewards train: a model geor1 did not train is read the way a careful person would read it.
Unreadable answers stay in every denominator as misses and are counted by reason. City, country and continent
accuracy compare the reverse-geocoded predicted point with the truth's labels, or with the reverse-geocoded true
point where a data set has no labels (IM2GPS3K, YFCC4k).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.aggregation import SumMetric

from geor1 import Geor1Error
from geor1.data.sample import ChatSample, Prompt
from geor1.eval.rows import plain
from geor1.eval.writer import PredictionWriter
from geor1.metrics.reasons import ReasonCounts
from geor1.model.policy import Policy
from geor1.objectives.base import PolicyModule
from geor1.objectives.sharding import ShardingSpec
from geor1.tasks import get_task

log = logging.getLogger(__name__)

EVAL_TASKS = ("geolocate", "pairing")
GEO_COLUMNS = (
    "key",
    "id",  # the data set's own id (a converted CSV's image id, extension kept)
    "path",
    "lat",
    "lon",
    "city",
    "country",
    "continent",
    "how",
    "reason",
    "true_lat",
    "true_lon",
    "true_city",
    "true_country",
    "km",
    "city_hit",
    "country_hit",
    "continent_hit",
    "tokens",
    "answer",
    "reasoning",
    "text",
)
PAIRING_COLUMNS = ("key", "answer_letter", "truth", "correct", "parsed", "tokens", "text")


class EvalModule(PolicyModule):
    """Evaluates (`geor1 test`) or applies (`geor1 predict`) a local model on a task's samples.

    Args:
        policy: the model (`geor1.model.Policy` from a local folder: a base model, a peer's checkpoint, geor1's own).
        out_dir: the run's folder: predictions.csv, metrics.json, metrics.md, plots; a run started again over it
            skips the samples already done (see `resume`).
        task: "geolocate" or "pairing".
        benchmark: a name of `geor1.eval.published` ("im2gps3k", "imageo_gss", ...): its published rows are printed
            beside the measured one in metrics.md.
        question: the user text of every prompt, with one `<image>` marker per image (None: the task's own prompt,
            or the shard's "prompt").
        max_new_tokens: completion budget (reasoning models need hundreds to thousands).
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (with do_sample).
        top_p: nucleus sampling (with do_sample).
        seed: sampling seed (with do_sample).
        resume: skip the keys an earlier run in `out_dir` wrote (False: start over).
        plots: write error_cdf.png and world_map.png (geolocation).
        sharding: FSDP2 settings under `ModelParallelStrategy` (a model that does not fit one device).
    """

    def __init__(
        self,
        policy: Policy,
        out_dir: str = "runs/eval",
        task: str = "geolocate",
        benchmark: str | None = None,
        question: str | None = None,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        resume: bool = True,
        plots: bool = True,
        sharding: ShardingSpec | None = None,
    ) -> None:
        super().__init__(policy, sharding=sharding)
        if task not in EVAL_TASKS:
            raise Geor1Error(f"EvalModule task must be one of {EVAL_TASKS}, got {task!r}")
        if max_new_tokens < 1:
            raise Geor1Error(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if do_sample and not temperature > 0:
            raise Geor1Error(f"temperature must be > 0 for sampling, got {temperature}")
        if benchmark is not None:
            from geor1.eval.published import PUBLISHED

            if benchmark not in PUBLISHED:
                raise Geor1Error(f"unknown benchmark {benchmark!r}; known: {', '.join(sorted(PUBLISHED))}")
        self.task_name = task
        self.task = get_task(task)
        self.out_dir = Path(out_dir)
        self.benchmark = benchmark
        self.question = question
        self.max_new_tokens = max_new_tokens
        self.do_sample, self.temperature, self.top_p, self.seed = do_sample, temperature, top_p, seed
        self.plots = plots
        columns = GEO_COLUMNS if task == "geolocate" else PAIRING_COLUMNS
        self.writer = PredictionWriter(self.out_dir, columns, resume)
        self._pad: list[Prompt] | None = None
        self._started = 0.0
        self._reset_metrics()

    def _reset_metrics(self) -> None:
        from geor1.metrics.geodesic import GeodesicError, PairingAccuracy

        self.metric: Metric = GeodesicError() if self.task_name == "geolocate" else PairingAccuracy()
        self.reasons = ReasonCounts()  # unreadable answers per reason code
        self.skipped = SumMetric()  # corrupt samples skipped by the readers, over every rank

    def setup(self, stage: str) -> None:
        if stage not in ("test", "predict"):
            raise Geor1Error(f"EvalModule evaluates: run `geor1 test` or `geor1 predict` with it, not `geor1 {stage}`")

    def configure_callbacks(self) -> list:
        return [self.writer]

    def configure_optimizers(self):
        raise Geor1Error("EvalModule evaluates: run `geor1 test` or `geor1 predict` with it, not `geor1 fit`")

    # ------------------------------------------------------------------ the loops
    def on_test_start(self) -> None:
        self._start()
        if self.trainer.is_global_zero and self.writer.done:  # the earlier run's rows count once, on rank 0
            self._update_metrics(list(self.writer.done.values()))

    def on_predict_start(self) -> None:
        self._start()

    def _start(self) -> None:
        self._reset_metrics()
        for metric in (self.metric, self.reasons, self.skipped):
            metric.to(self.device)
        self._started = time.perf_counter()

    def test_step(self, batch: list[ChatSample], batch_idx: int) -> None:
        self._check(batch, need_truth=True)
        rows = self._rows(batch)
        if rows:
            self.writer.write(rows)
            self._update_metrics(rows)

    def predict_step(self, batch: list[ChatSample], batch_idx: int) -> None:
        self._check(batch, need_truth=False)
        rows = self._rows(batch)
        if rows:
            self.writer.write(rows)

    def _check(self, batch: list[ChatSample], need_truth: bool) -> None:
        """Every sample is of the evaluated task (and has its truth under `geor1 test`); counts the corrupt samples
        skipped while the batch was read."""
        self.skipped.update(torch.tensor(float(len(getattr(batch, "skipped", []))), device=self.device))
        for s in batch:
            if s.target is None and need_truth:
                raise Geor1Error(
                    f"sample {s.key!r} has no truth to score against: `geor1 predict` geolocates without truth"
                )
            if s.target is not None and s.task != self.task_name:
                raise Geor1Error(
                    f"sample {s.key!r} is a {s.task!r} sample, and this evaluation is of task {self.task_name!r}: "
                    "evaluate it with its own task, or point the data at shards of this task"
                )

    def _prompts(self, batch: list[ChatSample]) -> list[Prompt]:
        if self.question is None:
            return [s.prompt for s in batch]
        return [Prompt(self.question, s.prompt.images, s.prompt.system) for s in batch]

    def _rows(self, batch: list[ChatSample]) -> list[dict[str, Any]]:
        """Generate for the batch and read the answers; an empty batch (this rank's samples ran out, or all were
        corrupt) generates for a copy of an earlier prompt under sharding (every forward is a collective) and gives
        no rows."""
        prompts = self._prompts(list(batch))
        if not prompts:
            if not self.synced_decoding:
                return []
            if self._pad is None:
                raise Geor1Error(
                    f"rank {self.trainer.global_rank} has no sample at all to keep in step with the other ranks "
                    "under sharding: fewer samples than ranks? evaluate on fewer processes"
                )
            self._generate(self._pad, "pad")
            return []
        self._pad = prompts[:1]
        rollout = self._generate(prompts, batch[0].key)
        tokens = [int(n) for n in rollout.lengths.tolist()]
        if self.task_name == "geolocate":
            from geor1.eval.rows import geolocation_rows

            return geolocation_rows(self.task, batch, rollout.texts, tokens)
        from geor1.eval.rows import pairing_rows

        return pairing_rows(self.task, batch, rollout.texts, tokens)

    def _generate(self, prompts: list[Prompt], first_key: str):
        if self.do_sample:
            torch.manual_seed(zlib.crc32(f"{self.seed}:{first_key}".encode()))
        return self.policy.generate(
            prompts,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            synced_gpus=self.synced_decoding,
        )

    def _update_metrics(self, rows: list[dict[str, Any]]) -> None:
        from geor1.eval.rows import update_geodesic, update_pairing

        if self.task_name == "geolocate":
            update_geodesic(self.metric, rows, self.device)
            self.reasons.update([r.get("reason") for r in rows])
        else:
            update_pairing(self.metric, rows, self.device)

    # ------------------------------------------------------------------ the end
    def on_test_epoch_end(self) -> None:
        metrics = {k: plain(v) for k, v in self.metric.compute().items()}  # a collective: every rank
        if self.task_name == "geolocate":
            metrics["unparseable_by_reason"] = self.reasons.compute()
        skipped = int(self.skipped.compute())
        metrics["skipped_corrupt"] = skipped
        if not metrics.get("n"):  # every rank has the same numbers: all raise together
            raise Geor1Error(
                f"no {self.task_name} sample was evaluated ({skipped} skipped as corrupt or of another shape: see the "
                "warnings above; e.g. pair shards read as pairing episodes). Is the data of this task?"
            )
        rows = self.writer.merge(self.trainer)
        if rows is None:
            return
        if int(metrics.get("n", 0)) != len(rows):
            raise Geor1Error(f"{self.out_dir}: {len(rows)} prediction rows but metrics of {metrics.get('n')} samples")
        from geor1.eval.report import write_metrics
        from geor1.eval.rows import row_summary, with_intervals

        metrics.update(row_summary(self.task_name, rows))
        if self.task_name == "geolocate":
            metrics = with_intervals(metrics, rows)

        header = {"model": getattr(self.policy, "source", None), "task": self.task_name, "benchmark": self.benchmark}
        write_metrics(self.out_dir, {**header, **metrics}, self.benchmark)
        if self.plots and self.task_name == "geolocate":
            from geor1.eval.report import geolocation_plots

            geolocation_plots(self.out_dir, rows)
        log.info("metrics written to %s: %s", self.out_dir, json.dumps(metrics))

    def on_predict_epoch_end(self) -> None:
        rows = self.writer.merge(self.trainer)
        if rows is not None and self.plots and self.task_name == "geolocate":
            from geor1.eval.report import geolocation_plots

            geolocation_plots(self.out_dir, rows)
        if rows is not None:
            seconds = time.perf_counter() - self._started
            log.info(
                "%d predictions in %s (%d new on rank 0 in %.0f s)",
                len(rows),
                self.out_dir / "predictions.csv",
                self.writer.written,
                seconds,
            )
