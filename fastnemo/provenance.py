"""What each stage of a run depends on, so that a run directory never misstates what ran.

- ``STAGE_KEYS`` (the one home of this fact): the recipe keys whose values a stage's result depends on.
  Every manifest entry records their values and a fingerprint of them (``provenance``).
- ``stage_inputs``: the earlier stages whose artifacts a stage reads (its data, the adapter it starts from,
  the distilled traces, ...). Redoing a stage redoes everything downstream of it (``downstream``).
- ``stale``: the finished stages whose keys differ from the recipe's now. ``fastnemo.recipe`` refuses such a
  rerun before anything runs and names ``--redo`` and the stages it would redo.

Keys outside every list (``name``, ``run_dir``, ``rounds``, ``until_plateau``, ``stages``, ``hardware.*``)
change how or how far a run goes, not what a finished stage made.
"""

from __future__ import annotations

import hashlib
import json

STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "start": ("start_from", "model.base_model_name"),
    "recall": ("seed", "model.*", "lora.*", "recall.*", "sft.*"),
    "data": ("seed", "data.*"),  # mixing in distilled traces: their distill stage carries distill.carry_share
    "sft": ("seed", "model.*", "lora.*", "sft.*"),
    "eval": ("seed", "model.*", "lora.*", "generation.*", "eval.*", "recall.*"),  # recall: measured in eval
    "distill": ("seed", "model.*", "lora.*", "generation.*", "distill.*"),
    "grpo": ("seed", "model.*", "lora.*", "generation.*", "grpo.*"),
    "pack": ("model.path", "model.base_model_name"),
}


def flat(table: dict, prefix: str = "") -> dict:
    """A nested recipe dict as {"sft.max_steps": 4, ...}."""
    out = {}
    for k, v in table.items():
        if isinstance(v, dict) and k not in ("shares",):  # data.shares is one key whose value is a table
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def stage_config(resolved: dict, stage: str) -> dict:
    """The values of the keys ``stage`` depends on, from the resolved recipe (``config.to_dict``)."""
    patterns = STAGE_KEYS[stage]
    return {k: v for k, v in flat(resolved).items()
            if k in patterns or any(p.endswith(".*") and k.startswith(p[:-1]) for p in patterns)}


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(resolved: dict, stage: str) -> dict:
    """What a manifest entry records of the recipe: the stage's keys and their fingerprint."""
    config = stage_config(resolved, stage)
    return {"fingerprint": fingerprint(config), "config": config}


def stage_inputs(plan: list[tuple[int, str, str]]) -> dict[str, list[str]]:
    """key -> the keys of the earlier stages it reads, for a plan of (round, stage, key)
    (``fastnemo.recipe.plan_keys``), following what the stage functions read."""
    adapter = data = distill = None
    seen, out = [], {}
    for _, stage, key in plan:
        deps = {"start": [], "recall": [adapter], "data": [distill, data], "sft": [data, adapter],
                "eval": [adapter], "distill": [adapter], "grpo": [distill, adapter], "pack": list(seen)}[stage]
        out[key] = [d for d in deps if d]
        if stage in ("start", "recall", "sft", "grpo"):
            adapter = key
        elif stage == "data":
            data = key
        elif stage == "distill":
            distill = key
        seen.append(key)
    return out


def downstream(plan: list[tuple[int, str, str]], keys: list[str]) -> list[str]:
    """``keys`` and every stage that reads them, directly or not, in plan order (keys the plan no longer has,
    a finished stage of an earlier ``stages`` list, last: nothing in the plan reads them)."""
    inputs, hit = stage_inputs(plan), set(keys)
    for _, _, key in plan:
        if any(d in hit for d in inputs[key]):
            hit.add(key)
    planned = [k for _, _, k in plan]
    return [k for k in planned if k in hit] + [k for k in dict.fromkeys(keys) if k not in planned]


def stage_of(key: str) -> str:
    """The stage a manifest key names: r1-sft -> sft, r2-eval-grpo and r0-eval-start -> eval, pack -> pack."""
    parts = key.split("-")
    return "eval" if len(parts) > 2 and parts[1] == "eval" else parts[-1]


def redo_keys(plan: list[tuple[int, str, str]], names: list[str] | tuple[str, ...],
              finished: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The stage keys ``--redo`` names (a key of the plan or a ``finished`` one, or a stage name: its first
    key) and everything downstream of them. Raises ValueError naming the keys for a name that is neither."""
    keys = [k for _, _, k in plan] + [k for k in finished if k not in {k for _, _, k in plan}]
    picked = []
    for name in names:
        match = [name] if name in keys else [k for _, st, k in plan if st == name][:1]
        if not match:
            raise ValueError(f"--redo {name}: no such stage in this recipe's plan ({', '.join(keys)})")
        picked += match
    return downstream(plan, picked)


def stale(manifest: dict, resolved: dict) -> tuple[dict, list[str]]:
    """(key -> {recipe key: (was, now)} for each finished stage whose keys differ, keys of finished stages
    recorded without a fingerprint (made by an older fastnemo: not checked))."""
    changed, unknown = {}, []
    for key, entry in manifest["stages"].items():  # the plan's and any an earlier `stages` list left
        stage = stage_of(key)
        if stage not in STAGE_KEYS:
            continue
        if "fingerprint" not in entry:
            unknown.append(key)
            continue
        now = stage_config(resolved, stage)
        if fingerprint(now) != entry["fingerprint"]:
            was = entry.get("config", {})
            changed[key] = {k: (was.get(k, "?"), now.get(k, "?")) for k in sorted(set(was) | set(now))
                            if was.get(k, "?") != now.get(k, "?")}
    return changed, unknown


def refusal(plan: list[tuple[int, str, str]], changed: dict, recipe_file: str) -> str:
    """The message that refuses a rerun whose keys differ for finished stages: which, how, and the fix."""
    def show(diff):
        return ", ".join(f"{k} {was!r} -> {now!r}" for k, (was, now) in list(diff.items())[:4]) + (
            ", ..." if len(diff) > 4 else "")

    roots = [k for k in changed if not any(k in downstream(plan, [o]) for o in changed if o != k)]
    redo = downstream(plan, roots)
    stages = "; ".join(f"{k}: {show(d)}" for k, d in changed.items())
    return (f"{recipe_file}: finished stages ran with other recipe keys ({stages}); nothing was run. Set those "
            "keys back, or add `" + " ".join(f"--redo {k}" for k in roots) + "` to this command (redoes "
            f"{', '.join(redo)}; their old files are kept in the run's redone-*/ folder)")
