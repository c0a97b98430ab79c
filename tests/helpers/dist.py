"""Run a function in N gloo processes on the loopback interface, bounded in time, and return each rank's result.

``run_ranks(fn, world=2, args=(...))`` starts ``world`` fresh Python processes (spawn), each
with ``torch.distributed`` initialised (gloo, 127.0.0.1, a free port, one thread), calls
``fn(rank, world, *args)`` and returns the list of results in rank order. ``fn`` must be a
module-level function of an importable module (tests/helpers/..., or a test module: pytest
puts tests/ on sys.path) and return picklable values (tensors are fine). A rank that raises
makes the whole call raise with that rank's traceback; a run past ``timeout`` seconds is
killed and fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import traceback

import torch.multiprocessing as mp

TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, paths: list[str], fn, args, queue) -> None:
    import torch
    import torch.distributed as dist

    sys.path[:0] = [p for p in paths if p not in sys.path]
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TQDM_DISABLE="1")
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
        try:
            # plain pickle bytes: torch's multiprocessing queue would pass tensors through shared memory that
            # vanishes when this process exits before the parent reads it
            queue.put((rank, True, pickle.dumps(fn(rank, world, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))


def run_ranks(fn, world: int = 2, args: tuple = (), timeout: float = TIMEOUT_S) -> list:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each computed in its own gloo process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    paths = [p for p in sys.path if p]
    procs = [ctx.Process(target=_entry, args=(r, world, port, paths, fn, args, queue), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    errors = []
    try:
        for _ in range(world):
            rank, ok, value = queue.get(timeout=timeout)
            if ok:
                results[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
                break
    except Exception as exc:  # queue.Empty: a rank hung (a collective some rank never reached)
        errors.append(f"ranks did not finish within {timeout:.0f} s ({type(exc).__name__}); got results from "
                      f"ranks {sorted(results)}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world)]
