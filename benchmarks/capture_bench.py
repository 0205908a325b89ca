"""Benchmark: activation capture on the default model against a plain HF forward and run_with_cache.

64 prompts (32 harmful + 32 harmless from the public sets shipped in the package), every layer's residual
stream at the last 5 prompt positions, batch size 16, float32 on CPU. Each mode runs in its own process. Peak
memory is the highest number of heap bytes in use (glibc ``mallinfo2``: ``uordblks + hblkhd``, which is where torch's
CPU tensors live), sampled every 2 ms during a warm run, minus the bytes in use just before it (model
loaded, bridge booted): it counts activations and workspace, not weights, and unlike the resident set
size it does not include memory the allocator keeps cached. Wall time is the best of the warm runs.
``run_with_cache`` frees each batch's cache after taking the same positions out of it (a careful user);
``run_with_cache_keep`` keeps every batch's cache (no filter, and index later). Prints a table and the ratios.

    python benchmarks/capture_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time

N_PROMPTS, K, BATCH = 64, 5, 16


def _prompts():
    from interp.core.prompts import public_prompts

    harmful = public_prompts("harmful_train").head(N_PROMPTS // 2)
    harmless = public_prompts("harmless_train").head(N_PROMPTS // 2)
    return harmful + harmless


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


class PeakHeap:
    def __init__(self):
        self.stop = threading.Event()

    def __enter__(self):
        self.base = heap_in_use()
        self.peak = self.base
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, heap_in_use())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.delta_mb = (self.peak - self.base) / 2**20


def _batches(model, prompts):
    """Token batches shared by all modes: sorted by length, left padded (what capture does)."""
    from interp.core.chat import ChatFormat, batches

    ids = ChatFormat().encode(model.tokenizer, prompts.instructions)
    for batch in batches(ids, BATCH, model.tokenizer.pad_token_id):
        yield batch.ids, batch.mask


def run_mode(mode: str, repeats: int) -> dict:
    import torch

    from interp.core.models import load_model
    from interp.measures.capture import CaptureConfig, Positions, capture

    torch.manual_seed(0)
    model = load_model("default")
    prompts = _prompts()
    n_layers = model.n_layers

    def hf_forward():
        kept = []
        with torch.no_grad():
            for tokens, mask in _batches(model, prompts):
                hidden = model.hf(tokens, attention_mask=mask, output_hidden_states=True).hidden_states
                kept.append(torch.stack([h[:, -K:] for h in hidden[1:]], 1))
        return torch.cat(kept)

    def ours():
        config = CaptureConfig(positions=Positions.last_k(K), batch_size=BATCH)
        return capture(model, prompts, config, cache_dir=None, progress=False).tensor

    def run_with_cache(keep_caches: bool = False):
        kept, caches = [], []
        with torch.no_grad():
            for tokens, mask in _batches(model, prompts):
                _, cache = model.bridge.run_with_cache(tokens, attention_mask=mask)
                kept.append(torch.stack([cache[f"blocks.{l}.hook_resid_post"][:, -K:] for l in range(n_layers)], 1))
                if keep_caches:
                    caches.append(cache)
                del cache
        return torch.cat(kept)

    fn = {
        "hf_forward": hf_forward,
        "capture": ours,
        "run_with_cache": run_with_cache,
        "run_with_cache_keep": lambda: run_with_cache(keep_caches=True),
    }[mode]
    if mode != "hf_forward":
        _ = model.bridge  # boot outside the measured region
    fn()  # warm-up
    with PeakHeap() as peak:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"mode": mode, "seconds": min(times), "all_seconds": times, "peak_mb": peak.delta_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.repeats)))
        return
    rows = {}
    for mode in ("hf_forward", "capture", "run_with_cache", "run_with_cache_keep"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        if out.returncode != 0:
            sys.exit(f"{mode} failed:\n{out.stderr[-2000:]}")
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"default model, {N_PROMPTS} prompts, all 30 residuals x last {K} positions, batch {BATCH}, "
        f"best of {args.repeats}"
    )
    print(f"{'mode':<18}{'wall s':>10}{'peak MB':>10}")
    for mode, row in rows.items():
        print(f"{mode:<18}{row['seconds']:>10.2f}{row['peak_mb']:>10.0f}")
    print(
        "time ratio capture / hf_forward: "
        f"{rows['capture']['seconds'] / rows['hf_forward']['seconds']:.3f} (target <= 1.05)"
    )
    for other in ("run_with_cache", "run_with_cache_keep"):
        ratio = rows["capture"]["peak_mb"] / rows[other]["peak_mb"]
        print(f"memory ratio capture / {other}: {ratio:.3f} (target <= 0.10)")


if __name__ == "__main__":
    main()
