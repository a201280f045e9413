"""rbe.torch with torch.distributed: two processes on gloo, DistributedDataParallel with its
default arguments (skipped when PyTorch is not installed)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra rbe[torch])")

import rbe  # noqa: E402

WORKER = textwrap.dedent("""
    import datetime
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel
    import rbe, rbe.torch as rt

    rank, store = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))    # a lost peer fails fast
    STEPS, BATCH = 20, 8

    def build(kind, seed):
        # State moves every 5 steps: transitions (tau = 0) or regrowth, from summed statistics.
        if kind.startswith("compressed"):  # of dense layers initialised differently per rank
            dense = nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 8), nn.Linear(8, 4))
            options = dict(kind="code", bits=2, state_bits=8) if kind == "compressed code" \
                else dict(block=(4, 4), k=4)
            return rt.compress(dense, filter=lambda name, m: name != "3", **options)
        if kind == "fused":
            first = rt.RBELinear.from_layer(rbe.FusedLinear(16, 12, block=(4, 4), seed=seed,
                                                            transition_every=5, tau=0.0,
                                                            max_moves=1.0))
        else:
            first = rt.RBELinear(16, 12, block=(4, 4), k=4, seed=seed, regrow_every=5)
        second = rt.RBELinear(12, 8, kind=kind, block=(4, 4), seed=seed + 1)
        return nn.Sequential(first, nn.Tanh(), second, nn.Linear(8, 4))

    def batch(step):
        rng = np.random.default_rng([rank, step])      # different data on each rank
        x = rng.standard_normal((BATCH, 16), np.float32)
        return torch.from_numpy(x), torch.from_numpy(np.tanh(x[:, :4] - x[:, 4:8]))

    def train(model, accumulate):
        ddp = DistributedDataParallel(model)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
        for step in range(STEPS):
            x, y = batch(step)
            opt.zero_grad()
            if accumulate:           # two micro-batches, the loss of each halved
                with ddp.no_sync():
                    (((ddp(x[:4]) - y[:4]) ** 2).mean() / 2).backward()
                (((ddp(x[4:]) - y[4:]) ** 2).mean() / 2).backward()
            else:
                ((ddp(x) - y) ** 2).mean().backward()
            opt.step()
        return model

    def train_fsdp(model):
        # FSDP2 shards the dense layer; the RBELinear parameters stay whole on every rank
        # (docs/torch.md), their gradients averaged by hand.
        from torch.distributed.fsdp import fully_shard
        compressed = [p for m in model.modules() if isinstance(m, rt.RBELinear)
                      for p in m.parameters()]
        fully_shard(model, ignored_params=set(compressed))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(STEPS):
            x, y = batch(step)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            for p in compressed:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
            opt.step()
        return model

    def snapshot(model):
        arrays = {}
        for k, v in model.state_dict().items():
            if isinstance(v, torch.Tensor):
                full = v.full_tensor() if hasattr(v, "full_tensor") else v    # FSDP: DTensor
                arrays[f"state/{k}"] = full.detach().numpy()
        for name, module in model.named_modules():
            if isinstance(module, rt.RBELinear):
                arrays.update({f"layer/{name}/{k}": np.asarray(v)
                               for k, v in module.layer._state()[1].items()})
        common = torch.from_numpy(np.random.default_rng(99).standard_normal((5, 16), np.float32))
        with torch.no_grad():
            arrays["forward"] = model(common).numpy()
        return arrays

    out = {}
    for kind in ("hybrid", "fused", "code"):
        before = snapshot(build(kind, seed=0))
        for mode in ("union", "accumulated"):
            torch.manual_seed(rank)
            model = build(kind, seed=10 * rank)     # different seeds: DDP broadcasts rank 0's
            arrays = snapshot(train(model, accumulate=mode == "accumulated"))
            out.update({f"{kind}/{mode}/{k}": v for k, v in arrays.items()})
        out.update({f"{kind}/initial/{k}": v for k, v in before.items()})
        fsdp = train_fsdp(build(kind, seed=0))      # FSDP broadcasts nothing: same seeds
        out.update({f"{kind}/fsdp/{k}": v for k, v in snapshot(fsdp).items()})
    # compress(transform="adaptive") picks other transforms and positions on each rank, the
    # code kind other codes and scales
    for kind in ("compressed", "compressed code"):
        torch.manual_seed(rank)
        arrays = snapshot(train(build(kind, seed=None), accumulate=False))
        out.update({f"{kind}/union/{k}": v for k, v in arrays.items()})
    np.savez(f"rank{rank}.npz", **out)
    dist.destroy_process_group()
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both ranks' arrays after training: {rank: {kind/mode/name: array}}."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "worker.py").write_text(WORKER)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(rbe.__file__)))
    env = os.environ | {"PYTHONPATH": package_parent, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "worker.py", str(rank), str(tmp / "store")],
                                cwd=tmp, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        for worker in workers:
            _, err = worker.communicate(timeout=300)
            assert worker.returncode == 0, err
    finally:
        for worker in workers:
            worker.kill()       # the other rank, if one failed
            worker.wait()
    return {rank: dict(np.load(tmp / f"rank{rank}.npz")) for rank in (0, 1)}


@pytest.mark.parametrize("kind, mode", [
    *((kind, mode) for kind in ("hybrid", "fused", "code")
      for mode in ("union", "accumulated", "fsdp")),
    ("compressed", "union"), ("compressed code", "union")])
def test_ranks_stay_identical(runs, kind, mode):
    """Different data per rank, 20 Adam steps: every parameter, buffer and layer array and the
    forward on a common input are equal. DistributedDataParallel with default arguments, models
    built with different seeds on each rank (union: one batch per step, accumulated: two
    micro-batches; compressed: rbe.torch.compress of dense layers initialised differently);
    FSDP2 with the RBELinear parameters left whole."""
    prefix = f"{kind}/{mode}/"
    names = [k for k in runs[0] if k.startswith(prefix)]
    assert any("/layer/" in k for k in names) and any(k.endswith("forward") for k in names)
    differing = {k[len(prefix):]: int(np.sum(runs[0][k] != runs[1][k])) for k in names}
    assert not any(differing.values()), differing


@pytest.mark.parametrize("kind", ["hybrid", "fused"])
def test_accumulated_micro_batches_equal_one_step_on_their_union(runs, kind):
    """Two micro-batches per step give the union's gradients (up to float rounding) and,
    the statistics adding up, the same state moves."""
    union, parts, initial = (f"{kind}/{mode}/" for mode in ("union", "accumulated", "initial"))
    arrays = runs[0]
    if kind == "fused":
        def states(prefix):
            return rbe.seeds.states(arrays[prefix + "state/0.hi"].view(np.uint64))
        assert not np.array_equal(states(union), states(initial))     # transitions happened
    else:
        assert not np.array_equal(arrays[union + "state/0.index"],
                                  arrays[initial + "state/0.index"])
    for name in [k[len(union):] for k in arrays if k.startswith(union)]:
        a, b = arrays[union + name], arrays[parts + name]
        if name.endswith("/lo"):            # the r and theta master copies
            a, b = a.view("<f4"), b.view("<f4")
        if a.dtype.kind == "f":
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=name)
        elif name.endswith("hi"):
            # r and theta may differ in their last bits, and so their fixed-point fields;
            # the state selectors (the transitions) must not.
            np.testing.assert_array_equal(rbe.seeds.states(b.view(np.uint64)),
                                          rbe.seeds.states(a.view(np.uint64)), name)
        else:
            np.testing.assert_array_equal(b, a, err_msg=name)
