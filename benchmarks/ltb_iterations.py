"""ltb's ``iterations``: ``auto`` (the default) against one pass and a fixed K on the CIFAR-10 example CNN.

The evidence behind the default in ``plugins/ltb.py``. Needs the example's trained checkpoint
(``python examples/cifar10/run.py`` writes ``runs/cifar10/ann.pt``) and the CIFAR-10 archive
under ``../shared/data``. 1000 random test images, 512 random training images in 4 calibration
batches; one conversion per T (``auto`` chooses for the conversion's T). Writes
``benchmarks/results/ltb_iterations.json``::

    python benchmarks/ltb_iterations.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import snnbridge  # noqa: E402
from examples.cifar10 import data as cdata  # noqa: E402
from examples.cifar10 import model as cmodel  # noqa: E402

RECIPES = {"auto": ["ltb"], "one pass": [{"ltb": {"iterations": None}}], "K=128": [{"ltb": {"iterations": 128}}]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/cifar10/ann.pt")
    p.add_argument("--timesteps", default="4,8,16,32,64")
    p.add_argument("--out", default="benchmarks/results/ltb_iterations.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    kind, root = cdata.resolve(None, None)
    train_set, test_set = cdata.open_splits(kind, root)
    x_test, y_test = cdata.to_tensors(cdata.seeded_subset(test_set, 1000, 1))
    x_calib, _ = cdata.to_tensors(cdata.seeded_subset(train_set, 512, 2))
    model = cmodel.make_model()
    model.load_state_dict(torch.load(args.checkpoint, weights_only=True)["state_dict"])
    model.eval()
    calib = [cdata.normalize(x_calib[i:i + 128]) for i in range(0, len(x_calib), 128)]
    xt = cdata.normalize(x_test)

    @torch.no_grad()
    def accuracy(net, T=None):
        hits = 0
        for i in range(0, len(xt), 250):
            out = net(xt[i:i + 250]) if T is None else net(xt[i:i + 250], timesteps=T)
            hits += int((out.argmax(-1) == y_test[i:i + 250]).sum())
        return 100 * hits / len(xt)

    rows = [{"recipe": "ANN", "T": None, "accuracy": accuracy(model)}]
    print(rows[0], flush=True)
    for T in (int(t) for t in args.timesteps.split(",")):
        for label, recipe in RECIPES.items():
            started = time.perf_counter()
            snn = snnbridge.convert(model, recipe, calibration=calib, timesteps=T, progress=False)
            rows.append({"recipe": label, "T": T, "accuracy": accuracy(snn, T),
                         "chosen": snn.report.get("ltb_iterations"),
                         "conversion_seconds": round(time.perf_counter() - started, 1)})
            print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
