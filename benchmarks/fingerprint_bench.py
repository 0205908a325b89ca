"""Benchmark: the cost of the full-weight fingerprint on the default model (SmolLM2-135M, fp32), against the
sampled fingerprint it replaced (the first and last 2048 values of each tensor and their sum, which
permutations and most single changes did not move).

- ``model_fingerprint``: sha256 of the config and of every byte of every tensor (``interp.core.models``);
- ``tokenizer_fingerprint``: sha256 of the tokenizer's definition, special tokens and chat template;
- ``LoadedModel.fingerprint``: both, as every cache key uses it;
- ``sampled``: the old scheme (reimplemented here for the comparison).

Prints the median of ``--repeats`` runs of each with the load average.

    python benchmarks/fingerprint_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time

import torch

from interp.core.models import load_model, model_fingerprint, tokenizer_fingerprint


def sampled_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in sorted(model.state_dict().items()):
            flat = param.detach().reshape(-1).float().cpu()
            digest.update(name.encode())
            digest.update(flat[:2048].numpy().tobytes())
            digest.update(flat[-2048:].numpy().tobytes())
            digest.update(f"{flat.double().sum().item():.10e}".encode())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = load_model("default")
    size = sum(p.numel() * p.element_size() for p in model.hf.state_dict().values())
    print(f"default model: {size / 2**20:.0f} MiB of tensors in its state dict; load {os.getloadavg()[0]:.2f}")

    def whole(m=model):
        m._fingerprint = None
        return m.fingerprint

    variants = {
        "model_fingerprint (every byte)": lambda: model_fingerprint(model.hf),
        "tokenizer_fingerprint": lambda: tokenizer_fingerprint(model.tokenizer),
        "LoadedModel.fingerprint (both)": whole,
        "sampled (before)": lambda: sampled_fingerprint(model.hf),
    }
    for name, run in variants.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        print(
            f"{name:34s} median {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f}; "
            f"load {os.getloadavg()[0]:.2f})"
        )


if __name__ == "__main__":
    main()
