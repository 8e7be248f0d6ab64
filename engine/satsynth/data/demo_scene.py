"""A procedural, georeferenced labeled scene for the demo (no data needed).

The scene is a 0.5 m RGB "aerial image" in UTM zone 40N with its label raster: roads (main roads
across the scene plus street grids), rectangular buildings along the roads with shadows, a water
body, vegetation patches and bare land. Every class is textured with multi-scale noise and the
colours overlap a little (beige roofs vs. sand, dark roofs vs. asphalt), so the image is not
trivially its mask. Deterministic for a seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from satsynth.contract import style_path
from satsynth.data.classes import ClassInfo, ClassTable, write_qml
from satsynth.io import atomic_path, write_json

#: EPSG code and upper-left corner of the scene (a spot near Dubai, UTM zone 40N).
SCENE_EPSG = 32640
SCENE_ORIGIN = (330_000.0, 2_790_000.0)

BARE, BUILDING, ROAD, WATER, VEGETATION = range(5)
SCENE_CLASSES = ClassTable([
    ClassInfo(BARE, "bare land", (200, 180, 140)),
    ClassInfo(BUILDING, "building", (215, 25, 28)),
    ClassInfo(ROAD, "road", (64, 64, 64)),
    ClassInfo(WATER, "water", (43, 131, 186)),
    ClassInfo(VEGETATION, "vegetation", (26, 150, 65)),
])

_ROOFS = np.array([[205, 205, 200], [196, 176, 142], [168, 92, 72], [112, 112, 118],
                   [232, 230, 222], [122, 140, 158], [182, 150, 120]], dtype=np.float32)


def value_noise(h: int, w: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field in [-1, 1] with features about ``cell`` pixels wide."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    y = np.arange(h, dtype=np.float32) / cell
    x = np.arange(w, dtype=np.float32) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    ty, tx = y - y0, x - x0
    ty, tx = (ty * ty * (3 - 2 * ty))[:, None], (tx * tx * (3 - 2 * tx))[None, :]
    rows = grid[:, x0] + (grid[:, x0 + 1] - grid[:, x0]) * tx  # (gh, w): along x first
    step = rows[1:] - rows[:-1]
    out = step[y0]
    out *= ty
    out += rows[y0]
    return out


def fractal_noise(h: int, w: int, cells: tuple[float, ...], rng: np.random.Generator,
                  gain: float = 0.5) -> np.ndarray:
    """Sum of :func:`value_noise` octaves (largest first), scaled to about [-1, 1]."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for c in cells:
        v = value_noise(h, w, c, rng)
        v *= amp
        out += v
        total += amp
        amp *= gain
    return out / total


def _smooth_line(points: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Chaikin corner cutting: a jittered polyline becomes a gentle curve."""
    for _ in range(rounds):
        q = 0.75 * points[:-1] + 0.25 * points[1:]
        r = 0.25 * points[:-1] + 0.75 * points[1:]
        mid = np.empty((2 * len(q), 2))
        mid[0::2], mid[1::2] = q, r
        points = np.vstack([points[:1], mid, points[-1:]])
    return points


def _main_roads(size: int, rng: np.random.Generator) -> list[np.ndarray]:
    roads = []
    for axis in (0, 1):
        for _ in range(int(rng.integers(1, 3))):
            a, b = rng.uniform(0.15, 0.85, 2) * size
            t = np.linspace(-0.05, 1.05, 7) * size
            jitter = rng.normal(0, size * 0.03, len(t))
            bend = rng.uniform(-0.12, 0.12) * size * np.sin(np.linspace(0, math.pi, len(t)))
            other = a + (b - a) * (t / size) + jitter + bend
            pts = np.stack([t, other], 1) if axis == 0 else np.stack([other, t], 1)
            roads.append(_smooth_line(pts))
    return roads


def _street_grid(size: int, px: float, rng: np.random.Generator) -> list[np.ndarray]:
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    half = rng.uniform(0.18, 0.3) * size
    theta = rng.uniform(-0.5, 0.5)
    spacing = rng.uniform(55, 85) / px
    c, s = math.cos(theta), math.sin(theta)
    lines = []
    for k in np.arange(-half, half + 1, spacing):
        for u, v in (((k, -half), (k, half)), ((-half, k), (half, k))):
            p = np.array([[cx + c * u[0] - s * u[1], cy + s * u[0] + c * u[1]],
                          [cx + c * v[0] - s * v[1], cy + s * v[0] + c * v[1]]])
            lines.append(p)
    return lines


def _place_buildings(lines: list[tuple[np.ndarray, float]], water: np.ndarray, roads_geom: Any,
                     size: int, px: float, rng: np.random.Generator) -> list[tuple[Any, float]]:
    """Rectangles along roads, facing them, not on roads, water or each other."""
    import shapely
    from shapely import affinity
    from shapely.geometry import box

    placed: list[Any] = []
    heights: list[float] = []
    cells: dict[tuple[int, int], list[int]] = {}
    cell = 64
    road_zone = shapely.buffer(roads_geom, 1.5 / px)
    shapely.prepare(road_zone)
    for pts, half_width in lines:
        seg = np.diff(pts, axis=0)
        lengths = np.hypot(seg[:, 0], seg[:, 1])
        for (x0, y0), (dx, dy), ln in zip(pts[:-1], seg, lengths, strict=True):
            if ln < 1e-6:
                continue
            ux, uy = dx / ln, dy / ln
            angle = math.degrees(math.atan2(uy, ux))
            t = rng.uniform(0, 8 / px)
            while t < ln:
                depth = rng.uniform(8, 24) / px
                width = rng.uniform(8, 30) / px
                for side in (-1, 1):
                    if rng.random() < 0.25:
                        continue
                    off = half_width + rng.uniform(3, 9) / px + depth / 2
                    cx = x0 + ux * t - side * uy * off
                    cy = y0 + uy * t + side * ux * off
                    if not (4 < cx < size - 4 and 4 < cy < size - 4):
                        continue
                    if water[int(cy), int(cx)]:
                        continue
                    poly = affinity.rotate(box(cx - width / 2, cy - depth / 2, cx + width / 2,
                                               cy + depth / 2), angle + rng.normal(0, 2),
                                           origin=(cx, cy))
                    minx, miny, maxx, maxy = poly.bounds
                    keys = [(i, j) for i in range(int(minx // cell), int(maxx // cell) + 1)
                            for j in range(int(miny // cell), int(maxy // cell) + 1)]
                    near = {k for key in keys for k in cells.get(key, [])}
                    if any(placed[k].intersects(poly) for k in near):
                        continue
                    if road_zone.intersects(poly):
                        continue
                    corners = np.asarray(poly.exterior.coords)[:4].astype(int)
                    corners = np.clip(corners, 0, size - 1)
                    if water[corners[:, 1], corners[:, 0]].any():
                        continue
                    for key in keys:
                        cells.setdefault(key, []).append(len(placed))
                    placed.append(poly)
                    heights.append(rng.uniform(3, 15))
                t += width + rng.uniform(2, 10) / px
    return list(zip(placed, heights, strict=True))


def _box_blur(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = img.shape[1:]
    out = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            out += p[:, dy:dy + h, dx:dx + w]
    return out / 9.0


def render_scene(size: int = 2048, pixel_size: float = 0.5,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A procedural scene (bare land, buildings, roads, water, vegetation) as arrays.

    Args:
        size (`int`, *optional*, defaults to 2048):
            The scene's side in pixels.
        pixel_size (`float`, *optional*, defaults to 0.5):
            The pixel size in metres (the sizes of the objects drawn follow it).
        seed (`int`, *optional*, defaults to 0):
            The same seed gives the same scene.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: the image, ``(3, size, size)`` uint8, and the labels,
        ``(size, size)`` uint8 class ids.
    """
    rng = np.random.default_rng(seed)
    n, px = int(size), float(pixel_size)
    labels, bid, shadow, n_buildings = _draw_layout(n, px, rng)
    image = _paint_scene(labels, bid, shadow, n_buildings, 1.0 / px, rng)
    return image, labels


def _draw_layout(n: int, px: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The scene's classes: water, vegetation, roads and buildings drawn on bare land; with the
    building ids (0: none) and their shadows."""
    import shapely
    from rasterio.features import rasterize
    from shapely.geometry import LineString

    scale = 1.0 / px  # pixels per metre

    # water: smooth field plus a ramp towards one side (a coast), about 8-18% of the scene
    ramp_dir = rng.uniform(0, 2 * math.pi)
    axis = np.arange(n, dtype=np.float32) / n - 0.5
    ramp = axis[None, :] * math.cos(ramp_dir) + axis[:, None] * math.sin(ramp_dir)
    wfield = fractal_noise(n, n, (260 * scale, 110 * scale, 40 * scale), rng) * 0.6 + ramp * 1.4
    wfrac = rng.uniform(0.08, 0.18)
    water = wfield > np.quantile(wfield[::8, ::8], 1 - wfrac)

    # vegetation: patches where a medium-scale field is high (not on water)
    vfield = fractal_noise(n, n, (90 * scale, 30 * scale, 10 * scale), rng)
    veg = (vfield > np.quantile(vfield[::8, ::8], 0.82)) & ~water

    # roads: main roads and one or two street grids
    lines: list[tuple[np.ndarray, float]] = []
    for pts in _main_roads(n, rng):
        lines.append((pts, rng.uniform(5, 7) * scale))
    for _ in range(int(rng.integers(1, 3))):
        for pts in _street_grid(n, px, rng):
            lines.append((pts, rng.uniform(3, 4.5) * scale))
    road_polys = [shapely.buffer(LineString(p), hw, cap_style="flat") for p, hw in lines]
    roads_geom = shapely.union_all(road_polys)
    road_mask = rasterize([(roads_geom, 1)], out_shape=(n, n), dtype="uint8").astype(bool)

    buildings = _place_buildings(lines, water, roads_geom, n, px, rng)

    labels = np.full((n, n), BARE, np.uint8)
    labels[veg] = VEGETATION
    labels[water] = WATER
    labels[road_mask] = ROAD
    bid = np.zeros((n, n), np.int32)
    shadow = np.zeros((n, n), bool)
    if buildings:
        bid = rasterize([(p, i + 1) for i, (p, _) in enumerate(buildings)], out_shape=(n, n),
                        dtype="int32")
        labels[bid > 0] = BUILDING
        sun = rng.uniform(0.6, 1.0)  # shadow direction: towards the lower right
        shadows = []
        for p, height in buildings:
            d = height * scale * 0.6
            shadows.append(shapely.affinity.translate(p, d * sun, d * math.sqrt(1 - sun * sun + 0.3)))
        shadow = rasterize([(s, 1) for s in shadows], out_shape=(n, n), dtype="uint8").astype(bool)
        shadow &= bid == 0

    return labels, bid, shadow, len(buildings)


def _paint_scene(labels: np.ndarray, bid: np.ndarray, shadow: np.ndarray, n_buildings: int,
                 scale: float, rng: np.random.Generator) -> np.ndarray:
    """The scene's colours: a base colour per class, textured by multi-scale noise, roofs and
    shadows, blurred and grained like an aerial photograph."""
    n = labels.shape[0]
    # colours: per-class base colour, textured by multi-scale noise
    coarse = fractal_noise(n, n, (200 * scale, 60 * scale), rng)
    fine = fractal_noise(n, n, (4 * scale, 1.5 * scale, 2.0), rng)
    grain = rng.normal(0, 1, (n, n)).astype(np.float32)
    img = np.zeros((3, n, n), np.float32)

    def paint(mask: np.ndarray, base: tuple[float, float, float], coarse_amp: float,
              fine_amp: float, tint: tuple[float, float, float] = (1, 1, 1)) -> None:
        for ch in range(3):
            v = base[ch] + coarse_amp * tint[ch] * coarse[mask] + fine_amp * fine[mask]
            img[ch][mask] = v

    paint(labels == BARE, (192, 172, 138), 22, 10, (1.0, 0.9, 0.8))
    # sparse shrubs on bare land: greenish-grey specks (overlaps vegetation colours a little)
    shrub = (labels == BARE) & (fractal_noise(n, n, (6 * scale, 2.0), rng) > 0.45)
    paint(shrub, (140, 140, 105), 15, 12)
    veg_mask = labels == VEGETATION
    tree = fractal_noise(n, n, (5 * scale, 2 * scale), rng)
    paint(veg_mask, (78, 108, 58), 18, 8, (0.8, 1.0, 0.6))
    img[:, veg_mask] += 28 * tree[veg_mask]  # crowns: bright tops, dark gaps
    paint(labels == WATER, (46, 88, 108), 14, 3, (0.6, 0.9, 1.0))
    paint(labels == ROAD, (98, 98, 102), 8, 6)
    if n_buildings:
        roof = rng.integers(0, len(_ROOFS), n_buildings + 1)
        shade = rng.uniform(0.85, 1.1, n_buildings + 1).astype(np.float32)
        m = bid > 0
        cols = _ROOFS[roof[bid[m]]] * shade[bid[m]][:, None]
        for ch in range(3):
            img[ch][m] = cols[:, ch] + 5 * fine[m]
        img[:, shadow] *= 0.55
    img *= 1.0 + 0.06 * coarse[None]
    img = _box_blur(img)
    img += 3.0 * grain[None]
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image


def generate_scene(out_dir: str | Path, size: int = 2048, pixel_size: float = 0.5,
                   seed: int = 0) -> dict[str, Any]:
    """Write the demo scene (:func:`render_scene`) as georeferenced files to ``out_dir``.

    Args:
        out_dir (`str` or `Path`):
            The folder to write into (created when missing).
        size (`int`, *optional*, defaults to 2048):
            The scene's side in pixels.
        pixel_size (`float`, *optional*, defaults to 0.5):
            The pixel size in metres (EPSG:32640).
        seed (`int`, *optional*, defaults to 0):
            The same seed gives the same files.

    Returns:
        `dict[str, Any]`: the paths by role: ``image`` (``scene_image.tif``, RGB uint8),
        ``labels`` (``scene_labels.tif``, class ids with a colour table, plus a QGIS style) and
        ``classes`` (``classes.json``).
    """
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, labels = render_scene(size, pixel_size, seed)
    transform = from_origin(*SCENE_ORIGIN, pixel_size, pixel_size)
    crs = CRS.from_epsg(SCENE_EPSG)
    common = dict(driver="GTiff", width=size, height=size, crs=crs, transform=transform,
                  tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    paths = {"image": out / "scene_image.tif", "labels": out / "scene_labels.tif",
             "classes": out / "classes.json"}
    with atomic_path(paths["image"]) as tmp:
        with rasterio.open(tmp, "w", count=3, dtype="uint8", photometric="RGB", **common) as dst:
            dst.write(image)
            dst.update_tags(source="SatSynth procedural demo scene", seed=str(seed))
    with atomic_path(paths["labels"]) as tmp:
        with rasterio.open(tmp, "w", count=1, dtype="uint8", **common) as dst:
            dst.write(labels, 1)
            dst.write_colormap(1, SCENE_CLASSES.colormap())
            dst.update_tags(1, classes=", ".join(f"{c.id}={c.name}" for c in SCENE_CLASSES.classes))
    write_qml(style_path(paths["labels"]), SCENE_CLASSES)
    write_json(paths["classes"], SCENE_CLASSES.to_dict())
    return {**paths, "crs": f"EPSG:{SCENE_EPSG}", "size": size, "pixel_size": pixel_size,
            "seed": seed}
