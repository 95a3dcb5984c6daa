r"""What a perfect bone-by-bone warp of the target scores, given joints of a known accuracy: the ceiling of DFC-Net's
warp path, and so the pose-encoder accuracy a metric bar asks for.

  python benchmarks/dfc_oracle_warp.py [--num_samples=64] [--joint_noise=0,1,2]

No model: for every pair, each output pixel takes the similarity of the nearest bone (input_pipeline.puppets.BONES)
from the given output joints to the target's true joints, and reads the target there if that point lies on the same
bone's part of the target's true silhouette; elsewhere it shows a background. Rows: the truth's exact joints with the
true background, then for each --joint_noise (mean distance in pixels of Gaussian noise on every joint, output and
target alike) the truth's joints with a background estimated from the target (each row's median colour off the
silhouette), and the source's own joints (no retargeting). Scored with the demo's evaluation (dfc_jax.evaluate, the
fixed joint regressor) on the test splits of launch/configs/dfc.py:demo's world, pairs of --sample_seed.
"""
import pathlib
import sys

from absl import app
from absl import flags
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dfc_jax import evaluate as dfc_evaluate  # noqa: E402
from dfc_jax import model as model_lib  # noqa: E402
from input_pipeline import pose_data  # noqa: E402
from input_pipeline import puppets  # noqa: E402
from launch import dfc_files  # noqa: E402
from launch.configs import dfc as dfc_config  # noqa: E402
from launch.tasks import dfc as dfc_task  # noqa: E402

_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 64, 'Pairs per split.')
_SAMPLE_SEED = flags.DEFINE_integer('sample_seed', 1, 'Seed of the drawn test pairs (launch.evaluate_dfc: 1).')
_JOINT_NOISE = flags.DEFINE_list('joint_noise', ['1', '2'], 'Mean joint errors in pixels to simulate.')

_INDEX = {name: i for i, name in enumerate(puppets.JOINT_NAMES)}
_BONES = [(_INDEX[a], _INDEX[b]) for a, b in puppets.BONES]


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  ab = b - a
  t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
  return np.linalg.norm(points - (a + t[:, None] * ab), axis=-1)


def warp_target(target: np.ndarray, silhouette: np.ndarray, target_joints: np.ndarray, output_joints: np.ndarray,
                background: np.ndarray) -> np.ndarray:
  """The target [S,S,3] moved bone by bone from its joints onto output_joints (pixels), over `background`."""
  size = target.shape[0]
  ys, xs = np.mgrid[0:size, 0:size] + 0.5
  points = np.stack([xs, ys], -1).reshape(-1, 2)
  nearest = np.full(len(points), np.inf)
  output = background.reshape(-1, 3).copy()
  for bone, (i, j) in enumerate(_BONES):
    o0, t0 = output_joints[i], target_joints[i]
    vo, vt = output_joints[j] - o0, target_joints[j] - t0
    scale = np.linalg.norm(vt) / max(np.linalg.norm(vo), 1e-6)
    angle = np.arctan2(vt[1], vt[0]) - np.arctan2(vo[1], vo[0])
    similarity = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source_points = (points - o0) @ similarity.T + t0
    distance = _segment_distance(points, o0, output_joints[j])
    index = np.clip(np.floor(source_points).astype(int), 0, size - 1)
    # The point must lie on this bone's part of the target: inside its silhouette, nearest to this bone.
    owner = np.argmin(np.stack([_segment_distance(source_points, target_joints[a], target_joints[b])
                                for a, b in _BONES], -1), axis=-1)
    take = silhouette[index[:, 1], index[:, 0]] & (owner == bone) & (distance < nearest)
    values = np.stack([ndimage.map_coordinates(target[..., c], [source_points[:, 1] - 0.5, source_points[:, 0] - 0.5],
                                               order=1, mode='nearest') for c in range(3)], -1)
    output[take] = values[take]
    nearest[take] = distance[take]
  return output.reshape(size, size, 3)


def estimated_background(target: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
  """Each row's median colour off the target's silhouette (the puppets' backdrops are vertical gradients)."""
  rows = [np.median(row[~mask], axis=0) if (~mask).any() else row.mean(axis=0) for row, mask in zip(target, silhouette)]
  return np.broadcast_to(np.array(rows)[:, None], target.shape).astype(np.float32)


def main(argv):
  del argv
  config = dfc_config.get_config('demo')
  joints_of = dfc_task.fixed_joint_regressor(config.data, config.eval.regressor_steps, config.eval.regressor_renders)
  evaluator = dfc_evaluate.Evaluator(model_lib.DFCNet())
  results = {}
  for split in config.eval.splits:
    eval_set = pose_data.make_eval_set(config.data, split, _NUM_SAMPLES.value, sample_seed=_SAMPLE_SEED.value)
    targets, silhouettes, target_joints = (eval_set[k] for k in ('target', 'target_silhouette', 'target_joints'))
    backgrounds = [estimated_background(t, s) for t, s in zip(targets, silhouettes)]
    rows = {'exact truth joints, true background': [
        warp_target(targets[i], silhouettes[i], target_joints[i], eval_set['truth_joints'][i],
                    eval_set['truth_background'][i]) for i in range(_NUM_SAMPLES.value)]}
    for noise in (float(n) for n in _JOINT_NOISE.value):
      rng = np.random.default_rng(0)
      # Per-axis sigma of 2-D Gaussian noise whose mean length is `noise` pixels.
      sigma = noise / np.sqrt(np.pi / 2)
      for name, key in ((f'truth joints +{noise:g} px, estimated background', 'truth_joints'),
                        (f'source joints +{noise:g} px, estimated background', 'source_joints')):
        rows[name] = [warp_target(targets[i], silhouettes[i],
                                  target_joints[i] + rng.normal(0, sigma, target_joints[i].shape),
                                  eval_set[key][i] + rng.normal(0, sigma, target_joints[i].shape), backgrounds[i])
                      for i in range(_NUM_SAMPLES.value)]
    results[split] = {name: evaluator.score(np.stack(outputs).astype(np.float32), eval_set, joints_of)
                      for name, outputs in rows.items()}
  print(dfc_files.format_table(results))


if __name__ == '__main__':
  app.run(main)
