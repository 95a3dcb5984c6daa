"""Warm-target contrast of fused demo pairs: do the warm objects of the IR image stay brighter than their surroundings?

  python benchmarks/cfi_demo_warm_contrast.py --samples=workdirs/cfi_demo/samples \
      --fused=workdirs/cfi_demo/eval_samples/fused,workdirs/cfi_demo/samples/ir,workdirs/cfi_demo/samples/vi

For each held-out pair that `launch.train --config=launch/configs/cfi.py:demo` wrote (samples/ir/<i>.png), the
scene is rendered again from the demo config's seed to get its warm-object coverage, and the contrast is the mean
fused intensity (gray, [0, 1]) on the objects (coverage > 0.5) minus the mean on a ring 3-6 px around them. Prints
one line per folder of fused images (named <i>.png like the samples): the mean over the pairs. launch.evaluate_cfi's
metrics do not see this: an output can score well on them with dark people.
"""
import pathlib
import sys

from absl import app
from absl import flags
import numpy as np
from scipy import ndimage

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from input_pipeline import fusion_data  # noqa: E402
from input_pipeline import images  # noqa: E402
from launch.configs import cfi as cfi_configs  # noqa: E402

_SAMPLES = flags.DEFINE_string('samples', 'workdirs/cfi_demo/samples', 'The demo run\'s samples folder.')
_FUSED = flags.DEFINE_list('fused', [], 'Folders of fused images named like the samples (<i>.png).')
_CONFIG = flags.DEFINE_string('config', 'demo', 'Variants of launch/configs/cfi.py the samples were made with.')


def warm_contrast(fused: np.ndarray, warm: np.ndarray) -> float:
  objects = warm > 0.5
  ring = ndimage.binary_dilation(objects, iterations=6) & ~ndimage.binary_dilation(objects, iterations=3)
  return float(fused[objects].mean() - fused[ring].mean())


def main(argv):
  del argv
  data = cfi_configs.get_config(_CONFIG.value).data
  # The same scenes, at the same size, that the demo's held-out pairs are (centre crops are the whole scene).
  scenes = fusion_data.make_source(data, train=False)
  names = sorted(pathlib.Path(_SAMPLES.value, 'ir').glob('*.png'), key=lambda p: int(p.stem))
  for folder in _FUSED.value:
    values = []
    for path in names:
      warm = scenes.warm(int(path.stem))
      if (warm > 0.5).any():
        fused = images.read_image(pathlib.Path(folder, path.name)).astype(np.float32) / 255.0
        values.append(warm_contrast(fused.mean(axis=-1) if fused.ndim == 3 else fused, warm))
    print(f'{folder}: warm-target contrast {np.mean(values):+.3f} (mean of {len(values)} pairs)')

if __name__ == '__main__':
  app.run(main)
