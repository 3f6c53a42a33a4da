"""Packed trials: chars/s of rnncore on a GPU (one trial, and K trials packed into one computation) next to
PyTorch's cuDNN nn.RNN training one trial, measured side by side in one run; and on CPU, K = 8 packed
trials against the same 8 trials one after another.

    python bench/gpu.py            # GPU tables (needs CuPy; the PyTorch column needs torch) + CPU table
    python bench/gpu.py --cpu      # the CPU table only

Targets (H100): packed K=64, B=256, H=100 >= 50 M chars/s and >= 10x cuDNN one trial at B=256.
CPU: packed K=8 must never lose to 8 trials one after another.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rnncore import TrainConfig, Trainer, load_corpus  # noqa: E402
from rnncore.trainer import PackedTrainer  # noqa: E402

T = 25


def _sync():
    try:
        import cupy

        cupy.cuda.Device().synchronize()
    except Exception:
        pass


def rate(step, chars_per_step: int, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    _sync()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n % 4 == 0:
            _sync()
            if time.perf_counter() - t0 >= seconds:
                break
    return n * chars_per_step / (time.perf_counter() - t0)


def cfgs(K: int, H: int, B: int, device: str, dtype: str = "float32") -> list[TrainConfig]:
    return [TrainConfig(hidden_size=H, seq_length=T, batch_size=B, dtype=dtype, device=device,
                        learning_rate=0.01 * (1 + k % 7), seed=k) for k in range(K)]


def torch_rate(corpus, H: int, B: int, seconds: float) -> float | None:
    """PyTorch cuDNN nn.RNN (tanh), one trial: one-hot input, Linear output, cross-entropy, Adagrad, clipping."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dev, V = torch.device("cuda"), corpus.vocab.size
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rnn = torch.nn.RNN(V, H, nonlinearity="tanh").to(dev)
    out = torch.nn.Linear(H, V).to(dev)
    params = list(rnn.parameters()) + list(out.parameters())
    opt = torch.optim.Adagrad(params, lr=0.01)
    data = torch.as_tensor(corpus.train.astype(np.int64), device=dev)
    L = len(corpus.train) // B
    starts = torch.arange(B, device=dev) * L
    offs = torch.arange(T + 1, device=dev)[:, None]
    state = {"p": 0, "h": torch.zeros(1, B, H, device=dev)}

    def step():
        if state["p"] + T + 1 >= L:
            state["p"], state["h"] = 0, torch.zeros(1, B, H, device=dev)
        xy = data[starts[None, :] + offs + state["p"]]  # (T+1, B)
        x = torch.nn.functional.one_hot(xy[:-1], V).float()
        y, h = rnn(x, state["h"])
        loss = torch.nn.functional.cross_entropy(out(y).reshape(-1, V), xy[1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:
            p.grad.clamp_(-5, 5)
        opt.step()
        state["h"], state["p"] = h.detach(), state["p"] + T

    r = rate(step, T * B, seconds)
    torch.cuda.synchronize()
    return r


def gpu_tables(corpus, seconds: float) -> None:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"- GPU: {props['name'].decode()}; CuPy {cupy.__version__}; float32; T = {T}")
    for H in (100, 512):
        print(f"\n### H = {H}\n\n| engine | trials K | batch/trial | chars/s (all trials) |\n| --- | ---: | ---: | ---: |")
        rows = []
        for B in (1, 64, 256):
            tr = Trainer(cfgs(1, H, B, "gpu")[0], corpus)
            rows.append(("rnncore, one trial", 1, B, rate(tr.step, T * B, seconds)))
            del tr
        for B in (64, 256):
            tr = torch_rate(corpus, H, B, seconds)
            rows.append(("PyTorch cuDNN nn.RNN, one trial", 1, B, tr if tr is not None else math.nan))
        for K in (16, 64, 128):
            for B in (64, 256):
                try:
                    pt = PackedTrainer(cfgs(K, H, B, "gpu"), corpus)
                    rows.append(("rnncore packed", K, B, rate(pt.step, K * T * B, seconds)))
                    del pt
                except cupy.cuda.memory.OutOfMemoryError:
                    rows.append(("rnncore packed (out of memory)", K, B, math.nan))
                cupy.get_default_memory_pool().free_all_blocks()
        for name, K, B, r in rows:
            print(f"| {name} | {K} | {B} | {r:,.0f} |")
        if H == 100:
            packed = next(r for n, K, B, r in rows if n == "rnncore packed" and K == 64 and B == 256)
            cudnn = next(r for n, K, B, r in rows if n.startswith("PyTorch") and B == 256)
            print(f"\npacked K=64 B=256: {packed / 1e6:.1f} M chars/s (target >= 50 M); "
                  f"{packed / cudnn:.1f}x cuDNN one trial at B=256 (target >= 10x)")


def cpu_table(corpus, seconds: float) -> None:
    print(f"\n### CPU, one thread, H = 100, T = {T}, float32: 8 trials packed vs one after another\n")
    print("| batch/trial | 8 trials one after another, chars/s | packed K = 8, chars/s | packed / sequential |")
    print("| ---: | ---: | ---: | ---: |")
    for B in (1, 4):
        cs = cfgs(8, 100, B, "cpu", "float32")
        trainers = [Trainer(c, corpus) for c in cs]

        def sequential():
            for tr in trainers:
                tr.step()

        pt = PackedTrainer(cs, corpus)
        best_seq = best_pack = 0.0
        for _ in range(3):  # interleaved rounds, best of each: background load hits both alike
            best_seq = max(best_seq, rate(sequential, 8 * T * B, seconds))
            best_pack = max(best_pack, rate(pt.step, 8 * T * B, seconds))
        print(f"| {B} | {best_seq:,.0f} | {best_pack:,.0f} | {best_pack / best_seq:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true", help="the CPU table only")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    args = p.parse_args()
    corpus = load_corpus(ROOT / "data/tinyshakespeare.txt", 0.1)
    if not args.cpu:
        gpu_tables(corpus, args.seconds)
    cpu_table(corpus, args.seconds)


if __name__ == "__main__":
    main()
