"""Benchmark: the generator's UNet call on ONNX Runtime against PyTorch, on the CPU (issue 15).

Issue 15 leaves it optional to sample through ONNX Runtime "if the figures justify it": the
sampler loop would stay in diffusers and only the UNet call would change. This prints the
figures that decide it. For each preset and pair size it builds the engine's own UNet
(``satsynth.generator.model.build_unet``, random weights, the Dubai class table as analog bits,
RGB), exports it with a dynamic batch axis (the TorchScript exporter, as ``satsynth export``),
checks that ONNX Runtime's output equals PyTorch's, then times one UNet call on a batch with
each runtime, alternating, best of ``--repeats``, in CPU seconds of this process on
``--threads`` threads (set before torch starts).

    .venv/bin/python benchmarks/bench_generator_onnx.py
    .venv/bin/python benchmarks/bench_generator_onnx.py --configs tiny:64:16 small:128:4

A sampling run is ``steps`` such calls (20 with DPM-Solver++ by default) plus the scheduler's
arithmetic, so the ratio of one call bounds the ratio of sampling.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import DUBAI_CLASSES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["tiny:64:16", "small:64:16", "tiny:128:8"],
                    metavar="PRESET:SIZE:BATCH")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    warnings.filterwarnings("ignore")

    import numpy as np
    import onnxruntime as ort
    import torch

    from satsynth.data.classes import ClassTable
    from satsynth.data.normalize import Normalizer
    from satsynth.generator.config import ArchConfig, DiffusionConfig, GeneratorConfig
    from satsynth.generator.model import build_unet
    from satsynth.predict.onnx_format import open_session

    torch.set_num_threads(a.threads)
    classes = ClassTable.from_dict([{"id": i, "name": n} for i, n in enumerate(DUBAI_CLASSES)])

    class Call(torch.nn.Module):  # the UNet call the sampler makes: (sample, timestep) -> output
        def __init__(self, unet: torch.nn.Module) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.unet(x, t).sample

    def best(f, *args) -> float:
        f(*args)
        times = []
        for _ in range(a.repeats):
            c = time.process_time()
            f(*args)
            times.append(time.process_time() - c)
        return min(times)

    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {a.threads} "
          f"thread(s); torch {torch.__version__}, onnxruntime {ort.__version__}")
    results = []
    with tempfile.TemporaryDirectory(prefix="satsynth-bench-gen-onnx-") as work:
        for spec in a.configs:
            preset, size, batch = spec.split(":")
            size, batch = int(size), int(batch)
            cfg = GeneratorConfig(arch=ArchConfig.preset(preset), diffusion=DiffusionConfig(),
                                  encoding="bits", classes=classes,
                                  normalization=Normalizer([0.0] * 3, [255.0] * 3, "uint8"),
                                  bands=3, dtype="uint8", chip_size=size)
            torch.manual_seed(0)
            call = Call(build_unet(cfg)).eval()
            x = torch.randn(batch, cfg.in_channels, size, size)
            t = torch.full((batch,), 500, dtype=torch.long)
            path = Path(work) / f"unet_{preset}_{size}.onnx"
            torch.onnx.export(call, (x, t), str(path), input_names=["x", "t"],
                              output_names=["y"], opset_version=17, dynamo=False,
                              dynamic_axes={"x": {0: "n"}, "t": {0: "n"}, "y": {0: "n"}})
            sess = open_session(ort, path)
            feed = {"x": x.numpy(), "t": t.numpy()}
            with torch.inference_mode():
                ref = call(x, t).numpy()
                diff = float(np.abs(sess.run(None, feed)[0] - ref).max())
                cpu_torch = best(call, x, t)
            cpu_onnx = best(sess.run, None, feed)
            r = {"preset": preset, "size": size, "batch": batch, "torch_cpu_s": cpu_torch,
                 "onnx_cpu_s": cpu_onnx, "speedup": cpu_torch / cpu_onnx, "max_abs_diff": diff}
            results.append(r)
            print(f"{preset} UNet, {batch} pairs of {size} px: one call torch {cpu_torch:.3f} "
                  f"CPU s, onnx {cpu_onnx:.3f} CPU s: onnx {r['speedup']:.2f}x faster; outputs "
                  f"differ by at most {diff:.1e}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
