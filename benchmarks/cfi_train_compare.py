"""Does training here train like the release? The PyTorch twin with the release's loop against launch.train.

Both train the full-width ISFuse from scratch on the same batches (launch's folder pipeline with the same seed: the
same crops, flips and order) for the same number of steps: the twin with the release's Train.py loop (its own
PyTorch initialisation, Adam 1e-4, the five sequential passes, model.train()), this project with
`launch.train --config=launch/configs/cfi.py:paper`. The twin's weights are imported into a Flax checkpoint
(launch.import_cfi_release), and both are scored by `launch.evaluate_cfi` on each test set. Prints the per-seed metric
means and whether each framework's seed means fall within the other's seed range.

  python benchmarks/cfi_train_compare.py --data_dir=../shared/data/ivif/roadscene \
      --test_sets=roadscene:../shared/data/ivif/roadscene/test,tno:../shared/data/ivif/tno --workdir=/tmp/cfi_compare

Every run and evaluation is kept in --workdir and skipped when rerun, so an interrupted comparison resumes.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
import torch

from input_pipeline import fusion_data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_isfuse  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Folder with train/{ir,vi} (the RoadScene training split).')
_TEST_SETS = flags.DEFINE_list('test_sets', None, 'NAME:DIR with DIR/{ir,vi}, comma separated.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/cfi_compare', 'Runs, checkpoints and evaluations.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Training steps per run.')
_BATCH = flags.DEFINE_integer('batch', 4, 'Batch size.')
_CROP = flags.DEFINE_integer('crop', 128, 'Training crop size.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1'], 'Seeds; each framework trains once per seed.')
_METRICS = flags.DEFINE_list('metrics', ['EN', 'SD', 'SF', 'AG', 'MI', 'VIF', 'Qabf', 'SSIM'], 'Metrics to print.')

FRAMEWORKS = ('torch_release_loop', 'jax_launch_train')


def _run(args: list[str]) -> None:
  print('+', ' '.join(args), flush=True)
  # The evaluations fuse the same test images with same-shaped models: a shared persistent compilation cache lets
  # every evaluation after the first skip the per-image-size compiles.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(pathlib.Path(_WORKDIR.value) / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5')
  subprocess.run([sys.executable, *args], check=True, env=env)


def _data_config():
  config = fusion_data.default_data_config()
  config.name, config.data_dir, config.crop_size = 'folder', _DATA_DIR.value, _CROP.value
  return config


def train_twin(seed: int, run_dir: pathlib.Path) -> pathlib.Path:
  """The release's Train.py loop on launch's batches; returns the imported Flax checkpoint directory."""
  checkpoint = run_dir / 'checkpoint'
  if checkpoint.exists():
    return checkpoint
  run_dir.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  model = torch_isfuse.ISFuseTorch().train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
  batches = iter(fusion_data.make_train_dataset(_data_config(), seed=seed, batch_size=_BATCH.value))
  start, cpu_start, losses = time.perf_counter(), time.process_time(), []
  for step in range(_STEPS.value):
    batch = next(batches)
    vis, ir = (torch.from_numpy(np.ascontiguousarray(batch[k].transpose(0, 3, 1, 2))) for k in ('vis', 'ir'))
    loss = torch_isfuse.five_pass_loss(model, vis, ir, generator)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(float(loss.detach()))
    if step % 10 == 0 or step == _STEPS.value - 1:
      print(f'twin seed {seed} step {step} loss {losses[-1]:.4f} ({time.perf_counter() - start:.0f} s)', flush=True)
  (run_dir / 'train.json').write_text(json.dumps({'wall_s': time.perf_counter() - start,
                                                  'cpu_s': time.process_time() - cpu_start, 'losses': losses}))
  torch.save(model.state_dict(), run_dir / 'twin.pth')
  _run(['-m', 'launch.import_cfi_release', f'--torch_checkpoint={run_dir / "twin.pth"}', f'--output_dir={checkpoint}'])
  return checkpoint


def train_jax(seed: int, run_dir: pathlib.Path) -> pathlib.Path:
  """launch.train with the paper config at the comparison's budget; returns its checkpoints directory."""
  checkpoints = run_dir / 'checkpoints'
  if (run_dir / 'done').exists():
    return checkpoints
  steps = _STEPS.value
  _run(['-m', 'launch.train', '--config=launch/configs/cfi.py:paper', f'--workdir={run_dir}',
        f'--config.data.data_dir={_DATA_DIR.value}', f'--config.seed={seed}', f'--config.num_steps={steps}',
        f'--config.batch_size={_BATCH.value}', f'--config.data.crop_size={_CROP.value}',
        f'--config.checkpoint_every={steps}', f'--config.eval_every={steps}', '--config.log_every=10'])
  (run_dir / 'done').touch()
  return checkpoints


def evaluate(checkpoint: pathlib.Path, test_dir: str, out_dir: pathlib.Path) -> dict[str, float]:
  summary_file = out_dir / 'summary.json'
  if not summary_file.exists():
    _run(['-m', 'launch.evaluate_cfi', f'--checkpoint={checkpoint}', f'--ir_dir={test_dir}/ir',
          f'--vis_dir={test_dir}/vi', f'--output_dir={out_dir}', '--num_grid=2'])
  summary = json.loads(summary_file.read_text())
  # The summary names the method after the checkpoint folder ('checkpoint' for the twin, 'checkpoints' for launch).
  report = summary['dialects']['tang2023']['summary'][summary['method']]
  return {name: report[name]['mean'] for name in _METRICS.value}


def main(argv):
  del argv
  if not _DATA_DIR.value or not _TEST_SETS.value:
    raise app.UsageError('--data_dir and --test_sets are required')
  workdir = pathlib.Path(_WORKDIR.value)
  seeds = [int(s) for s in _SEEDS.value]
  tests = dict(entry.split(':', 1) for entry in _TEST_SETS.value)
  trainers = {'torch_release_loop': train_twin, 'jax_launch_train': train_jax}
  scores = {}  # (framework, test set) -> [per-seed {metric: mean}]
  for seed in seeds:
    for framework in FRAMEWORKS:
      checkpoint = trainers[framework](seed, workdir / f'{framework}_seed{seed}')
      for test_name, test_dir in tests.items():
        scores.setdefault((framework, test_name), []).append(
            evaluate(checkpoint, test_dir, workdir / f'{framework}_seed{seed}' / f'eval_{test_name}'))

  names = _METRICS.value
  print(f'\n{_STEPS.value} steps, batch {_BATCH.value}, {_CROP.value}x{_CROP.value} crops, seeds {seeds}; '
        'tang2023 metric means over each test set\n')
  print('| test | framework | seed | ' + ' | '.join(names) + ' |')
  print('|---|---|---|' + '---|' * len(names))
  for test_name in tests:
    for framework in FRAMEWORKS:
      for seed, row in zip(seeds, scores[(framework, test_name)]):
        print(f'| {test_name} | {framework} | {seed} | ' + ' | '.join(f'{row[n]:.4g}' for n in names) + ' |')
  # With two seeds the range is the only spread estimate there is: the frameworks agree on a metric when the gap
  # between their seed means is no larger than the larger of their two seed ranges.
  print()
  for test_name in tests:
    for n in names:
      values = {f: np.asarray([r[n] for r in scores[(f, test_name)]]) for f in FRAMEWORKS}
      spread = max(np.ptp(v) for v in values.values())
      gap = abs(values[FRAMEWORKS[0]].mean() - values[FRAMEWORKS[1]].mean())
      print(f'{test_name} {n}: gap of means {gap:.4g}, larger seed range {spread:.4g}: '
            f'{"within" if gap <= spread else "OUTSIDE"}')

if __name__ == '__main__':
  app.run(main)
