"""Packed trials on a GPU: chars/s of rnncore (one trial, and K trials packed) next to PyTorch's cuDNN.

rnncore trains one trial, and K trials packed into one computation; PyTorch's cuDNN nn.RNN / nn.LSTM trains one
trial; all measured side by side in one run. On CPU, K = 8 packed trials against the same 8 trials one after
another.

    python bench/gpu.py            # GPU tables (needs CuPy; the PyTorch column needs torch) + CPU table
    python bench/gpu.py --lstm     # the GPU LSTM table only
    python bench/gpu.py --cpu      # the CPU table only

Targets (H100): packed K=64, B=256, H=100 >= 50 M chars/s and >= 10x cuDNN one trial at B=256.
LSTM, H=256, B=128, T=50: packed K=32 >= 5x the aggregate chars/s of cuDNN nn.LSTM training one trial.
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
LSTM = dict(H=256, B=128, T=50, K=32)  # the LSTM row: K packed trials against one cuDNN trial at the same B


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


def cfgs(K: int, H: int, B: int, device: str, dtype: str = "float32", cell: str = "rnn",
         seq_length: int = T) -> list[TrainConfig]:
    return [TrainConfig(cell=cell, hidden_size=H, seq_length=seq_length, batch_size=B, dtype=dtype, device=device,
                        learning_rate=0.01 * (1 + k % 7), seed=k) for k in range(K)]


def torch_rate(corpus, H: int, B: int, seconds: float, cell: str = "rnn", seq_length: int = T) -> float | None:
    """PyTorch cuDNN nn.RNN (tanh) or nn.LSTM, one trial: one-hot input, Linear output, cross-entropy, Adagrad,
    clipping; the hidden state (an LSTM's h and c) carried and detached."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dev, V, T_ = torch.device("cuda"), corpus.vocab.size, seq_length
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rnn = (torch.nn.LSTM(V, H) if cell == "lstm" else torch.nn.RNN(V, H, nonlinearity="tanh")).to(dev)
    out = torch.nn.Linear(H, V).to(dev)
    params = list(rnn.parameters()) + list(out.parameters())
    opt = torch.optim.Adagrad(params, lr=0.01)
    data = torch.as_tensor(corpus.train.astype(np.int64), device=dev)
    L = len(corpus.train) // B
    starts = torch.arange(B, device=dev) * L
    offs = torch.arange(T_ + 1, device=dev)[:, None]

    def zero_state():
        h = torch.zeros(1, B, H, device=dev)
        return (h, torch.zeros_like(h)) if cell == "lstm" else h

    state = {"p": 0, "h": zero_state()}

    def step():
        if state["p"] + T_ + 1 >= L:
            state["p"], state["h"] = 0, zero_state()
        xy = data[starts[None, :] + offs + state["p"]]  # (T+1, B)
        x = torch.nn.functional.one_hot(xy[:-1], V).float()
        y, h = rnn(x, state["h"])
        loss = torch.nn.functional.cross_entropy(out(y).reshape(-1, V), xy[1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in params:
            p.grad.clamp_(-5, 5)
        opt.step()
        state["h"] = tuple(a.detach() for a in h) if cell == "lstm" else h.detach()
        state["p"] += T_

    r = rate(step, T_ * B, seconds)
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


def lstm_table(corpus, seconds: float) -> None:
    """LSTM, H = 256, B = 128, T = 50: rnncore one trial, cuDNN nn.LSTM one trial, rnncore K = 32 packed."""
    import cupy

    H, B, T_, K = LSTM["H"], LSTM["B"], LSTM["T"], LSTM["K"]
    print(f"\n### LSTM, H = {H}, T = {T_}, float32\n\n| engine | trials K | batch/trial | chars/s (all trials) |\n"
          "| --- | ---: | ---: | ---: |")
    tr = Trainer(cfgs(1, H, B, "gpu", cell="lstm", seq_length=T_)[0], corpus)
    one = rate(tr.step, T_ * B, seconds)
    del tr
    cudnn = torch_rate(corpus, H, B, seconds, cell="lstm", seq_length=T_)
    try:
        pt = PackedTrainer(cfgs(K, H, B, "gpu", cell="lstm", seq_length=T_), corpus)
        packed = rate(pt.step, K * T_ * B, seconds)
        del pt
    except cupy.cuda.memory.OutOfMemoryError:
        packed = math.nan
    cupy.get_default_memory_pool().free_all_blocks()
    print(f"| rnncore, one trial | 1 | {B} | {one:,.0f} |")
    print(f"| PyTorch cuDNN nn.LSTM, one trial | 1 | {B} | {math.nan if cudnn is None else cudnn:,.0f} |")
    print(f"| rnncore packed | {K} | {B} | {packed:,.0f} |")
    if cudnn:
        print(f"\npacked LSTM K={K} B={B}: {packed / 1e6:.2f} M chars/s; {packed / cudnn:.1f}x cuDNN nn.LSTM "
              f"one trial at B={B} (target >= 5x)")


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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="the CPU table only")
    p.add_argument("--lstm", action="store_true", help="the GPU LSTM table only")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration")
    args = p.parse_args()
    corpus = load_corpus(ROOT / "data/tinyshakespeare.txt", 0.1)
    if args.lstm:
        import cupy

        print(f"- GPU: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}; CuPy {cupy.__version__}; float32")
        lstm_table(corpus, args.seconds)
        return
    if not args.cpu:
        gpu_tables(corpus, args.seconds)
        lstm_table(corpus, args.seconds)
    cpu_table(corpus, args.seconds)


if __name__ == "__main__":
    main()
