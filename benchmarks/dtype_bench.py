"""Benchmark: float32 against bfloat16 on this machine, stage by stage, in one run.

1. Matrix multiplies (the hardware's ceiling): a 2048 x 2048 x 2048 matmul and one SmolLM2 MLP projection
   (8192 tokens x 576 -> 1536), best of 5 after a warm-up; GFLOP/s = 2 * m * n * k / seconds.
2. The default organism's fine-tuned model (SmolLM2-135M-Instruct + the shipped adapters), loaded in each
   dtype: a prefill of ``--prompts`` harmful prompts (the chat template, batches of ``--prefill-batch``,
   logits for the last position only), achieved GFLOP/s counted as 2 x (non-embedding parameters) per
   token, and the share of the same dtype's matmul ceiling; then the evaluation engine's greedy answers to
   the same prompts (32 new tokens, stopped at a refusal phrase as the quick look does): seconds per
   judged answer, and how many refusal judgments bfloat16 changes.
3. The study's quick look (``interp run``: analysis, five restoration plans in lockstep for 24 steps, the
   evaluation of eight models on the look sample), once per dtype into a temporary folder, on one cache
   that starts empty (the pair is built by the first; nothing else is shared: every cache key holds the
   weights' fingerprint, which holds their dtype): seconds per stage, the ratio, seconds per judged
   answer. The restoration's GFLOP/s: its matrix-product FLOPs counted by ``torch.utils.flop_counter``
   over two lockstep steps of the same plans, scaled to 24 steps, over its seconds.

Every timing is printed with the load average; run it with nothing else on the machine (``--skip-study``
leaves out part 3, about ten minutes).

    python benchmarks/dtype_bench.py [--prompts 64] [--skip-study]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def load_average() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def best_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up (oneDNN picks its kernels on the first call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / best_seconds(lambda: a @ b) / 1e9


@torch.no_grad()
def prefill_gflops(model, prompts, batch_size: int = 16) -> tuple[float, int]:
    """Achieved GFLOP/s of batched prefills of ``prompts`` (2 x non-embedding parameters per real token)."""
    from interp.core.chat import ChatFormat, batches

    tok = model.tokenizer
    seqs = ChatFormat().encode(tok, prompts.instructions)
    tokens = sum(len(s) for s in seqs)
    params = sum(p.numel() for name, p in model.hf.named_parameters() if "embed" not in name)

    def run():
        for batch in batches(seqs, batch_size, tok.pad_token_id):
            model.hf(input_ids=batch.ids, attention_mask=batch.mask, logits_to_keep=1)

    return 2 * params * tokens / best_seconds(run, repeats=3) / 1e9, tokens


def restoration_flops(run, steps: int = 2) -> float:
    """Matrix-product FLOPs of ``steps`` lockstep steps of the run's restoration plans (same pair, map,
    prompts and settings as the run), counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    from interp.organism import OrganismRecipe, study_prompts
    from interp.study_plans import make_plans
    from interp.training.restore import restore_many
    from interp.training.restore_config import RestoreConfig

    harmful, retain, _ = study_prompts(OrganismRecipe())
    plans = make_plans(run.analysis.layer_map, component_map=run.analysis.component_map)
    counter = FlopCounterMode(display=False)
    with counter:
        restore_many(
            run.pair.finetuned,
            run.analysis.layer_map,
            harmful,
            retain,
            [plan.placement for plan in plans],
            RestoreConfig(steps=steps),
            base=run.pair.base,
            progress=False,
        )
    return counter.get_total_flops() / steps


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), or the platform's processor string elsewhere."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="harmful prompts for the prefill and the answers")
    parser.add_argument("--prefill-batch", type=int, default=64, help="prompts per prefill batch")
    parser.add_argument("--skip-study", action="store_true", help="leave out the study's stages (part 3)")
    args = parser.parse_args()
    os.environ["INTERP_CACHE"] = tempfile.mkdtemp(prefix="interp-dtype-bench-")

    from interp.core.generate import behaviour
    from interp.core.models import compute_dtype, load_model
    from interp.core.prompts import public_prompts
    from interp.default_run import run_default
    from interp.organism import build_organism

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {load_average()}")
    print(f"cpu: {cpu_model()}; --dtype auto here: {' ('.join(compute_dtype('cpu'))})")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    peak = {}
    for what, (m, k, n) in {
        "2048 x 2048 x 2048 matmul": (2048, 2048, 2048),
        "MLP projection": (8192, 576, 1536),
    }.items():
        rates = {name: matmul_gflops(m, k, n, dtype) for name, dtype in dtypes.items()}
        peak[what] = rates
        print(
            f"{what}: float32 {rates['float32']:,.0f} GFLOP/s, bfloat16 {rates['bfloat16']:,.0f} GFLOP/s, "
            f"ratio {rates['bfloat16'] / rates['float32']:.1f}x ({load_average()})"
        )
    ceiling = {name: max(rates[name] for rates in peak.values()) for name in dtypes}

    organism = build_organism(progress=False, log=lambda _: None)
    prompts = public_prompts("harmful_val") + public_prompts("harmful_train")
    prompts = prompts.head(args.prompts)
    judged, per_answer = {}, {}
    for name, dtype in dtypes.items():
        model = load_model(organism.finetuned_path, dtype=dtype)
        rate, tokens = prefill_gflops(model, prompts, args.prefill_batch)
        print(
            f"{name} prefill of {len(prompts)} prompts ({tokens} tokens, batches of {args.prefill_batch}): "
            f"{rate:,.0f} GFLOP/s, {rate / ceiling[name]:.0%} of this dtype's measured matmul peak ({load_average()})"
        )
        start = time.perf_counter()
        result = behaviour(model, prompts, max_new_tokens=32, progress=False, cache=False)
        seconds = time.perf_counter() - start
        judged[name], per_answer[name] = result.refusals, seconds / len(prompts)
        print(
            f"{name} greedy answers: {seconds:.1f} s for {len(prompts)}, {seconds / len(prompts) * 1000:.0f} ms per "
            f"judged answer, refusal {result.refusal_rate:.1%} ({load_average()})"
        )
    changed = sum(a != b for a, b in zip(judged["float32"], judged["bfloat16"]))
    print(f"greedy answers: bfloat16 {per_answer['float32'] / per_answer['bfloat16']:.2f}x faster per judged answer")
    print(f"refusal judgments bfloat16 changes: {changed} of {len(prompts)}")
    if args.skip_study:
        return

    stages, runs = ("analysis", "restore", "evaluate"), {}
    quiet = lambda _: None  # noqa: E731
    for name in dtypes:
        out = Path(tempfile.mkdtemp(prefix=f"interp-dtype-bench-{name}-")) / "run"
        print(f"{name} quick look ({load_average()})", flush=True)
        runs[name] = run_default(out, load_options={"dtype": name}, progress=False, log=quiet)
        seconds = runs[name].seconds
        answers = sum(len(row["outcomes"][s]) for row in _report(out)["models"] for s in row["outcomes"])
        print(
            f"{name} quick look: "
            + ", ".join(f"{stage} {seconds[stage]:.0f} s" for stage in stages)
            + f"; {seconds['evaluate'] / answers * 1000:.0f} ms per judged answer ({answers}) ({load_average()})"
        )
    print(
        "bfloat16 speed-up per stage: "
        + ", ".join(
            f"{stage} {runs['float32'].seconds[stage] / runs['bfloat16'].seconds[stage]:.2f}x" for stage in stages
        )
    )
    for name in dtypes:
        flops = restoration_flops(runs[name]) * 24
        seconds = runs[name].seconds["restore"]
        print(
            f"{name} restoration: {flops / 1e12:.2f} TFLOP of matrix products in {seconds:.0f} s, "
            f"{flops / seconds / 1e9:,.0f} GFLOP/s, {flops / seconds / 1e9 / ceiling[name]:.0%} of the measured peak"
        )


def _report(folder: Path) -> dict:
    import json

    return json.loads((folder / "report.json").read_text())


if __name__ == "__main__":
    main()
