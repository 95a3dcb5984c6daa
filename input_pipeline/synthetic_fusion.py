"""Embedded synthetic infrared-visible scenes, generated deterministically from a seed (no download).

Each scene is an outdoor view (sky, ground, road, buildings, trees, street lamps) with warm objects on the ground:
people, vehicles (hot engine, tyres and exhaust), animals and running machines. The two modalities are rendered
from the same geometry so they are pixel-aligned, and they are made complementary on purpose:

- infrared (white-hot): temperatures, so warm objects stand out everywhere, but surfaces carry little texture, lane
  markings and windows barely show, and the optics blur (microbolometer noise and column stripes are added);
- visible: reflectance times illumination, so texture, edges, markings and colour are rich where it is lit, while
  night scenes, cast shadows and dark clothing hide the warm objects (sensor noise grows in the dark).

Everything is scaled to the requested size, so any height and width work; a 256x256 pair takes about 10 ms of CPU.
"""
from collections.abc import Sequence
import math
from typing import NamedTuple

import numpy as np
import PIL.Image
from scipy import ndimage


class SyntheticPair(NamedTuple):
  """One aligned scene; every array is float32 in [0, 1]."""
  ir: np.ndarray     # HxW infrared (white-hot).
  vis: np.ndarray    # HxWx3 visible RGB.
  warm: np.ndarray   # HxW coverage of the warm objects (people, vehicles, animals, machines).


_Region = tuple[slice, slice]


class _Canvas:
  """Scene layers: visible reflectance and emitted light, illumination, infrared temperature, warm coverage."""

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width
    self.albedo = np.zeros((height, width, 3), np.float32)
    self.glow = np.zeros((height, width, 3), np.float32)   # self-luminous light (sky, lamps, headlights).
    self.temp = np.zeros((height, width), np.float32)
    self.warm = np.zeros((height, width), np.float32)

  def paint(self, shape: tuple[_Region, np.ndarray] | None, *, albedo=None, temp=None, glow=None,
            warm: bool = False) -> None:
    """Alpha-composites one shape onto the layers it names (scalars, RGB triples or arrays of the region)."""
    if shape is None:
      return
    region, alpha = shape
    if albedo is not None:
      _blend(self.albedo, region, alpha, albedo)
      # An opaque surface in front hides whatever light the layers behind it emitted.
      self.glow[region] *= 1.0 - alpha[..., None]
    if glow is not None:
      _blend(self.glow, region, alpha, glow)
    if temp is not None:
      _blend(self.temp, region, alpha, temp)
    if warm:
      self.warm[region] = np.maximum(self.warm[region], alpha)
    elif albedo is not None:
      # A cold surface in front of a warm object occludes it.
      self.warm[region] *= 1.0 - alpha


def _blend(layer: np.ndarray, region: _Region, alpha: np.ndarray, value) -> None:
  a = alpha if layer.ndim == 2 else alpha[..., None]
  value = np.asarray(value, np.float32)
  layer[region] += a * (value - layer[region])


def _axis_coverage(lo: float, hi: float, size: int) -> tuple[int, np.ndarray]:
  """Anti-aliased coverage of the interval [lo, hi] by pixels (centres at i + 0.5) along one axis."""
  i0, i1 = max(int(math.floor(lo)), 0), min(int(math.ceil(hi)), size)
  centres = np.arange(i0, i1, dtype=np.float32) + 0.5
  return i0, np.clip(np.minimum(centres - lo, hi - centres) + 0.5, 0.0, 1.0)


def _box(canvas: _Canvas, top: float, bottom: float, left: float, right: float):
  """Axis-aligned rectangle with anti-aliased edges, as (region, alpha)."""
  y0, ay = _axis_coverage(top, bottom, canvas.height)
  x0, ax = _axis_coverage(left, right, canvas.width)
  if ay.size == 0 or ax.size == 0:
    return None
  return (slice(y0, y0 + ay.size), slice(x0, x0 + ax.size)), ay[:, None] * ax[None, :]


class _Bounds(NamedTuple):
  height: int
  width: int


def _ellipse(canvas: _Canvas | _Bounds, cy: float, cx: float, ry: float, rx: float, power: float = 2.0,
             softness: float = 1.0):
  """Superellipse |dy/ry|^p + |dx/rx|^p <= 1 (p=2 ellipse, larger p a rounded box), as (region, alpha).

  The edge ramps from 0 to 1 over `softness` pixels (1: anti-aliased; larger: a penumbra).
  """
  ry, rx = max(ry, 0.5), max(rx, 0.5)
  y0, y1 = max(int(cy - ry - 1), 0), min(int(cy + ry + 2), canvas.height)
  x0, x1 = max(int(cx - rx - 1), 0), min(int(cx + rx + 2), canvas.width)
  if y1 <= y0 or x1 <= x0:
    return None
  dy = np.abs((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / ry)[:, None]
  dx = np.abs((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / rx)[None, :]
  dist = (dy**power + dx**power) ** (1.0 / power)
  # (1 - dist) * radius is roughly the signed distance to the edge in pixels.
  return (slice(y0, y1), slice(x0, x1)), np.clip((1.0 - dist) * min(ry, rx) / softness + 0.5, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
  """Zero-mean, unit-scale smooth noise with about `cells` features across the larger side (bicubic lattice)."""
  step = max(height, width) / cells
  gh, gw = int(math.ceil(height / step)) + 4, int(math.ceil(width / step)) + 4
  grid = PIL.Image.fromarray(rng.standard_normal((gh, gw)).astype(np.float32), "F")
  # Sample the lattice away from its border, where bicubic interpolation is clamped.
  box = (1.0, 1.0, 1.0 + width / step, 1.0 + height / step)
  return np.array(grid.resize((width, height), PIL.Image.Resampling.BICUBIC, box=box), np.float32)


def _fractal_noise(rng: np.random.Generator, height: int, width: int, octaves: Sequence[float],
                   persistence: float = 0.6) -> np.ndarray:
  total = np.zeros((height, width), np.float32)
  amp = 1.0
  for cells in octaves:
    total += amp * _smooth_noise(rng, height, width, cells)
    amp *= persistence
  return total / np.float32(total.std() + 1e-6)


def _grain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Unit-variance texture at the scale of a few pixels (noise interpolated from a half-resolution lattice, plus a
  medium octave)."""
  size = max(height, width)
  total = _smooth_noise(rng, height, width, size / 2.0)
  total += 0.5 * _smooth_noise(rng, height, width, size / 8.0)
  total /= np.float32(total.std() + 1e-6)
  return np.clip(total, -3.0, 3.0, out=total)


class _Textures(NamedTuple):
  coarse: np.ndarray   # Large-scale variation (patches of grass, stains).
  fine: np.ndarray     # Pixel-scale grain (leaves, gravel, fabric), mostly invisible in infrared.


def _random_colour(rng: np.random.Generator, base: Sequence[float], spread: float) -> np.ndarray:
  return np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3), 0.02, 0.98).astype(np.float32)


_SKY = {  # (zenith, horizon) radiance by time of day.
    "day": ((0.30, 0.50, 0.85), (0.75, 0.85, 0.95)),
    "dusk": ((0.20, 0.20, 0.40), (0.95, 0.55, 0.30)),
    "night": ((0.01, 0.015, 0.04), (0.06, 0.06, 0.10)),
}
_AMBIENT = {"day": (0.75, 1.0), "dusk": (0.25, 0.5), "night": (0.05, 0.14)}
_GROUND = {  # (reflectance, infrared temperature range)
    "grass": ((0.25, 0.42, 0.18), (0.30, 0.40)),
    "dirt": ((0.45, 0.36, 0.25), (0.35, 0.45)),
    "pavement": ((0.42, 0.42, 0.42), (0.38, 0.48)),
}


def _draw_sky(canvas: _Canvas, rng: np.random.Generator, period: str, horizon: float) -> None:
  w = canvas.width
  rows = max(int(math.ceil(horizon)), 1)
  t = (np.arange(rows, dtype=np.float32)[:, None] + 0.5) / rows   # 0 at the top, 1 at the horizon.
  zenith, near = (np.asarray(c, np.float32) for c in _SKY[period])
  clouds = np.clip(_fractal_noise(rng, rows, w, (3, 7, 15)) * 0.5 + rng.uniform(-0.6, 0.3), 0.0, 1.0)
  cloud_colour = near * (0.9 if period == "day" else 0.5)
  sky = zenith + t[..., None] * (near - zenith)
  sky = sky + clouds[..., None] * (cloud_colour - sky) * 0.8
  canvas.glow[:rows] = sky
  # The clear sky is the coldest thing in view; clouds and the air near the horizon are a little warmer.
  canvas.temp[:rows] = 0.04 + 0.12 * t + 0.08 * clouds


def _draw_ground(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, horizon: float) -> None:
  h = canvas.height
  top = int(math.floor(horizon))
  kind = rng.choice(list(_GROUND))
  colour, (tlo, thi) = _GROUND[kind]
  base = _random_colour(rng, colour, 0.06)
  region = (slice(top, h), slice(0, canvas.width))
  depth = np.clip((np.arange(top, h, dtype=np.float32)[:, None] + 0.5 - horizon) / max(h - horizon, 1.0), 0, 1)
  shade = 1.0 + 0.18 * tex.coarse[region] + 0.22 * tex.fine[region] * (0.4 + 0.6 * depth)
  canvas.albedo[region] = np.clip(base * shade[..., None], 0.0, 1.0)
  canvas.glow[region] = 0.0
  canvas.temp[region] = rng.uniform(tlo, thi) + 0.04 * tex.coarse[region] + 0.03 * depth


def _draw_road(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, horizon: float) -> None:
  """A road narrowing towards a vanishing point, with lane dashes that only the visible camera sees."""
  h, w = canvas.height, canvas.width
  top = int(math.floor(horizon))
  vx = rng.uniform(0.3, 0.7) * w
  half_bottom = rng.uniform(0.25, 0.5) * w
  rows = np.arange(top, h, dtype=np.float32)[:, None] + 0.5
  depth = np.clip((rows - horizon) / max(h - horizon, 1.0), 0.0, 1.0)
  cols = np.arange(w, dtype=np.float32)[None, :] + 0.5
  centre = vx + depth * rng.uniform(-0.2, 0.2) * w
  half = 0.01 * w + depth * half_bottom
  offset = np.abs(cols - centre)
  alpha = np.clip(half - offset + 0.5, 0.0, 1.0)
  region = (slice(top, h), slice(0, w))
  asphalt = rng.uniform(0.16, 0.3)
  albedo = asphalt * (1.0 + 0.12 * tex.fine[region] + 0.1 * tex.coarse[region])
  canvas.paint((region, alpha), albedo=np.repeat(albedo[..., None], 3, axis=-1),
               temp=rng.uniform(0.45, 0.55) + 0.03 * tex.coarse[region])
  # Dashes are periodic in 1/distance, so they shrink towards the horizon like painted marks would.
  phase = (1.0 / np.maximum(depth, 0.02)) * rng.uniform(0.4, 0.7)
  dashes = (np.sin(phase * 2 * np.pi) > 0.0).astype(np.float32)
  line_width = np.maximum(0.012 * w * depth, 0.35)
  mark = np.clip(line_width - offset + 0.5, 0.0, 1.0) * dashes
  for side in (-1.0, 1.0):
    edge = np.clip(line_width - np.abs(cols - (centre + side * half * 0.92)) + 0.5, 0.0, 1.0)
    mark = np.maximum(mark, edge)
  canvas.paint((region, mark * alpha), albedo=(0.85, 0.85, 0.8), temp=canvas.temp[region] - 0.02)


def _draw_building(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, horizon: float,
                   period: str) -> None:
  h, w = canvas.height, canvas.width
  width = rng.uniform(0.1, 0.3) * w
  left = rng.uniform(-0.1, 1.0) * w - width / 2
  height = rng.uniform(0.08, 0.3) * h
  base = horizon + rng.uniform(0.0, 0.03) * h
  top = base - height
  wall = _random_colour(rng, (0.55, 0.5, 0.45), 0.15)
  shape = _box(canvas, top, base, left, left + width)
  if shape is None:
    return
  region, _ = shape
  facade = wall * (1.0 + 0.1 * tex.fine[region] + 0.08 * tex.coarse[region])[..., None]
  wall_temp = rng.uniform(0.35, 0.48) + 0.02 * tex.coarse[region]
  canvas.paint(shape, albedo=facade, temp=wall_temp)
  cell = rng.uniform(0.025, 0.05) * h
  ys, yi = _window_grid(region[0], top + cell * 0.6, base - cell * 0.6, cell, cell * 1.5)
  xs, xi = _window_grid(region[1], left + cell * 0.6, left + width - cell * 0.6, cell * 0.8, cell * 1.3)
  alpha = ys[:, None] * xs[None, :]
  lit_probability = {"day": 0.0, "dusk": 0.3, "night": 0.5}[period]
  lit = rng.random((yi.max() + 1, xi.max() + 1)) < lit_probability
  lit_map = lit[yi[:, None], xi[None, :]]
  brightness = rng.uniform(0.6, 1.0, lit.shape)[yi[:, None], xi[None, :]]
  lamp = _random_colour(rng, (1.0, 0.85, 0.5), 0.1)
  # Glass looks cold in infrared but leaks some heat from lit (heated) rooms.
  canvas.paint((region, alpha), albedo=(0.08, 0.1, 0.14), temp=wall_temp + np.where(lit_map, 0.05, -0.02))
  canvas.paint((region, alpha * lit_map), glow=lamp * brightness[..., None])


def _window_grid(axis: slice, start: float, stop: float, size: float, pitch: float) -> tuple[np.ndarray, np.ndarray]:
  """Anti-aliased coverage of a row of windows along one axis of a facade, and each pixel's window index."""
  centres = np.arange(axis.start, axis.stop, dtype=np.float32) + 0.5
  offset = centres - start
  index = np.floor(offset / pitch)
  within = offset - index * pitch
  count = max(int((stop - start - size) // pitch) + 1, 0)
  coverage = np.clip(np.minimum(within, size - within) + 0.5, 0.0, 1.0)
  coverage = np.where((index >= 0) & (index < count), coverage, 0.0).astype(np.float32)
  return coverage, np.clip(index, 0, max(count - 1, 0)).astype(np.int64)


def _draw_tree(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, foot: float, cx: float,
               size: float) -> None:
  size = size * rng.uniform(0.35, 0.7) * canvas.height
  canvas.paint(_box(canvas, foot - size * 0.45, foot, cx - size * 0.04, cx + size * 0.04),
               albedo=(0.25, 0.18, 0.12), temp=0.33)
  leaf = _random_colour(rng, (0.15, 0.32, 0.12), 0.06)
  for _ in range(rng.integers(3, 6)):
    cy_, cx_ = foot - size * rng.uniform(0.5, 0.85), cx + size * rng.uniform(-0.2, 0.2)
    shape = _ellipse(canvas, cy_, cx_, size * rng.uniform(0.2, 0.32), size * rng.uniform(0.2, 0.3))
    if shape is None:
      continue
    region, _ = shape
    foliage = leaf * np.clip(1.0 + 0.45 * tex.fine[region] + 0.15 * tex.coarse[region], 0.2, 2.0)[..., None]
    # Leaves sit near air temperature: cool and nearly featureless in infrared.
    canvas.paint(shape, albedo=foliage, temp=0.27 + 0.02 * tex.coarse[region])


def _draw_lamp(canvas: _Canvas, rng: np.random.Generator, foot: float, x: float, scale: float,
               light: np.ndarray, period: str) -> None:
  h, w = canvas.height, canvas.width
  height = scale * 0.5 * h
  pole = max(0.006 * w * scale, 0.6)
  canvas.paint(_box(canvas, foot - height, foot, x - pole, x + pole), albedo=(0.2, 0.2, 0.22), temp=0.36)
  on = period != "day"
  head = _ellipse(canvas, foot - height, x, pole * 2.5, pole * 4.0)
  canvas.paint(head, albedo=(0.5, 0.5, 0.45), glow=(1.0, 0.9, 0.65) if on else None, temp=0.6 if on else 0.38)
  if on:
    # A pool of light on the ground below the lamp.
    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float32)[None, :] + 0.5
    spread = height * 0.6
    light += rng.uniform(0.5, 0.9) * np.exp(-(((rows - foot) / (spread * 0.5)) ** 2 + ((cols - x) / spread) ** 2))


def _draw_person(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, foot: float, x: float,
                 size: float) -> None:
  height = size * 0.42 * canvas.height
  width = height * 0.26
  clothes = _random_colour(rng, (0.18, 0.18, 0.2), 0.15)
  trousers = _random_colour(rng, (0.12, 0.12, 0.16), 0.08)
  skin_temp = rng.uniform(0.88, 0.97)
  stride = rng.uniform(-0.12, 0.12) * width
  for side in (-1.0, 1.0):
    leg_x = x + side * width * 0.2 + side * stride
    canvas.paint(_ellipse(canvas, foot - height * 0.24, leg_x, height * 0.25, width * 0.16, 3.0),
                 albedo=trousers, temp=skin_temp - 0.2, warm=True)
  torso = _ellipse(canvas, foot - height * 0.6, x, height * 0.2, width * 0.5, 3.0)
  if torso is not None:
    region, _ = torso
    fabric = clothes * (1.0 + 0.15 * tex.fine[region])[..., None]
    # Clothing insulates: the torso is warm, but cooler than exposed skin.
    canvas.paint(torso, albedo=fabric, temp=skin_temp - 0.12, warm=True)
  for side in (-1.0, 1.0):
    canvas.paint(_ellipse(canvas, foot - height * 0.55, x + side * width * 0.55, height * 0.17, width * 0.12, 3.0),
                 albedo=clothes * 0.9, temp=skin_temp - 0.15, warm=True)
  canvas.paint(_ellipse(canvas, foot - height * 0.89, x, height * 0.085, height * 0.07),
               albedo=_random_colour(rng, (0.6, 0.45, 0.35), 0.15), temp=skin_temp, warm=True)


def _draw_vehicle(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, foot: float, x: float,
                  size: float, period: str, light: np.ndarray) -> None:
  length = size * 0.5 * canvas.width
  height = length * rng.uniform(0.38, 0.5)
  facing = rng.choice((-1.0, 1.0))   # Engine at the front (facing side), exhaust at the back.
  paint = _random_colour(rng, rng.choice([(0.6, 0.1, 0.1), (0.15, 0.2, 0.45), (0.8, 0.8, 0.8), (0.1, 0.1, 0.1),
                                          (0.35, 0.35, 0.35)]), 0.08)
  body_t = rng.uniform(0.5, 0.6)
  wheel_r = height * 0.2
  body = _ellipse(canvas, foot - wheel_r - height * 0.18, x, height * 0.24, length * 0.5, 6.0)
  if body is not None:
    region, _ = body
    cols = np.arange(region[1].start, region[1].stop, dtype=np.float32)[None, :] + 0.5
    # The engine end of the body is hot; the heat fades along the car.
    engine = np.clip(facing * (cols - x) / (length * 0.5), 0.0, 1.0) ** 2
    temp = body_t + (rng.uniform(0.85, 0.95) - body_t) * engine
    canvas.paint(body, albedo=paint * (1.0 + 0.05 * tex.fine[region])[..., None],
                 temp=np.broadcast_to(temp, body[1].shape), warm=True)
  cabin_x = x - facing * length * 0.08
  canvas.paint(_ellipse(canvas, foot - wheel_r - height * 0.5, cabin_x, height * 0.2, length * 0.28, 4.0),
               albedo=paint, temp=body_t - 0.05, warm=True)
  canvas.paint(_ellipse(canvas, foot - wheel_r - height * 0.5, cabin_x, height * 0.14, length * 0.23, 4.0),
               albedo=(0.05, 0.07, 0.1), temp=body_t - 0.08, warm=True)
  for side in (-1.0, 1.0):
    cx = x + side * length * 0.3
    canvas.paint(_ellipse(canvas, foot - wheel_r, cx, wheel_r, wheel_r), albedo=(0.04, 0.04, 0.04),
                 temp=rng.uniform(0.7, 0.8), warm=True)
    canvas.paint(_ellipse(canvas, foot - wheel_r, cx, wheel_r * 0.45, wheel_r * 0.45), albedo=(0.5, 0.5, 0.5),
                 temp=0.65, warm=True)
  tail = x - facing * length * 0.5
  canvas.paint(_ellipse(canvas, foot - wheel_r * 0.8, tail, wheel_r * 0.5, wheel_r * 0.9), temp=0.98, warm=True)
  if period != "day":
    head_x = x + facing * length * 0.47
    canvas.paint(_ellipse(canvas, foot - wheel_r - height * 0.15, head_x, height * 0.05, length * 0.03),
                 albedo=(0.9, 0.9, 0.8), glow=(1.0, 0.95, 0.8), warm=True)
    rows = np.arange(canvas.height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(canvas.width, dtype=np.float32)[None, :] + 0.5
    beam = np.exp(-(((rows - foot) / (height * 0.4)) ** 2 + ((cols - head_x - facing * length) / length) ** 2))
    light += 0.8 * beam


def _draw_animal(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, foot: float, x: float,
                 size: float) -> None:
  height = size * 0.18 * canvas.height
  length = height * rng.uniform(1.4, 1.9)
  fur = _random_colour(rng, (0.4, 0.3, 0.22), 0.1)
  temp = rng.uniform(0.8, 0.9)
  facing = rng.choice((-1.0, 1.0))
  for dx in (-0.33, -0.22, 0.24, 0.35):
    leg_x = x + dx * length
    canvas.paint(_box(canvas, foot - height * 0.5, foot, leg_x - height * 0.05, leg_x + height * 0.05),
                 albedo=fur * 0.8, temp=temp - 0.1, warm=True)
  body = _ellipse(canvas, foot - height * 0.58, x, height * 0.24, length * 0.45, 2.5)
  if body is not None:
    region, _ = body
    # Fur insulates: a cooler, slightly mottled body in infrared.
    canvas.paint(body, albedo=fur * (1.0 + 0.3 * tex.fine[region])[..., None],
                 temp=temp - 0.05 + 0.02 * tex.coarse[region], warm=True)
  canvas.paint(_ellipse(canvas, foot - height * 0.66, x - facing * length * 0.5, height * 0.05, length * 0.12),
               albedo=fur * 0.9, temp=temp - 0.12, warm=True)   # Tail.
  neck_x = x + facing * length * 0.4
  canvas.paint(_ellipse(canvas, foot - height * 0.8, neck_x, height * 0.2, height * 0.11),
               albedo=fur, temp=temp - 0.03, warm=True)
  canvas.paint(_ellipse(canvas, foot - height * 0.98, neck_x + facing * height * 0.1, height * 0.12, height * 0.17),
               albedo=fur, temp=temp, warm=True)


def _draw_machine(canvas: _Canvas, rng: np.random.Generator, tex: _Textures, foot: float, x: float,
                  size: float) -> None:
  """A generator or compressor: a metal box with a hot running engine and exhaust stack."""
  height = size * 0.2 * canvas.height
  width = height * rng.uniform(1.2, 2.0)
  metal = _random_colour(rng, (0.45, 0.45, 0.4), 0.15)
  shape = _box(canvas, foot - height, foot, x - width / 2, x + width / 2)
  if shape is None:
    return
  region, alpha = shape
  rows = np.arange(region[0].start, region[0].stop, dtype=np.float32)[:, None] + 0.5
  heat = np.clip((foot - rows) / height, 0.0, 1.0)
  canvas.paint(shape, albedo=metal * (1.0 + 0.08 * tex.fine[region])[..., None],
               temp=np.broadcast_to(0.6 + 0.3 * heat, alpha.shape), warm=True)
  for gy in np.arange(foot - height * 0.8, foot - height * 0.2, height * 0.12):
    canvas.paint(_box(canvas, gy, gy + height * 0.04, x - width * 0.35, x + width * 0.1),
                 albedo=metal * 0.4, warm=True)
  stack_x = x + width * 0.3
  canvas.paint(_box(canvas, foot - height * 1.4, foot - height, stack_x - height * 0.06, stack_x + height * 0.06),
               albedo=(0.2, 0.2, 0.2), temp=0.97, warm=True)


def _cast_shadows(rng: np.random.Generator, light: np.ndarray, targets: Sequence[tuple[float, float, float]],
                  horizon: float) -> None:
  """Darkens soft regions: tall ones over some warm objects (the shade of a wall or an alley, which hides them from
  the visible camera) and flat ones on the ground (shade of trees and clouds)."""
  h, w = light.shape
  shapes = [(foot - size * 0.2 * h, x, size * rng.uniform(0.3, 0.5) * h, size * rng.uniform(0.15, 0.4) * w, 6.0)
            for foot, x, size in targets if rng.random() < 0.5]
  for _ in range(rng.integers(0, 4)):
    cy = rng.uniform(horizon, h)
    depth = (cy - horizon) / max(h - horizon, 1.0)
    shapes.append((cy, rng.uniform(0, w), (0.03 + 0.12 * depth) * h, (0.1 + 0.25 * depth) * w, 2.0))
  for cy, cx, ry, rx, power in shapes:
    shape = _ellipse(_Bounds(h, w), cy, cx, ry, rx, power, softness=min(ry, rx) * rng.uniform(0.1, 0.4))
    if shape is not None:
      region, alpha = shape
      light[region] *= 1.0 - rng.uniform(0.7, 0.93) * alpha


def generate_pair(seed: int | Sequence[int], height: int = 256, width: int = 256) -> SyntheticPair:
  """Renders the scene of `seed` (an int or a sequence of ints, as for np.random.default_rng) at height x width."""
  if height < 8 or width < 8:
    raise ValueError(f"synthetic scenes need at least 8x8 pixels, got {height}x{width}")
  rng = np.random.default_rng(seed)
  canvas = _Canvas(height, width)
  period = rng.choice(list(_SKY), p=(0.4, 0.25, 0.35))
  horizon = rng.uniform(0.25, 0.55) * height
  tex = _Textures(coarse=_fractal_noise(rng, height, width, (4, 9)), fine=_grain(rng, height, width))
  light = np.full((height, width), rng.uniform(*_AMBIENT[period]), np.float32)

  _draw_sky(canvas, rng, period, horizon)
  for _ in range(rng.integers(0, 5)):
    _draw_building(canvas, rng, tex, horizon, period)
  _draw_ground(canvas, rng, tex, horizon)
  if rng.random() < 0.6:
    _draw_road(canvas, rng, tex, horizon)

  # Everything standing on the ground is drawn far to near, so nearer things occlude farther ones.
  kinds = ["tree"] * rng.integers(0, 5) + ["lamp"] * rng.integers(0, 3)
  kinds += [str(k) for k in rng.choice(("person", "person", "vehicle", "animal", "machine"), size=rng.integers(1, 6))]
  placed = []
  for kind in kinds:
    depth = rng.uniform(0.05, 1.0) ** 0.7
    placed.append((horizon + depth * (height - horizon) * 1.02, kind, depth))
  placed.sort(key=lambda item: item[0])
  targets = []
  for foot, kind, depth in placed:
    x = rng.uniform(0.05, 0.95) * width
    size = 0.2 + 0.8 * depth   # Perspective: nearer (lower) objects are larger.
    if kind == "tree":
      _draw_tree(canvas, rng, tex, foot, x, size)
    elif kind == "lamp":
      _draw_lamp(canvas, rng, foot, x, size, light, period)
    elif kind == "person":
      _draw_person(canvas, rng, tex, foot, x, size)
    elif kind == "vehicle":
      _draw_vehicle(canvas, rng, tex, foot, x, size, period, light)
    elif kind == "animal":
      _draw_animal(canvas, rng, tex, foot, x, size)
    else:
      _draw_machine(canvas, rng, tex, foot, x, size)
    if kind not in ("tree", "lamp"):
      targets.append((foot, x, size))
  _cast_shadows(rng, light, targets, horizon)

  return SyntheticPair(ir=_render_ir(rng, canvas), vis=_render_vis(rng, canvas, light, period),
                       warm=np.clip(canvas.warm, 0.0, 1.0))


def _render_vis(rng: np.random.Generator, canvas: _Canvas, light: np.ndarray, period: str) -> np.ndarray:
  tint = {"day": (1.0, 1.0, 0.97), "dusk": (1.0, 0.8, 0.6), "night": (0.8, 0.85, 1.0)}[period]
  # Dark pixels are noisier (shot and read noise relative to the signal). Kept below the scene's texture: per-pixel
  # noise dominates the Laplacian that L_f's gradient term asks the fused image to match.
  sigma = np.float32(0.003 + 0.012 * float(np.exp(-4.0 * light.mean())))
  noise = rng.standard_normal(light.shape, dtype=np.float32)
  noise *= sigma
  # In place: the canvas is not used after rendering.
  radiance = canvas.albedo
  radiance *= light[..., None]
  radiance *= np.asarray(tint, np.float32)
  radiance += canvas.glow
  # Mostly luminance noise, shared by the three channels (a third of the cost of independent noise).
  radiance += noise[..., None]
  return np.clip(radiance, 0.0, 1.0, out=radiance)


def _render_ir(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
  h, w = canvas.height, canvas.width
  # Long-wave optics and detector pitch blur the infrared image relative to the visible one.
  ir = ndimage.gaussian_filter(canvas.temp, sigma=max(h, w) / 256.0 * rng.uniform(0.8, 1.4), mode="nearest")
  columns = rng.normal(0.0, 0.003, (1, w)).astype(np.float32)   # Fixed-pattern column stripes.
  ir = ir + columns + np.float32(0.004) * rng.standard_normal((h, w), dtype=np.float32)
  # Slight vignetting, usual for uncooled cameras.
  rows = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
  cols = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
  ir = ir * (1.0 - 0.12 * (rows**2 + cols**2))
  return np.clip(ir, 0.0, 1.0).astype(np.float32)
