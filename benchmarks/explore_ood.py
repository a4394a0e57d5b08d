"""Exploration: rejecting non-digits with feature-space scores, beside the softmax-confidence threshold.

Usage::

    DIGITLAB_DATA_DIR=../shared/data .venv/bin/python benchmarks/explore_ood.py [RUN] [--n 520]

Measures (does not change the library) how many of ``bench_rejection.py``'s non-digits (letters,
scribbles, blobs, noise: the very same images, drawn with its generators and its seeded stream, pushed
through the same preparation) each score rejects, on top of the run's calibrated-confidence rule:

- Mahalanobis distance (class means, shared covariance, fitted on the training split) on the
  penultimate features (the 576 inputs of the last linear layer), on each conv block's globally
  average-pooled output, and a sum of the layers' z-scored distances;
- k-nearest-neighbour distance on L2-normalised penultimate features (training split as the bank);
- energy (``-logsumexp`` of the logits);
- binary detectors (logistic regression; a small MLP, alone and as an average of 3) on the penultimate
  features ("+": with the pooled block outputs, the calibrated confidence and the energy), fitted on
  training-split digits (as they are, and 8,000 drawn on paper and prepared) against the library's
  synthetic non-digits (``digitlab.data.nondigits``: other fonts, other seeds; 16,000 as they are, 8,000
  drawn on paper and prepared), never on the benchmark's images;
- unions of the above.

Every rule is ``softmax confidence < t_s  OR  score > t_x`` (plus what the Predictor already rejects
on real images: no digit found, strokes wider than ``MAX_STROKE``); ``t_x`` is chosen on the
validation split (data.n_val=5000, the run's split_seed) so that the union rejects ``--val-reject``
of validation digits, then reported on all MNIST test digits, 1,000 test digits drawn on paper
(through the preparation, as bench_rejection does) and the non-digits. Features come from forward
hooks on the Predictor's torch model. Results: benchmarks/results/explore_ood.json.
"""

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_rejection import blobs, letters, noise, scribbles
from digitlab.data.loading import load_dataset
from digitlab.data.nondigits import cached_nondigits
from digitlab.data.splits import split_train_val
from digitlab.inference import Predictor
from digitlab.inference.predictor import MAX_STROKE
from machine_info import machine

KINDS = ("letters", "scribbles", "blobs", "noise")
# letters a digit can be drawn as (0: O o D Q, 1: I l i, 2: Z z, 5: S s, 6: G b, 8: B, 9: q g): a reader
# accepting them is not wrong in the way accepting an 'M' is; reported apart
DIGIT_SHAPED = set("OoDQIliZzSsGbBqg")
CACHE = Path("/tmp/explore_ood_cache.npz")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- data


def prepared_batch(predictor: Predictor, sources: list[bytes]) -> dict[str, np.ndarray]:
    """Images through the Predictor's preparation: model-ready images (zeros where none found),
    found flags, and the blob rule (strokes wider than MAX_STROKE)."""
    preps = [predictor.prepare(s) for s in sources]
    h, w = predictor.spec.input_size
    imgs = np.stack([p.image if p.found else np.zeros((h, w), np.uint8) for p in preps])
    found = np.array([p.found for p in preps])
    blob = np.array([p.found and (p.stroke or 0.0) > MAX_STROKE for p in preps])
    return {"images": imgs, "found": found, "blob": blob}


def build_data(predictor: Predictor, ds, n: int, n_synth_prep: int, n_train_prep: int,
               train_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Everything that goes through the (slow) preparation, drawn exactly as bench_rejection draws it."""
    rng = np.random.default_rng(0)  # bench_rejection's stream: the drawn digits first, then the kinds in order
    out: dict[str, np.ndarray] = {}
    idx = rng.choice(len(ds.test_images), 1000, replace=False)
    out["drawn_idx"] = idx
    for k, v in prepared_batch(predictor, [_png(255 - im) for im in ds.test_images[idx]]).items():
        out[f"drawn_{k}"] = v
    for name, make in (("letters", letters), ("scribbles", scribbles), ("blobs", blobs), ("noise", noise)):
        items = make(n, rng)
        t = time.perf_counter()
        for k, v in prepared_batch(predictor, [b for _, b in items]).items():
            out[f"{name}_{k}"] = v
        print(f"  prepared {name} ({time.perf_counter() - t:.1f} s)", flush=True)
        out[f"{name}_tags"] = np.array([tag for tag, _ in items])
    # training material for the detectors (never the benchmark's generators): the library's synthetic
    # non-digits, and training-split digits, also as a person would present them (ink on paper, prepared)
    synth = cached_nondigits(8000, seed=0)
    out["synth_raw"] = synth
    p = prepared_batch(predictor, [_png(255 - im) for im in synth[:n_synth_prep]])
    out["synth_prep"] = p["images"][p["found"]]
    prng = np.random.default_rng(1)
    tidx = prng.choice(train_idx, n_train_prep, replace=False)
    p = prepared_batch(predictor, [_png(255 - im) for im in ds.train_images[tidx]])
    out["train_prep"] = p["images"][p["found"]]
    return out


# ------------------------------------------------------------------------------------------ features


class Features:
    """Forward hooks on the CNN: each conv block's output (global average pooled) and the penultimate
    features (the flattened input of the last linear layer)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        model = predictor.model
        relus = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.ReLU)]
        self.store: dict[str, list[torch.Tensor]] = {}
        for b, i in enumerate(relus):
            model.features[i].register_forward_hook(self._pool_hook(f"block{b + 1}"))
        linear = [m for m in model.head if isinstance(m, torch.nn.Linear)][-1]
        linear.register_forward_pre_hook(lambda _m, inp: self.store.setdefault("pen", []).append(
            inp[0].detach().float().cpu()))

    def _pool_hook(self, name: str):
        def hook(_m, _inp, out):
            self.store.setdefault(name, []).append(out.detach().float().mean(dim=(2, 3)).cpu())
        return hook

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.store = {}
        with torch.no_grad():
            logits = self.predictor.logits(images, batch_size=1000)
        out = {k: torch.cat(v).numpy().astype(np.float64) for k, v in self.store.items()}
        out["logits"] = logits
        return out


# ---------------------------------------------------------------------------------------------- scores


class Mahalanobis:
    """Class-conditional Gaussians with a shared covariance; score = min over classes of the squared
    distance (higher: less digit-like)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int = 10) -> None:
        self.means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
        centred = x - self.means[y]
        cov = centred.T @ centred / len(x)
        cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
        self.precision = np.linalg.inv(cov)
        self.mp = self.means @ self.precision
        self.mpm = np.einsum("cd,cd->c", self.mp, self.means)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        xp = x @ self.precision
        d = np.einsum("nd,nd->n", xp, x)[:, None] - 2 * x @ self.mp.T + self.mpm[None]
        return d.min(axis=1)


class KNN:
    """Distance (1 - cosine) to the k-th nearest training feature, L2-normalised, batched matmul."""

    def __init__(self, bank: np.ndarray) -> None:
        self.bank = torch.nn.functional.normalize(torch.as_tensor(bank, dtype=torch.float32), dim=1)

    def __call__(self, x: np.ndarray, ks: tuple[int, ...], batch: int = 500) -> dict[int, np.ndarray]:
        q = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)
        kmax = max(ks)
        out = []
        for s in range(0, len(q), batch):
            out.append(torch.topk(q[s:s + batch] @ self.bank.T, kmax, dim=1).values)
        sims = torch.cat(out).numpy()
        return {k: 1.0 - sims[:, k - 1] for k in ks}


def energy(logits: np.ndarray) -> np.ndarray:
    """Negative log-sum-exp of the logits: higher is less digit-like."""
    m = logits.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))


def confidence(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p.max(axis=1) / p.sum(axis=1)


# ---------------------------------------------------------------------------------------------- rules


def thresholds_for(val_scores: list[np.ndarray], val_base: np.ndarray, target: float) -> list[float]:
    """Thresholds (one per score, at a common quantile of the validation digits) such that
    ``val_base OR any(score > t)`` rejects ``target`` of validation digits (bisection on the quantile)."""
    if not val_scores:
        return []
    lo, hi = 0.0, 0.2
    ts: list[float] = []
    for _ in range(60):
        q = (lo + hi) / 2
        ts = [float(np.quantile(s, 1 - q)) for s in val_scores]
        rate = (val_base | np.any([s > t for s, t in zip(val_scores, ts, strict=True)], axis=0)).mean()
        lo, hi = (q, hi) if rate <= target else (lo, q)
    return [float(np.quantile(s, 1 - lo)) for s in val_scores]


class Average:
    """Mean probability of several fitted classifiers (an ensemble of MLPs)."""

    def __init__(self, members: list) -> None:
        self.members = members

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.mean([m.predict_proba(x) for m in self.members], axis=0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(axis=1)


def fit_detectors(feats_pos: dict[str, np.ndarray], feats_neg: dict[str, np.ndarray], temperature: float,
                  seed: int = 0, n_mlp: int = 3) -> dict[str, object]:
    """Binary detectors, digits (0) vs synthetic non-digits (1), on penultimate features (+ extras)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def design(f: dict[str, np.ndarray], extra: bool) -> np.ndarray:
        if not extra:
            return f["pen"]
        return np.hstack([f["pen"], f["block1"], f["block2"], f["block3"],
                          confidence(f["logits"], temperature)[:, None], energy(f["logits"])[:, None]])

    n_pos = len(feats_pos["pen"])
    y = np.r_[np.zeros(n_pos), np.ones(len(feats_neg["pen"]))]
    out: dict[str, object] = {}
    for name, extra in (("lr_pen", False), ("lr_pen+", True)):
        x = np.vstack([design(feats_pos, extra), design(feats_neg, extra)])
        t = time.perf_counter()
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
        clf.fit(x, y)
        print(f"  fitted {name} ({time.perf_counter() - t:.1f} s)", flush=True)
        out[name] = (clf, extra)
    mlps = []
    for s in range(seed, seed + n_mlp):
        sub = np.random.default_rng(s).choice(n_pos, min(n_pos, 20000), replace=False)  # digits (time)
        x = np.vstack([design(feats_pos, True)[sub], design(feats_neg, True)])
        ys = np.r_[np.zeros(len(sub)), np.ones(len(feats_neg["pen"]))]
        t = time.perf_counter()
        mlp = make_pipeline(StandardScaler(), MLPClassifier((128,), alpha=1e-3, max_iter=60, early_stopping=True,
                                                            random_state=s))
        mlp.fit(x, ys)
        print(f"  fitted mlp seed {s} ({time.perf_counter() - t:.1f} s)", flush=True)
        mlps.append(mlp)
    out["mlp_pen+"] = (mlps[0], True)
    if n_mlp > 1:
        out[f"mlp_pen+ x{n_mlp}"] = (Average(mlps), True)
    out["_design"] = design
    return out


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="runs/bench/default-seed0")
    parser.add_argument("--n", type=int, default=520, help="images per non-digit kind (as bench_rejection)")
    parser.add_argument("--val-reject", type=float, default=0.007, help="validation digits the union may reject")
    parser.add_argument("--relaxed-softmax", type=float, default=0.003,
                        help="second setting: softmax threshold rejecting this much of validation alone")
    parser.add_argument("--n-synth-prep", type=int, default=8000, help="synthetic non-digits also prepared")
    parser.add_argument("--n-train-prep", type=int, default=8000, help="training digits also drawn and prepared")
    parser.add_argument("--detector-seed", type=int, default=0, help="seed of the MLP and its digit subsample")
    parser.add_argument("--n-mlp", type=int, default=3, help="MLPs in the ensemble (seeds from --detector-seed)")
    parser.add_argument("--n-synth-extra", type=int, default=8000,
                        help="more synthetic non-digits (seed 1, not prepared) for the detectors")
    parser.add_argument("--no-cache", action="store_true", help=f"redo the preparation (cached in {CACHE})")
    parser.add_argument("--out", default="benchmarks/results/explore_ood.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    predictor = Predictor.from_run(args.run)
    temperature, t_soft = predictor.temperature, predictor.threshold
    cfg = yaml.safe_load((Path(args.run) / "config.yaml").read_text())
    ds = load_dataset(predictor.info.dataset or "mnist")
    train_idx, val_idx = split_train_val(ds.train_labels, n_val=5000, seed=cfg["data"]["split_seed"])

    key = f"{args.run}|{args.n}|{args.n_synth_prep}|{args.n_train_prep}"
    if CACHE.is_file() and not args.no_cache and str(np.load(CACHE)["key"]) == key:
        data = dict(np.load(CACHE))
        print(f"prepared images from {CACHE}")
    else:
        print("preparing images (as bench_rejection does) ...", flush=True)
        data = build_data(predictor, ds, args.n, args.n_synth_prep, args.n_train_prep, train_idx)
        np.savez(CACHE, key=np.array(key), **data)

    feat = Features(predictor)
    t = time.perf_counter()
    f_train = feat(ds.train_images[train_idx])
    y_train = ds.train_labels[train_idx]
    t_feat = time.perf_counter() - t
    f_val, f_test = feat(ds.train_images[val_idx]), feat(ds.test_images)
    groups = {"val": f_val, "test": f_test, "drawn": feat(data["drawn_images"])}
    for k in KINDS:
        groups[k] = feat(data[f"{k}_images"])
    print(f"features: {len(train_idx):,} training images in {t_feat:.1f} s "
          f"({1e6 * t_feat / len(train_idx):.0f} us/image incl. forward pass)", flush=True)

    # what the Predictor already rejects on each group, at a softmax threshold t
    def base(g: str, t: float) -> np.ndarray:
        low = confidence(groups[g]["logits"], temperature) < t
        if g in ("val", "test"):
            return low
        prefix = "drawn" if g == "drawn" else g
        return ~data[f"{prefix}_found"] | data[f"{prefix}_blob"] | low

    # ---- scores: higher is less digit-like; each with its cost per image (beyond the forward pass)
    scores: dict[str, dict[str, np.ndarray]] = {}
    cost: dict[str, float] = {}

    def add(name: str, fn, per_group: bool = True) -> None:
        t0 = time.perf_counter()
        scores[name] = {g: fn(f) for g, f in groups.items()} if per_group else fn
        n = sum(len(f["logits"]) for f in groups.values())
        cost[name] = 1e6 * (time.perf_counter() - t0) / n

    layers = ("block1", "block2", "block3", "pen")
    maha = {}
    for layer in layers:
        maha[layer] = Mahalanobis(f_train[layer], y_train)
        add(f"maha_{layer}", lambda f, m=maha[layer], layer=layer: m(f[layer]))
    # sum of layers: each distance z-scored with its training-split mean and spread
    zstats = {layer: (lambda s: (s.mean(), s.std()))(maha[layer](f_train[layer])) for layer in layers}

    def maha_sum(f: dict[str, np.ndarray], which: tuple[str, ...]) -> np.ndarray:
        return sum((maha[la](f[la]) - zstats[la][0]) / zstats[la][1] for la in which)

    add("maha_sum(all)", lambda f: maha_sum(f, layers))
    add("maha_sum(b2,b3,pen)", lambda f: maha_sum(f, ("block2", "block3", "pen")))
    knn = KNN(f_train["pen"])
    for k in (10, 50):
        add(f"knn{k}", lambda f, k=k: knn(f["pen"], (k,))[k])
    knn_small = KNN(f_train["pen"][np.random.default_rng(0).choice(len(train_idx), 10000, replace=False)])
    add("knn10(bank 10k)", lambda f: knn_small(f["pen"], (10,))[10])
    add("energy", lambda f: energy(f["logits"]))

    print("fitting detectors (training digits vs synthetic non-digits) ...", flush=True)
    extra = [cached_nondigits(args.n_synth_extra, seed=1)] if args.n_synth_extra else []
    f_synth = feat(np.concatenate([data["synth_raw"], *extra, data["synth_prep"]]))
    f_tprep = feat(data["train_prep"])
    f_pos = {k: np.vstack([f_train[k], f_tprep[k]]) for k in f_train}
    dets = fit_detectors(f_pos, f_synth, temperature, seed=args.detector_seed, n_mlp=args.n_mlp)
    design = dets.pop("_design")
    for name, (clf, extra) in dets.items():
        add(name, lambda f, clf=clf, extra=extra: clf.decision_function(design(f, extra)) if hasattr(
            clf, "decision_function") else np.log(clf.predict_proba(design(f, extra))[:, 1] + 1e-12))
    # how well each detector separates its own training material (sanity)
    fit_info = {}
    for name, (clf, extra) in dets.items():
        fit_info[name] = {"synthetic_flagged_by_predict": float((clf.predict(design(f_synth, extra)) == 1).mean()),
                          "val_digits_flagged_by_predict": float((clf.predict(design(f_val, extra)) == 1).mean())}

    # ---- rules
    # softmax thresholds: the run's own; one rejecting less of validation (room for the new score); none
    val_soft = {"default": t_soft,
                "relaxed": float(np.quantile(confidence(f_val["logits"], temperature), args.relaxed_softmax)),
                "none": 0.0}
    single = [s for s in scores]
    combos = [("maha_pen", "lr_pen"), ("maha_sum(all)", "lr_pen"), ("knn10", "lr_pen"),
              ("maha_sum(all)", "mlp_pen+"), ("knn10", "mlp_pen+"), ("maha_pen", "knn10", "lr_pen"),
              ("maha_sum(all)", "lr_pen+"), ("knn10", "lr_pen+"), ("maha_block1", "lr_pen")]
    if args.n_mlp > 1:
        combos += [(f"mlp_pen+ x{args.n_mlp}", "knn10(bank 10k)"), (f"mlp_pen+ x{args.n_mlp}", "maha_block3")]
    rows = []
    for setting, t_s in val_soft.items():
        methods = [("softmax only", ())] + [(s, (s,)) for s in single] + [(" + ".join(c), c) for c in combos]
        for label, parts in methods:
            vb = base("val", t_s)
            ts = thresholds_for([scores[p]["val"] for p in parts], vb, args.val_reject)

            def rejected(g: str, parts=parts, ts=ts, t_s=t_s) -> np.ndarray:
                r = base(g, t_s)
                for p, th in zip(parts, ts, strict=True):
                    r = r | (scores[p][g] > th)
                return r

            row = {"method": label, "softmax": setting, "softmax_threshold": t_s,
                   "thresholds": dict(zip(parts, ts, strict=True)),
                   "val": float(rejected("val").mean()), "test": float(rejected("test").mean()),
                   "drawn": float(rejected("drawn").mean()),
                   "us_per_image": round(sum(cost[p] for p in parts), 1)}
            tot = 0
            for k in KINDS:
                r = rejected(k)
                row[k] = float(r.mean())
                tot += int(r.sum())
            row["non_digits"] = tot / (len(KINDS) * args.n)
            acc = [str(tag) for tag, r in zip(data["letters_tags"], rejected("letters"), strict=True) if not r]
            others = np.array([str(tag) not in DIGIT_SHAPED for tag in data["letters_tags"]])
            row["letters_not_digit_shaped"] = float(rejected("letters")[others].mean())
            row["letters_accepted"] = "".join(sorted(set(acc), key=acc.count, reverse=True))
            row["letters_accepted_counts"] = {c: acc.count(c) for c in sorted(set(acc))}
            rows.append(row)

    # ---- report
    hdr = (f"{'method':34s} {'sm':4s} {'val':>5s} {'test':>5s} {'drawn':>5s} {'letters':>7s} {'scrib':>5s} "
           f"{'blobs':>5s} {'noise':>5s} {'ALL':>5s} {'us/im':>6s} {'let*':>5s}")
    print(hdr)
    for r in rows:
        print(f"{r['method'][:34]:34s} {r['softmax'][:4]:4s} {100 * r['val']:5.2f} {100 * r['test']:5.2f} "
              f"{100 * r['drawn']:5.1f} {100 * r['letters']:7.1f} {100 * r['scribbles']:5.1f} "
              f"{100 * r['blobs']:5.1f} {100 * r['noise']:5.1f} {100 * r['non_digits']:5.1f} "
              f"{r['us_per_image']:6.1f} {100 * r['letters_not_digit_shaped']:5.1f}")
    result = {"run": args.run, "command": " ".join(sys.argv), "machine": machine(),
              "temperature": temperature, "val_reject_target": args.val_reject,
              "softmax_thresholds": val_soft, "feature_us_per_image_incl_forward": 1e6 * t_feat / len(train_idx),
              "n_per_kind": args.n, "detector_seed": args.detector_seed, "n_synthetic_train": len(f_synth["pen"]),
              "n_train_digits": len(f_pos["pen"]), "detectors": fit_info,
              "seconds": time.perf_counter() - t_start, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
