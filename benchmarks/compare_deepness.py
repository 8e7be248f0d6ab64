"""Check: an exported SatSynth segmenter loads in Deepness with the right classes and scale, and
Deepness's own preprocessing and forward give the classes ``satsynth predict`` gives.

Deepness (PUTvision/qgis-plugin-deepness) is a QGIS plugin, never a dependency of this project;
its model classes (``deepness.processing.models``: ``Segmentor`` on ``ModelBase``) import no QGIS
and run in the engine's venv, which has onnxruntime and numpy. Pass the ``src`` folder of a
Deepness checkout:

    git clone https://github.com/PUTvision/qgis-plugin-deepness /tmp/deepness
    .venv/bin/python benchmarks/compare_deepness.py --deepness-src /tmp/deepness/src

It builds a segmenter with random weights (the 6 Dubai classes, trained pixel size 0.5 m, tile
512), exports it with ``satsynth export``, loads the file with Deepness's ``Segmentor`` and prints
what Deepness reads from it (model type, class names, resolution, tile size, overlap, threshold,
standardization, batch axis). Then one 512 x 512 RGB GeoTIFF (Dubai imagery where
``../shared/datasets`` is present) is predicted by ``satsynth predict`` (PyTorch, one tile, so
no blending) and by Deepness's ``Segmentor.process`` on the same 8-bit pixels (its division by
255, its standardization from our metadata, its transposition), and the argmax of Deepness's
output, mapped through the class table, is compared pixel by pixel with predict's class ids.
Exits 1 when anything Deepness reads is wrong or fewer than 99.99 % of pixels agree.

``--whole-image N`` then predicts an N x N raster (a multiple of 512; default 1536, not a
multiple of Deepness's stride) both ways and reports where they differ. Deepness's map processor imports QGIS, so its
tiling is replayed here in numpy from its code (``extent_utils.calculate_extended_processing_extent``:
the extent is extended to N stride + tile, and the pixels past the raster's edge are read as
QGIS's raster block gives them, 0; ``TileParams.get_slice_on_full_image_for_copying``: each tile
writes its core, a hard cut at half the overlap; ``MapProcessorSegmentation._run``: argmax, then
a median filter of ``seg_small_segment`` px, 1 = none), with its own ``Segmentor`` for every tile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import DUBAI, _dubai_patches, _procedural_patch, build_raster, make_model  # noqa: E402,I001


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deepness-src", type=Path, required=True,
                    help="the src folder of a Deepness checkout (holds the deepness package)")
    ap.add_argument("--model", default="fpn:mobilenet_v2", metavar="ARCH:ENCODER")
    ap.add_argument("--segmenter", type=Path, metavar="SEG_DIR",
                    help="a trained segmenter folder instead of random weights (a random model's "
                         "classes are near ties, which any change of tile context flips)")
    ap.add_argument("--whole-image", type=int, default=1536, metavar="N",
                    help="also compare over an N x N raster, N a multiple of 512 (0: skip)")
    a = ap.parse_args()
    if not (a.deepness_src / "deepness" / "processing" / "models" / "segmentor.py").is_file():
        ap.error(f"{a.deepness_src}: no deepness/processing/models/segmentor.py under it")
    sys.path.insert(0, str(a.deepness_src))

    import rasterio
    from deepness.processing.models.segmentor import Segmentor

    from satsynth import progress
    from satsynth.predict.export import export_segmenter
    from satsynth.predict.predict import predict_raster
    from satsynth.segmenter.model import load_segmenter_config

    progress.set_mode("quiet")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="satsynth-deepness-") as tmp:
        work = Path(tmp)
        arch, encoder = a.model.split(":")
        model_dir = a.segmenter or work / "segmenter"
        if a.segmenter is None:
            make_model(model_dir, arch, encoder)
        onnx_path = work / "segmenter.onnx"
        export_segmenter(model_dir, onnx_path, tile=512, overlap=64)
        cfg = load_segmenter_config(model_dir)

        seg = Segmentor(str(onnx_path))
        read = {"model_type": seg.get_metadata_model_type(),
                "class_names": seg.get_outputs_channel_names(),
                "output_channels": seg.get_number_of_output_channels(),
                "resolution_cm_per_px": seg.get_metadata_resolution(),
                "tile_size": seg.get_metadata_tile_size(),
                "input_size": list(seg.get_input_size_in_pixels()),
                "tiles_overlap_percent": seg.get_metadata_tiles_overlap(),
                "seg_thresh": seg.get_metadata_segmentation_threshold(),
                "batch_size": seg.get_model_batch_size(),
                "input_channels": seg.get_number_of_channels(),
                "standardization_mean": seg.standardization_parameters.mean.tolist(),
                "standardization_std": seg.standardization_parameters.std.tolist(),
                "small_segment": seg.get_metadata_segmentation_small_segment()}
        print("Deepness reads:", json.dumps(read, indent=1))
        names = cfg.classes.names
        gsd = cfg.pixel_size[0] if cfg.pixel_size else 0.5
        want = {"model_type": "Segmentor", "class_names": [names], "output_channels": [len(names)],
                "resolution_cm_per_px": 100.0 * gsd if cfg.crs else None, "tile_size": 512,
                "input_size": [512, 512], "tiles_overlap_percent": 13, "seg_thresh": 0.0,
                "batch_size": None, "input_channels": cfg.in_channels, "small_segment": 0}
        for key, value in want.items():
            if read[key] != value:
                problems.append(f"{key}: Deepness reads {read[key]!r}, expected {value!r}")

        image = work / "scene.tif"
        patches = _dubai_patches(limit=1) if DUBAI.is_dir() else [
            _procedural_patch(np.random.default_rng(0))]
        build_raster(image, 512, gsd, patches)
        out = work / "classes.tif"
        predict_raster(model_dir, image, out, tile=512, overlap=64, runtime="torch",
                       device="cpu")
        with rasterio.open(image) as src, rasterio.open(out) as pred:
            pixels = src.read().transpose(1, 2, 0)[None]  # (1, H, W, C) uint8, as Deepness reads
            ours = pred.read(1)
        probs = seg.process(pixels)[0]  # (1, K, H, W)
        ids = cfg.classes.index_to_id_lut()[probs[0].argmax(axis=0)]
        same = float((ids == ours).mean())
        print(f"imagery: {'Dubai' if DUBAI.is_dir() else 'procedural'}; Deepness's argmax "
              f"equals satsynth predict's class on {100 * same:.4f}% of {ours.size} pixels "
              f"(probabilities sum to {probs[0].sum(axis=0).mean():.4f})")
        if same < 0.9999:
            problems.append(f"only {100 * same:.4f}% of pixels agree")
        if a.whole_image:
            whole = work / "whole.tif"
            build_raster(whole, a.whole_image, gsd, patches)
            predict_raster(model_dir, whole, work / "whole_classes.tif", tile=512, overlap=64,
                           runtime="torch", device="cpu")
            with rasterio.open(whole) as src, rasterio.open(work / "whole_classes.tif") as pred:
                img, ours = src.read(), pred.read(1)
            theirs = cfg.classes.index_to_id_lut()[deepness_map(seg, img, 512,
                                                                read["tiles_overlap_percent"])]
            compare_whole(ours, theirs, 512, read["tiles_overlap_percent"])
    for p in problems:
        print("PROBLEM:", p)
    print("Deepness check:", "FAILED" if problems else "passed")
    return 1 if problems else 0


def deepness_map(seg, img: np.ndarray, tile: int, overlap_percent: float) -> np.ndarray:
    """Class indices over ``img`` (C, H, W) as Deepness's map processor computes them (see the
    module docstring; no mask, the whole raster, seg_small_segment 0)."""
    overlap = int(tile * overlap_percent / 100 * 2) // 2  # ProcessingOverlap.get_overlap_px
    stride = tile - overlap
    _, h, w = img.shape

    def extended(n: int) -> int:  # the half-overlap border is cut by the raster's extent
        return tile if n <= tile else n + (stride - (n - tile) % stride) % stride

    eh, ew = extended(h), extended(w)
    padded = np.zeros((img.shape[0], eh, ew), img.dtype)  # past the edge: 0
    padded[:, :h, :w] = img
    ny, nx = (eh - tile) // stride + 1, (ew - tile) // stride + 1
    full = np.zeros((eh, ew), np.int64)
    half = max((tile - stride) // 2, 0)
    for by in range(ny):
        for bx in range(nx):
            y0, x0 = by * stride, bx * stride
            chip = padded[:, y0:y0 + tile, x0:x0 + tile].transpose(1, 2, 0)[None]
            cls = seg.process(chip)[0][0].argmax(axis=0)  # (tile, tile)
            ya = y0 + (0 if by == 0 else half)
            yb = y0 + tile - (0 if by == ny - 1 else half)
            xa = x0 + (0 if bx == 0 else half)
            xb = x0 + tile - (0 if bx == nx - 1 else half)
            full[ya:yb, xa:xb] = cls[ya - y0:yb - y0, xa - x0:xb - x0]
    return full[:h, :w]  # limit_extended_extent_image_to_base_extent_with_mask


def compare_whole(ours: np.ndarray, theirs: np.ndarray, tile: int, overlap_percent: float
                  ) -> None:
    """Print where Deepness's whole-image classes differ from ``satsynth predict``'s."""
    overlap = int(tile * overlap_percent / 100 * 2) // 2
    stride, half = tile - overlap, overlap // 2
    h, w = ours.shape
    diff = ours != theirs
    yy, xx = np.mgrid[0:h, 0:w]
    last_y, last_x = ((h - tile) // stride + 1) * stride if h > tile else 0, (
        ((w - tile) // stride + 1) * stride if w > tile else 0)
    # pixels Deepness predicts from a tile that reaches past the raster's edge
    edge = (yy >= last_y) | (xx >= last_x)
    seam = np.zeros_like(diff)
    for k in range(1, max(h, w) // stride + 1):
        c = k * stride + half  # Deepness's cut between tile k-1 and k
        seam |= (np.abs(yy - c) < 16) | (np.abs(xx - c) < 16)
    seam &= ~edge
    rest = ~(edge | seam)
    print(f"whole image {w} x {h}, tile {tile}, Deepness overlap {overlap} px (stride {stride}),"
          f" satsynth overlap 64 px: classes equal on {100 * (1 - diff.mean()):.4f}% of pixels")
    for name, region in (("tiles reaching past the right/bottom edge", edge),
                         ("within 16 px of Deepness's tile cuts", seam), ("elsewhere", rest)):
        n = int(region.sum())
        share = 100 * float(diff[region].mean()) if n else 0.0
        print(f"  {name}: {n} px, {share:.3f}% differ ({int(diff[region].sum())} px)")


if __name__ == "__main__":
    sys.exit(main())
