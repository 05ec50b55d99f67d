"""`make demo` wall time from a fresh clone: venv + install (package cache warm) + simulate + snapshot + dvc repro +
retrain + the live part (serve with scoring, replay).

Clones the committed HEAD into a temporary folder for each run, so nothing of this working tree leaks in.
Prints each run, the median, and the time of the main job alone (`iot2ml demo`, read from its own output).

Example:
  python bench/bench_demo.py --runs 5
"""
import argparse, re, shutil, statistics, subprocess, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def one_run() -> tuple[float, float]:
    d = Path(tempfile.mkdtemp(prefix='iot2ml-demo-'))
    try:
        subprocess.run(['git', 'clone', '-q', str(ROOT), str(d/'repo')], check=True)
        t0 = time.perf_counter()
        r = subprocess.run(['make', 'demo'], cwd=d/'repo', capture_output=True, text=True)
        total = time.perf_counter() - t0
        if r.returncode: raise SystemExit(f"make demo failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        job = float(re.search(r"Done in (\d+) s", r.stdout).group(1))
        dirty = subprocess.run(['git', 'status', '--porcelain'], cwd=d/'repo', capture_output=True,
                               text=True).stdout.strip()
        if dirty: print(f"  note: make demo left changes in git: {dirty}")
        return total, job
    finally: shutil.rmtree(d, ignore_errors=True)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=5, help="fresh clones to time; the median is reported")
    a = ap.parse_args()
    runs = []
    for i in range(a.runs):
        runs.append(one_run())
        print(f"run {i + 1}: make demo {runs[-1][0]:.0f} s (main job {runs[-1][1]:.0f} s)", flush=True)
    print(f"make demo from a fresh clone: median {statistics.median(r[0] for r in runs):.0f} s "
          f"(main job alone {statistics.median(r[1] for r in runs):.0f} s), median of {a.runs}")
