"""A large save and load to S3 on loopback (moto's server) against s3fs's own upload and download.

Usage::

    python benchmarks/remote.py [--mb 1024] [--rounds 3] [--json FILE]

One callback holds one numpy array of ``--mb`` MB. Each round, alternating which goes first, times
``callstate.save`` and ``callstate.load`` to ``s3://`` against s3fs's ``pipe_file`` and ``cat_file`` of
the same bytes (the callstate file's own, so the baseline moves exactly as many bytes). Ratios are
medians over the rounds, each against the baseline of its own round. moto keeps objects in memory:
the server holds the file and the baseline's copy, so ``--mb`` needs about three times that free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any


class Big:
    """One callback whose state is one large array."""

    def __init__(self, nbytes: int) -> None:
        import numpy as np

        self.array = np.frombuffer(np.random.default_rng(0).bytes(nbytes), dtype=np.uint8).copy()

    @property
    def state_key(self) -> str:
        return "Big"

    def state_dict(self) -> dict[str, Any]:
        return {"array": self.array}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.array = state["array"]


def remote(mb: int, rounds: int) -> dict[str, Any]:
    """Return the medians and ratios of ``rounds`` alternating rounds of ``mb`` MB."""
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    import callstate

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {"key": "x", "secret": "x", "endpoint_url": f"http://{host}:{port}",
                   "client_kwargs": {"region_name": "us-east-1"}}
        fs = s3fs.S3FileSystem(**options)
        fs.call_s3("create_bucket", Bucket="bench")
        big = Big(mb << 20)
        url, raw = "s3://bench/run.callstate", "bench/raw.bin"
        data = callstate.dumps([big])  # the same bytes for the baseline
        times: dict[str, list[float]] = {k: [] for k in ("save", "load", "pipe_file", "cat_file")}

        def ours() -> None:
            t = time.perf_counter()
            callstate.save([big], url, storage_options=options)
            times["save"].append(time.perf_counter() - t)
            t = time.perf_counter()
            callstate.load([Big(0)], url, storage_options=options)
            times["load"].append(time.perf_counter() - t)

        def theirs() -> None:
            t = time.perf_counter()
            fs.pipe_file(raw, data)
            times["pipe_file"].append(time.perf_counter() - t)
            t = time.perf_counter()
            fs.cat_file(raw)
            times["cat_file"].append(time.perf_counter() - t)

        for r in range(rounds):
            for step in (ours, theirs) if r % 2 == 0 else (theirs, ours):
                step()
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    save_ratio = statistics.median(a / b for a, b in zip(times["save"], times["pipe_file"], strict=True))
    load_ratio = statistics.median(a / b for a, b in zip(times["load"], times["cat_file"], strict=True))
    rows = zip(times["save"], times["load"], times["pipe_file"], times["cat_file"], strict=True)
    both = statistics.median((s + lo) / (p + c) for s, lo, p, c in rows)
    return {
        "mb": mb,
        "rounds": rounds,
        **{f"{k}_s": v for k, v in med.items()},
        "save_ratio": save_ratio,
        "load_ratio": load_ratio,
        "ratio_vs_s3fs": both,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the result there too")
    args = parser.parse_args(argv)
    r = remote(args.mb, args.rounds)
    print(
        f"{r['mb']} MB to S3 on loopback (moto), {r['rounds']} rounds: save {r['save_s']:.2f} s "
        f"(pipe_file {r['pipe_file_s']:.2f} s, {r['save_ratio']:.2f}x), load {r['load_s']:.2f} s "
        f"(cat_file {r['cat_file_s']:.2f} s, {r['load_ratio']:.2f}x); save+load "
        f"{r['ratio_vs_s3fs']:.2f}x s3fs's own"
    )
    result = r
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
