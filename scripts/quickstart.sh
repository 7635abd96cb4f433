#!/usr/bin/env bash
# The whole Constitutional AI loop on the embedded default model and the bundled example
# prompts, small enough for a laptop CPU (about 10 minutes on 2 cores):
#   principles -> self-revision (SFT data + revision pairs) -> AI-judged preference labels
#   -> SFT policy -> soft-label reward model -> PPO policy -> the ladder (base, prompted, SFT, PPO)
#   evaluated side by side -> one HTML report of every stage.
# Usage: scripts/quickstart.sh [OUT_DIR]   (default runs/quickstart; rerun to resume)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quickstart}
PROMPTS=examples/prompts.jsonl

cai principles check principles.yaml
cai revise --prompts "$PROMPTS" --constitution principles.yaml --out "$OUT/revise" \
    --rounds 2 --max-tokens 192 --critique-max-tokens 96
# AI feedback on fresh samples: 3 responses per prompt, every pair judged in both orders. A 135M
# judge is near chance, so near-ties are kept: their soft labels (p close to 0.5) train the
# reward model gently instead of leaving it no data.
cai label --input "$PROMPTS" --samples-per-prompt 3 --max-tokens 96 --keep-ties \
    --constitution principles.yaml --out "$OUT/label"
cai sft --data "$OUT/revise" --out "$OUT/sft" --max-steps 8 --batch-size 4 --max-length 384
cai rm train --prefs "$OUT/label" --base "$OUT/sft" --out "$OUT/rm" --max-steps 8 --batch-size 4 --max-length 384
cai rm eval --pairs "$OUT/revise/prefs.jsonl" --model "$OUT/rm"
cai ppo --policy "$OUT/sft" --reward-model "$OUT/rm" --prompts "$PROMPTS" --out "$OUT/ppo" \
    --steps 2 --batch-size 4 --max-new-tokens 32 --snapshot-every 1
# The ladder on the first 8 prompts of each packaged suite: did SFT and PPO beat the base model and
# the base model prompted with the constitution? --hacking also evaluates each PPO step (reward
# model score against the judge's win rate). A 135M judge is near chance: read the intervals; it
# cannot tell a refusal either (docs/eval.md), so refusals are counted by the pattern list.
cai eval --policy base=default --policy prompted=default+prompted --policy sft="$OUT/sft" \
    --policy ppo="$OUT/ppo" --baseline base --hacking ppo-run="$OUT/ppo" --prompts-per-suite 8 \
    --refusal patterns --max-tokens 96 --constitution principles.yaml --out "$OUT/eval"
cai report "$OUT" --out "$OUT/report.html"
echo "Done: the trained policy is in $OUT/ppo (a Hugging Face folder); open $OUT/report.html."
