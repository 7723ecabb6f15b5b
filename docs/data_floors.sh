#!/usr/bin/env bash
# The floors docs/data.md quotes: each seed experiment's headline metric on the real offline data,
# scored on raw pixels and on the experiment's encoder at its initial parameters (nothing trained),
# next to its chance level. Each line is `launch.py --mode=floors` on the experiment's config with
# the dataset switched to the real one; each writes <workdir>/floors.json and prints a table.
#   bash docs/data_floors.sh [runs/data_floors]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/data_floors}
# A floors.json already there is kept (the script resumes where it stopped).
floors() {
  name=$1; shift
  [ -f "$out/$name/floors.json" ] || python launch.py --mode=floors --workdir="$out/$name" "$@"
}

# Seed 000 (icons): pair accuracy on classes never trained on (threshold fit on the validation
# classes), and retrieval across design languages (queries drawn by families the gallery lacks).
# One icon_themes build serves the three (64 px, every class: max_classes above the class count).
DATA=(--config.data.name=icon_themes --config.data.image_size=64 --config.data.max_classes=100000
      --config.data.heldout_class_fraction=0.25 --config.data.validation_class_fraction=0.1)
ICONS=(--config=configs/icons.py "${DATA[@]}")
floors icons_verification "${ICONS[@]}" --config.eval.protocols=verification \
  --config.data.eval_splits='("validation","heldout")' --config.eval.query_split=heldout \
  --config.eval.verification_val_split=validation
floors icons_retrieval "${ICONS[@]}" --config.eval.protocols=retrieval \
  --config.data.eval_splits='("heldout","heldout_query")' --config.eval.query_split=heldout_query \
  --config.eval.gallery_split=heldout --config.eval.best_metric=retrieval/mrr@5
# Seed 003 (pools): top-2 of 1 true match + 19 foils among classes never trained on.
floors pools --config=configs/pools.py "${DATA[@]}" --config.eval.protocols=pool
# Seed 001 (characters): MRR@5 of queries in faces the database never uses.
floors characters --config=configs/characters.py --config.eval.protocols=retrieval
# Seed 002 (Siamese LeNet-5): Fashion-MNIST pair accuracy on the test set.
floors fashion_pairs --config=configs/lenet_siamese.py --config.data.name=fashion_mnist \
  --config.eval.protocols=verification
# Seed 004 (embeddings): 5-NN macro F1 on Fashion-MNIST's test set, gallery = its train set.
floors fashion_knn --config=configs/embeddings.py --config.data.name=fashion_mnist \
  --config.data.image_size=28 --config.data.heldout_class_fraction=0.0 \
  --config.data.eval_splits='("train","test")' --config.eval.protocols=knn \
  --config.eval.query_split=test --config.eval.knn_train_split=train
