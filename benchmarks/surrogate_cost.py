"""Cost of a surrogate gradient: forward + backward of one converted CNN site's neurons, per backend.

SpikingJelly 2 runs its registered IF operator (on CUDA: fused kernels) only with one of its
seven built-in surrogates (``Sigmoid``, ``ATan``, ...); any other ``surrogate_function`` - LocalZO,
or any ``snnbridge.Surrogate`` - makes it run its Torch reference loop, one step at a time. On
CPU with gradients both are Torch loops, so the comparison there shows the surrogate's own
cost (LocalZO's random draws), not a kernel's. This script
converts the CIFAR-10 example CNN (random weights; the shapes are what matter), takes its first
site (``[B, 32, 16, 16]`` neurons) and times ``simulate`` + ``backward`` of that site's neuron
layer over T steps with

* SpikingJelly's default ``Sigmoid(alpha=4)`` (built-in: the registered operator),
* ``sg`` sigmoid (k = 4, the same function through snnbridge's surrogate: the reference loop),
* LocalZO (normal, m = 5, delta = 0.5) on SpikingJelly, torch and snnTorch.

    python benchmarks/surrogate_cost.py                     # B = 32, T = 8, median of 5 runs
    python benchmarks/surrogate_cost.py --batch 64 --timesteps 4 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import snnbridge

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.cifar10.model import make_model  # noqa: E402


def site_layer(backend: str):
    """The first site's neuron layer of the converted example CNN on ``backend``, and the site's shape."""
    torch.manual_seed(0)
    ann = make_model().eval()
    calib = [torch.rand(8, 3, 32, 32)]
    snn = snnbridge.convert(ann, ["maxnorm"], calibration=calib, backend=backend, timesteps=8, progress=False)
    site = next(iter(snn.sites.values()))
    return snn, site


def time_once(snn, site, surrogate, x_seq) -> float:
    snn.set_surrogate(surrogate)
    x = x_seq.clone().requires_grad_(True)
    weights = torch.linspace(0.5, 1.5, x.numel()).view_as(x)
    start = time.perf_counter()
    result = site.neuron.simulate(x, site.initial_state(x[0]))
    (result.spikes * weights).sum().backward()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    localzo = snnbridge.surrogate({"localzo": {"seed": 0}})
    cases = [("spikingjelly", "SpikingJelly Sigmoid (default, built-in)", None),
             ("spikingjelly", "sg sigmoid k=4 (reference loop)", snnbridge.surrogate({"sg": {"shape": "sigmoid"}})),
             ("spikingjelly", "LocalZO m=5 (reference loop)", localzo),
             ("torch", "LocalZO m=5", localzo),
             ("snntorch", "LocalZO m=5", localzo)]
    layers = {b: site_layer(b) for b in {c[0] for c in cases}}
    shape = layers["spikingjelly"][1].info.shape
    g = torch.Generator().manual_seed(1)
    x_seq = torch.rand(args.timesteps, args.batch, *shape, generator=g) * 0.5
    print(f"one site [B={args.batch}, {', '.join(map(str, shape))}], T={args.timesteps}, forward + backward, "
          f"median of {args.repeats} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for backend, label, surrogate in cases:
        snn, site = layers[backend]
        time_once(snn, site, surrogate, x_seq)  # warm-up
        runs = [time_once(snn, site, surrogate, x_seq) for _ in range(args.repeats)]
        print(f"  {backend:<13} {label:<46} {1000 * statistics.median(runs):8.1f} ms")


if __name__ == "__main__":
    main()
