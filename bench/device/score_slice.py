"""``fastnemo score``'s harness on a real-width slice with a full-target packed adapter, and the agreement of
vLLM's greedy tokens with transformers + PEFT on the same zip (GPU lane step ``score``).

    python3 bench/device/score_slice.py --results R.jsonl [--puzzles 12] [--max-tokens 48]

1. slice M E A (real widths, random bf16 weights, saved to /tmp: 4 GiB), a ModelSession with the winners'
   full target set (q/k/v/o, in/out_proj, shared + all routed experts' up/down_proj, lm_head), random LoRA B
   (a stand-in for training), saved, ``fastnemo.pack`` -> zip -> ``verify``;
2. ``fastnemo.score.run`` on generated puzzles: the competition's LLM arguments and prompt, greedy, the
   LoRARequest from the zip's folder (deviations: memory share 0.3, ``--max-tokens``);
3. transformers + PEFT loaded from the same zip teacher-force vLLM's greedy tokens: tokens that agree before
   the first divergence, and the largest logit gap (transformers' max logit minus the logit of vLLM's token).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch

from bench import results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--puzzles", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    from bench.common import build_slice_model
    from fastnemo import score
    from fastnemo.config import LoraConfig, ModelConfig
    from fastnemo.pack import pack, verify
    from fastnemo.session import ModelSession
    from fastnemo.targets import FULL_TARGETS
    from puzzles import categories

    tmp = Path(tempfile.mkdtemp(prefix="score-slice-"))
    path = build_slice_model(tmp / "slice", ["linear_attention", "moe", "full_attention"])
    lora_cfg = LoraConfig(rank=32, alpha=32, target_modules=list(FULL_TARGETS), train_experts=True)
    model_cfg = ModelConfig(path=str(path), backend="hf", max_seq_length=1024)
    session = ModelSession.load(path, model_cfg, lora_cfg)
    g = torch.Generator(device="cuda").manual_seed(3)
    with torch.no_grad():
        for name, p in session.model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g, device="cuda") * 0.02).to(p.dtype))
    trainable = sum(p.numel() for p in session.model.parameters() if p.requires_grad)
    session.save_adapter(tmp / "adapter")
    zip_path = pack(tmp / "adapter", tmp / "submission.zip")
    report = verify(zip_path, path, None)
    print("verify:", report, flush=True)
    with zipfile.ZipFile(zip_path) as zf:
        print("zip:", zf.namelist(), flush=True)
    del session
    torch.cuda.empty_cache()

    rng = random.Random(0)
    rows = []
    for i in range(args.puzzles):
        p = categories.generate(categories.CATEGORIES[i % len(categories.CATEGORIES)], rng)
        rows.append({"id": f"p{i}", "prompt": p.prompt, "answer": p.answer})
    with open(tmp / "puzzles.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "prompt", "answer"])
        w.writeheader()
        w.writerows(rows)

    scored = score.run(zip_path, score.read_rows(tmp / "puzzles.csv"), str(path),
                       {"gpu_memory_utilization": 0.3}, {"max_tokens": args.max_tokens})
    from fastnemo.progress import console

    console.print(score.table(scored))

    unzipped = tmp / "unzipped"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(unzipped)
    again = ModelSession.load(path, model_cfg, lora_cfg, adapter=score.adapter_dir(unzipped, unzipped))
    again.model.eval()
    prefixes, gap, logit_diffs = [], 0.0, []
    with torch.no_grad():
        for s in scored:
            prompt, ids = s["prompt_token_ids"], s["token_ids"]
            x = torch.tensor([prompt + ids], device="cuda")
            logits = again.model(input_ids=x).logits[0, len(prompt) - 1 : -1].float()
            picked = logits.gather(1, torch.tensor(ids, device="cuda")[:, None])[:, 0]
            gaps = logits.max(dim=1).values - picked
            gap = max(gap, float(gaps.max()))
            logit_diffs.append(float(gaps.mean()))
            agree = logits.argmax(dim=1).cpu().tolist()
            prefixes.append(next((i for i, (a, b) in enumerate(zip(agree, ids)) if a != b), len(ids)))
    rec = results.record(
        "score_agreement", variant="vllm-vs-transformers+peft", engine="vllm", backend="vllm 0.26.0",
        layers=3, gpu=torch.cuda.get_device_name(), memory_cap_gib=None, batch=len(scored),
        prompt_len=round(sum(len(s["prompt_token_ids"]) for s in scored) / len(scored)),
        new_tokens=args.max_tokens, tok_s=None, peak_gib=None, source="bench/device/score_slice.py",
        targets="full (q/k/v/o, in/out_proj, shared + routed experts up/down, lm_head)", trainable=trainable,
        agree_before_divergence=prefixes, max_logit_gap=gap, mean_logit_gap=sum(logit_diffs) / len(logit_diffs),
        accuracy=sum(s["correct"] for s in scored) / len(scored), verify=str(report)[:300],
        note="random weights + random LoRA: accuracy is ~0 by construction; agreement is the check")
    results.append(args.results, rec)
    print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
