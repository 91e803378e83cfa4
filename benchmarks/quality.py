"""Clustering quality over seeds: trains a config once per seed and prints a BENCHMARKS.md row.

  python benchmarks/quality.py --config=configs/dec.py --seeds=0,1,2 --workdir=runs/bench_dec
  python benchmarks/quality.py --config=configs/idec.py --seeds=0,1,2 --workdir=runs/bench_idec \
      --override pretrain.epochs=0 \
      --override 'init_params=runs/bench_dec/seed{seed}/params_pretrain.msgpack'

Each seed runs in its own sub-workdir (re-running resumes and re-uses finished seeds). The
output is the per-seed table plus one Markdown row: mean ± sd (sample sd, n-1) of ACC, NMI and
ARI, the mean wall time, and the command, date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np


def machine() -> str:
    """The processor as /proc/cpuinfo names it, with its family and model where the name alone
    does not tell generations apart (a VM's "AMD EPYC" is Zen 1 to Zen 4), and the core count."""
    cpu, fields = platform.processor() or "cpu", {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    if "cpu family" in fields and "model" in fields:
        cpu += f" (family {fields['cpu family']} model {fields['model']})"
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file[:arg]")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--parallel", type=int, default=1,
                        help="seeds run at once (on an accelerator); each then logs to SEEDDIR/log.txt")
    parser.add_argument("--override", action="append", default=[],
                        help="KEY=VALUE config override; {seed} in it becomes the seed")
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    pending = []
    for seed in seeds:
        result_path = os.path.join(args.workdir, f"seed{seed}", "result.json")
        if os.path.exists(result_path):
            with open(result_path) as f:
                results[seed] = json.load(f)
            print(f"seed {seed}: re-using {result_path}", flush=True)
        else:
            pending.append(seed)

    running = {}  # seed -> (process, start time, log file or None)
    failed = 0
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            workdir = os.path.join(args.workdir, f"seed{seed}")
            cmd = [sys.executable, "-m", "jclust.main", f"--config={args.config}",
                   f"--workdir={workdir}", f"--config.seed={seed}"] + [
                       f"--config.{o.replace('{seed}', str(seed))}" for o in args.override]
            print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
            log = None
            if args.parallel > 1:  # interleaved output would be unreadable: one log per seed
                os.makedirs(workdir, exist_ok=True)
                log = open(os.path.join(workdir, "log.txt"), "a")
            running[seed] = (subprocess.Popen(cmd, stdout=log, stderr=log), time.time(), log)
        time.sleep(0.2 if args.parallel > 1 else 0)
        for seed, (proc, start, log) in list(running.items()):
            if proc.poll() is None:
                if args.parallel == 1:
                    proc.wait()
                else:
                    continue
            del running[seed]
            if log:
                log.close()
            if proc.returncode:
                print(f"seed {seed} failed with exit code {proc.returncode}", file=sys.stderr)
                failed = proc.returncode
                continue
            workdir = os.path.join(args.workdir, f"seed{seed}")
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                evals = [json.loads(line) for line in f]
            final = evals[-1]
            row = {"seed": seed, "seconds": time.time() - start,
                   **{k: final[k] for k in ("step", "acc", "nmi", "ari")},
                   "acc_first_eval": evals[0].get("acc")}
            with open(os.path.join(workdir, "result.json"), "w") as f:
                json.dump(row, f)
            results[seed] = row
            print(f"seed {seed}: ACC {row['acc']:.4f} NMI {row['nmi']:.4f} ARI {row['ari']:.4f} "
                  f"({row['seconds'] / 60:.1f} min)", flush=True)
    if failed:
        return failed
    rows = [results[seed] for seed in seeds]

    print("\n| seed | ACC at first eval | ACC | NMI | ARI | steps | wall time |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        first = r.get("acc_first_eval")
        print(f"| {r['seed']} | {'-' if first is None else f'{first:.4f}'} | {r['acc']:.4f} | {r['nmi']:.4f} | {r['ari']:.4f} | {r['step']} | "
              f"{r['seconds'] / 60:.1f} min |")

    def stat(key):
        values = np.array([r[key] for r in rows])
        sd = values.std(ddof=1) if len(values) > 1 else 0.0
        return f"{values.mean():.3f} ± {sd:.3f}"

    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    print(f"\n| config | seeds | ACC | NMI | ARI | mean wall time | command | date | machine |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| `{args.config}` {' '.join(args.override)} | {len(rows)} | {stat('acc')} | {stat('nmi')} | "
          f"{stat('ari')} | {np.mean([r['seconds'] for r in rows]) / 60:.1f} min | `{command}` | "
          f"{today} | {machine()} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
