"""The trainer: one loop for every method, importable from notebooks and tests.

``train_and_evaluate(config, workdir)`` loads the data, builds the method, and runs its phases:
a jitted, state-donating train step data-parallel over a 1-D ``data`` mesh of all devices
(:mod:`jclust.state`), the method's periodic whole-data-set recluster step on a feature pass,
evaluations appended to ``WORKDIR/metrics.jsonl`` (:mod:`jclust.evaluators`), and Orbax
checkpoints of the whole state. Re-running with the same workdir resumes from the newest readable
checkpoint.

Order inside one iteration (it makes resume exact): train step ``s -> s+1`` (with the phase's
per-step ``cluster_update``, if any, inside it); if a recluster is due at ``s+1``, run it;
evaluate if due; save if due. So the checkpoint of step ``s`` always includes every recluster of
steps <= s, and the data order and rngs are functions of the step alone (:mod:`jclust.schedule`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections

from jclust import checkpointing
from jclust import config_lib
from jclust import distributed
from jclust import evaluators
from jclust import inference
from jclust import loader
from jclust import methods as jmethods
from jclust import monitor
from jclust import preemption
from jclust import schedule as jschedule
from jclust import state as jstate
from jclust import workdir as jworkdir
from jclust import writers


# fold_in constants of the keys of a step's recluster and of its evaluation's fit.
RECLUSTER_STREAM, EVALUATION_STREAM = 0x5EED, 0xE7A1


# --------------------------------------------------------------------------------------------
# Parts of the loop


class Checkpoints:
    """The run's checkpoints: saves whole states (never non-finite parameters) and remembers the
    newest step saved, which a stop for a non-finite value names."""

    def __init__(self, workdir: str, keep: int, warn: Callable[[str], None]):
        self.workdir = workdir
        self.checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                                       keep=keep, warn=warn)
        self.last_saved = -1

    def kept(self) -> str:
        """What a run stopped by a non-finite value leaves to resume from."""
        if self.last_saved < 0:
            return ("No checkpoint was written yet, so there is nothing to resume: fix the cause "
                    "(e.g. a lower learning rate, the data) and start again")
        return (f"The last good checkpoint (step {self.last_saved}) is left intact in "
                f"{self.workdir}/checkpoints")

    def save(self, state: jstate.TrainState, step: int, meta: dict) -> None:
        finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params)
                     if jnp.issubdtype(x.dtype, jnp.floating))
        if not finite:
            raise monitor.NonFiniteLossError(
                f"parameters became non-finite by step {step}; stopped. " + self.kept())
        self.checkpointer.save(step, state, meta)
        self.last_saved = step


class _Run(NamedTuple):
    """What the loop's parts share; none of it is reassigned while the run goes on."""
    config: ml_collections.ConfigDict
    workdir: str
    data: loader.Loader
    method: jmethods.Method
    bounds: list[tuple[int, int]]
    batches: jschedule.BatchSchedule
    eval_every: int  # steps between periodic evaluations (0: none)
    sampler: jschedule.Sampler
    runner: inference.Runner
    train_steps: list[jstate.TrainStep]
    evaluate: evaluators.ClusterEvaluator
    metrics: monitor.StepMetrics
    checkpoints: Checkpoints
    writer: writers.RunWriter
    say: Callable[[str], None]

    @property
    def total_steps(self) -> int:
        return self.bounds[-1][1]

    def phase_name(self, step: int) -> str:
        return self.method.phases[jschedule.phase_at(self.bounds, step)].name


def recluster_and_evaluate(run: _Run, state: jstate.TrainState, step: int, *, force_eval: bool,
                           allow_recluster: bool = True) -> tuple[jstate.TrainState, dict | None]:
    """Runs the recluster and/or evaluation due at ``step``; returns (state, record or None)."""
    method, bounds = run.method, run.bounds
    due, first = (jschedule.recluster_due(method, bounds, step) if allow_recluster
                  else (False, False))
    # An evaluation needs a usable assignment rule: not in phases without one (pretraining).
    can_eval = method.phases[jschedule.phase_at(bounds, step)].evaluate or step >= run.total_steps
    eval_due = can_eval and (force_eval or due
                             or (run.eval_every and step % run.eval_every == 0))
    if not (due or eval_due):
        return state, None
    run.metrics.flush()  # never cluster or evaluate parameters that already went NaN
    features = run.data.features(run.runner, state)
    chex.assert_shape(features, (run.data.num_examples, None))  # the contract's [N, D]
    extra = {}
    if due:
        context = jmethods.ReclusterContext(
            features=features, embed=lambda x, s=state: run.runner.features(s, x),
            key=jax.random.fold_in(jax.random.fold_in(state.rng, step), RECLUSTER_STREAM),
            phase=jschedule.phase_at(bounds, step), first=first, inputs=run.data.inputs())
        params, cluster = distributed.host_side((state.params, state.cluster))
        before = (params, cluster)
        params, cluster, extra = method.recluster(params, cluster, context)
        # Values only: the compiled steps and the checkpoints are laid out for the state's shapes.
        chex.assert_trees_all_equal_shapes_and_dtypes((params, cluster), before)
        params, cluster = distributed.agreed((params, cluster))
        state = run.runner.place(state.replace(params=params, cluster=cluster))
        run.sampler.follow(state.cluster, step)
        if "warning" in extra:
            run.say(f"warning at step {step}: {extra['warning']}")
    if not eval_due:
        return state, None
    if method.evaluation is not None:
        key = jax.random.fold_in(jax.random.fold_in(state.rng, step), EVALUATION_STREAM)
        fitted = method.evaluation.fit(features, distributed.host_side(state.cluster), key)
        chex.assert_trees_all_equal_shapes_and_dtypes(fitted, state.eval)
        state = run.runner.place(state.replace(eval=distributed.agreed(fitted)))
    final = step >= run.total_steps or method.done(state.cluster)
    record = run.evaluate(state, step, features, phase=run.phase_name(max(step - 1, 0)),
                          extra=extra, final=final)
    run.say(evaluators.eval_line(record, run.config.num_clusters))
    warning = evaluators.collapse_warning(record, run.config.num_clusters, run.data.num_examples)
    if warning:
        run.say(f"warning at step {step}: {warning}")
    return state, record


def save(run: _Run, state: jstate.TrainState, step: int) -> None:
    """Checkpoints ``state`` as of ``step``, with the metrics before it checked and logged."""
    run.metrics.flush()
    epoch, offset = run.batches.position(step)
    meta = {"step": step, "epoch": epoch, "batch_in_epoch": offset, "version": jworkdir.VERSION,
            "phase": run.phase_name(step), "config": json.loads(run.config.to_json_best_effort())}
    run.checkpoints.save(state, step, meta)
    run.writer.flush()


# --------------------------------------------------------------------------------------------
# Setup and restore


def _build(config: ml_collections.ConfigDict, workdir: str, say):
    """Everything that can fail on bad input, before anything is written: checks the config and
    the workdir, loads the data, builds the method, its compiled passes and the initial state.

    Returns:
      (data, method, runner, initial state on the mesh, imported initial params or None,
      keys changed since the workdir's run.json).
    """
    config_lib.validate(config, jmethods.REGISTRY)
    config_lib.check_output_dir(workdir, "workdir")
    changed, trained_on = jworkdir.check_resume(config, workdir)  # before any restore or write
    data = loader.load(config, cache_dir=workdir, say=say,
                       trained_on=(trained_on or {}).get("features"))
    spec = data.spec
    jworkdir.check_same_data(trained_on, spec, workdir)
    mesh = jstate.make_mesh()
    if config.batch_size % mesh.size:
        raise config_lib.ConfigError(f"config.batch_size={config.batch_size} must be divisible by "
                                     f"the number of devices ({mesh.size})")
    method = jmethods.from_config(config, spec)
    evaluators.retrieval_queries(config, data)  # its ConfigError before anything is written
    runner = inference.Runner(method, mesh, config.eval_batch_size, spec.num_examples)
    state = jstate.init_state(method, config.seed, data.sample(config.batch_size))
    initial_params = jworkdir.initial_params(config, state.params)
    return data, method, runner, runner.place(state), initial_params, changed


def _restore(checkpoints: Checkpoints, state: jstate.TrainState, changed: list[str],
             workdir: str):
    """The newest readable checkpoint's (state, meta), or None; an unreadable one is explained
    with what changed since the workdir was started."""
    try:
        return checkpoints.checkpointer.restore_latest(state)
    except checkpointing.CheckpointError as err:
        if changed:
            raise checkpointing.CheckpointError(
                f"{err}. Config keys changed since this workdir was started: "
                f"{', '.join(changed)}") from err
        if not os.path.exists(os.path.join(workdir, jworkdir.RUN_INFO)):
            raise checkpointing.CheckpointError(
                f"{err}. The workdir has no run.json to say which config its checkpoints were "
                "trained with; if not with this one, use a new workdir") from err
        raise


def _banner(run: _Run, state: jstate.TrainState) -> None:
    mesh = run.runner.mesh
    run.say(f"jclust {run.config.method}: {run.data.describe()}; {mesh.size} device(s) "
            f"({jax.default_backend()}); {run.total_steps} steps at most in phases "
            + ", ".join(f"{p.name}={p.num_steps}" for p in run.method.phases))
    run.say(f"assignment rule: {run.method.assignment_rule}")
    placement = jstate.sharding_summary(run.method, mesh, state)
    if placement:
        run.say(placement)
    if run.data.labels is None:
        run.say("note: the data has no labels, so ACC/NMI/ARI are skipped (training is unaffected)")


# --------------------------------------------------------------------------------------------
# The loop


@preemption.stop_politely
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, stdout=None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates.

    Args:
      config: a method config (see ``configs/``); validated before anything is written.
      workdir: directory for checkpoints, ``run.json`` and ``metrics.jsonl``.
      stdout: where progress goes (default sys.stdout).

    Returns:
      The final evaluation record (``step``, and ``acc``/``nmi``/``ari`` when labels exist).

    Raises:
      preemption.Stopped: SIGTERM or SIGINT arrived; a checkpoint of the step it names was saved
        (see :mod:`jclust.preemption`; the handlers are installed only during this call).
    """
    out = stdout or sys.stdout
    primary = distributed.is_primary()  # only process 0 prints and writes files (not checkpoints)

    def say(text: str) -> None:
        if primary:
            print(text, file=out, flush=True)

    data, method, runner, state, initial_params, changed = _build(config, workdir, say)

    # Nothing is written before this point: bad input fails above with the workdir untouched.
    os.makedirs(workdir, exist_ok=True)
    distributed.barrier("jclust:workdir")
    checkpoints = Checkpoints(workdir, config.keep_checkpoints, warn=say)
    restored = _restore(checkpoints, state, changed, workdir)
    if primary:  # run.json describes what the checkpoints hold: written once they are known to match
        jworkdir.write_run_info(workdir, config, data.spec, data.source, data.feature_record)
        loader.freeze_features(config, workdir, data)
    if restored is not None:
        state = runner.place(restored[0])
        checkpoints.last_saved = int(state.step)
        say(f"resumed from checkpoint step {checkpoints.last_saved}")
        if changed:
            say(f"note: config keys changed since this workdir was started: {', '.join(changed)}")
    # Records newer than the restored state came from a run killed before its next checkpoint.
    writer = writers.RunWriter(workdir, checkpoints.last_saved, tensorboard=config.tensorboard,
                               write=primary)
    bounds = jschedule.phase_bounds(method)
    batches = jschedule.BatchSchedule(data.num_examples, config.batch_size, config.seed,
                                      config.data.shuffle)
    run = _Run(
        config=config, workdir=workdir, data=data, method=method, bounds=bounds,
        batches=batches,
        eval_every=config_lib.steps(config, "eval_every",
                                    jmethods.steps_per_epoch(config, data.spec), default=0),
        sampler=jschedule.Sampler(method, batches, config.seed, state.cluster),
        runner=runner, train_steps=jstate.jit_train_steps(method, runner.mesh, data.num_examples),
        evaluate=evaluators.ClusterEvaluator(
            method, runner, data, workdir if primary else None, writer,
            num_clusters=config.num_clusters, pictures_every=config.pictures.every_evals,
            projection=config.pictures.projection, max_points=config.pictures.max_points,
            seed=config.seed, title=f"{config.method} on {data.source}",
            retrieval_queries=evaluators.retrieval_queries(config, data)),
        metrics=monitor.StepMetrics(lambda s: method.phases[jschedule.phase_at(bounds, s)].name,
                                    checkpoints.kept),
        checkpoints=checkpoints, writer=writer, say=say)
    _banner(run, state)
    try:
        ending = _train(run, state, restored is not None, initial_params,
                        writer.evals[-1] if writer.evals else {})
    finally:
        checkpoints.checkpointer.close()
        writer.close()
    return _finish(run, ending)


def _train(run: _Run, state: jstate.TrainState, resumed: bool, initial_params,
           last_record: dict) -> "_Ending":
    """The loop of :func:`train_and_evaluate` from the restored or initial state."""
    config, method, bounds, say = run.config, run.method, run.bounds, run.say
    step = int(state.step)
    if resumed:
        run.sampler.follow(state.cluster, jschedule.last_recluster_step(method, bounds, step))
    else:
        if initial_params is not None:
            state = run.runner.place(state.replace(params=initial_params))
            say(f"parameters initialised from {config.init_params}")
        state, record = recluster_and_evaluate(run, state, step, force_eval=False)
        last_record = record or last_record

    rows = run.runner.batch_rows(config.batch_size)
    t_log, step_log = time.time(), step
    t_start, step_start = t_log, step
    done = method.done(state.cluster)
    warned = frozenset()  # the warning metrics already printed (once a run: they persist)
    # A stop signal is honoured where a checkpoint of `step` is complete: here (one that arrived
    # during start-up or the initial recluster) and at the end of every iteration.
    stop = preemption.active()
    stopped = stop.should_stop()
    while step < run.total_steps and not done and not stopped:
        phase_index = jschedule.phase_at(bounds, step)
        phase = method.phases[phase_index].name
        indices, neighbours = run.sampler.batch(step)
        mine = slice(*rows)  # the rows of the batch this process supplies
        batch = run.data.batch(indices[mine], None if neighbours is None else neighbours[mine])
        state, metrics = run.train_steps[phase_index](
            state, run.runner.put_batch(batch, config.batch_size))
        run.metrics.add(step, metrics)
        step += 1

        phase_end = step == bounds[phase_index][1]
        if phase_end:
            run.metrics.flush()
            if distributed.is_primary():
                jworkdir.export_params(jworkdir.phase_params_path(run.workdir, phase), state.params)
        state, record = recluster_and_evaluate(run, state, step, force_eval=phase_end)
        if record is not None:
            last_record = record
            done = method.done(state.cluster)  # only a recluster can change it

        if step % config.log_every_steps == 0 or phase_end or done:
            means = run.metrics.means()
            now = time.time()
            rate = (step - step_log) / max(now - t_log, 1e-9)
            overall = (step - step_start) / max(now - t_start, 1e-9)
            run.writer.write_train({"step": step, "phase": phase, **means, "steps_per_s": rate,
                                    "time": now})
            say(monitor.progress_line(phase, step, run.total_steps, means, rate, overall,
                                      config.batch_size))
            warnings, warned = monitor.new_warnings(means, method.warnings, warned)
            for warning in warnings:
                say(f"warning at step {step}: {warning}")
            t_log, step_log = now, step
        if step % config.checkpoint_every_steps == 0 or phase_end or done:
            save(run, state, step)
        stopped = stop.should_stop()
    if not stopped and (not last_record or last_record.get("step") != step):
        # A run without training steps (every phase's end is evaluated in the loop): the
        # evaluation's fit is part of the state saved below, which predict applies.
        state, last_record = recluster_and_evaluate(run, state, step, force_eval=True,
                                                    allow_recluster=False)
    if run.checkpoints.last_saved != step:
        save(run, state, step)
    # Every process leaves together: one that exits while process 0 is still writing its files
    # could see the coordination service go away under it.
    distributed.barrier("jclust:done")
    return _Ending(step=step, record=last_record, stop=stop if stopped else None, done=done,
                   started=t_start)


class _Ending(NamedTuple):
    """How the loop ended: the last step, the final evaluation record, the stop signals when one
    arrived, whether the method converged, and when the loop started (time.time())."""
    step: int
    record: dict
    stop: preemption.StopSignals | None
    done: bool
    started: float


def _finish(run: _Run, ending: _Ending) -> dict:
    """Says how the run ended (raising preemption.Stopped after a stop signal); returns the final
    evaluation record."""
    if ending.stop is not None:
        run.say(preemption.stop_line(ending.stop.signal_name, ending.step))
        raise ending.stop.stopped(ending.step)
    if ending.done:
        run.say(f"stopped at step {ending.step}: the method's convergence criterion was met")
    record = ending.record
    summary = ", ".join(f"{k.upper()}={record[k]:.4f}" for k in ("acc", "nmi", "ari")
                        if k in record)
    summary = summary or f"clusters used {record.get('clusters_used')}/{run.config.num_clusters}"
    run.say(f"final (step {ending.step}): {summary}; wall time "
            f"{monitor.format_duration(time.time() - ending.started)}")
    return record
