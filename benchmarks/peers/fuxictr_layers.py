"""Layer parity: mldcn's interaction layers against FuxiCTR 2.3.10's, with the same weights.

    .venv/bin/python benchmarks/peers/fuxictr_layers.py

One command, two environments. In mldcn's environment this script builds each
mldcn layer, randomises every bias / norm parameter (so a dropped bias cannot
hide behind a zero init), maps the state dict to FuxiCTR's parameter names and
layouts, and writes cases (config, FuxiCTR-named state, inputs) to a temporary
``.pt`` file. It then runs itself with ``--peer`` under FuxiCTR's virtual
environment (``.bench/fuxictr-venv``, made by ``benchmarks/peer_fuxictr.py``'s
``ensure_venv`` if missing; FuxiCTR is never a dependency of mldcn), where only
torch and fuxictr are imported: FuxiCTR's layers load the state with
``strict=True`` and run the same inputs. Back here the outputs are compared and
the max absolute difference printed per layer and setting.

Both sides run in float64, so the pass mark (max |diff| <= 1e-5) measures the
mapping and the maths, not float32 summation order; the float32 difference is
printed alongside for information (not gated). Exit status 1 if any float64
difference exceeds the tolerance.

Notation: B batch, F fields, D embedding size, H_k CIN maps, a attention width.

What is compared (only layers FuxiCTR's PyPI package ships, under
``fuxictr/pytorch/layers``):

* ``CompressedInteractionNet`` (CIN, 1-3 layers) and ``XDeepFMInteraction``
  (CIN ; LR) against FuxiCTR's ``CompressedInteractionNet`` (+ ``LogisticRegression``);
* ``FactorizationMachine`` against FuxiCTR's ``FactorizationMachine``
  (``InnerProductInteraction(product_sum)`` + ``LogisticRegression``);
* ``DotInteraction`` and ``DLRMInteraction(concat_embeddings=False)`` against
  ``InnerProductInteraction(inner_product)`` (+ ``MLP_Block``);
* ``MultiHeadSelfAttention`` / ``AutoInt``: FuxiCTR's ``MultiHeadSelfAttention``
  lives in its model zoo (``model_zoo/AutoInt/src/AutoInt.py``), which the PyPI
  package does not contain. The attention core here is the package's
  ``ScaledDotProductAttention``; the wrapper around it (projections ``W_q``,
  ``W_k``, ``W_v``, ``W_res``, head split, residual, ``layer_norm``, ReLU) is
  restated in :class:`ZooStyleSelfAttention` following the zoo's order and
  parameter names, so those rows check mldcn against that reading of the zoo.

Not compared: FinalMLP's and GDCN's layers (model zoo only, not in the PyPI
package), CIN ``split_half`` (FuxiCTR has no such option).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = HERE.parent.parent / ".bench" / "fuxictr-venv"
TOLERANCE = 1e-5
DTYPES = {"float64": torch.float64, "float32": torch.float32}


# --------------------------------------------------------------------------------------
# FuxiCTR side (runs in the peer venv; imports torch and fuxictr only)
# --------------------------------------------------------------------------------------


def _peer_modules():
    """Classes built on FuxiCTR's package, defined lazily so mldcn's side never imports fuxictr."""
    from torch import nn
    from fuxictr.pytorch.layers import ScaledDotProductAttention

    class ZooStyleSelfAttention(nn.Module):
        """FuxiCTR model-zoo AutoInt's self-attention layer, restated around the package's
        ``ScaledDotProductAttention`` (same parameter names: W_q, W_k, W_v, W_res, layer_norm).

        q, k, v = X W_q, X W_k, X W_v, split into heads as ``[B, H, F, a/H]``;
        out = ScaledDotProductAttention(q, k, v, scale = sqrt(a/H) if use_scale else None);
        heads concatenated; + (X W_res if in != a else X) when use_residual; LayerNorm; ReLU.
        """

        def __init__(self, input_dim, attention_dim, num_heads, use_residual, use_scale, layer_norm):
            super().__init__()
            self.num_heads, self.head_dim = num_heads, attention_dim // num_heads
            self.use_residual = use_residual
            self.scale = self.head_dim ** 0.5 if use_scale else None
            self.W_q = nn.Linear(input_dim, attention_dim, bias=False)
            self.W_k = nn.Linear(input_dim, attention_dim, bias=False)
            self.W_v = nn.Linear(input_dim, attention_dim, bias=False)
            self.W_res = (
                nn.Linear(input_dim, attention_dim, bias=False)
                if use_residual and input_dim != attention_dim
                else None
            )
            self.dot_attention = ScaledDotProductAttention(0.0)
            self.layer_norm = nn.LayerNorm(attention_dim) if layer_norm else None

        def forward(self, x):
            batch = x.size(0)

            def heads(t):  # [B, F, a] -> [B, H, F, a/H]
                return t.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

            out, _ = self.dot_attention(heads(self.W_q(x)), heads(self.W_k(x)), heads(self.W_v(x)), scale=self.scale)
            out = out.transpose(1, 2).reshape(batch, -1, self.num_heads * self.head_dim)  # [B, F, a]
            if self.use_residual:
                out = out + (x if self.W_res is None else self.W_res(x))
            if self.layer_norm is not None:
                out = self.layer_norm(out)
            return out.relu()

    return ZooStyleSelfAttention


def _feature_map(num_fields, vocab_size):
    """An in-memory FuxiCTR FeatureMap of ``num_fields`` categorical fields f0, f1, ..."""
    from collections import OrderedDict

    from fuxictr.features import FeatureMap

    feature_map = FeatureMap("parity", tempfile.gettempdir())
    feature_map.features = OrderedDict(
        (f"f{i}", {"type": "categorical", "source": "", "vocab_size": vocab_size}) for i in range(num_fields)
    )
    feature_map.num_fields = num_fields
    return feature_map


def _peer_build(case):
    """FuxiCTR's module for a case, and a function of the case's inputs that runs it."""
    from torch import nn
    from fuxictr.pytorch.layers import (
        CompressedInteractionNet,
        FactorizationMachine,
        InnerProductInteraction,
        LogisticRegression,
        MLP_Block,
    )

    c, kind = case["config"], case["kind"]
    if kind == "cin":
        module = CompressedInteractionNet(c["num_fields"], list(c["layer_sizes"]), output_dim=sum(c["layer_sizes"]))
        return module, lambda inp: module(inp["x"])
    if kind == "xdeepfm":
        module = nn.ModuleDict({
            "cin": CompressedInteractionNet(c["num_fields"], list(c["layer_sizes"]), output_dim=sum(c["layer_sizes"])),
            "lr": LogisticRegression(_feature_map(c["num_fields"], c["vocab_size"]), use_bias=False),
        })
        return module, lambda inp: torch.cat([module["cin"](inp["x"]), module["lr"](inp["X"])], dim=1)
    if kind == "fm":
        module = FactorizationMachine(_feature_map(c["num_fields"], c["vocab_size"]))
        return module, lambda inp: torch.cat(
            [module.lr_layer(inp["X"]), module.fm_layer(inp["x"]), module(inp["X"], inp["x"])], dim=1
        )
    if kind == "product_sum":
        module = InnerProductInteraction(c["num_fields"], output="product_sum")
        return module, lambda inp: module(inp["x"])
    if kind == "inner_product":
        module = InnerProductInteraction(c["num_fields"], output="inner_product")
        return module, lambda inp: module(inp["x"])
    if kind == "dlrm":
        module = nn.ModuleDict({
            "dot": InnerProductInteraction(c["num_fields"], output="inner_product"),
            "top": MLP_Block(
                c["num_fields"] * (c["num_fields"] - 1) // 2,
                hidden_units=[c["top_mlp_dim"]] * c["top_mlp_layers"],
                hidden_activations="ReLU",
                batch_norm=c["batch_norm"],
            ),
        })
        return module, lambda inp: module["top"](module["dot"](inp["x"]))
    if kind == "autoint":
        attention = _peer_modules()
        module = nn.Sequential(*[
            attention(c["dim"] if i == 0 else c["attention_dim"], c["attention_dim"], c["num_heads"],
                      c["use_residual"], c["use_scale"], c["layer_norm"])
            for i in range(c["num_layers"])
        ])
        return module, lambda inp: module(inp["x"]).flatten(1)
    raise ValueError(f"unknown case kind {kind!r}")


# buffers FuxiCTR builds itself from the shapes (not weights to copy)
_SELF_BUILT = ("triu_mask", "triu_index")


def _load(module, state):
    """Load the mapped state with every FuxiCTR parameter accounted for (strict)."""
    full = module.state_dict()
    missing = sorted(k for k in full if k not in state and not k.endswith(_SELF_BUILT))
    unexpected = sorted(k for k in state if k not in full)
    if missing or unexpected:
        raise KeyError(f"state does not match FuxiCTR's module: missing {missing}, unexpected {unexpected}")
    for key, value in state.items():
        if full[key].shape != value.shape:
            raise ValueError(f"{key}: FuxiCTR shape {tuple(full[key].shape)}, mapped {tuple(value.shape)}")
    full.update(state)
    module.load_state_dict(full, strict=True)


def peer_main(in_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    cases = torch.load(in_path, weights_only=True)
    outputs = []
    for case in cases:
        per_dtype = {}
        for dtype_name, dtype in DTYPES.items():
            module, run = _peer_build(case)
            module = module.to(dtype)
            _load(module, {k: v.to(dtype) if v.is_floating_point() else v for k, v in case["state"].items()})
            module.eval()
            inputs = {
                "x": case["inputs"]["x"].to(dtype),
                "X": {k: v for k, v in case["inputs"].get("X", {}).items()},
            }
            with torch.no_grad():
                per_dtype[dtype_name] = run(inputs)
        outputs.append(per_dtype)
    torch.save(outputs, out_path)


# --------------------------------------------------------------------------------------
# mldcn side (runs in mldcn's venv)
# --------------------------------------------------------------------------------------


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Make every parameter and running statistic informative: weights keep their
    (Xavier) init, zero-initialised biases and norm affines get random values."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
            elif p.dim() == 1:  # LayerNorm / BatchNorm scale
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=generator))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=generator))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=generator))


def cin_to_fuxictr(cin, prefix: str = "") -> dict[str, torch.Tensor]:
    """mldcn ``compress[k]`` (Linear over i·F + j) → FuxiCTR ``cin_layer.layer_{k+1}`` (Conv1d, kernel 1).

    mldcn's product index is (map i of X^{k-1}) major, (field j) minor: ``z[..., i·F + j]``.
    FuxiCTR's ``einsum("bhd,bmd->bhmd", X_0, X_i).view(B, -1, D)`` puts the field
    first: channel ``j·H_{k-1} + i``. So ``conv.weight[h, j·H_{k-1} + i, 0] =
    linear.weight[h, i·F + j]``: view [H_k, H_{k-1}, F], swap the last two axes,
    flatten, add the kernel axis. Biases are copied as they are. FuxiCTR's final
    ``fc`` (Σ H_k → output_dim) is set to the identity so its output is p+.
    """
    state = {}
    fields = cin.num_fields
    for k, linear in enumerate(cin.compress):
        out_maps, products = linear.weight.shape
        in_maps = products // fields
        weight = linear.weight.detach().view(out_maps, in_maps, fields).transpose(1, 2).reshape(out_maps, products)
        state[f"{prefix}cin_layer.layer_{k + 1}.weight"] = weight.unsqueeze(-1).clone()  # [H_k, F·H_{k-1}, 1]
        state[f"{prefix}cin_layer.layer_{k + 1}.bias"] = linear.bias.detach().clone()
    width = cin.out_dim
    state[f"{prefix}fc.weight"] = torch.eye(width)
    state[f"{prefix}fc.bias"] = torch.zeros(width)
    return state


def first_order_to_lr(first_order, tables: list[torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """mldcn's ``w^T flatten(E)`` → FuxiCTR ``LogisticRegression`` per-value scalars.

    FuxiCTR's LR has a free scalar per feature value (a 1-d embedding table per
    field); mldcn's first-order term reads it from the value's embedding, ``w_f^T e_{f,v}``
    (see mldcn.layers.fm). The tied scalars are written into FuxiCTR's tables:
    ``table_f[v] = T_f[v] · w_f`` with ``w_f = linear.weight.view(F, D)[f]``.
    """
    w = first_order.linear.weight.detach().double().view(first_order.num_fields, first_order.dim)  # [F, D]
    return {  # in float64, so the tied scalars are exact for the float64 comparison
        f"{prefix}embedding_layer.embedding_layer.embedding_layers.f{f}.weight": (table.double() @ w[f]).unsqueeze(1)
        for f, table in enumerate(tables)
    }


def mlp_to_fuxictr(mlp, prefix: str) -> dict[str, torch.Tensor]:
    """mldcn ``MLP.layers`` → FuxiCTR ``MLP_Block.mlp``: both Sequential(Linear, [BN], ReLU)·L,
    with no Dropout module at rate 0, so the indices coincide; names map one to one."""
    kinds = [type(m).__name__ for m in mlp.layers]
    assert "Dropout" not in kinds, kinds
    return {f"{prefix}mlp.{name[len('layers.'):]}": t.detach().clone() for name, t in mlp.state_dict().items()}


def attention_to_fuxictr(layer, prefix: str) -> dict[str, torch.Tensor]:
    """mldcn ``query/key/value/residual/norm`` → FuxiCTR ``W_q/W_k/W_v/W_res/layer_norm``.

    Both are ``nn.Linear(in, a, bias=False)`` with weight ``[a, in]``, so no transpose;
    both split heads by ``view(B, F, H, a/H)``, so head η owns columns
    ``η·a/H .. (η+1)·a/H`` of the output on both sides and no per-head reordering is needed.
    """
    names = {"query": "W_q", "key": "W_k", "value": "W_v", "residual": "W_res", "norm": "layer_norm"}
    state = {}
    for name, tensor in layer.state_dict().items():
        module, _, param = name.partition(".")
        state[f"{prefix}{names[module]}.{param}"] = tensor.detach().clone()
    return state


def build_cases(seed: int = 0):
    """mldcn modules, their outputs, and the FuxiCTR-named state for each comparison."""
    from mldcn.layers.autoint import AutoInt, MultiHeadSelfAttention
    from mldcn.layers.cin import CompressedInteractionNet, XDeepFMInteraction
    from mldcn.layers.dot import DLRMInteraction, DotInteraction
    from mldcn.layers.fm import FactorizationMachine, fm_second_order

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    batch, fields, dim, vocab = 16, 6, 5, 7
    cases = []

    def embeddings(num_fields=fields, width=dim):
        return torch.randn(batch, num_fields, width, generator=gen)  # [B, F, D]

    def categorical(num_fields=fields, width=dim):
        """Per-field tables T_f [V, D], indices [B, F], and the gathered [B, F, D]."""
        tables = [torch.randn(vocab, width, generator=gen) for _ in range(num_fields)]
        index = torch.randint(0, vocab, (batch, num_fields), generator=gen)
        x = torch.stack([tables[f][index[:, f]] for f in range(num_fields)], dim=1)  # [B, F, D]
        return tables, index, x, {f"f{f}": index[:, f].clone() for f in range(num_fields)}

    def add(name, settings, kind, config, module, state, inputs, mldcn_run):
        module.eval()
        outs = {}
        for dtype_name, dtype in DTYPES.items():
            m = module.to(dtype)
            with torch.no_grad():
                outs[dtype_name] = mldcn_run(m, inputs["x"].to(dtype)).detach().clone()
        module.to(torch.float64)
        cases.append({
            "name": name, "settings": settings, "kind": kind, "config": config,
            "state": state, "inputs": inputs, "mldcn": outs,
        })

    # CIN: 1-3 layers, F != D != H_k so a wrong layout cannot line up by accident
    for sizes in [(4,), (4, 6), (5, 3, 7), (8, 8, 8)]:
        cin = CompressedInteractionNet(fields, dim, sizes)
        _randomise(cin, gen)
        x = embeddings()
        add("CompressedInteractionNet", f"layers={list(sizes)}", "cin",
            {"num_fields": fields, "layer_sizes": list(sizes)}, cin, cin_to_fuxictr(cin), {"x": x},
            lambda m, x: m(x))

    # xDeepFM's explicit part: [p+ ; LR]
    sizes = (4, 6)
    net = XDeepFMInteraction(fields, dim, sizes)
    _randomise(net, gen)
    tables, _, x, X = categorical()
    state = cin_to_fuxictr(net.cin, "cin.") | first_order_to_lr(net.first_order, tables, "lr.")
    add("XDeepFMInteraction", f"layers={list(sizes)}; LR tied", "xdeepfm",
        {"num_fields": fields, "layer_sizes": list(sizes), "vocab_size": vocab}, net, state, {"x": x, "X": X},
        lambda m, x: m(x))

    # FM: [LR, FM, LR + FM + bias]; FuxiCTR's LR bias is set to 0 (mldcn's head owns the bias)
    fm = FactorizationMachine(fields, dim)
    tables, _, x, X = categorical()
    state = first_order_to_lr(fm.first_order, tables, "lr_layer.") | {"lr_layer.bias": torch.zeros(1)}
    add("FactorizationMachine", "[first, second, first+second]", "fm",
        {"num_fields": fields, "vocab_size": vocab}, fm, state, {"x": x, "X": X},
        lambda m, x: torch.cat([m(x), m(x).sum(dim=1, keepdim=True)], dim=1))

    add("fm_second_order", "vs InnerProductInteraction(product_sum)", "product_sum",
        {"num_fields": fields}, torch.nn.Identity(), {}, {"x": embeddings()}, lambda m, x: fm_second_order(x))

    # DLRM dot products, and the dot products feeding the top MLP
    dot = DotInteraction(fields, dim)
    add("DotInteraction", "vs InnerProductInteraction(inner_product)", "inner_product",
        {"num_fields": fields}, dot, {}, {"x": embeddings()}, lambda m, x: m(x))
    for layers, batch_norm in [(1, False), (2, True)]:
        net = DLRMInteraction(fields, dim, top_mlp_dim=9, top_mlp_layers=layers, concat_embeddings=False,
                              batch_norm=batch_norm)
        _randomise(net, gen)
        add("DLRMInteraction", f"concat=False, top={[9] * layers}, bn={batch_norm}", "dlrm",
            {"num_fields": fields, "top_mlp_dim": 9, "top_mlp_layers": layers, "batch_norm": batch_norm},
            net, mlp_to_fuxictr(net.top, "top."), {"x": embeddings()}, lambda m, x: m(x))

    # self-attention: one layer over every option, in == a (identity residual) and in != a (W_res)
    for in_dim, attention_dim in [(8, 8), (dim, 8)]:
        for heads in (1, 2):
            for use_scale in (False, True):
                for use_residual in (False, True):
                    for layer_norm in (False, True):
                        layer = MultiHeadSelfAttention(fields, in_dim, attention_dim, heads,
                                                       use_residual, use_scale, layer_norm)
                        _randomise(layer, gen)
                        config = {"dim": in_dim, "attention_dim": attention_dim, "num_heads": heads,
                                  "use_residual": use_residual, "use_scale": use_scale,
                                  "layer_norm": layer_norm, "num_layers": 1}
                        settings = (f"i={in_dim} a={attention_dim} H={heads} scale={int(use_scale)} "
                                    f"res={int(use_residual)} ln={int(layer_norm)}")
                        add("MultiHeadSelfAttention", settings, "autoint", config, layer,
                            attention_to_fuxictr(layer, "0."), {"x": embeddings(width=in_dim)},
                            lambda m, x: m(x).flatten(1))

    # AutoInt stacks (BARS Frappe style: scaled, LayerNorm, several heads)
    for layers, heads, use_scale, layer_norm in [(3, 2, False, False), (3, 2, True, True), (2, 4, True, True)]:
        net = AutoInt(fields, dim, layers, attention_dim=8, num_heads=heads, use_scale=use_scale,
                      layer_norm=layer_norm)
        _randomise(net, gen)
        state = {}
        for i, layer in enumerate(net.layers):
            state |= attention_to_fuxictr(layer, f"{i}.")
        config = {"dim": dim, "attention_dim": 8, "num_heads": heads, "use_residual": True,
                  "use_scale": use_scale, "layer_norm": layer_norm, "num_layers": layers}
        add("AutoInt", f"L={layers} a=8 H={heads} scale={int(use_scale)} res=1 ln={int(layer_norm)}",
            "autoint", config, net, state, {"x": embeddings()}, lambda m, x: m(x))
    return cases


def peer_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.exists():
        return python
    sys.path.insert(0, str(HERE.parent))
    from peer_fuxictr import ensure_venv  # creates the venv as the DCNv2 peer benchmark does

    return ensure_venv(venv)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="FuxiCTR's virtual environment")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.peer:
        peer_main(*args.peer)
        return 0

    torch.set_num_threads(1)
    cases = build_cases(args.seed)
    python = peer_python(args.venv)
    with tempfile.TemporaryDirectory(prefix="fuxictr-layers-") as tmp:
        in_path, out_path = Path(tmp) / "cases.pt", Path(tmp) / "fuxictr.pt"
        torch.save([{k: v for k, v in c.items() if k != "mldcn"} for c in cases], in_path)
        result = subprocess.run([str(python), __file__, "--peer", str(in_path), str(out_path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return 2
        peer_outputs = torch.load(out_path, weights_only=True)

    version = subprocess.run([str(python), "-c", "import fuxictr, torch; print(fuxictr.__version__, torch.__version__)"],
                             capture_output=True, text=True).stdout.split()
    print(f"mldcn vs FuxiCTR {version[0]} (peer torch {version[1]}), same weights and inputs; "
          f"gate: float64 max|diff| <= {TOLERANCE:g}")
    header = f"{'layer':<26} {'settings':<42} {'out shape':<10} {'max|ref|':>9} {'f64 max|diff|':>14} {'f32 max|diff|':>14}  ok"
    print(header)
    print("-" * len(header))
    failures = 0
    for case, peer in zip(cases, peer_outputs):
        ours, theirs = case["mldcn"], peer
        shapes_match = all(ours[d].shape == theirs[d].shape for d in DTYPES)
        if shapes_match:
            diff = {d: (ours[d] - theirs[d]).abs().max().item() for d in DTYPES}
        else:
            diff = {d: float("inf") for d in DTYPES}
        ok = shapes_match and diff["float64"] <= TOLERANCE
        failures += not ok
        shape = "x".join(map(str, ours["float64"].shape))
        scale = ours["float64"].abs().max().item()
        print(f"{case['name']:<26} {case['settings']:<42} {shape:<10} {scale:>9.3g} "
              f"{diff['float64']:>14.3e} {diff['float32']:>14.3e}  {'ok' if ok else 'DIFF'}")
    print(f"{len(cases) - failures}/{len(cases)} within {TOLERANCE:g}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
