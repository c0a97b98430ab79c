"""NIR export: every node, parameter and edge read back with ``nir.read``; the graph runs as the SNN; refusals.

A small reference interpreter of the NIR graph (torch, written from NIR's node definitions)
runs the file read back: with the snnbridge neuron (reset by subtraction, ``>=``, ``v0`` from the
node metadata) it must give the SNN's output, which checks every exported parameter and
edge at once; with NIR's own ``IF`` (reset to ``v_reset``, ``>``) it measures what the lossy
``reset="zero"`` export costs (the numbers in docs/export.md).
"""

from __future__ import annotations

import copy
import sys
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers import data_driven as dd
from helpers import zoo
from snnbridge import InputError, MissingRequirementError

nir = pytest.importorskip("nir")

DT = 1e-4


class NirNet(nn.Module):
    """conv-BN-ReLU, avg-pool, a residual block with a 1x1 projection, whole-window adaptive pool, FC-ReLU, FC.

    3x8x8 inputs, 4 classes (the synthetic data of helpers.data_driven).
    """

    def __init__(self, classes: int = dd.CLASSES):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.proj = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1, bias=False)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(32, 16), nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.c1(x))))
        y = F.relu(self.c2(x))
        x = F.relu(self.c3(y) + self.proj(x))
        x = torch.flatten(self.gap(x), 1)
        return self.fc2(F.relu(self.fc1(x)))


@lru_cache(maxsize=1)
def _trained_state():
    torch.manual_seed(0)
    net = NirNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = dd.make_data(2048, seed=1)
    net.train()
    for step in range(100):
        idx = torch.randint(0, x.shape[0], (64,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in net.state_dict().items()}


def trained() -> NirNet:
    net = NirNet()
    net.load_state_dict(_trained_state())
    return net.eval()


def convert(recipe, T=16, model=None, **kw):
    return snnbridge.convert(model if model is not None else trained(), recipe, calibration=dd.calibration_batches(),
                             timesteps=T, progress=False, **kw)


# -- a reference interpreter of NIR graphs ------------------------------------------------------------------


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _pair(v):
    v = np.asarray(v).reshape(-1).tolist()
    return tuple(int(i) for i in (v * 2 if len(v) == 1 else v))


def run_nir(graph, x: torch.Tensor, T: int, *, snnbridge_neuron: bool, dt: float = DT) -> torch.Tensor:
    """Mean output over T steps of the static input ``x``.

    ``snnbridge_neuron``: reset by subtraction, fire on ``>=``, start from ``metadata["v0"]``;
    else NIR's IF as defined (reset to ``v_reset``, fire on ``>``, start from 0).
    """
    preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].append(src)
    order, done = [], set()
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in done and all(p in done for p in preds[n])]
        assert ready, "the exported graph has a cycle"
        order.extend(ready)
        done.update(ready)
    x = x.double()
    state: dict[str, torch.Tensor] = {}
    total = 0.0
    for _ in range(T):
        vals: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                vals[name] = x
                continue
            inp = sum(vals[p] for p in preds[name])
            if isinstance(node, nir.Conv2d):
                vals[name] = F.conv2d(inp, _t(node.weight), _t(node.bias), _pair(node.stride),
                                      node.padding if isinstance(node.padding, str) else _pair(node.padding),
                                      _pair(node.dilation), int(node.groups))
            elif isinstance(node, nir.Affine):
                vals[name] = F.linear(inp, _t(node.weight), _t(node.bias))
            elif isinstance(node, nir.Linear):
                vals[name] = F.linear(inp, _t(node.weight))
            elif isinstance(node, nir.AvgPool2d):
                vals[name] = F.avg_pool2d(inp, _pair(node.kernel_size), _pair(node.stride), _pair(node.padding))
            elif isinstance(node, nir.Flatten):
                vals[name] = inp.flatten(int(node.start_dim) + 1, int(node.end_dim) if node.end_dim < 0 else
                                         int(node.end_dim) + 1)
            elif isinstance(node, nir.IF):
                if name not in state:
                    v0 = node.metadata.get("v0") if snnbridge_neuron else None
                    state[name] = (_t(v0) if v0 is not None else torch.zeros(())).expand_as(inp).clone()
                thr, r = _t(node.v_threshold), _t(node.r)
                v = state[name] + dt * r * inp
                s = (v >= thr) if snnbridge_neuron else (v > thr)
                s = s.double()
                v = v - thr * s if snnbridge_neuron else torch.where(s > 0, _t(node.v_reset), v)
                state[name] = v
                vals[name] = s
            elif isinstance(node, nir.Output):
                vals[name] = inp
                total = total + inp
            else:
                raise AssertionError(f"unexpected node type {type(node).__name__}")
    return total / T


# -- tests ----------------------------------------------------------------------------------------------------


def _by_site(graph) -> dict[str, str]:
    return {node.metadata["site"]: name for name, node in graph.nodes.items() if isinstance(node, nir.IF)}


def test_every_node_parameter_and_edge_reads_back(tmp_path):
    snn = convert([{"robustnorm": {"channelwise": True}}, "opi"])
    path = tmp_path / "net.nir"
    written = snnbridge.export_nir(snn, path, reset="zero", v0="metadata", dt=DT)
    assert not snnbridge.is_folded(snn)  # exported from a folded copy
    folded = snnbridge.fold_scales(snn)
    graph = nir.read(str(path))
    assert set(graph.nodes) == set(written.nodes)
    sites = _by_site(graph)
    s1, s2, s3, s4 = (sites[n] for n in snn.sites)
    expected_edges = {("input", "c1"), ("c1", s1), (s1, "pool"), ("pool", "c2"), ("pool", "proj"), ("c2", s2),
                      (s2, "c3"), ("c3", s3), ("proj", s3), (s3, "gap"), ("gap", "flatten"), ("flatten", "fc1"),
                      ("fc1", s4), (s4, "fc2"), ("fc2", "output")}
    assert {tuple(e) for e in graph.edges} == expected_edges and len(graph.edges) == len(expected_edges)
    types = {n: type(node).__name__ for n, node in graph.nodes.items()}
    assert types == {"input": "Input", "c1": "Conv2d", s1: "IF", "pool": "AvgPool2d", "c2": "Conv2d", s2: "IF",
                     "c3": "Conv2d", "proj": "Conv2d", s3: "IF", "gap": "AvgPool2d", "flatten": "Flatten",
                     "fc1": "Affine", s4: "IF", "fc2": "Affine", "output": "Output"}
    gm = folded.graph_module
    for name in ("c1", "c2", "c3", "proj"):
        m, node = gm.get_submodule(name), graph.nodes[name]
        assert np.array_equal(node.weight, m.weight.detach().numpy())
        bias = m.bias.detach().numpy() if m.bias is not None else np.zeros(m.out_channels, dtype=np.float32)
        assert np.array_equal(node.bias, bias)
        assert _pair(node.stride) == m.stride and _pair(node.padding) == m.padding and int(node.groups) == 1
    for name in ("fc1", "fc2"):
        m, node = gm.get_submodule(name), graph.nodes[name]
        assert np.array_equal(node.weight, m.weight.detach().numpy()) and np.array_equal(node.bias, m.bias.numpy())
    assert _pair(graph.nodes["pool"].kernel_size) == (2, 2) and _pair(graph.nodes["gap"].kernel_size) == (2, 2)
    assert _pair(graph.nodes["gap"].stride) == (2, 2)
    assert list(np.asarray(graph.nodes["input"].input_type["input"])) == [3, 8, 8]
    shapes = {s1: (8, 8, 8), s2: (8, 4, 4), s3: (8, 4, 4), s4: (16,)}
    for site, name in sites.items():
        node = graph.nodes[name]
        assert node.v_threshold.shape == shapes[name] and np.all(node.v_threshold == 1.0)
        assert np.allclose(node.r, 1.0 / DT) and np.all(node.v_reset == 0.0)
        v0 = folded.specs[site].v0_tensor(torch.zeros(1, *shapes[name]))[0].numpy()
        assert np.allclose(node.metadata["v0"], v0) and np.allclose(v0, 0.5)  # OPI: theta/2 -> 1/2 after folding
    # the graph read back, run with the snnbridge neuron, is the SNN
    x, _ = dd.test_set()
    x = x[:64]
    ref = copy.deepcopy(folded).double()(x.double())  # the float32 weights of the file, run in float64
    assert torch.allclose(run_nir(graph, x, 16, snnbridge_neuron=True), ref, rtol=1e-9, atol=1e-9)


def test_reset_to_zero_is_lossy_and_measured(tmp_path):
    x, y = dd.test_set()
    x, y = x[:256], y[:256]
    ann_acc = float((trained()(x).argmax(1) == y).float().mean())
    rows = []
    for label, recipe, T in (("robustnorm", [{"robustnorm": {"percentile": 99.9}}], 16),
                             ("robustnorm", [{"robustnorm": {"percentile": 99.9}}], 32),
                             ("robustnorm + opi", [{"robustnorm": {"percentile": 99.9}}, "opi"], 32)):
        snn = convert(recipe, T=T)
        graph = snnbridge.export_nir(snn, tmp_path / f"T{T}.nir", reset="zero", v0="metadata", dt=DT)
        soft = run_nir(graph, x, T, snnbridge_neuron=True)  # v0 from the metadata, reset by subtraction
        hard = run_nir(graph, x, T, snnbridge_neuron=False)  # NIR's IF: from 0, reset to 0
        ref = snnbridge.fold_scales(snn).double()(x.double())
        assert torch.allclose(soft, ref, rtol=1e-9, atol=1e-9)  # the soft-reset graph is the SNN
        assert not torch.allclose(hard, soft, atol=1e-3)  # reset to zero loses the residual charge
        acc = [float((v.argmax(1) == y).float().mean()) for v in (soft, hard)]
        rows.append(f"{label}, T={T}: SNN {acc[0]:.3f}, NIR reset-to-zero {acc[1]:.3f}")
    print(f"\nANN {ann_acc:.3f}; " + "; ".join(rows))
    assert ann_acc > 0.7  # the net learned the task, so the accuracies above mean something


def test_refusals_name_what_cannot_be_exported(tmp_path, monkeypatch):
    snn = convert(["maxnorm"])
    with pytest.raises(InputError, match="resets by subtraction.*NIR's IF node resets to v_reset.*reset='zero'"):
        snnbridge.export_nir(snn, tmp_path / "a.nir")
    with pytest.raises(InputError, match="reset must be one of"):
        snnbridge.export_nir(snn, tmp_path / "a.nir", reset="soft")
    opi = convert(["maxnorm", "opi"])
    first = next(iter(opi.sites))
    with pytest.raises(InputError, match=f"site '{first}' starts from a non-zero membrane potential.*v0='metadata'"):
        snnbridge.export_nir(opi, tmp_path / "b.nir", reset="zero")
    # max-pool (BNNet: one in front of a site), per-input corrections, per-step tables, unsupported nodes
    with pytest.raises(InputError, match="max-pool 'mp' is moved in front of site"):
        snnbridge.export_nir(convert(["maxnorm"], model=zoo.BNNet().eval()), tmp_path / "c.nir", reset="zero")
    prepared = snnbridge.prepare(trained(), [{"qcfs": {"levels": 4}}])
    cos = convert(["qcfs", {"cos": {"rho": 2}}], model=prepared)
    with pytest.raises(InputError, match=f"site '{next(iter(cos.sites))}' has a per-input correction.*cos"):
        snnbridge.export_nir(cos, tmp_path / "d.nir", reset="zero", v0="metadata")
    ftbc = convert(["maxnorm", {"ftbc": {"batches": 1, "iterations": 1}}], T=4)
    with pytest.raises(InputError, match=f"site '{next(iter(ftbc.sites))}' has a per-step bias table"):
        snnbridge.export_nir(ftbc, tmp_path / "e.nir", reset="zero")
    cat = snnbridge.convert(_CatNet().eval(), ["maxnorm"],
                            calibration=dd.calibration_batches(), timesteps=4, progress=False)
    with pytest.raises(InputError, match="node 'cat' cannot be written to NIR: cat has no NIR node"):
        snnbridge.export_nir(cat, tmp_path / "f.nir", reset="zero")
    assert not (tmp_path / "f.nir").exists()
    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(MissingRequirementError, match=r"pip install 'snnbridge\[nir\]'"):
        snnbridge.export_nir(snn, tmp_path / "g.nir", reset="zero")


class _CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)
        self.head = nn.Linear(4 * 64, 2)

    def forward(self, x):
        return self.head(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1).flatten(1))


def test_spikingjelly_reads_the_file_as_nir_if_neurons(tmp_path):
    """A real reader: SpikingJelly's ``import_from_nir`` builds IF neurons (hard reset) from the file."""
    pytest.importorskip("nirtorch")
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    T = 8
    snn = convert([{"robustnorm": {"percentile": 99.9}}], T=T)
    path = tmp_path / "sj.nir"
    snnbridge.export_nir(snn, path, reset="zero")  # dt = 1: r = 1
    gm = import_from_nir(str(path), dt=1.0, dtype=torch.float64)
    x, _ = dd.test_set()
    x = x[:32].double()
    state, total = None, 0.0
    with torch.no_grad():
        for _ in range(T):
            out, state = gm(x, state)
            total = total + out
    expected = run_nir(nir.read(str(path)), x, T, snnbridge_neuron=False, dt=1.0)
    assert torch.allclose(total / T, expected, rtol=1e-9, atol=1e-9)
