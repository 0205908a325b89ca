"""Benchmark: float32 against bfloat16 on this machine, in one run, each measured on its own.

1. Matrix multiplies (the hardware's ceiling): a 2048 x 2048 x 2048 matmul and one SmolLM2 MLP projection
   (8192 tokens x 576 -> 1536), best of 5 after a warm-up; GFLOP/s = 2 * m * n * k / seconds.
2. The default organism's fine-tuned model (SmolLM2-135M-Instruct + the shipped adapters), loaded in each
   dtype: a prefill of ``--prompts`` harmful prompts (the chat template, batched as the suite batches them,
   logits for the last position only), achieved GFLOP/s counted as 2 x (non-embedding parameters) per
   token, and the share of the matmul ceiling of the same dtype; then the evaluation engine's greedy
   answers to the same prompts (32 new tokens, stopped at a refusal phrase as the quick look does):
   seconds per judged answer, and how many refusal judgments bfloat16 changes.

Every timing is printed with the load average; run it with nothing else on the machine. Answers are never
read from the cache: each dtype generates its own.

    python benchmarks/dtype_bench.py [--prompts 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="harmful prompts for the prefill and the answers")
    args = parser.parse_args()
    os.environ.setdefault("INTERP_CACHE", tempfile.mkdtemp(prefix="interp-dtype-bench-"))

    from interp.core.generate import behaviour
    from interp.core.models import load_model
    from interp.core.prompts import public_prompts
    from interp.organism import build_organism

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {load_average()}")
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

    organism = build_organism(progress=False, log=lambda _: None)
    prompts = public_prompts("harmful_val") + public_prompts("harmful_train")
    prompts = prompts.head(args.prompts)
    judged = {}
    for name, dtype in dtypes.items():
        model = load_model(organism.finetuned_path, dtype=dtype)
        rate, tokens = prefill_gflops(model, prompts)
        ceiling = peak["2048 x 2048 x 2048 matmul"][name]
        print(
            f"{name} prefill of {len(prompts)} prompts ({tokens} tokens): {rate:,.0f} GFLOP/s, "
            f"{rate / ceiling:.0%} of this dtype's matmul ceiling ({load_average()})"
        )
        start = time.perf_counter()
        result = behaviour(model, prompts, max_new_tokens=32, progress=False, cache=False)
        seconds = time.perf_counter() - start
        judged[name] = result.refusals
        print(
            f"{name} greedy answers: {seconds:.1f} s for {len(prompts)}, {seconds / len(prompts) * 1000:.0f} ms per "
            f"judged answer, refusal {result.refusal_rate:.1%} ({load_average()})"
        )
    changed = sum(a != b for a, b in zip(judged["float32"], judged["bfloat16"]))
    print(f"refusal judgments bfloat16 changes: {changed} of {len(prompts)}")


if __name__ == "__main__":
    main()
