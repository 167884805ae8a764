"""Functions run in the processes the distributed tests start (torch.multiprocessing spawn imports
this module by name, so it holds no pytest fixtures)."""
import socket

import torch

from recbole_dsl.quick_start import end_process_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_keys(rank, world, port):
    return {"local_rank": rank, "world_size": world, "nproc": world, "ip": "127.0.0.1", "port": port, "offset": 0,
            "ddp_timeout": 120}


def train_rank(rank, world, port, model, cfg, out):
    """Train and test one rank of a run; save its parameters and results."""
    import torch.distributed as dist
    from recbole_dsl.quick_start import build

    config, net, trainer, (train, valid, test) = build(model, cfg["dataset"], config_dict={**cfg, **ddp_keys(rank, world, port)})
    assert not config["single_spec"] and dist.get_world_size() == world
    trainer.fit(train, valid, saved=True)
    result = trainer.evaluate(test, load_best_model=True)
    torch.save({"state": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "test": dict(result),
                "batches": len(train)}, f"{out}/rank{rank}.pt")
    del config, net, trainer, train, valid, test
    end_process_group(True)


def injected_negatives(n_items, num):
    """Negatives as a fixed function of (user, positive): every layout of the batch draws the same."""
    from recbole_dsl.samplers.base import NegativeBatch

    def sample(user, pos_item):
        j = torch.arange(num, device=user.device)
        items = (user.unsqueeze(1) * 7919 + pos_item.unsqueeze(1) * 104729 + j * 31) % (n_items - 1) + 1
        return NegativeBatch(items)

    return sample


class OneBatch(list):
    shuffle = False


def step_rank(rank, world, port, cfg, rows, inject, out):
    """One SGD step in float64 on rank `rank`'s share (rows[rank::world]) of a fixed global batch."""
    from recbole.data.interaction import Interaction
    from recbole_dsl import Config, get_trainer
    from recbole_dsl.quick_start import prepare

    keys = ddp_keys(rank, world, port) if world > 1 else {}
    config = Config("BPR", cfg["dataset"], config_dict={**cfg, **keys}, cmd_args=[])
    _, net, _ = prepare(config)
    net.double()  # before DDP wraps it
    trainer = get_trainer(config["MODEL_TYPE"], "BPR")(config, net)
    if inject:
        net.neg_sampler.sample = injected_negatives(net.n_items, cfg["neg_num"])
    batch = Interaction({k: v[rank::world].contiguous() for k, v in rows.items()})
    losses = []
    calc = net.calculate_loss
    net.calculate_loss = lambda inter: losses.append(calc(inter)) or losses[-1]
    trainer._train_epoch(OneBatch([batch]), 0)
    torch.save({"state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "loss": float(losses[0].detach()), "rows": len(batch)}, f"{out}/step{world}-{rank}.pt")
    del net, trainer, calc, losses
    end_process_group(True)


def shared_rank(rank, world, port, n_items, num, out):
    """The shared sampler with neg_cross_rank on rank `rank` of a bare gloo group (no RecBole run)."""
    import datetime

    import torch.distributed as dist
    from recbole_dsl.samplers.base import SAMPLERS

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}",
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(100 + rank)  # each rank its own stream, as seed + rank gives a run
    sampler = SAMPLERS.get("shared")(n_items, num, cross_rank=True)
    torch.manual_seed(100 + rank)
    own = SAMPLERS.get("shared")(n_items, num).draw((num,), "cpu")  # what this rank draws itself
    user = torch.arange(3)
    pos = torch.tensor([1, 2, 3])
    negs = sampler.sample(user, pos)
    torch.save({"items": negs.items.clone(), "mask": negs.mask.clone(), "own": own}, f"{out}/shared{rank}.pt")
    end_process_group(True)
