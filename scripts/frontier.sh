#!/usr/bin/env bash
# What a teacher gives up for speed with no training at all: lower input resolutions (a copy of the
# bundle whose preprocessor crops smaller; the model resizes its position table as DINOv2 does) and
# token merging (--tome), beside any students given. Each setting is evaluated on the validation
# images and timed at batch 1 in `vitrine bench` processes of its own, in rounds over all settings
# (the median of the rounds); speed-ups are against the first setting. Prints a markdown table.
#
#   scripts/frontier.sh TEACHER DATA OUT [STUDENT ...]
#   SETTINGS="224:0 168:0 168:12" ROUNDS=3 scripts/frontier.sh ...   (PIXELS:MERGES_PER_BLOCK)
#
# Evaluations are kept in OUT and skipped when present (they are deterministic); timings never are.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,11p' "$0"; exit 2; }
teacher=$1 data=$2 out=$3
shift 3
vitrine=${VITRINE:-${CARGO_TARGET_DIR:-$HOME/.cache/vitrine/target}/release/vitrine}
settings=${SETTINGS:-"224:0 224:16 224:20 168:0 168:12 168:16 140:0 140:8"}
rounds=${ROUNDS:-3}
[ -x "$vitrine" ] || { echo "no vitrine binary at $vitrine (cargo build --release -p vitrine, or set VITRINE)" >&2; exit 1; }
mkdir -p "$out"

# The teacher at PX pixels: its weights and config, with the crop (and the resize before it) scaled.
at_pixels() {
  local px=$1 dir="$out/teacher-${1}px"
  mkdir -p "$dir"
  ln -f "$teacher/model.safetensors" "$dir/" 2>/dev/null || cp "$teacher/model.safetensors" "$dir/"
  cp "$teacher/config.json" "$dir/"
  python3 - "$teacher/preprocessor_config.json" "$px" "$dir/preprocessor_config.json" <<'EOF'
import json, sys
source, px, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = json.load(open(source))
crop = config["crop_size"]["height"]
config["size"] = {"shortest_edge": round(config["size"]["shortest_edge"] * px / crop)}
config["crop_size"] = {"height": px, "width": px}
json.dump(config, open(target, "w"), indent=2)
EOF
  echo "$dir"
}

# Rows: label, bundle, merges per block, evaluation file.
labels=() bundles=() merges=() evals=()
for setting in $settings; do
  px=${setting%:*} r=${setting#*:}
  labels+=("teacher, ${px} px$([ "$r" = 0 ] || echo ", ToMe r=$r")")
  bundles+=("$(at_pixels "$px")") merges+=("$r") evals+=("$out/eval-${px}px-r$r.json")
done
for i in $(seq 1 $#); do
  labels+=("${!i}") bundles+=("${!i}") merges+=(0) evals+=("$out/eval-student$i.json")
done

for i in "${!labels[@]}"; do
  [ -s "${evals[$i]}" ] && continue
  echo "evaluating ${labels[$i]}" >&2
  "$vitrine" eval --model "${bundles[$i]}" --data "$data" --tome "${merges[$i]}" --json > "${evals[$i]}.tmp"
  mv "${evals[$i]}.tmp" "${evals[$i]}"
done

timings="$out/timings.jsonl"
: > "$timings"
for round in $(seq 1 "$rounds"); do
  for i in "${!labels[@]}"; do
    echo "timing round $round/$rounds: ${labels[$i]}" >&2
    printf '%s\t' "$i" >> "$timings"
    "$vitrine" bench --model "${bundles[$i]}" --batch 1 --iters 20 --tome "${merges[$i]}" --json | tr -d '\n' >> "$timings"
    echo >> "$timings"
  done
done

python3 - "$timings" "${evals[@]}" <<EOF
import json, statistics, sys
labels = $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${labels[@]}")
timings, evals = sys.argv[1], sys.argv[2:]
ms = {}
for line in open(timings):
    index, rows = line.split("\t", 1)
    ms.setdefault(int(index), []).append(json.loads(rows)[0]["ms_per_image"])
base = statistics.median(ms[0])
print("| setting | val top-1 | ms / image (median of rounds) | speed-up |")
print("|---|---:|---:|---:|")
for i, label in enumerate(labels):
    top1 = json.load(open(evals[i]))["top1"]
    median = statistics.median(ms[i])
    print(f"| {label} | {100 * top1:.2f} % | {median:.1f} | {base / median:.2f}x |")
EOF
