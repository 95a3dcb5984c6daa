"""Image reading, colour conversion, IR/VIS pairing and saving for fusion (Pillow + numpy, no OpenCV).

Colour follows the authors' release, which uses OpenCV's float BGR<->YCrCb (BT.601): the network fuses Y and the
output keeps the visible image's Cr/Cb.
"""
import os
import pathlib
import re
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from input_pipeline import errors

IMAGE_EXTENSIONS = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'})

# OpenCV's float RGB->YCrCb coefficients (color_yuv: R2Y, G2Y, B2Y, YCRI, YCBI) and inverse (CR2R, CR2G, CB2G,
# CB2R); the chroma offset for float images is 0.5.
_R2Y, _G2Y, _B2Y = 0.299, 0.587, 0.114
_YCRI, _YCBI = 0.713, 0.564
_CR2R, _CR2G, _CB2G, _CB2B = 1.403, -0.714, -0.344, 1.773
_CHROMA_OFFSET = 0.5

# IR<n> / VIS<n> (also VI<n>) names as in the AUIF-Net packaging of RoadScene/TNO.
_NUMBERED_NAME = re.compile(r'^(?:ir|vis?)[_-]?(\d+)$', re.IGNORECASE)

PathLike = str | os.PathLike


class ImageReadError(errors.ProjectError, ValueError):
  """An image file could not be read; the message names the file and the problem."""


class ImageWriteError(errors.ProjectError, OSError):
  """An image file could not be written; the message names the file and the problem."""


class PairError(errors.ProjectError, ValueError):
  """A pair cannot be used (unreadable file, mismatched or too small sizes); the message names the files."""


# What to do about a size mismatch: training needs aligned pairs, the fusion binaries can resize one image.
ALIGN_PAIRS = 'the images of a pair must be aligned and the same size'
RESIZE_FLAG = 'pass --resize_to=ir or --resize_to=vis'


def size_mismatch(ir: PathLike, ir_shape: tuple[int, ...], vis: PathLike, vis_shape: tuple[int, ...],
                  fix: str = ALIGN_PAIRS) -> PairError:
  """The one error for a pair whose images differ in size: names both (files or pair names), their WxH and `fix`."""
  return PairError(f'size mismatch: IR {ir} is {ir_shape[1]}x{ir_shape[0]} but VIS {vis} is '
                   f'{vis_shape[1]}x{vis_shape[0]} (WxH); {fix}')


class ImagePair(NamedTuple):
  name: str  # Output stem: the shared file stem, or <n> for IR<n>/VIS<n>.
  ir_path: pathlib.Path
  vis_path: pathlib.Path


def _to_array(image: Image.Image, path: PathLike) -> np.ndarray:
  """Pillow image -> HxW or HxWx3 uint8/uint16 array."""
  mode = image.mode
  if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N'):
    return np.asarray(image).astype(np.uint16)
  if mode == 'I':
    # Some 16-bit files open as 32-bit integer images.
    array = np.asarray(image)
    if array.min() < 0 or array.max() > np.iinfo(np.uint16).max:
      raise ImageReadError(f'{path}: 32-bit integer image with values outside 0..65535 is not supported')
    return array.astype(np.uint16)
  if mode in ('L', 'RGB'):
    return np.asarray(image)
  if mode in ('1', 'LA', 'La'):
    return np.asarray(image.convert('L'))
  if mode in ('RGBA', 'RGBa', 'P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
    # Alpha is dropped (not composited), like OpenCV's IMREAD_COLOR.
    return np.asarray(image.convert('RGB'))
  raise ImageReadError(f'{path}: unsupported image mode {mode!r} (expected 8-bit gray/RGB/RGBA or 16-bit gray)')


def read_image(path: PathLike) -> np.ndarray:
  """Reads an image as HxW (gray) or HxWx3 (RGB), dtype uint8 or uint16; EXIF orientation applied like OpenCV."""
  try:
    with Image.open(path) as image:
      image.load()
      image = ImageOps.exif_transpose(image)
      array = _to_array(image, path)
  except FileNotFoundError as e:
    raise ImageReadError(f'{path}: file not found') from e
  except UnidentifiedImageError as e:
    raise ImageReadError(f'{path}: not a readable image file') from e
  except OSError as e:
    raise ImageReadError(f'{path}: cannot read image ({e})') from e
  if array.size == 0:
    raise ImageReadError(f'{path}: image is empty')
  return np.ascontiguousarray(array)


def image_shape(path: PathLike) -> tuple[int, int] | None:
  """(H, W) as read_image would return it, from the file's header (no decoding); None when it cannot be read
  (read_image then says why)."""
  try:
    with Image.open(path) as image:
      width, height = image.size
      # EXIF orientations 5-8 rotate by 90 degrees, which read_image applies.
      if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
        width, height = height, width
  except (OSError, UnidentifiedImageError):
    return None
  return height, width


def to_unit_float(img: np.ndarray) -> np.ndarray:
  """uint8 / 255 or uint16 / 65535 -> float32 in [0, 1]."""
  if img.dtype == np.uint8:
    return img.astype(np.float32) / np.float32(255)
  if img.dtype == np.uint16:
    return img.astype(np.float32) / np.float32(65535)
  raise ValueError(f'expected a uint8 or uint16 image, got {img.dtype}')


def rgb_to_ycrcb(rgb: np.ndarray) -> np.ndarray:
  """Float RGB HxWx3 -> YCrCb HxWx3 with OpenCV's float formulas (values in [0,1] give Cr/Cb centred at 0.5)."""
  rgb = np.asarray(rgb, np.float32)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  y = b * np.float32(_B2Y) + g * np.float32(_G2Y) + r * np.float32(_R2Y)
  cr = (r - y) * np.float32(_YCRI) + np.float32(_CHROMA_OFFSET)
  cb = (b - y) * np.float32(_YCBI) + np.float32(_CHROMA_OFFSET)
  return np.stack([y, cr, cb], axis=-1)


def ycrcb_to_rgb(ycrcb: np.ndarray) -> np.ndarray:
  """Float YCrCb HxWx3 -> RGB HxWx3, OpenCV's float inverse (not clipped)."""
  ycrcb = np.asarray(ycrcb, np.float32)
  y = ycrcb[..., 0]
  cr = ycrcb[..., 1] - np.float32(_CHROMA_OFFSET)
  cb = ycrcb[..., 2] - np.float32(_CHROMA_OFFSET)
  r = y + np.float32(_CR2R) * cr
  g = y + np.float32(_CR2G) * cr + np.float32(_CB2G) * cb
  b = y + np.float32(_CB2B) * cb
  return np.stack([r, g, b], axis=-1)


def _is_gray(img: np.ndarray) -> bool:
  """True for HxW images and for colour images whose three channels are equal (e.g. TNO's PNGs)."""
  return img.ndim == 2 or (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


def load_ir(path: PathLike) -> np.ndarray:
  """IR image as float32 HxW in [0, 1]; a colour IR file is reduced to its luma."""
  img = read_image(path)
  if _is_gray(img):
    return to_unit_float(img if img.ndim == 2 else img[..., 0])
  return rgb_to_ycrcb(to_unit_float(img))[..., 0]


def load_vis(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
  """Visible image as (Y float32 HxW in [0,1], CrCb float32 HxWx2, or None when the image is gray)."""
  img = read_image(path)
  if _is_gray(img):
    return to_unit_float(img if img.ndim == 2 else img[..., 0]), None
  ycrcb = rgb_to_ycrcb(to_unit_float(img))
  return ycrcb[..., 0], ycrcb[..., 1:]


def _natural_key(text: str) -> list:
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', text)]


def _images_by_key(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """Image files of a folder keyed by stem (IR<n>/VIS<n> -> n); duplicate keys are an error."""
  if not directory.is_dir():
    raise errors.DataConfigError(f'{directory}: not a directory')
  by_key: dict[str, pathlib.Path] = {}
  for path in sorted(directory.iterdir()):
    if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file() or path.name.startswith('.'):
      continue
    match = _NUMBERED_NAME.match(path.stem)
    key = match.group(1) if match else path.stem
    if key in by_key:
      raise errors.DataConfigError(f'{directory}: {by_key[key].name} and {path.name} both map to the pair name {key!r}')
    by_key[key] = path
  return by_key


def match_pairs(ir_dir: PathLike, vis_dir: PathLike) -> tuple[list[ImagePair], list[tuple[str, str]]]:
  """Pairs the image files of two folders by file stem (or IR<n> with VIS<n>), in natural order.

  Returns:
    (pairs, unpaired): `unpaired` has one (file, 'no <modality> partner in <folder>') per file left over.

  Raises:
    DataConfigError: a folder is missing or neither folder has images.
  """
  ir = _images_by_key(pathlib.Path(ir_dir))
  vis = _images_by_key(pathlib.Path(vis_dir))
  if not ir and not vis:
    raise errors.DataConfigError(f'no images ({", ".join(sorted(IMAGE_EXTENSIONS))}) in {ir_dir} and {vis_dir}')
  unpaired = [(str(ir[k]), f'no visible partner in {vis_dir}')
              for k in sorted(ir.keys() - vis.keys(), key=_natural_key)]
  unpaired += [(str(vis[k]), f'no infrared partner in {ir_dir}')
               for k in sorted(vis.keys() - ir.keys(), key=_natural_key)]
  pairs = [ImagePair(k, ir[k], vis[k]) for k in sorted(ir.keys() & vis.keys(), key=_natural_key)]
  return pairs, unpaired


def find_pairs(ir_dir: PathLike, vis_dir: PathLike) -> list[ImagePair]:
  """`match_pairs`, but every file must have a partner.

  Raises:
    DataConfigError: a folder is missing, has no images, or a file has no partner (all unpaired files are listed).
  """
  pairs, unpaired = match_pairs(ir_dir, vis_dir)
  if unpaired:
    raise errors.DataConfigError(f'{len(unpaired)} image(s) without a partner in {ir_dir} / {vis_dir} (--skip_bad, '
                                 'or data.skip_bad=True for training, leaves them out): ' +
                                 '; '.join(f'{file}: {reason}' for file, reason in unpaired))
  return pairs


def center_box(shape: tuple[int, ...], height: int, width: int) -> tuple[int, int, int, int]:
  """(top, left, height, width) of the central height x width window of an image of `shape` (H, W, ...)."""
  return (shape[0] - height) // 2, (shape[1] - width) // 2, height, width


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """The central height x width window of an HxW or HxWxC image."""
  top, left, _, _ = center_box(image.shape, height, width)
  return image[top:top + height, left:left + width]


def quantize(y: np.ndarray) -> np.ndarray:
  """The project's one float -> 8-bit rule (the release's): clamp to [0,1], x255, round half to even (like
  torch.round) -> uint8."""
  return np.round(np.clip(np.asarray(y, np.float32), 0.0, 1.0) * np.float32(255)).astype(np.uint8)


def save_fused(path: PathLike, y: np.ndarray, crcb: np.ndarray | None = None) -> None:
  """Saves a fused Y (HxW float in [0,1]) as gray, or as colour with the visible image's CrCb (HxWx2).

  The colour path follows the release: quantised Y, original Cr/Cb, YCrCb->RGB, then rounded to 8 bits.
  """
  y_q = quantize(y)
  if crcb is None:
    image = Image.fromarray(y_q)
  else:
    if crcb.shape != y_q.shape + (2,):
      raise ValueError(f'{path}: CrCb shape {crcb.shape} does not match fused image shape {y_q.shape}')
    ycrcb = np.concatenate([to_unit_float(y_q)[..., None], np.asarray(crcb, np.float32)], axis=-1)
    rgb = np.round(np.clip(ycrcb_to_rgb(ycrcb), 0.0, 1.0) * np.float32(255)).astype(np.uint8)
    image = Image.fromarray(rgb)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    image.save(path)
  except (OSError, ValueError) as e:
    raise ImageWriteError(f'{path}: cannot write image ({e})') from e


def resize_image(img: np.ndarray, size: tuple[int, int], reducing_gap: float | None = None) -> np.ndarray:
  """Resizes a float HxW or HxWxC image to (h, w) with Pillow's bilinear filter (antialiased when shrinking), one
  channel at a time. `reducing_gap`: Pillow's box-averaging pre-shrink (faster on large reductions)."""
  h, w = size
  channels = img[..., None] if img.ndim == 2 else img
  resized = [np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c], np.float32))
                        .resize((w, h), Image.Resampling.BILINEAR, reducing_gap=reducing_gap))
             for c in range(channels.shape[-1])]
  out = np.stack(resized, axis=-1)
  return out[..., 0] if img.ndim == 2 else out
