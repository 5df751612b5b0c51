"""Python/scipy reference of Chinchilla "Approach 3" as Epoch AI's replication fits it.

The baseline of benches/scaling_law/compare.sh: it fits Epoch AI's data
(epoch-research/analyzing-chinchilla, data_analysis.ipynb) the way that notebook does and times
it, so that drover's own implementation can be compared with it on speed and on the answer.

  log L_hat = logsumexp(a - alpha*log N, b - beta*log D, e),  A = e^a, B = e^b, E = e^e
  objective = sum_i Huber_delta(log L_i - log L_hat_i),  delta = 1e-3
  L-BFGS-B (scipy defaults) with an analytic gradient from each point of the 4,500-point grid
  alpha, beta in {0,.5,1,1.5,2}, e in {-1,-.5,0,.5,1}, a, b in {0,5,...,25};
  the successful run with the lowest objective wins.
  Bootstrap: resamples with replacement of the 240 rows (np.random.default_rng(42)), each
  refitted from the full-data best fit; 2.5/97.5 percentile intervals.

numpy runs single-threaded (OMP/OPENBLAS/MKL_NUM_THREADS=1, set below before numpy is
imported) so that the comparison is one core against one core; with 240 points numpy's
threading would not help anyway.

Usage (from anywhere; relative paths are resolved from the repository root):
  python benches/scaling_law/reference.py --self-check
  python benches/scaling_law/reference.py --starts 90 --resamples 100 --json target/x.json
  python benches/scaling_law/reference.py --x0 0,0,-1,0,0
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

# pylint: disable=wrong-import-position
import argparse
import csv
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.optimize import check_grad, minimize

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = "/work/shared/data/chinchilla_epoch/svg_extracted_data.csv"
DELTA = 1e-3
NR_OF_MODELS_EXCLUDED = 5
PARAM_NAMES = ["a", "b", "e", "alpha", "beta"]

# Epoch's grid, in Epoch's loop order: product(alpha, beta, e, a, b).
ALPHA_VALS = [0.0, 0.5, 1.0, 1.5, 2.0]
BETA_VALS = [0.0, 0.5, 1.0, 1.5, 2.0]
E_VALS = [-1.0, -0.5, 0.0, 0.5, 1.0]
A_VALS = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
B_VALS = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
GRID_SIZE = 4500
# The order in which --starts N takes grid points: a fixed permutation, so that the first N
# are spread over the whole grid instead of being its first (alpha = beta = 0) corner.
START_ORDER_SEED = 0
BOOTSTRAP_SEED = 42


def resolve(path):
    """A path as given if absolute, else relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def load_data(path):
    """(log N, log D, log L) of the rows Epoch keeps: those with a loss below the 5th highest."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    d = c / (6.0 * n)
    # Epoch: indices = [i for i in range(len(N)) if losses[i] < sorted_losses[-5]]
    cutoff = np.sort(loss)[-NR_OF_MODELS_EXCLUDED]
    keep = loss < cutoff
    return np.log(n[keep]), np.log(d[keep]), np.log(loss[keep]), len(rows)


def objective_and_grad(params, log_n, log_d, log_l):
    """Huber objective and its analytic gradient in [a, b, e, alpha, beta]."""
    a, b, e, alpha, beta = params
    t1 = a - alpha * log_n
    t2 = b - beta * log_d
    m = np.maximum(np.maximum(t1, t2), e)
    w1 = np.exp(t1 - m)
    w2 = np.exp(t2 - m)
    w3 = np.exp(e - m)
    s = w1 + w2 + w3
    pred = m + np.log(s)
    r = log_l - pred
    small = np.abs(r) <= DELTA
    f = np.sum(np.where(small, 0.5 * r * r, DELTA * (np.abs(r) - 0.5 * DELTA)))
    # d f / d pred_i = -psi(r_i); d pred_i / d t_k = softmax weight k.
    psi = np.where(small, r, DELTA * np.sign(r)) / s
    g1 = psi * w1
    g2 = psi * w2
    grad = -np.array(
        [g1.sum(), g2.sum(), (psi * w3).sum(), -(g1 @ log_n), -(g2 @ log_d)]
    )
    return f, grad


def objective(params, *data):
    return objective_and_grad(params, *data)[0]


def gradient(params, *data):
    return objective_and_grad(params, *data)[1]


# L-BFGS-B options; empty = scipy's defaults (ftol = 1e7 * machine epsilon ~ 2.2e-9,
# gtol = 1e-5, maxiter = 15000). main() fills it from --ftol/--gtol.
OPTIONS = {}


def fit(x0, data):
    """One L-BFGS-B run with the analytic gradient (jac=True: one call gives f and grad).

    Note: scipy's stop test is (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol, and this objective
    is ~1e-3, so with the default ftol a run stops once a step gains less than ~2e-9 in absolute
    terms; that is what ends the start [0, 0, -1, 0, 0] at 0.0011083 and what keeps bootstrap
    refits near their start. --ftol/--gtol tighten it.
    """
    return minimize(
        objective_and_grad, np.asarray(x0, dtype=float), args=data, jac=True,
        method="L-BFGS-B", options=OPTIONS or None,
    )


def grid_starts():
    """All 4,500 starts as [a, b, e, alpha, beta], in the fixed interleaved order."""
    grid = [
        [a, b, e, alpha, beta]
        for alpha, beta, e, a, b in itertools.product(
            ALPHA_VALS, BETA_VALS, E_VALS, A_VALS, B_VALS
        )
    ]
    assert len(grid) == GRID_SIZE
    order = np.random.default_rng(START_ORDER_SEED).permutation(GRID_SIZE)
    return np.array(grid)[order]


def untransform(x):
    a, b, e, alpha, beta = (float(v) for v in x)
    return {"a": a, "b": b, "e": e, "alpha": alpha, "beta": beta,
            "A": float(np.exp(a)), "B": float(np.exp(b)), "E": float(np.exp(e))}


def run_grid(starts, data):
    best = None
    failures = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for x0 in starts:
        res = fit(x0, data)
        if not res.success:
            failures += 1
            continue
        if best is None or res.fun < best[0]:
            best = (float(res.fun), res.x.copy(), x0.tolist())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return best, failures, wall, cpu


def run_bootstrap(x_best, data, resamples):
    log_n, log_d, log_l = data
    n = len(log_l)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    fits = np.empty((resamples, 5))
    failures = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for k in range(resamples):
        idx = rng.integers(0, n, size=n)
        res = fit(x_best, (log_n[idx], log_d[idx], log_l[idx]))
        failures += 0 if res.success else 1
        # As Epoch's notebook: every resample's result is kept, converged or not.
        fits[k] = res.x
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    named = {"A": np.exp(fits[:, 0]), "B": np.exp(fits[:, 1]), "E": np.exp(fits[:, 2]),
             "alpha": fits[:, 3], "beta": fits[:, 4]}
    cis = {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
           for k, v in named.items()}
    return cis, failures, wall, cpu


def self_check(data):
    """Analytic gradient against finite differences: scipy's check_grad (forward differences,
    step ~1.5e-8) and central differences with step 1e-6."""
    points = [
        [0.0, 0.0, -1.0, 0.0, 0.0],
        [5.0, 10.0, 0.5, 0.5, 1.0],
        [6.17, 7.67, 0.597, 0.3473, 0.3672],
        [np.log(406.4), np.log(410.7), np.log(1.69), 0.34, 0.28],
    ]
    h = 1e-6
    ok = True
    for x in points:
        x = np.array(x)
        g = gradient(x, *data)
        scale = max(np.linalg.norm(g), 1e-12)
        fwd = check_grad(objective, gradient, x, *data) / scale
        central = np.array([(objective(x + h * u, *data) - objective(x - h * u, *data)) / (2 * h)
                            for u in np.eye(5)])
        cen = np.linalg.norm(central - g) / scale
        # Near the optimum the curvature along alpha, beta is ~1e5 (log N, log D ~ 20 over 240
        # points), so forward differences are only good to ~1e-4 relative there; central
        # differences are good to ~1e-7 everywhere.
        good = fwd < 1e-3 and cen < 1e-5
        ok &= good
        print(f"gradient at {np.round(x, 4).tolist()}: |g|={scale:.3e} "
              f"check_grad rel={fwd:.1e} central rel={cen:.1e} {'ok' if good else 'FAIL'}")
    print("self-check " + ("passed" if ok else "FAILED"))
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="Epoch's svg_extracted_data.csv (relative: from the repo root)")
    p.add_argument("--starts", type=int, default=GRID_SIZE,
                   help="run only the first N grid starts of the fixed interleaved order")
    p.add_argument("--x0", help="a single start a,b,e,alpha,beta instead of the grid")
    p.add_argument("--resamples", type=int, default=0, help="bootstrap resamples (0 = none)")
    p.add_argument("--ftol", type=float, help="L-BFGS-B ftol (default: scipy's, ~2.2e-9)")
    p.add_argument("--gtol", type=float, help="L-BFGS-B gtol (default: scipy's, 1e-5)")
    p.add_argument("--json", help="write the results here (relative: from the repo root)")
    p.add_argument("--self-check", action="store_true",
                   help="check the analytic gradient against finite differences and exit")
    args = p.parse_args()

    if args.ftol is not None:
        OPTIONS["ftol"] = args.ftol
    if args.gtol is not None:
        OPTIONS["gtol"] = args.gtol

    log_n, log_d, log_l, rows_read = load_data(resolve(args.data))
    data = (log_n, log_d, log_l)
    print(f"data: {rows_read} rows read, {len(log_l)} kept "
          f"(the {NR_OF_MODELS_EXCLUDED} highest losses dropped)")
    if len(log_l) != rows_read - NR_OF_MODELS_EXCLUDED:
        print("warning: ties in the loss column changed how many rows were dropped",
              file=sys.stderr)

    if args.self_check:
        sys.exit(0 if self_check(data) else 1)

    if args.x0:
        starts = np.array([[float(v) for v in args.x0.split(",")]])
        if starts.shape != (1, 5):
            p.error("--x0 takes five numbers: a,b,e,alpha,beta")
    else:
        if not 1 <= args.starts <= GRID_SIZE:
            p.error(f"--starts must be in 1..{GRID_SIZE}")
        starts = grid_starts()[: args.starts]

    best, grid_failures, grid_wall, grid_cpu = run_grid(starts, data)
    if best is None:
        print("no start converged", file=sys.stderr)
        sys.exit(1)
    fun, x_best, best_x0 = best
    params = untransform(x_best)
    per_start = grid_wall / len(starts)

    out = {
        "objective": fun,
        "params": params,
        "best_start": best_x0,
        "rows": len(log_l),
        "starts_run": len(starts),
        "start_mode": "x0" if args.x0 else "grid",
        "grid_failures": grid_failures,
        "grid_seconds": grid_wall,
        "grid_cpu_seconds": grid_cpu,
        "seconds_per_start": per_start,
        "extrapolated_full_grid_seconds": per_start * GRID_SIZE,
        "lbfgsb_options": dict(OPTIONS) or "scipy defaults",
        "resamples": args.resamples,
        "bootstrap_seconds": None,
        "bootstrap_cpu_seconds": None,
        "seconds_per_resample": None,
        "extrapolated_4000_resamples_seconds": None,
        "bootstrap_failures": None,
        "ci95": None,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "scipy": scipy.__version__},
        "threads": {v: os.environ[v] for v in
                    ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }

    print(f"grid: {len(starts)} start(s) in {grid_wall:.2f} s wall, {grid_cpu:.2f} s CPU "
          f"({per_start * 1e3:.1f} ms/start; full {GRID_SIZE} ~ {per_start * GRID_SIZE:.0f} s); "
          f"{grid_failures} did not report success")
    print(f"best objective {fun:.10f} from start {best_x0}")
    print("A={A:.4g} B={B:.5g} E={E:.5f} alpha={alpha:.5f} beta={beta:.5f}".format(**params))

    if args.resamples > 0:
        cis, bs_failures, bs_wall, bs_cpu = run_bootstrap(x_best, data, args.resamples)
        per_resample = bs_wall / args.resamples
        out.update({
            "bootstrap_seconds": bs_wall,
            "bootstrap_cpu_seconds": bs_cpu,
            "seconds_per_resample": per_resample,
            "extrapolated_4000_resamples_seconds": per_resample * 4000,
            "bootstrap_failures": bs_failures,
            "ci95": cis,
        })
        print(f"bootstrap: {args.resamples} resamples in {bs_wall:.2f} s wall, {bs_cpu:.2f} s CPU "
              f"({per_resample * 1e3:.1f} ms each; 4000 ~ {per_resample * 4000:.0f} s); "
              f"{bs_failures} did not report success")
        for k, (lo, hi) in cis.items():
            print(f"  95% CI {k}: [{lo:.5g}, {hi:.5g}]")

    if args.json:
        path = resolve(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
