"""Procedural 2D articulated characters ("puppets"): DFC-Net's Mixamo-Pose analogue, with exact ground truth.

A character fixes body proportions, widths, head shape, colours, clothing textures and background; an animation
is a smooth joint-angle trajectory. Joint angles are character-independent, so rendering character B with the
angles of character A's frame is the retargeted ground truth: B's own bone lengths, placed on B's ground line.
Everything is numpy and deterministic from (seed, group, index); any square resolution works.
"""
import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np

JOINT_NAMES = ('pelvis', 'neck', 'head', 'l_shoulder', 'l_elbow', 'l_hand', 'r_shoulder', 'r_elbow', 'r_hand',
               'l_hip', 'l_knee', 'l_foot', 'r_hip', 'r_knee', 'r_foot')
NUM_JOINTS = len(JOINT_NAMES)
# The rigid parts between joints: torso, neck and the two bones of every limb (shoulders and hips sit on the torso).
BONES = (('pelvis', 'neck'), ('neck', 'head'), ('l_shoulder', 'l_elbow'), ('l_elbow', 'l_hand'),
         ('r_shoulder', 'r_elbow'), ('r_elbow', 'r_hand'), ('l_hip', 'l_knee'), ('l_knee', 'l_foot'),
         ('r_hip', 'r_knee'), ('r_knee', 'r_foot'))
# The kinematic tree forward_kinematics builds, parents first from the pelvis: the bones and the torso's attachments
# (shoulders on the neck, hips on the pelvis, whose apparent widths change with the yaw).
SKELETON = (('pelvis', 'neck'), ('neck', 'head'), ('neck', 'l_shoulder'), ('l_shoulder', 'l_elbow'),
            ('l_elbow', 'l_hand'), ('neck', 'r_shoulder'), ('r_shoulder', 'r_elbow'), ('r_elbow', 'r_hand'),
            ('pelvis', 'l_hip'), ('l_hip', 'l_knee'), ('l_knee', 'l_foot'), ('pelvis', 'r_hip'), ('r_hip', 'r_knee'),
            ('r_knee', 'r_foot'))

TRAIN_ANIMATION_TYPES = ('walk', 'run', 'wave', 'jump', 'kick', 'spin', 'squat', 'bow')
UNSEEN_ANIMATION_TYPES = ('punch', 'jumping_jack')

SPLITS = ('train', 'test_unseen_characters', 'test_unseen_animations', 'support')
# Independent random streams: characters and animations of different groups never coincide.
_GROUP_CODES = {'train': 1, 'test': 2, 'support': 3}
_KIND_CHARACTER, _KIND_ANIMATION, _KIND_SAMPLE = 11, 12, 13
_GROUND = 0.94  # Feet rest on this fraction of the image height.


@dataclasses.dataclass(frozen=True)
class Character:
  """Body and look of one puppet. Lengths and widths are fractions of the character's standing height."""
  height: float          # standing height as a fraction of the image size
  torso: float
  neck: float
  upper_arm: float
  forearm: float
  thigh: float
  shin: float
  shoulder_width: float  # half distance between the shoulders
  hip_width: float
  torso_top: float       # torso radius at the shoulders
  torso_bottom: float
  arm_width: float       # limb radii
  leg_width: float
  head_rx: float
  head_ry: float
  head_power: float      # superellipse exponent: 2 = ellipse, larger = boxier
  hair_fraction: float   # fraction of the head covered by hair, from the top
  long_sleeves: bool
  long_pants: bool
  skin: tuple[float, float, float]
  hair: tuple[float, float, float]
  shirt: tuple[float, float, float]
  shirt_alt: tuple[float, float, float]
  pants: tuple[float, float, float]
  pants_alt: tuple[float, float, float]
  shoes: tuple[float, float, float]
  background_top: tuple[float, float, float]
  background_bottom: tuple[float, float, float]
  shirt_pattern: int     # 0 plain, 1 stripes across the limb, 2 stripes along it, 3 checks
  shirt_frequency: float
  pants_pattern: int
  pants_frequency: float


@dataclasses.dataclass(frozen=True)
class Pose:
  """Character-independent pose: root offsets and joint angles in radians.

  Direction angle 0 points down the image, pi/2 to +x. Arm angles are relative to the torso's down direction,
  elbow and knee angles relative to their parent bone, hip angles to the image's down direction.
  """
  root_x: float = 0.0  # horizontal offset in character heights
  jump: float = 0.0    # lift of the feet above the ground in leg lengths
  lean: float = 0.0
  tilt: float = 0.0
  yaw: float = 0.0     # rotation about the vertical axis: 0 faces the camera
  l_shoulder: float = 0.15
  l_elbow: float = 0.0
  r_shoulder: float = -0.15
  r_elbow: float = 0.0
  l_hip: float = 0.05
  l_knee: float = 0.0
  r_hip: float = -0.05
  r_knee: float = 0.0


@dataclasses.dataclass(frozen=True)
class Animation:
  """One clip: a motion type with its own amplitude, speed, phase, facing and view."""
  kind: str
  amplitude: float
  cycles: int
  phase: float
  mirror: float  # +1 or -1: faces +x or -x
  yaw_offset: float
  side: float    # +1 or -1: which arm waves, which leg kicks

  def pose(self, t: float) -> Pose:
    """Pose at clip time t in [0, 1)."""
    phi = 2 * math.pi * (self.cycles * t + self.phase)
    fields = _MOTIONS[self.kind](phi, self.amplitude, self.side)
    pose = Pose(**fields)
    if self.mirror < 0:
      pose = _mirror(pose)
    return dataclasses.replace(pose, yaw=pose.yaw + self.yaw_offset)


class Render(NamedTuple):
  image: np.ndarray       # float32 [S, S, 3] in [0, 1]
  joints: np.ndarray      # float32 [NUM_JOINTS, 2] (x, y) in pixels, pixel centres at i + 0.5
  silhouette: np.ndarray  # bool [S, S]
  background: np.ndarray  # float32 [S, S, 3]: the image without the character


# --------------------------------------------------------------------------------------------------- motions
def _walk(phi, a, side):
  del side
  s = math.sin(phi)
  return dict(yaw=0.5 * math.pi * 0.8, lean=-0.05 * a, l_hip=0.45 * a * s, r_hip=-0.45 * a * s,
              l_knee=-0.6 * a * max(0.0, math.sin(phi + 0.5 * math.pi)),
              r_knee=-0.6 * a * max(0.0, -math.sin(phi + 0.5 * math.pi)),
              l_shoulder=-0.4 * a * s, r_shoulder=0.4 * a * s, l_elbow=0.3 * a, r_elbow=0.3 * a)


def _run(phi, a, side):
  del side
  s = math.sin(phi)
  lift = 0.08 * a * abs(math.cos(phi))
  return dict(yaw=0.5 * math.pi * 0.85, lean=-0.25 * a, jump=lift, l_hip=0.8 * a * s, r_hip=-0.8 * a * s,
              l_knee=-1.2 * a * max(0.0, math.cos(phi)), r_knee=-1.2 * a * max(0.0, -math.cos(phi)),
              l_shoulder=-0.8 * a * s, r_shoulder=0.8 * a * s, l_elbow=1.4, r_elbow=1.4)


def _wave(phi, a, side):
  wave_arm = dict(shoulder=side * (2.4 + 0.2 * a), elbow=side * 0.5 * a * math.sin(phi))
  rest = -side * 0.15
  arms = ({'l_shoulder': wave_arm['shoulder'], 'l_elbow': wave_arm['elbow'], 'r_shoulder': rest}
          if side > 0 else {'r_shoulder': wave_arm['shoulder'], 'r_elbow': wave_arm['elbow'], 'l_shoulder': rest})
  return dict(tilt=0.1 * side * math.sin(phi), **arms)


def _jump(phi, a, side):
  del side
  c = math.sin(phi)
  air = max(0.0, c)
  crouch = max(0.0, -c)
  return dict(jump=0.2 * a * air, l_hip=0.1 - 0.5 * crouch, r_hip=-0.1 + 0.5 * crouch,
              l_knee=1.0 * crouch, r_knee=-1.0 * crouch, l_shoulder=0.2 + 2.4 * air * a,
              r_shoulder=-0.2 - 2.4 * air * a, lean=0.0)


def _kick(phi, a, side):
  bump = 0.5 * (1 - math.cos(phi))
  kick_hip = 1.4 * a * bump
  kick_knee = -2.4 * bump * (1 - bump)  # bent on the way up and down, straight at the top
  legs = ({'l_hip': kick_hip, 'l_knee': kick_knee, 'r_hip': -0.1} if side > 0 else
          {'r_hip': kick_hip, 'r_knee': kick_knee, 'l_hip': -0.1})
  return dict(yaw=0.5 * math.pi * 0.7, lean=-0.3 * bump, l_shoulder=-0.6 * bump, r_shoulder=0.9 * bump,
              l_elbow=0.4, r_elbow=0.4, **legs)


def _spin(phi, a, side):
  return dict(yaw=side * phi, l_shoulder=0.9 + 0.3 * a, r_shoulder=-0.9 - 0.3 * a, l_elbow=0.2, r_elbow=-0.2)


def _squat(phi, a, side):
  del side
  s = 0.5 * (1 - math.cos(phi)) * a
  return dict(l_hip=0.1 + 0.7 * s, l_knee=-1.5 * s, r_hip=-0.1 - 0.7 * s, r_knee=1.5 * s,
              l_shoulder=0.15 + 1.3 * s, r_shoulder=-0.15 - 1.3 * s)


def _bow(phi, a, side):
  del side
  s = 0.5 * (1 - math.cos(phi)) * a
  return dict(yaw=0.5 * math.pi * 0.9, lean=-1.1 * s, tilt=-0.3 * s, l_hip=0.05 + 0.2 * s, r_hip=-0.05 + 0.2 * s,
              l_shoulder=-0.2 * s, r_shoulder=-0.3 * s)


def _punch(phi, a, side):
  left = 0.5 * (1 - math.cos(phi))
  right = 0.5 * (1 + math.cos(phi))
  return dict(yaw=side * 0.5 * math.pi * 0.75, lean=-0.1, l_shoulder=0.3 + 1.3 * a * left,
              l_elbow=1.8 * (1 - left), r_shoulder=0.3 + 1.3 * a * right, r_elbow=1.8 * (1 - right),
              l_hip=0.3, l_knee=-0.3, r_hip=-0.3)


def _jumping_jack(phi, a, side):
  del side
  s = 0.5 * (1 - math.cos(phi))
  return dict(jump=0.15 * a * abs(math.sin(phi)), l_shoulder=0.15 + 2.6 * s * a, r_shoulder=-0.15 - 2.6 * s * a,
              l_hip=0.05 + 0.35 * s, r_hip=-0.05 - 0.35 * s)


_MOTIONS: dict[str, Callable[[float, float, float], dict[str, float]]] = {
    'walk': _walk, 'run': _run, 'wave': _wave, 'jump': _jump, 'kick': _kick, 'spin': _spin, 'squat': _squat,
    'bow': _bow, 'punch': _punch, 'jumping_jack': _jumping_jack}


def _mirror(pose: Pose) -> Pose:
  """Reflects the pose about the vertical axis: every in-plane angle and the yaw change sign."""
  return Pose(**{f.name: -getattr(pose, f.name) if f.name != 'jump' else pose.jump
                 for f in dataclasses.fields(Pose)})


# ------------------------------------------------------------------------------------------------ sampling
def _rng(seed: int, group: str, kind: int, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, _GROUP_CODES[group], kind, index])


def _colour(rng: np.random.Generator, lo: float = 0.05, hi: float = 0.95) -> tuple[float, float, float]:
  return tuple(float(c) for c in rng.uniform(lo, hi, size=3))


def make_character(seed: int, group: str, index: int) -> Character:
  """The character `index` of `group` ('train' | 'test' | 'support'), deterministic from `seed`."""
  rng = _rng(seed, group, _KIND_CHARACTER, index)
  # Relative proportions, normalised below so that legs + torso + neck + head = the standing height.
  head_ry = rng.uniform(0.06, 0.085)
  torso = rng.uniform(0.26, 0.34)
  neck = rng.uniform(0.02, 0.05)
  thigh = rng.uniform(0.2, 0.26)
  shin = rng.uniform(0.2, 0.26)
  total = 2 * head_ry + torso + neck + thigh + shin
  scale = 1.0 / total
  skin = tuple(float(c) for c in np.array([0.95, 0.78, 0.62]) * rng.uniform(0.45, 1.0) + rng.uniform(-0.03, 0.03, 3))
  bg_top = _colour(rng, 0.3, 1.0)
  bg_bottom = tuple(float(np.clip(c + d, 0, 1)) for c, d in zip(bg_top, rng.uniform(-0.25, 0.25, 3)))
  return Character(
      height=float(rng.uniform(0.56, 0.66)),
      torso=torso * scale, neck=neck * scale, thigh=thigh * scale, shin=shin * scale,
      upper_arm=float(rng.uniform(0.15, 0.2)), forearm=float(rng.uniform(0.14, 0.19)),
      shoulder_width=float(rng.uniform(0.07, 0.12)), hip_width=float(rng.uniform(0.04, 0.07)),
      torso_top=float(rng.uniform(0.07, 0.11)), torso_bottom=float(rng.uniform(0.055, 0.1)),
      arm_width=float(rng.uniform(0.028, 0.045)), leg_width=float(rng.uniform(0.034, 0.055)),
      head_rx=float(head_ry * scale * rng.uniform(0.75, 1.05)), head_ry=float(head_ry * scale),
      head_power=float(rng.choice([2.0, 2.0, 3.0, 4.5])), hair_fraction=float(rng.uniform(0.0, 0.45)),
      long_sleeves=bool(rng.random() < 0.5), long_pants=bool(rng.random() < 0.6),
      skin=tuple(float(np.clip(c, 0, 1)) for c in skin), hair=_colour(rng, 0.0, 0.6),
      shirt=_colour(rng), shirt_alt=_colour(rng), pants=_colour(rng), pants_alt=_colour(rng),
      shoes=_colour(rng, 0.0, 0.5), background_top=bg_top, background_bottom=bg_bottom,
      shirt_pattern=int(rng.integers(0, 4)), shirt_frequency=float(rng.uniform(6.0, 16.0)),
      pants_pattern=int(rng.integers(0, 4)), pants_frequency=float(rng.uniform(6.0, 16.0)))


def make_animation(seed: int, group: str, index: int, kinds: tuple[str, ...]) -> Animation:
  """The animation `index` of `group`, its type drawn from `kinds`, deterministic from `seed`."""
  rng = _rng(seed, group, _KIND_ANIMATION, index)
  unknown = set(kinds) - set(_MOTIONS)
  if unknown:
    raise ValueError(f'unknown animation types {sorted(unknown)}; known: {sorted(_MOTIONS)}')
  return Animation(kind=kinds[index % len(kinds)], amplitude=float(rng.uniform(0.75, 1.2)),
                   cycles=int(rng.integers(1, 3)), phase=float(rng.random()),
                   mirror=float(rng.choice([-1.0, 1.0])), yaw_offset=float(rng.uniform(-0.25, 0.25)),
                   side=float(rng.choice([-1.0, 1.0])))


# ---------------------------------------------------------------------------------------------- kinematics
def _direction(theta: float) -> np.ndarray:
  return np.array([math.sin(theta), math.cos(theta)])


def forward_kinematics(character: Character, pose: Pose, size: int) -> np.ndarray:
  """Joint positions [NUM_JOINTS, 2] in pixels: the character's bones posed by `pose`, feet on its ground."""
  h = character.height * size
  cy = math.cos(pose.yaw)
  torso_up = _direction(math.pi + pose.lean)
  across = np.array([math.cos(pose.lean), -math.sin(pose.lean)])
  j = {'pelvis': np.zeros(2)}
  j['neck'] = j['pelvis'] + character.torso * h * torso_up
  j['head'] = j['neck'] + (character.neck + character.head_ry) * h * _direction(math.pi + pose.lean + pose.tilt)
  for side, sign in (('l', 1.0), ('r', -1.0)):
    shoulder_angle = pose.lean + getattr(pose, f'{side}_shoulder')
    elbow_angle = shoulder_angle + getattr(pose, f'{side}_elbow')
    j[f'{side}_shoulder'] = j['neck'] + sign * character.shoulder_width * h * cy * across
    j[f'{side}_elbow'] = j[f'{side}_shoulder'] + character.upper_arm * h * _direction(shoulder_angle)
    j[f'{side}_hand'] = j[f'{side}_elbow'] + character.forearm * h * _direction(elbow_angle)
    hip_angle = getattr(pose, f'{side}_hip')
    knee_angle = hip_angle + getattr(pose, f'{side}_knee')
    j[f'{side}_hip'] = j['pelvis'] + np.array([sign * character.hip_width * h * cy, 0.0])
    j[f'{side}_knee'] = j[f'{side}_hip'] + character.thigh * h * _direction(hip_angle)
    j[f'{side}_foot'] = j[f'{side}_knee'] + character.shin * h * _direction(knee_angle)
  joints = np.stack([j[name] for name in JOINT_NAMES])
  lowest = max(j['l_foot'][1], j['r_foot'][1]) + character.leg_width * h
  leg = (character.thigh + character.shin) * h
  offset = np.array([0.5 * size + pose.root_x * h, _GROUND * size - lowest - pose.jump * leg])
  return (joints + offset).astype(np.float32)


# ----------------------------------------------------------------------------------------------- rendering
def _texture(pattern: int, frequency: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Boolean mask of the alternate clothing colour from limb coordinates u (along, in heights) and v (across)."""
  across = np.sin(2 * math.pi * frequency * u) > 0
  along = np.sin(1.5 * math.pi * (v + 1.0)) > 0
  if pattern == 0:
    return np.zeros_like(across)
  if pattern == 1:
    return across
  if pattern == 2:
    return along
  return across ^ along


class _Canvas:
  """Painter's-algorithm compositing of anti-aliased shapes on a pixel grid.

  Each shape is evaluated only inside its bounding box (every pixel outside it has zero coverage, so the result is
  the same as painting the whole grid, about 10x faster at 128 px). Float64 throughout, as the full-grid
  arithmetic promoted to; the render is cast to float32 once at the end.
  """

  def __init__(self, background: np.ndarray):
    self.size = background.shape[0]
    self.centres = np.arange(self.size, dtype=np.float32) + 0.5
    self.image = background.astype(np.float64)
    self.coverage = np.zeros(background.shape[:2], np.float64)

  def window(self, x_lo: float, x_hi: float, y_lo: float, y_hi: float):
    """(rows, cols, x, y) of the pixels whose centres may lie in [x_lo, x_hi] x [y_lo, y_hi], x [1, w] and y [h, 1]
    (they broadcast to the window); None when empty."""
    cols = slice(max(0, math.floor(x_lo)), min(self.size, math.ceil(x_hi) + 1))
    rows = slice(max(0, math.floor(y_lo)), min(self.size, math.ceil(y_hi) + 1))
    if cols.start >= cols.stop or rows.start >= rows.stop:
      return None
    return rows, cols, self.centres[None, cols], self.centres[rows, None]

  def paint(self, rows: slice, cols: slice, alpha: np.ndarray, colour: np.ndarray):
    alpha = alpha[..., None]
    self.image[rows, cols] = self.image[rows, cols] * (1 - alpha) + colour * alpha
    self.coverage[rows, cols] = np.maximum(self.coverage[rows, cols], alpha[..., 0])

  def capsule(self, a, b, ra, rb, colour_fn, scale):
    """Tapered capsule from a (radius ra) to b (radius rb); colour_fn(u, v) gives [h, w, 3] colours."""
    reach = max(ra, rb) + 0.5  # coverage is zero beyond the radius plus half a pixel
    window = self.window(min(a[0], b[0]) - reach, max(a[0], b[0]) + reach,
                         min(a[1], b[1]) - reach, max(a[1], b[1]) + reach)
    if window is None:
      return
    rows, cols, x, y = window
    ab = b - a
    length_sq = max(float(ab @ ab), 1e-9)
    px, py = x - a[0], y - a[1]
    t = np.clip((px * ab[0] + py * ab[1]) / length_sq, 0.0, 1.0)
    dx, dy = px - t * ab[0], py - t * ab[1]
    dist = np.sqrt(dx * dx + dy * dy)
    radius = ra + (rb - ra) * t
    alpha = np.clip(radius - dist + 0.5, 0.0, 1.0)
    if not alpha.any():
      return
    cross = (ab[0] * py - ab[1] * px) / math.sqrt(length_sq)
    v = np.clip(cross / np.maximum(radius, 1e-6), -1.0, 1.0)
    u = t * math.sqrt(length_sq) / scale
    shade = (1.0 - 0.25 * v * v)[..., None]
    self.paint(rows, cols, alpha, colour_fn(u, v) * shade)

  def disc(self, centre, radius, colour):
    reach = radius + 0.5
    window = self.window(centre[0] - reach, centre[0] + reach, centre[1] - reach, centre[1] + reach)
    if window is None:
      return
    rows, cols, x, y = window
    dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2)
    self.paint(rows, cols, np.clip(radius - dist + 0.5, 0.0, 1.0), np.asarray(colour, np.float32))


def _clothing(primary, alternate, pattern, frequency, darken):
  primary = np.asarray(primary, np.float32) * darken
  alternate = np.asarray(alternate, np.float32) * darken

  def colour_fn(u, v):
    return np.where(_texture(pattern, frequency, u, v)[..., None], alternate, primary)
  return colour_fn


def render_background(character: Character, size: int) -> np.ndarray:
  """The character's backdrop: a vertical gradient between its two background colours, [S, S, 3] float32."""
  t = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None, None]
  top = np.asarray(character.background_top, np.float32)
  bottom = np.asarray(character.background_bottom, np.float32)
  return np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).astype(np.float32)


def render(character: Character, pose: Pose, size: int) -> Render:
  """Renders `character` in `pose` on a `size` x `size` canvas; returns image, joints, silhouette, background."""
  if size < 8:
    raise ValueError(f'puppet image size must be at least 8 pixels, got {size}')
  joints = forward_kinematics(character, pose, size)
  j = dict(zip(JOINT_NAMES, joints.astype(np.float64)))
  h = character.height * size
  background = render_background(character, size)
  canvas = _Canvas(background)
  sin_yaw = math.sin(pose.yaw)
  far = 'l' if sin_yaw >= 0 else 'r'
  near = 'r' if far == 'l' else 'l'
  # Limbs on the far side are drawn first and darker, which keeps left and right tellable apart when turned.
  far_darken = 1.0 - 0.3 * abs(sin_yaw)
  skin = np.asarray(character.skin, np.float32)

  def arm(side, darken):
    shirt = _clothing(character.shirt, character.shirt_alt, character.shirt_pattern, character.shirt_frequency,
                      darken)
    bare = lambda u, v: skin * darken  # noqa: E731 (a one-line colour function)
    r = character.arm_width * h
    canvas.capsule(j[f'{side}_shoulder'], j[f'{side}_elbow'], r, r, shirt, h)
    canvas.capsule(j[f'{side}_elbow'], j[f'{side}_hand'], r, 0.9 * r, shirt if character.long_sleeves else bare, h)
    canvas.disc(j[f'{side}_hand'], 1.15 * r, skin * darken)

  def leg(side, darken):
    pants = _clothing(character.pants, character.pants_alt, character.pants_pattern, character.pants_frequency,
                      darken)
    bare = lambda u, v: skin * darken  # noqa: E731
    r = character.leg_width * h
    canvas.capsule(j[f'{side}_hip'], j[f'{side}_knee'], r, 0.9 * r, pants, h)
    canvas.capsule(j[f'{side}_knee'], j[f'{side}_foot'], 0.9 * r, 0.8 * r, pants if character.long_pants else bare,
                   h)
    canvas.disc(j[f'{side}_foot'], 1.05 * r, np.asarray(character.shoes, np.float32) * darken)

  arm(far, far_darken)
  leg(far, far_darken)
  leg(near, 1.0)
  torso_width = max(abs(math.cos(pose.yaw)), 0.55)
  canvas.capsule(j['pelvis'], j['neck'], character.torso_bottom * h * torso_width,
                 character.torso_top * h * torso_width,
                 _clothing(character.shirt, character.shirt_alt, character.shirt_pattern,
                           character.shirt_frequency, 1.0), h)
  canvas.capsule(j['neck'], j['head'], 0.8 * character.arm_width * h, 0.8 * character.arm_width * h,
                 lambda u, v: skin, h)
  _head(canvas, character, pose, j['head'], h)
  arm(near, 1.0)
  silhouette = canvas.coverage >= 0.5
  return Render(canvas.image.astype(np.float32), joints, silhouette, background)


def _head(canvas: _Canvas, character: Character, pose: Pose, centre: np.ndarray, h: float):
  """Superellipse head with hair on top and eyes that follow the yaw (they vanish when facing away)."""
  rx, ry = character.head_rx * h, character.head_ry * h
  p = character.head_power
  # Coverage is zero where q >= 1 + 0.5 / min(rx, ry); there |lx| <= rx q and |ly| <= ry q, in any rotation.
  reach = (rx + ry) * (1.0 + 0.5 / min(rx, ry))
  window = canvas.window(centre[0] - reach, centre[0] + reach, centre[1] - reach, centre[1] + reach)
  angle = pose.lean + pose.tilt
  c, s = math.cos(angle), math.sin(angle)
  if window is not None:
    rows, cols, x, y = window
    dx, dy = x - centre[0], y - centre[1]
    lx, ly = c * dx - s * dy, s * dx + c * dy  # head frame: ly < 0 is the top of the head
    q = (np.abs(lx / rx) ** p + np.abs(ly / ry) ** p) ** (1.0 / p)
    alpha = np.clip((1.0 - q) * min(rx, ry) + 0.5, 0.0, 1.0)
    hair = ly < -ry * (1.0 - 2.0 * character.hair_fraction)
    colour = np.where(hair[..., None], np.asarray(character.hair, np.float32),
                      np.asarray(character.skin, np.float32))
    canvas.paint(rows, cols, alpha, colour)
  facing = math.cos(pose.yaw)
  if facing > 0.1:
    eye_radius = max(0.12 * rx, 0.6)
    for sign in (1.0, -1.0):
      ex = (0.45 * math.sin(pose.yaw) + sign * 0.35 * facing) * rx
      ey = -0.05 * ry
      # Back from the head frame to the image frame.
      canvas.disc(centre + np.array([c * ex + s * ey, -s * ex + c * ey]), eye_radius, (0.05, 0.05, 0.08))


# ------------------------------------------------------------------------------------------------- splits
@dataclasses.dataclass(frozen=True)
class PuppetWorld:
  """The characters and animations of every split, all drawn from one seed."""
  seed: int = 0
  num_train_characters: int = 64
  num_test_characters: int = 16
  num_support_characters: int = 32
  num_train_animations: int = 48
  num_test_animations: int = 16
  num_support_animations: int = 24
  frames_per_animation: int = 32
  train_kinds: tuple[str, ...] = TRAIN_ANIMATION_TYPES
  unseen_kinds: tuple[str, ...] = UNSEEN_ANIMATION_TYPES

  def split_pools(self, split: str) -> tuple[list[Character], list[Animation]]:
    """The characters and animations that `split` draws from.

    train: train characters x train animations; test_unseen_characters: held-out characters x train animations;
    test_unseen_animations: train characters x held-out animation types; support: its own characters and
    animation instances, disjoint from all the others.
    """
    groups = {'train': ('train', self.num_train_characters, 'train', self.num_train_animations, self.train_kinds),
              'test_unseen_characters': ('test', self.num_test_characters, 'train', self.num_train_animations,
                                         self.train_kinds),
              'test_unseen_animations': ('train', self.num_train_characters, 'test', self.num_test_animations,
                                         self.unseen_kinds),
              'support': ('support', self.num_support_characters, 'support', self.num_support_animations,
                          self.train_kinds)}
    if split not in groups:
      raise ValueError(f'unknown puppet split {split!r}; expected one of {SPLITS}')
    char_group, num_chars, anim_group, num_anims, kinds = groups[split]
    characters = [make_character(self.seed, char_group, i) for i in range(num_chars)]
    animations = [make_animation(self.seed, anim_group, i, kinds) for i in range(num_anims)]
    return characters, animations


# The pose fields that move together when limb mixing recombines poses (PuppetSampler.limb_mixing).
LIMB_GROUPS = (('root_x', 'jump', 'lean', 'tilt', 'yaw'), ('l_shoulder', 'l_elbow'), ('r_shoulder', 'r_elbow'),
               ('l_hip', 'l_knee'), ('r_hip', 'r_knee'))
_KIND_LIMB_MIX = 14


class PuppetSampler:
  """Draws paired and unpaired samples of one split, deterministic from (world seed, sample_seed, index).

  limb_mixing: the probability that a sample's source pose and, independently, its target pose are recombined from
  the split's frames, each of LIMB_GROUPS (the body's root, lean and yaw; each arm; each leg) taken from a frame of
  its own: poses that no animation holds (an arm of a wave over the legs of a squat), for a pose encoder that has to
  generalise to unseen motions. 0: every pose is an animation frame.
  limb_mixing_samples: only samples of index below it are mixed (None: every sample); a training stream's first
  steps x batch size samples are its first steps' batches.
  """

  def __init__(self, world: PuppetWorld, split: str, size: int, sample_seed: int = 0, limb_mixing: float = 0.0,
               limb_mixing_samples: int | None = None):
    if not 0.0 <= limb_mixing <= 1.0:
      raise ValueError(f'limb_mixing must be a probability in [0, 1], got {limb_mixing}')
    self.world, self.split, self.size, self.sample_seed = world, split, size, sample_seed
    self.limb_mixing, self.limb_mixing_samples = limb_mixing, limb_mixing_samples
    self.characters, self.animations = world.split_pools(split)
    if len(self.characters) < 2:
      raise ValueError(f'split {split!r} needs at least 2 characters, has {len(self.characters)}')
    self._code = SPLITS.index(split)

  def draw_indices(self, index: int) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
    """Sample `index` as indices into the split's pools: characters A and B, and (animation, frame) of the
    source's pose and of the target's; the pose of (animation i, frame f) is animations[i].pose(f / frames)."""
    rng = np.random.default_rng([self.world.seed, _KIND_SAMPLE, self._code, self.sample_seed, index])
    a, b = rng.choice(len(self.characters), size=2, replace=False)
    frames = self.world.frames_per_animation
    source = (int(rng.integers(len(self.animations))), int(rng.integers(frames)))
    target = (int(rng.integers(len(self.animations))), int(rng.integers(frames)))
    return int(a), int(b), source, target

  def _draw(self, index: int):
    a, b, source, target = self.draw_indices(index)
    frames = self.world.frames_per_animation
    source_pose = self.animations[source[0]].pose(source[1] / frames)
    target_pose = self.animations[target[0]].pose(target[1] / frames)
    if self.limb_mixing and (self.limb_mixing_samples is None or index < self.limb_mixing_samples):
      rng = np.random.default_rng([self.world.seed, _KIND_LIMB_MIX, self._code, self.sample_seed, index])
      source_pose, target_pose = (self._mixed(pose, rng) for pose in (source_pose, target_pose))
    return self.characters[a], self.characters[b], source_pose, target_pose

  def _mixed(self, pose: Pose, rng: np.random.Generator) -> Pose:
    """`pose`, or with probability limb_mixing every limb group from a random frame of the split."""
    if rng.random() >= self.limb_mixing:
      return pose
    fields = {}
    for group in LIMB_GROUPS:
      donor = self.animations[rng.integers(len(self.animations))].pose(
          rng.integers(self.world.frames_per_animation) / self.world.frames_per_animation)
      fields.update({name: getattr(donor, name) for name in group})
    return Pose(**fields)

  def paired(self, index: int) -> dict[str, np.ndarray]:
    """source (character A, pose P), target (character B, another pose), truth (B in P) with its joints,
    silhouette and background, the source's and the target's joints and the target's silhouette."""
    char_a, char_b, source_pose, target_pose = self._draw(index)
    source = render(char_a, source_pose, self.size)
    truth = render(char_b, source_pose, self.size)
    target = render(char_b, target_pose, self.size)
    return {'source': source.image, 'target': target.image, 'truth': truth.image,
            'truth_joints': truth.joints, 'truth_silhouette': truth.silhouette, 'truth_background': truth.background,
            'source_joints': source.joints, 'target_joints': target.joints, 'target_silhouette': target.silhouette}

  def unpaired(self, index: int) -> dict[str, np.ndarray]:
    """source and target of two different characters, with no ground truth (the support data)."""
    char_a, char_b, source_pose, target_pose = self._draw(index)
    return {'source': render(char_a, source_pose, self.size).image,
            'target': render(char_b, target_pose, self.size).image}
