"""Time HIME architectures on CPU (or GPU) and print one JSON line per run.

    .venv/bin/python benchmarks/bench_sr.py                      # hime_small_x4, 16 faces x 3 refs, 2 threads
    .venv/bin/python benchmarks/bench_sr.py --name hime_large_x4 --contiguous
    .venv/bin/python benchmarks/bench_sr.py --set channels=32     # what-if: override config fields
    python benchmarks/bench_sr.py --device cuda --train --batch 32  # one training step on a GPU
    .venv/bin/python benchmarks/bench_sr.py --dconv              # deformable conv vs torchvision

The budget for hime_small_x4 is <= 50 ms per face (batch 16, 3 refs, 2 threads). On a machine shared
with other jobs the median is pessimistic; ``ms_per_face_best`` is the least disturbed run.
"""

from __future__ import annotations

import argparse
import json

from hime_cli.sr.bench import benchmark_dconv, benchmark_sr, benchmark_train_step


def _value(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", action="append", help="architecture (repeatable); default hime_small_x4")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contiguous", action="store_true", help="NCHW instead of channels_last")
    parser.add_argument("--train", action="store_true", help="time a training step instead of inference")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (with --train)")
    parser.add_argument("--dconv", action="store_true", help="deformable conv vs torchvision (CPU) only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    overrides = {key: _value(value) for key, value in (item.split("=", 1) for item in args.set)}
    if args.dconv:
        print(json.dumps(benchmark_dconv(threads=args.threads, repeats=args.repeats)), flush=True)
        return
    for name in args.name or ["hime_small_x4"]:
        if args.train:
            result = benchmark_train_step(
                name, batch=args.batch, refs=args.refs, device=args.device, amp=args.amp, **overrides
            )
        else:
            result = benchmark_sr(
                name,
                batch=args.batch,
                refs=args.refs,
                threads=args.threads,
                repeats=args.repeats,
                device=args.device,
                channels_last=not args.contiguous,
                **overrides,
            )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
