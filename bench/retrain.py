"""`faceid retrain` against the seed's per-user training, on the same images: seconds, FAR and FRR.

The seed trained a small CNN from scratch for each user, batch size 1, on
every triplet of 7 owner and 10 other images (anchor and positive: any
ordered pair of distinct owner images, 42; negative: any of the 10 others;
420 triplets an epoch), with the triplet loss max(d(A,P) - d(A,N) + alpha, 0)
on squared distances of unit vectors, alpha = 0.2. It is rebuilt here
(``SeedNet``): four conv layers and a 128-d head, on our aligned
crops (better input than the seed had), Adam, epochs until a whole epoch
has zero loss or MAX_EPOCHS. Its threshold is the only one its data allows:
just above the most similar owner/other pair among the training images.

Every method is judged alike: the owner's 7 training photos are enrolled as
templates (embedded by that method's network), a held-out photo scores its
best cosine similarity to them; FRR on the owner's held-out photos, FAR on
photos of other dev people, at the method's own threshold. The owner is a
dev/lfw person (never in the base model's training), the 10 others come
from train/lfw. The shipped model without retraining is the reference row.
`faceid retrain` runs as an admin runs it: the 7 photos enrolled with
`faceid enroll --from`, then the command timed whole; its per-user head (if
kept) maps base embeddings before scoring, with the head's own threshold.
Its negatives are the bank shipped beside the model; a model folder without
one (an interim model) gets the admin's bank first, untimed, as an admin
would build it: `faceid calibrate USER --negatives train/lfw`. Each
training is timed REPEATS times (median); the seed's torch runs on one
thread, as `faceid retrain` trains (on 2 cores batch-1 steps of a small
network only slow down with a second thread: 8 s an epoch on one, 10-23 s
on two, measured here).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import (CLEAN_ENV, DEFAULT_OUT, DEV_LFW, FACES, cleanup_on_sigterm, daemon_config,
                           default_model, machine, median, require_faces, require_model, save_json, short_tmp,
                           temp_user, write_config)
from pam_faceid.common import scaffold
from pam_faceid.model import metrics

OWNER_TRAIN = 7
OTHERS_TRAIN = 10
MARGIN = 0.2
MAX_EPOCHS = 60
SEED = 0


def aligned(paths: list[Path]) -> tuple[np.ndarray, list[Path]]:
    """Aligned crops (faces as `faceid evaluate` finds them) of those photos that have a face."""
    from pam_faceid.vision.faces import FacePipeline
    from pam_faceid.common.images import read_image

    pipeline = FacePipeline(policy="centre", min_size=20)
    crops, kept = [], []
    for path in paths:
        image = read_image(path)
        crop, _ = pipeline.process(image) if image is not None else (None, "unreadable")
        if crop is not None:
            crops.append(crop)
            kept.append(path)
    return np.stack(crops), kept


def choose_images(owner: str, owner_test: int, others_test: int) -> dict:
    """The owner's 7 + held-out photos, 10 other people from train/lfw, held-out strangers from dev/lfw."""
    rng = random.Random(SEED)
    owner_paths = sorted((DEV_LFW / owner).iterdir())
    train_people = sorted(p for p in (FACES / "train" / "lfw").iterdir() if p.is_dir())
    others = [sorted(p.iterdir())[0] for p in rng.sample(train_people, OTHERS_TRAIN * 2)]
    strangers = sorted(p for p in DEV_LFW.iterdir() if p.is_dir() and p.name != owner)
    stranger_paths = [sorted(p.iterdir())[0] for p in rng.sample(strangers, min(len(strangers), others_test + 50))]
    owner_crops, owner_kept = aligned(owner_paths[:OWNER_TRAIN + owner_test + 10])
    other_crops, _ = aligned(others)
    stranger_crops, _ = aligned(stranger_paths)
    return {
        "owner_train": owner_crops[:OWNER_TRAIN],
        "owner_test": owner_crops[OWNER_TRAIN:OWNER_TRAIN + owner_test],
        "others_train": other_crops[:OTHERS_TRAIN],
        "strangers": stranger_crops[:others_test],
        "owner_train_paths": owner_kept[:OWNER_TRAIN],
    }


def far_frr(embed, data: dict, threshold: float) -> dict:
    """FAR on strangers and FRR on the owner's held-out photos, best cosine to the 7 enrolled templates."""
    templates = embed(data["owner_train"])
    genuine = (embed(data["owner_test"]) @ templates.T).max(axis=1)
    impostor = (embed(data["strangers"]) @ templates.T).max(axis=1)
    return scored(genuine, impostor, threshold)


def scored(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict:
    """FAR and FRR at ``threshold`` as pam_faceid.model.metrics defines them (accepted: score >= threshold)."""
    far, frr = metrics.rates(genuine, impostor, threshold)
    return {"threshold": float(threshold), "frr": frr, "far": far, "owner_attempts": int(genuine.size),
            "other_attempts": int(impostor.size)}


# ---------------------------------------------------------------- the seed, rebuilt

def seed_training(data: dict, max_epochs: int, threads: int) -> dict:
    """Train the seed's small CNN from scratch on every triplet, batch size 1; time it; pick its threshold."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from pam_faceid.vision.embedder import default_input, preprocess

    spec = default_input()
    torch.manual_seed(SEED)
    torch.set_num_threads(threads)

    class SeedNet(nn.Module):
        """The seed's kind of network: a few conv layers learnt from nothing, a 128-d unit vector out."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(64 * (spec.size // 16) ** 2, 128))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.body(x), dim=1)

    owner = torch.from_numpy(preprocess(data["owner_train"], spec))
    others = torch.from_numpy(preprocess(data["others_train"], spec))
    triplets = [(a, p, n) for a in range(len(owner)) for p in range(len(owner)) if a != p for n in range(len(others))]
    net = SeedNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = random.Random(SEED)
    started = time.perf_counter()
    losses = []
    for _epoch in range(max_epochs):
        rng.shuffle(triplets)
        total = 0.0
        net.train()
        for a, p, n in triplets:
            out = net(torch.stack([owner[a], owner[p], others[n]]))
            d_ap = (out[0] - out[1]).pow(2).sum()
            d_an = (out[0] - out[2]).pow(2).sum()
            loss = torch.clamp(d_ap - d_an + MARGIN, min=0)
            if loss.item() > 0:
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            total += loss.item()
        losses.append(total / len(triplets))
        if total == 0:
            break
    seconds = time.perf_counter() - started
    net.eval()

    def embed(crops: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(preprocess(crops, spec))).numpy()

    train_owner, train_other = embed(data["owner_train"]), embed(data["others_train"])
    threshold = float((train_other @ train_owner.T).max()) + 1e-6
    return {"seconds": seconds, "epochs": len(losses), "triplets_per_epoch": len(triplets), "losses": losses,
            **far_frr(embed, data, threshold)}


# ---------------------------------------------------------------- ours

ADMIN_BANK_LIMIT = 1000


def shipped_bank(model: Path) -> str | None:
    """A description of the negative bank shipped beside ``model``, or None when it has none for this model."""
    from pam_faceid.model import negatives
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.vision.embedder import Embedder

    try:
        bank = negatives.load_shipped(model, model_id_of(Embedder(model)))
    except negatives.NegativesError:
        return None
    return f"shipped bank ({len(bank)} faces of train/ identities)"


def base_model_row(model: Path, data: dict) -> dict:
    from pam_faceid.vision.embedder import Embedder

    embedder = Embedder(model)
    return {"seconds": None, **far_frr(embedder.embed, data, embedder.threshold)}


def head_scores(embedder: Any, head: Any, templates: np.ndarray, data: dict, threshold: float) -> dict:
    """FAR/FRR on the held-out photos with the owner's enrolled ``templates`` mapped by ``head`` (None: base model)."""
    def embed(crops: np.ndarray) -> np.ndarray:
        vectors = embedder.embed(crops)
        return head.apply(vectors) if head is not None else vectors

    enrolled = head.apply(templates) if head is not None else templates
    genuine = (embed(data["owner_test"]) @ enrolled.T).max(axis=1)
    impostor = (embed(data["strangers"]) @ enrolled.T).max(axis=1)
    return scored(genuine, impostor, threshold)


def faceid_retrain_rows(model: Path, data: dict, repeats: int) -> list[dict]:
    """Enrol the owner's 7 photos with `faceid enroll`, time `faceid retrain` ``repeats`` times, score held-out photos.

    A temporary user and state folder; the command is timed whole (interpreter,
    imports, loading, training, judging, saving), as an admin would wait for it,
    each repeat from no head (the user's models folder removed first), so every
    repeat does the same work; seconds are their median. When the command keeps
    the base model (its new head did not lower FRR on its own held-out captures),
    a second row shows what that new head would have given: the same training
    (pam_faceid.model.retrain.retrain, the same inputs and seed) run in this process.
    """
    from pam_faceid.model import negatives
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.vision.embedder import Embedder
    from pam_faceid.model.retrain import RetrainConfig, augmented_captures, retrain
    from pam_faceid.common.store import Store
    from pam_faceid.common.userhead import head_dir, load_head

    base = short_tmp()
    try:
        state_dir = base / "state"
        config = write_config(base / "etc" / "config.yaml", daemon_config(
            base, model, str(base / "run" / "faceidd.sock"), state_dir))
        faceid = [*scaffold.program("faceid"), "--config", str(config)]
        with temp_user() as user:
            enrolled = subprocess.run([*faceid, "enroll", user, "--from", *map(str, data["owner_train_paths"])],
                                      env=CLEAN_ENV, capture_output=True, text=True, timeout=300)
            if enrolled.returncode != 0:
                return [{"error": f"faceid enroll failed: {enrolled.stderr.strip().splitlines()[-1:]}"}]
            bank = shipped_bank(model)
            if bank is None:
                built = subprocess.run([*faceid, "calibrate", user, "--negatives", str(FACES / "train" / "lfw"),
                                        "--limit", str(ADMIN_BANK_LIMIT)],
                                       env=CLEAN_ENV, capture_output=True, text=True, timeout=600)
                if built.returncode != 0:
                    return [{"error": f"faceid calibrate --negatives failed: "
                                      f"{(built.stderr.strip().splitlines() or [''])[-1]}"}]
                bank = f"admin bank of {ADMIN_BANK_LIMIT} train/lfw photos (the model ships none)"
            runs = []
            for _ in range(repeats):
                shutil.rmtree(head_dir(state_dir, user), ignore_errors=True)
                started = time.monotonic()
                proc = subprocess.run([*faceid, "retrain", user], env=CLEAN_ENV, capture_output=True, text=True,
                                      timeout=600)
                runs.append((time.monotonic() - started, proc))
                if proc.returncode not in (0, 3):
                    return [{"error": f"faceid retrain exited {proc.returncode}: "
                                      f"{(proc.stderr.strip().splitlines() or [''])[-1]}"}]
            codes = {proc.returncode for _seconds, proc in runs}
            if len(codes) != 1:
                return [{"error": f"faceid retrain gave different exit codes over {repeats} runs: {sorted(codes)}"}]
            embedder = Embedder(model)
            model_id = model_id_of(embedder)
            head = load_head(state_dir, user, model_id)
            enrolment = Store(state_dir).load(user)
            templates = enrolment.matrix()
            unkept = None
            if head is None:  # the command's own training, again, to show the head it judged and dropped
                vectors, _source = negatives.load_default(state_dir, model, model_id)
                extra = augmented_captures(Path(state_dir) / "images" / user, [t.id for t in enrolment.templates],
                                           embedder)
                unkept = retrain(templates, vectors, model_id, None, RetrainConfig(), progress=False,
                                 extra_positives=extra)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    seconds = [t for t, _proc in runs]
    last = runs[-1][1]
    kept = head is not None
    verdict = "new head kept" if kept else "new head not better on its held-out captures: base model kept"
    rows = [{"method": f"`faceid retrain` ({verdict})", "seconds": median(seconds), "seconds_runs": seconds,
             "kept": kept, "exit_code": last.returncode, "templates": int(len(templates)), "negatives": bank,
             "output": last.stdout.strip().splitlines()[-12:],
             **head_scores(embedder, head, templates, data, head.threshold if kept else embedder.threshold)}]
    if unkept is not None:
        rows.append({"method": "`faceid retrain`'s new head had it been kept (same training, not timed)",
                     "seconds": None, "reproduces_command": not unkept.kept,
                     **head_scores(embedder, unkept.head, templates, data, unkept.head.threshold)})
    return rows


def run(model: Path, owner: str, quick: bool, threads: int, repeats: int) -> dict:
    require_faces()
    require_model(model)
    data = choose_images(owner, owner_test=20 if quick else 40, others_test=100 if quick else 300)
    rows = [{"method": "shipped model, no retraining (reference)", **base_model_row(model, data)}]
    seeds = [seed_training(data, 5 if quick else MAX_EPOCHS, threads) for _ in range(repeats)]
    seed = dict(seeds[0], seconds=median([r["seconds"] for r in seeds]), seconds_runs=[r["seconds"] for r in seeds],
                same_result=all((r["far"], r["frr"], r["epochs"]) == (seeds[0]["far"], seeds[0]["frr"],
                                                                       seeds[0]["epochs"]) for r in seeds))
    rows.append({"method": f"seed: small CNN from scratch, batch 1, every triplet ({seed['epochs']} epochs)",
                 **{k: v for k, v in seed.items() if k != "losses"}})
    result = {"machine": machine(), "model": str(model), "owner": owner, "threads": threads, "quick": quick,
              "repeats": repeats, "owner_train_files": [p.name for p in data["owner_train_paths"]],
              "seed_losses": seed["losses"], "rows": rows,
              "summary": ("**Quick run (5 seed epochs at most, fewer held-out photos).** " if quick else "")
              + (f"Owner {owner} (dev/lfw): {OWNER_TRAIN} photos to train on and enrol; the seed's "
                 f"{OTHERS_TRAIN} other people from train/lfw; FAR and FRR on held-out photos at each "
                 f"method's own threshold. Seconds: median of {repeats} runs, torch on {threads} thread(s) "
                 f"for both (what `faceid retrain` uses: batch-1 steps on 2 cores only slow down with more).")}
    if importlib.util.find_spec("pam_faceid.model.retrain") is None:
        result["pending"] = "`faceid retrain` (pam_faceid/model/retrain.py) does not exist yet."
        return result
    ours = faceid_retrain_rows(model, data, repeats)
    if "error" in ours[0]:
        result["pending"] = ours[0]["error"]
        return result
    result["summary"] += f" `faceid retrain`'s negatives: {ours[0]['negatives']}."
    rows += ours
    result["ratios"] = {"seed seconds / faceid retrain seconds": seed["seconds"] / ours[0]["seconds"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model(), help="model folder (default: bundled)")
    parser.add_argument("--owner", default="Tony_Blair", help="dev/lfw identity whose face is retrained on")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the seed's training (default 1, as faceid retrain trains)")
    parser.add_argument("--repeats", type=int, help="timed runs of each training (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="5 seed epochs and fewer held-out photos (development)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "retrain.json", help="result JSON")
    args = parser.parse_args(argv)
    cleanup_on_sigterm()
    repeats = args.repeats or (1 if args.quick else 3)
    result = run(args.model, args.owner, args.quick, args.threads, repeats)
    save_json(args.out, result)
    for row in result["rows"]:
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.1f} s"
        print(f"{row['method']:<70} {seconds:>9}  FAR {100 * row['far']:5.1f} %  "
              f"FRR {100 * row['frr']:5.1f} %  (threshold {row['threshold']:.3f})")
    if result.get("pending"):
        print("pending:", result["pending"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
