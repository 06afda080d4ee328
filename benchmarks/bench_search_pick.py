"""Does the search's pick under a budget match training every candidate?

Ground truth that matches the product: for each of 4 teachers of different kinds
(the example ResNet, a residual/concat CNN, a depthwise MobileNet-style CNN and a
ViT of the transformer family, all trained here on digits 32x32), candidates are
drawn from the spaces the pipeline searches for that teacher, and every candidate
is distilled from the trained teacher with KD (τ 4, α 0.7) for the pipeline's
epochs, teacher_scaled candidates starting from the teacher's weights (as the
pipeline's students do, 12 epochs), family candidates from scratch (48 epochs, as
`compress` trains a family from random weights). Two seeds per candidate (or more):
their accuracies' rank agreement says whether the ground truth is stable.

Then every proxy (and a small learned predictor over proxy features, fitted on the
other teachers only) is judged as the search uses it: τ/ρ overall and inside bins of
similar predicted latency, and the **regret** at three budgets: accuracy of the
best-scoring in-budget candidate minus the best in-budget accuracy.

    python benchmarks/bench_search_pick.py --phase train --teachers example,vit   # ground truth (cached)
    python benchmarks/bench_search_pick.py                                         # train what is missing + report

Distilled accuracies and proxy features are cached under benchmarks/_work/search_pick,
so the report reruns in minutes. Writes benchmarks/results/search_pick.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_proxy_correlation import _train_ce, lifted_teacher, sample_candidates, space  # noqa: E402

from compressor import prune as P  # noqa: E402
from compressor.distill.epochs import default_epochs  # noqa: E402
from compressor.distill.single import KDConfig, distill_single  # noqa: E402
from compressor.families import build_family  # noqa: E402
from compressor.intake.data import load_data  # noqa: E402
from compressor.intake.teacher import load_teacher  # noqa: E402
from compressor.search.nets import default_init  # noqa: E402
from compressor.search.study import SearchConfig  # noqa: E402
from compressor.types import DataSplits, Teacher  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "search_pick"
TEACHER_FILES = ROOT / "benchmarks" / "_work" / "budget_claim" / "teachers"
RESULTS = ROOT / "benchmarks" / "results"

# teacher name -> (kind described in the report, spaces the pipeline searches for it)
TEACHERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "example": ("the example ResNet (0.48M params)", ("teacher_scaled", "cnn")),
    "resconcat": ("residual + concatenation CNN (0.2M)", ("teacher_scaled", "cnn")),
    "mobilenet": ("depthwise-separable MobileNet-style CNN (0.2M)", ("teacher_scaled", "cnn")),
    "vit": ("ViT of the transformer family (depth 4, dim 128)", ("teacher_scaled", "transformer")),
}
VIT = {"family": "transformer", "depth": 4, "dim": 128, "heads": 4, "mlp_ratio": 2.0, "patch": 4}


def load_digits32(seed: int = 0) -> DataSplits:
    return load_data("digits", seed=seed, image_size=32)


def vit_model(data: DataSplits) -> nn.Module:
    """The ViT teacher (transformer family), trained here on first use and kept as a state dict."""
    path = WORK / "vit_teacher.pt"
    torch.manual_seed(0)
    model = build_family(VIT, data.input_shape, data.num_classes)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        _train_ce(model, data, epochs=40, seed=0, lr=1e-3)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def teacher(name: str, data: DataSplits) -> tuple[Teacher, float]:
    """A trained teacher, lifted as `compress` lifts it (files made by bench_budget_claim.py, the
    ViT trained here on first use)."""
    from compressor.evaluate import accuracy, predict_logits

    if name == "vit":
        t = lifted_teacher(vit_model(data), data, str(WORK / "vit_teacher.pt"))
    else:
        path = TEACHER_FILES / f"{name}.pt"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run benchmarks/bench_budget_claim.py once to train it")
        t = load_teacher(path, data.x_train[:2], data.num_classes)
    return t, accuracy(predict_logits(t.module, data.x_val), data.y_val)


def teacher_latency(t: Teacher, profile: Any) -> float:
    from compressor.hardware.predict import predict_latency, predictor_for

    return predict_latency(t.module, t.spec.shape, profile, predictor_for(profile, t.spec.shape)).value()


def sample(t: Teacher, spaces: Sequence[str], n: int, seed: int, max_ms: float, profile: Any) -> list[dict[str, Any]]:
    """`n` distinct candidates taking turns over `spaces`, each predicted at most `max_ms`."""
    from compressor.hardware.predict import predict_latency, predictor_for

    predictor = predictor_for(profile, t.spec.shape)
    return sample_candidates(t, spaces, n, seed, tries=200,
                             accept=lambda m: predict_latency(m, t.spec.shape, profile, predictor).value() <= max_ms)


def candidates(name: str, t: Teacher, args: argparse.Namespace, profile: Any) -> list[dict[str, Any]]:
    """The teacher's candidate pool, drawn once and kept (so later runs score the same students)."""
    path = WORK / f"{name}_candidates.json"
    if path.exists():  # a pool drawn earlier: its first `n` (the draw takes turns over the spaces)
        archs = json.loads(path.read_text())
        if len(archs) >= args.candidates:
            return archs[:args.candidates]
    archs = sample(t, TEACHERS[name][1], args.candidates, 1000 + sum(map(ord, name)),
                   args.max_latency * teacher_latency(t, profile), profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(archs, indent=1))
    return archs


def build(arch: dict[str, Any], t: Teacher) -> nn.Module:
    return space(t, arch["space"]).build(arch, t)


def _distilled_path(arch: dict[str, Any], t: Teacher, epochs: int, seed: int) -> Path:
    key = hashlib.sha256(json.dumps([t.sha256, arch, epochs, seed], sort_keys=True).encode()).hexdigest()[:20]
    return WORK / "distilled" / f"{key}.json"


def epochs_for(arch: dict[str, Any], args: argparse.Namespace) -> int:
    """The epochs `compress` would train this candidate's family for (or `--epochs` when given)."""
    return default_epochs(args.epochs, arch)[0]


def distil(arch: dict[str, Any], t: Teacher, data: DataSplits, epochs: int, seed: int) -> dict[str, Any]:
    """Distilled validation accuracy of one candidate, cached by (teacher, arch, epochs, seed)."""
    path = _distilled_path(arch, t, epochs, seed)
    if path.exists():
        return json.loads(path.read_text())
    model = build(arch, t)
    inherit = arch["space"] == "teacher_scaled"
    if not inherit:
        default_init(model, seed)
    start = time.perf_counter()
    history = distill_single(model, t.module, data, KDConfig(epochs=epochs, seed=seed))
    out = {"val_acc": history[-1]["val_acc"], "train_seconds": time.perf_counter() - start,
           "inherit": inherit, "params": P.count_params(model)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def train_phase(args: argparse.Namespace) -> None:
    from compressor.hardware.profiles import load_profile

    profile = load_profile(args.profile)
    data = load_digits32()
    for name in args.teachers:
        t, acc = teacher(name, data)
        archs = candidates(name, t, args, profile)
        print(f"[{name}] teacher acc {acc:.3f}, {len(archs)} candidates", flush=True)
        for seed in args.seeds:
            for i, arch in (reversed(list(enumerate(archs))) if args.reverse else enumerate(archs)):
                r = distil(arch, t, data, epochs_for(arch, args), seed)
                print(f"[{name}/s{seed}] {i + 1}/{len(archs)} {arch['space']:14s} {r['params']:8d} params "
                      f"acc {r['val_acc']:.3f} ({r['train_seconds']:.1f} s)", flush=True)


# ------------------------------------------------------------------ proxy features (cached)

PROXIES = ("params", "macs", "grad_norm", "snip", "synflow", "naswot", "zico", "meco", "swap", "diswot",
           "diswot_official", "diswot_inherited", "diswot_stages")


def arch_key(arch: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def features(name: str, t: Teacher, archs: list[dict[str, Any]], data: DataSplits, profile: Any,
             refresh: bool = False) -> list[dict[str, Any]]:
    """Every candidate's raw proxy terms, each proxy's time, predicted latency, params and MACs.

    Cached per teacher; a candidate or proxy missing from the cache is measured and added."""
    from compressor.hardware.predict import predict_latency, predictor_for
    from compressor.search import get_proxy, labelled_batch, teacher_context

    path = WORK / f"{name}_features.json"
    cache: dict[str, Any] = {} if refresh or not path.exists() else json.loads(path.read_text())
    batch = labelled_batch(data.x_train, data.y_train, 64, 0)  # what a study uses
    ctx = None
    predictor = predictor_for(profile, t.spec.shape)
    out = []
    for arch in archs:
        row = cache.setdefault(arch_key(arch), {"terms": {}, "ms": {}})
        missing = [p for p in PROXIES if p not in row["ms"]]
        if missing or "latency_ms" not in row:
            if ctx is None:
                start = time.perf_counter()
                ctx = teacher_context(t.module, batch, 0)
                cache["_teacher_context_ms"] = 1e3 * (time.perf_counter() - start)
            torch.manual_seed(0)  # family students: the same starting weights every run
            model = build(arch, t)
            for proxy in missing:
                start = time.perf_counter()
                row["terms"].update(get_proxy(proxy).measure(model, batch, ctx))
                row["ms"][proxy] = 1e3 * (time.perf_counter() - start)
            start = time.perf_counter()
            row["latency_ms"] = predict_latency(model, t.spec.shape, profile, predictor).value()
            row["ms"]["latency"] = 1e3 * (time.perf_counter() - start)
        out.append(row)
    path.write_text(json.dumps(cache, indent=1))
    return out


# ------------------------------------------------------------------ statistics

BUDGET_QUANTILES = (1 / 3, 2 / 3, 1.0)  # budgets holding a third, two thirds and all of a pool
ENSEMBLES = ("ensemble", "snip+params", "diswot_inherited+params", "diswot_inherited+snip+params",
             "diswot_stages+snip+params", "swap+params", "synflow+params", "zico+params",
             "diswot+synflow+params", "diswot_inherited+synflow+params", "naswot+params")


def proxy_scores(name: str, rows: list[dict[str, Any]]) -> np.ndarray:
    from compressor.search import Reference, get_proxy

    if name == "latency":
        return np.array([r["latency_ms"] for r in rows])
    terms = [r["terms"] for r in rows]
    proxy = get_proxy(name)
    reference = Reference.from_terms(terms, "rank")  # the pool normalises itself, as a study's reference pool
    return np.array([proxy.score(t, reference) for t in terms])


def proxy_ms(name: str, rows: list[dict[str, Any]]) -> float:
    """Median time per candidate of everything `name` measures (an ensemble: its members)."""
    if name == "latency":
        return float(np.median([r["ms"]["latency"] for r in rows]))
    members = name.split("+") if "+" in name else (["diswot", "snip", "params"] if name == "ensemble" else [name])
    if "diswot_sem" in members or "diswot_rel" in members:
        members = ["diswot" if m.startswith("diswot_") and m not in PROXIES else m for m in members]
    return float(np.median([sum(r["ms"][m] for m in dict.fromkeys(members)) for r in rows]))


def regret(score: np.ndarray, acc: np.ndarray, lat: np.ndarray, budget: float, window: float = 0.0) -> float:
    """Points of accuracy lost by taking the best-scoring in-budget candidate (ties: the faster).

    `window` > 0: among in-budget candidates scoring within `window` of the best (scores ranked
    to [0, 1] within the budget), take the slowest, i.e. spend spare budget on a close runner-up."""
    inside = np.flatnonzero(lat <= budget + 1e-12)
    if window > 0:
        r = ranks01(score[inside])
        close = inside[r >= r.max() - window]
        pick = close[np.argmax(lat[close])]
    else:
        pick = inside[np.lexsort((lat[inside], -score[inside]))[0]]
    return 100.0 * float(acc[inside].max() - acc[pick])


def judge(score: np.ndarray, acc: np.ndarray, lat: np.ndarray, bins: int = 3, window: float = 0.0) -> dict[str, Any]:
    from scipy import stats

    order = np.argsort(lat, kind="stable")
    taus = [stats.kendalltau(score[i], acc[i]).statistic for i in np.array_split(order, bins) if len(i) >= 3]
    budgets = [float(np.quantile(lat, q, method="lower" if q < 1 else "linear")) for q in BUDGET_QUANTILES]
    return {"tau": float(stats.kendalltau(score, acc).statistic), "rho": float(stats.spearmanr(score, acc).statistic),
            "tau_bins": float(np.nanmean(taus)), "regret": [regret(score, acc, lat, b, window) for b in budgets],
            "budgets": budgets}


# ------------------------------------------------------------------ the learned predictor


CHEAP = ("diswot_sem", "diswot_rel", "diswot_inh_sem", "diswot_inh_rel", "synflow")  # one forward pass each
INHERITED = ("diswot_inh_sem", "diswot_inh_rel", "synflow")  # the default's DisWOT form and SynFlow


def design(rows: list[dict[str, Any]], tpool: dict[str, Any], terms_used: Sequence[str] | None = None) -> np.ndarray:
    """Per-candidate features comparable across teachers: sizes relative to the teacher, whether the
    candidate inherits the teacher's weights, and every proxy term ranked within its pool."""
    from compressor.search import Reference

    terms = [r["terms"] for r in rows]
    ref = Reference.from_terms(terms, "rank")
    names = sorted(k for k in terms[0] if k not in ("params", "macs") and (terms_used is None or k in terms_used))
    cols = [np.log(np.array([r["terms"]["params"] for r in rows]) / tpool["params"]),
            np.log(np.array([r["terms"]["macs"] for r in rows]) / tpool["macs"]),
            np.log(np.array([r["latency_ms"] for r in rows]) / tpool["latency_ms"]),
            np.array([float(r["inherit"]) for r in rows])]
    cols += [np.array([ref.normalise(k, t[k]) for t in terms]) for k in names]
    return np.stack(cols, 1)


def ranks01(a: np.ndarray) -> np.ndarray:
    from scipy import stats

    return (stats.rankdata(a) - 1) / max(1, len(a) - 1)


def learned_scores(pools: list[dict[str, Any]], kind: str = "ridge",
                   terms_used: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Leave one teacher out: fit on the other teachers' candidates (target: accuracy rank within
    its pool), score the held-out teacher's candidates."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = {p["name"]: design(p["rows"], p["teacher"], terms_used) for p in pools}
    y = {p["name"]: ranks01(p["acc"]) for p in pools}
    out = {}
    for held in X:
        train = [n for n in X if n != held]
        model = (make_pipeline(StandardScaler(), Ridge(alpha=10.0)) if kind == "ridge" else
                 GradientBoostingRegressor(n_estimators=100, max_depth=2, learning_rate=0.05, subsample=0.8,
                                           random_state=0))
        model.fit(np.concatenate([X[n] for n in train]), np.concatenate([y[n] for n in train]))
        out[held] = model.predict(X[held])
    return out


# ------------------------------------------------------------------ one teacher's pool


def teacher_pool(name: str, args: argparse.Namespace, data: DataSplits, profile: Any) -> dict[str, Any] | None:
    t, tacc = teacher(name, data)
    archs = candidates(name, t, args, profile)
    if args.cached_only:  # report on the candidates already distilled (while the rest still trains)
        archs = [a for a in archs if all(_distilled_path(a, t, epochs_for(a, args), s).exists() for s in args.seeds)]
        if len(archs) < 6:
            return None
    gt = [[distil(a, t, data, epochs_for(a, args), s) for s in args.seeds] for a in archs]
    rows = features(name, t, archs, data, profile, refresh=args.refresh_features)
    for r, g in zip(rows, gt):
        r["inherit"] = g[0]["inherit"]
    accs = np.array([[g["val_acc"] for g in per] for per in gt])  # candidates x seeds
    example = t.spec.example(1)
    tinfo = {"acc": tacc, "params": P.count_params(t.module), "macs": P.count_macs(t.module, example),
             "latency_ms": teacher_latency(t, profile)}
    return {"name": name, "teacher": tinfo, "archs": archs, "rows": rows, "acc": accs.mean(1), "acc_seeds": accs,
            "lat": np.array([r["latency_ms"] for r in rows]),
            **seed_agreement(accs),
            "train_s": float(np.mean([g["train_seconds"] for per in gt for g in per]))}


def seed_agreement(accs: np.ndarray) -> dict[str, float]:
    """How stable the ground truth is (`accs`: candidates x seeds): Kendall τ between two seeds'
    accuracies (the mean over every pair of seeds), and, with 4 or more seeds, between the mean of
    the first half of the seeds and the mean of the other half: the agreement of a ground truth
    that averages that many seeds, as the report's does."""
    from itertools import combinations

    from scipy import stats

    k = accs.shape[1]
    pairs = [stats.kendalltau(accs[:, i], accs[:, j]).statistic for i, j in combinations(range(k), 2)]
    halves = (stats.kendalltau(accs[:, :k // 2].mean(1), accs[:, k // 2:].mean(1)).statistic
              if k >= 4 else float("nan"))
    return {"seed_tau": float(np.mean(pairs)) if pairs else float("nan"), "halves_tau": float(halves)}


# ------------------------------------------------------------------ report

SINGLES = ("params", "macs", "latency", "grad_norm", "snip", "synflow", "naswot", "zico", "meco", "swap", "diswot",
           "diswot_sem", "diswot_rel", "diswot_official", "diswot_inherited", "diswot_stages")
DEFAULT = SearchConfig.proxy  # the search's default, bolded in the report
WINDOWS = (0.1, 0.2)


def evaluate(pools: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{proxy: {teacher: judged figures}} for every proxy, ensemble and learned predictor."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name in SINGLES + ENSEMBLES:
        table[name] = {}
        for p in pools:
            table[name][p["name"]] = {**judge(proxy_scores(name, p["rows"]), p["acc"], p["lat"]),
                                      "ms": proxy_ms(name, p["rows"])}
    variants = {None: ("all terms", [m for m in PROXIES if m not in ("params", "macs")]),
                CHEAP: ("sizes + DisWOT + SynFlow", ["diswot", "diswot_inherited", "synflow"]),
                INHERITED: ("sizes + inherited DisWOT + SynFlow", ["diswot_inherited", "synflow"])}
    for kind, used in (("ridge", None), ("gbm", None), ("ridge", CHEAP), ("gbm", CHEAP), ("gbm", INHERITED)):
        scores = learned_scores(pools, kind, used)
        what, measured = variants[used]
        label = f"learned ({kind}, {what}, held-out teacher)"
        table[label] = {}
        for p in pools:
            cost = sum(proxy_ms(m, p["rows"]) for m in measured) + proxy_ms("macs", p["rows"]) + proxy_ms("latency", p["rows"])
            table[label][p["name"]] = {**judge(scores[p["name"]], p["acc"], p["lat"]), "ms": cost}
    for name in dict.fromkeys((DEFAULT, "ensemble", "snip+params", "params")):  # spare budget on close runners-up
        for window in WINDOWS:
            label = f"{name}, slowest within top {window:g}"
            table[label] = {p["name"]: {**judge(proxy_scores(name, p["rows"]), p["acc"], p["lat"], window=window),
                                        "ms": proxy_ms(name, p["rows"])} for p in pools}
    # two references for reading the regrets: a pick at random among the in-budget candidates (its
    # expected regret), and training every candidate: the best of seeds 0-1's mean, judged on the other
    # seeds' mean (the regret the ground truth's own noise leaves; 4+ seeds)
    table["random pick (expected)"] = {p["name"]: {
        "tau": 0.0, "rho": 0.0, "tau_bins": 0.0, "ms": float("nan"), "budgets": table[DEFAULT][p["name"]]["budgets"],
        "regret": [100.0 * float(np.mean(p["acc"][p["lat"] <= b + 1e-12].max() - p["acc"][p["lat"] <= b + 1e-12]))
                   for b in table[DEFAULT][p["name"]]["budgets"]]} for p in pools}
    k = pools[0]["acc_seeds"].shape[1]
    if k >= 4:
        label = f"training every candidate ({k // 2} seeds), judged on the other {k - k // 2}"
        table[label] = {}
        for p in pools:
            first, rest = p["acc_seeds"][:, :k // 2].mean(1), p["acc_seeds"][:, k // 2:].mean(1)
            table[label][p["name"]] = {**judge(first, rest, p["lat"]), "ms": 1e3 * p["train_s"]}
    # an ensemble chosen on the other teachers (lowest mean regret there), judged on the held-out one
    label = "best ensemble chosen on the other teachers"
    table[label] = {}
    for p in pools:
        others = [q["name"] for q in pools if q["name"] != p["name"]]
        best = min(ENSEMBLES + SINGLES, key=lambda n: (np.mean([np.mean(table[n][o]["regret"]) for o in others]),
                                                        -np.mean([table[n][o]["tau_bins"] for o in others])))
        table[label][p["name"]] = {**table[best][p["name"]], "chosen": best}
    return table


def _mean(table: dict[str, dict[str, Any]], key: str) -> float:
    return float(np.mean([v[key] for v in table.values()]))


def report(pools: list[dict[str, Any]], table: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace,
           seconds: float) -> str:
    n = sum(len(p["archs"]) for p in pools)
    train_s = float(np.mean([p["train_s"] for p in pools]))
    pooled = seed_agreement(np.concatenate([p["acc_seeds"] for p in pools]))
    k = pools[0]["acc_seeds"].shape[1]
    epochs_text = (f"{args.epochs} epochs" if args.epochs else
                   "the pipeline's epochs (12 for a cut from the teacher, 48 for a family from random weights)")
    lines = ["# Search pick vs training every candidate", "",
             f"Command: `{args.command}`", "",
             f"Ground truth: {n} candidates over {len(pools)} teachers (digits 32x32; 1,437 training and 360 "
             f"validation images), drawn at random from the spaces the pipeline searches for each teacher, each "
             f"at most {args.max_latency:g}x the teacher's predicted latency on `{args.profile}`. Every candidate "
             f"distilled with KD (τ 4, α 0.7, AdamW, one-cycle, batch 64) for {epochs_text}; teacher_scaled candidates start from the teacher's weights (as the pipeline's students do), "
             f"family candidates from a seeded default initialisation. Seeds {', '.join(map(str, args.seeds))}; "
             f"accuracy is their mean. Proxies as a study computes them: one class-balanced batch of 64, seed 0, "
             f"multi-term proxies normalised by rank within the pool. Mean distillation time per candidate "
             f"{train_s:.1f} s (1 thread); this report took {seconds / 60:.1f} min from the cache in "
             f"benchmarks/_work/search_pick.", "",
             "## Is the ground truth stable?", "",
             "Kendall τ between one seed's accuracies and another's (the mean over every pair of seeds; the "
             "bar: 0.9)" + (f", and between the mean of seeds {args.seeds[:k // 2]} and the mean of seeds "
                            f"{args.seeds[k // 2:]}: the stability of a ground truth averaged over {k // 2} "
                            "seeds" if k >= 4 else "") + ".", "",
             "| teacher | kind | teacher acc | candidates | accuracy range | τ one seed vs another |"
             + (" τ half the seeds vs the rest |" if k >= 4 else ""),
             "|---|---|---:|---:|---|---:|" + ("---:|" if k >= 4 else "")]
    for p in pools:
        lines.append(f"| {p['name']} | {TEACHERS[p['name']][0]} | {p['teacher']['acc']:.3f} | {len(p['archs'])} | "
                     f"{p['acc'].min():.3f}–{p['acc'].max():.3f} | {p['seed_tau']:.3f} |"
                     + (f" {p['halves_tau']:.3f} |" if k >= 4 else ""))
    lines += [f"| all | pooled | | {n} | | {pooled['seed_tau']:.3f} |"
              + (f" {pooled['halves_tau']:.3f} |" if k >= 4 else ""), ""]
    budgets = " / ".join(f"{q:.2g}" for q in BUDGET_QUANTILES)
    lines += ["## Summary (mean over teachers)", "",
              f"Regret: points of distilled accuracy lost by taking the best-scoring in-budget candidate instead of "
              f"the most accurate one, at budgets holding {budgets} of each pool (by predicted latency). "
              f"τ in bins: mean Kendall τ inside 3 bins of similar predicted latency. Cost: proxy time per "
              f"candidate against {train_s:.1f} s of distillation.", "",
              "| proxy | τ | ρ | τ in latency bins | regret ⅓ | regret ⅔ | regret all | worst regret | ms / cand | × cheaper |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = sorted(table, key=lambda k: (np.mean([np.mean(v["regret"]) for v in table[k].values()]),
                                         -_mean(table[k], "tau_bins")))
    for name in order:
        t = table[name]
        reg = np.array([v["regret"] for v in t.values()])
        ms = _mean(t, "ms")
        bold = "**" if name == DEFAULT else ""
        lines.append(f"| {bold}{name}{bold} | {_mean(t, 'tau'):.3f} | {_mean(t, 'rho'):.3f} | {_mean(t, 'tau_bins'):.3f} | "
                     + " | ".join(f"{x:.2f}" for x in reg.mean(0)) + f" | {reg.max():.2f} | "
                     + (f"{ms:.1f} | {1e3 * train_s / max(ms, 1e-3):,.0f} |" if np.isfinite(ms) else "- | - |"))
    lines.append("")
    chosen = table["best ensemble chosen on the other teachers"]
    lines += ["Best ensemble chosen on the other teachers, per held-out teacher: "
              + ", ".join(f"{k}: `{v['chosen']}`" for k, v in chosen.items()) + ".", ""]
    lines += NOTES
    for p in pools:
        lines += [f"## {p['name']}: {TEACHERS[p['name']][0]}", "",
                  f"Teacher: accuracy {p['teacher']['acc']:.3f}, {p['teacher']['params']:,} params, "
                  f"{p['teacher']['latency_ms']:.3f} ms predicted. Budgets: "
                  + ", ".join(f"{b:.3f} ms ({b / p['teacher']['latency_ms']:.2f}x)"
                              for b in table[DEFAULT][p['name']]["budgets"]) + ".", "",
                  "| proxy | τ | ρ | τ in latency bins | regret ⅓ | regret ⅔ | regret all |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name in sorted(table, key=lambda k: np.mean(table[k][p["name"]]["regret"])):
            v = table[name][p["name"]]
            lines.append(f"| {name} | {v['tau']:.3f} | {v['rho']:.3f} | {v['tau_bins']:.3f} | "
                         + " | ".join(f"{x:.2f}" for x in v["regret"]) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


NOTES = [
    "## Notes", "",
    "- **The ground truth matches the product**: each family from random weights is distilled for the 48 "
    "epochs `compress` gives it, a cut from the teacher for 12 (an earlier form of this benchmark trained "
    "every candidate 12 epochs, which undertrained the from-scratch ones and stretched the pools' accuracy "
    "ranges). Trained as the product trains them, the candidates of a pool end close together: 1.2 points "
    "apart for the residual/concat teacher, 2.2 for the MobileNet-style one, 7-13 for the example and the ViT "
    "(whose smallest cuts stay low). One validation image is 0.28 points, so a pool's ranking rests on a "
    "handful of images and two seeds agree at τ 0.55-0.68 per teacher (0.73 pooled); the means of two seeds "
    "against the means of two others at 0.60-0.76 (0.81 pooled). The 0.9 bar is not reachable on 360 "
    "validation images with pools this tight: more seeds average the noise down slowly, a larger validation "
    "set would need another dataset.",
    "- **What the pick is worth, against two references**: a pick at random among the in-budget candidates "
    "loses 1.0-1.3 points on average; training every candidate with two seeds and taking the best, judged "
    "on the other two seeds, loses 0.45 / 0.28 / 0.14 (the ground truth's own noise). The default, "
    "`diswot_inherited+params`, loses 0.28 / 0.40 / 0.42 against the four seeds' mean and 0.35 / 0.28 / 0.42 "
    "judged on seeds 2-3 alone as the trained pick is: within 0.1 point of training every candidate on "
    "average, under the 0.5-point goal at every budget, at 975x less than the distillation it replaces.",
    "- **The default stays `diswot_inherited+params`; no proxy here is better by more than the noise.** "
    "The parameter count alone does as well on this ground truth (regret 0.28 / 0.31 / 0.33), and DisWOT's "
    "terms alone rank no better than chance (τ 0.04-0.09, random or inherited weights): with every "
    "from-scratch family trained to convergence, how teacher-like a network starts says little about where "
    "it ends. On the earlier, 12-epoch ground truth the inherited form had the lowest regret of every proxy "
    "(0.28 / 0.00 / 0.42 against the parameter count's 0.21 / 0.24 / 0.63; this file before commit 64c63e3): "
    "the two ground truths agree on nothing finer than that. `snip+params` ranks best inside latency bins (τ 0.40 against 0.28 for the parameter "
    "count: the goal's +0.1) but with a higher regret at the largest budget (0.61) and at 476x, just under the "
    "500x cost goal; `grad_norm` has the lowest regret (0.05 / 0.16 / 0.50) with a τ of 0.23. The proxy "
    "chosen on three teachers and judged on the fourth is `grad_norm` for three held-out teachers and `zico` "
    "for the fourth, and does worse than either the default or the parameter count: a choice among proxies "
    "this close is itself noise.",
    "- Spending spare budget on a close runner-up (the slowest candidate scoring within 10 % or 20 % of the "
    "best, by rank) helps some proxies and hurts others by a few tenths of a point; the search takes the "
    "best-scoring in-budget candidate, and the parameter term prefers the larger of two otherwise equal ones.",
    "- Tried and not kept: per-stage batch similarity (`diswot_stages`), SWAP, ZiCo, MeCo, NASWOT, SynFlow, "
    "and learned predictors (ridge and gradient boosting over sizes relative to the teacher, inheritance, and "
    "every proxy term ranked in its pool; fitted on three teachers, scored on the fourth it never saw): the "
    "boosted trees over sizes, the inherited DisWOT terms and SynFlow have the best τ here (0.42; inside "
    "latency bins 0.34, +0.06 over the parameter count) and a regret under half a point at every budget "
    "(0.16 / 0.26 / 0.28, worst 0.63) at 513x; the same with the random-weight DisWOT terms too, 0.38 and "
    "333x. On the earlier ground truth the learned predictors were behind the default, and +0.06 is within "
    "the τ's noise over 4 teachers (about 0.08): not enough to ship a fitted model as the default.",
    "- Differences from the pipeline: each candidate is distilled alone (no TA, no nesting, no shift "
    "augmentation), and the pool is drawn at random rather than by NSGA-II. With 20 candidates per teacher "
    "a Kendall τ has a standard error of about 0.15; a regret of 0.07 points is one validation image in a "
    "mean of four seeds.",
    "",
]


def report_phase(args: argparse.Namespace) -> str:
    from compressor.hardware.profiles import load_profile

    start = time.perf_counter()
    profile = load_profile(args.profile)
    data = load_digits32()
    pools = [p for p in (teacher_pool(name, args, data, profile) for name in args.teachers) if p is not None]
    table = evaluate(pools)
    text = report(pools, table, args, time.perf_counter() - start)
    out = RESULTS / "search_pick.md"
    out.write_text(text)
    (WORK / "search_pick.json").write_text(json.dumps(
        {"table": table, "pools": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items()
                                    if k != "rows"} for p in pools]}, indent=1, default=float))
    return text


# ------------------------------------------------------------------ end to end


def compress_run(teacher_path: Path, proxy: str, budget: str, seed: int, out: Path) -> dict[str, Any]:
    """One `compress` run with `--proxy` (reused when its manifest exists); the figures of its pick."""
    import os
    import subprocess

    manifest = out / "manifest.json"
    if not manifest.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [sys.executable, "-m", "compressor", "--teacher", str(teacher_path), "--budget", budget, "--proxy", proxy,
               "--seed", str(seed), "--out", str(out), "--no-progress", "-q"]
        done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True)
        if not manifest.exists():
            raise SystemExit(f"{' '.join(cmd)} wrote no manifest: {done.stderr[-500:]}")
    m = json.loads(manifest.read_text())
    sizes = {z["name"]: z for z in m["models"]}
    chosen = sizes.get(m.get("selected") or "")
    return {"student_ms": m["search"]["student"]["est_latency_ms"], "student_params": m["search"]["student"]["params"],
            "budget_ms": m["budget"]["ms"], "selected": m.get("selected"),
            "accuracy": chosen["accuracy"] if chosen else None,
            "sizes": {k: v["accuracy"] for k, v in sizes.items()}}


def e2e_phase(args: argparse.Namespace) -> str:
    """`compress` on each teacher with the earlier default and the new one: what the user gets."""
    rows = []
    for name in args.teachers:
        path = WORK / "vit_teacher_ts.pt" if name == "vit" else TEACHER_FILES / f"{name}.pt"
        if name == "vit" and not path.exists():  # compress takes the ViT as a user would: TorchScript
            data = load_digits32()
            torch.jit.trace(vit_model(data), data.x_val[:2]).save(str(path))
        if not path.exists():
            raise SystemExit(f"{path} is missing: run benchmarks/bench_budget_claim.py once to train it")
        for proxy in args.e2e_proxies:
            for seed in args.seeds:
                r = compress_run(path, proxy, args.budget, seed, WORK / "e2e" / f"{name}-{proxy}-s{seed}")
                rows.append({"teacher": name, "proxy": proxy, "seed": seed, **r})
                print(f"[e2e] {name} {proxy} s{seed}: student {r['student_ms']:.3f} ms, {r['student_params']:,} "
                      f"params; selected {r['selected']} acc {r['accuracy']}", flush=True)
    lines = ["# Search pick, end to end", "", f"Command: `{args.command}`", "",
             f"`compress --teacher T --budget {args.budget} --proxy P --seed S`, default settings otherwise: the "
             f"searched student (the smallest nested size), and the size the run selects for the budget with its "
             f"validation accuracy.", "",
             "| teacher | proxy | seed | budget ms | student ms (predicted) | student params | selected | accuracy | every size |",
             "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        sizes = ", ".join(f"{k} {v:.3f}" for k, v in r["sizes"].items())
        lines.append(f"| {r['teacher']} | {r['proxy']} | {r['seed']} | {r['budget_ms']:.3f} | {r['student_ms']:.3f} | "
                     f"{r['student_params']:,} | {r['selected']} | {acc} | {sizes} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "search_pick_e2e.md").write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phase", choices=("train", "report", "all", "e2e"), default="all")
    p.add_argument("--e2e-proxies", default="ensemble,diswot_inherited+params")
    p.add_argument("--budget", default="0.5x", help="the e2e phase's budget")
    p.add_argument("--teachers", default=",".join(TEACHERS))
    p.add_argument("--candidates", type=int, default=20, help="students per teacher")
    p.add_argument("--epochs", type=int, default=None,
                   help="distillation epochs per student (default: the pipeline's, 12 for a cut from the teacher "
                        "and 48 for a family from random weights)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--max-latency", type=float, default=0.6,
                   help="largest candidate, as a fraction of the teacher's predicted latency")
    p.add_argument("--profile", default="host-cpu-1t")
    p.add_argument("--refresh-features", action="store_true",
                   help="measure every proxy again (on a quiet machine: the report's timings come from here)")
    p.add_argument("--reverse", action="store_true", help="train the pool last to first (a second process)")
    p.add_argument("--cached-only", action="store_true", help="report only on candidates already distilled")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    args.teachers = [x for x in args.teachers.split(",") if x]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    torch.set_num_threads(args.threads)
    args.command = "python benchmarks/bench_search_pick.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.phase in ("train", "all"):
        train_phase(args)
    if args.phase in ("report", "all"):
        print(report_phase(args))
    if args.phase == "e2e":
        args.e2e_proxies = [x for x in args.e2e_proxies.split(",") if x]
        print(e2e_phase(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
