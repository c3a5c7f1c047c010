#!/usr/bin/env bash
# Retrain every model in assets/models and rewrite assets/samples, in dependency order
# (digits-prior needs digits-vqgan, and digits-vit for its sample check). CPU only, deterministic
# for a given --seed (0 here). Run from the repository root.
set -euo pipefail
PY=${PY:-/work/venv/bin/python}
nice -n 10 "$PY" tools/datasets.py --samples assets/samples
nice -n 10 "$PY" tools/train_digits_vqgan.py --out assets/models/digits-vqgan --seed 0
nice -n 10 "$PY" tools/train_digits_vit.py --out assets/models/digits-vit --seed 0
nice -n 10 "$PY" tools/train_digits_prior.py --out assets/models/digits-prior --vqgan assets/models/digits-vqgan --vit assets/models/digits-vit --seed 0 --steps 3000 --cfg-dropout 0.1
stage1=$(mktemp -d)
nice -n 10 "$PY" tools/train_photo_vqgan.py --out "$stage1" --steps 2000 --seed 0
nice -n 10 "$PY" tools/train_photo_vqgan.py --init "$stage1" --out assets/models/photo-vqgan --steps 400 --lr 2e-4 --colour-weight 1 --seed 0
nice -n 10 "$PY" tools/train_photo_vit.py --out assets/models/photo-vit --seed 0
"$PY" tools/train_cards.py
