"""Fusing and scoring whole test folders, as whole processes: the release's test loop against launch.fuse/evaluate.

  python -m launch.import_cfi_release --torch_checkpoint=../shared/isfuse_reference/best.pth \
      --output_dir=/tmp/isfuse_release
  python benchmarks/cfi_folder_speed.py --checkpoint=/tmp/isfuse_release [--rounds=1] [--folders=roadscene,msrs,tno]

The release side is the PyTorch twin of the released network (benchmarks/torch_isfuse.py, best.pth, eval mode)
in the release's test loop: one pair at a time, read, fuse the Y channel, write. Its scoring side adds this
project's float64 host metrics (tang2023, cfi_jax.metrics) after the loop, because CDDFuse's Python evaluator is not
part of this repository; the issue measured that evaluator at about the same speed per pair on this machine.
The project side is `launch.fuse --ir_dir` and `launch.evaluate_cfi --checkpoint` (tang2023), each run twice: with an
empty compilation cache (a first run) and again with the cache the first run filled (every later run).
The project's binaries re-execute themselves with huge pages (launch/huge_pages.py); the release loop runs as its
users run it, without. The steady-state row runs both networks in this process: run the benchmark under
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 to give both huge pages there.
Every command is a fresh process timed from start to exit; the sides run interleaved, round after round, so a
noisy machine slows both alike, and the table prints ratios (release time / project time: > 1 means faster). The
fused images of the two sides are compared in gray levels.
"""
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from input_pipeline import images  # noqa: E402  (needs the sys.path line above)

_CHECKPOINT = flags.DEFINE_string('checkpoint', '/tmp/isfuse_release', 'launch.import_cfi_release output of best.pth.')
_TORCH_CHECKPOINT = flags.DEFINE_string('torch_checkpoint', str(REPO.parent / 'shared/isfuse_reference/best.pth'),
                                        'The released PyTorch weights.')
_DATA = flags.DEFINE_string('data', str(REPO.parent / 'shared/data/ivif'), 'Folder holding the test sets.')
_FOLDERS = flags.DEFINE_list('folders', ['roadscene', 'msrs', 'tno'], 'Test sets to time.')
_ROUNDS = flags.DEFINE_integer('rounds', 1, 'Interleaved rounds (the table shows medians).')
_STEADY = flags.DEFINE_integer('steady_repeats', 5, 'Steady state at 480x640: interleaved timed runs (0: skip).')
_SIDE = flags.DEFINE_enum('side', None, ['torch_fuse', 'torch_evaluate'], 'Internal: run one release-side loop.')
_IR_DIR = flags.DEFINE_string('ir_dir', None, 'Internal (--side): IR folder.')
_VIS_DIR = flags.DEFINE_string('vis_dir', None, 'Internal (--side): VIS folder.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Internal (--side): output folder.')

FOLDERS = {'roadscene': ('roadscene/test/ir', 'roadscene/test/vi'), 'msrs': ('msrs/test/ir', 'msrs/test/vi'),
           'tno': ('tno/ir', 'tno/vi')}


def release_loop(ir_dir: str, vis_dir: str, out_dir: pathlib.Path, score: bool) -> None:
  """The release's test loop with the PyTorch twin: one pair at a time, eval mode, no_grad; then optional metrics."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import torch_isfuse  # pylint: disable=g-import-not-at-top

  model = torch_isfuse.ISFuseTorch()
  model.load_state_dict(torch.load(_TORCH_CHECKPOINT.value, map_location='cpu', weights_only=True))
  model.eval()
  out_dir.mkdir(parents=True, exist_ok=True)
  pairs = images.find_pairs(ir_dir, vis_dir)
  for pair in pairs:
    ir = images.load_ir(pair.ir_path)
    vis_y, crcb = images.load_vis(pair.vis_path)
    with torch.no_grad():
      fused = model(torch.from_numpy(vis_y)[None, None], torch.from_numpy(ir)[None, None])[0]
    images.save_fused(out_dir / f'{pair.name}.png', fused[0, 0].numpy(), crcb)
  if score:
    from cfi_jax import metrics  # pylint: disable=g-import-not-at-top
    for pair in pairs:
      gray = lambda p: metrics.to_gray_u8(images.quantize(images.to_unit_float(images.read_image(p))))
      metrics.compute_metrics(gray(out_dir / f'{pair.name}.png'), gray(pair.ir_path), gray(pair.vis_path))


def _timed(command: list[str], env: dict[str, str]) -> float:
  start = time.perf_counter()
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if result.returncode:
    raise SystemExit(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')
  return seconds


def _max_level_difference(dir_a: pathlib.Path, dir_b: pathlib.Path) -> int:
  worst = 0
  for path in sorted(dir_a.glob('*.png')):
    a = images.read_image(path).astype(np.int32)
    b = images.read_image(dir_b / path.name).astype(np.int32)
    worst = max(worst, int(np.abs(a - b).max()))
  return worst


def steady_state(height: int = 480, width: int = 640) -> str:
  """One pair, after warm-up: the twin (eval, no_grad) and launch.fuse's bucketed program, alternating."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import torch_isfuse  # pylint: disable=g-import-not-at-top
  from cfi_jax import inference  # pylint: disable=g-import-not-at-top
  from launch import checkpoints  # pylint: disable=g-import-not-at-top

  jax.config.update('jax_platforms', 'cpu')
  logging.set_verbosity(logging.WARNING)  # orbax logs every step of the restore at INFO.
  twin = torch_isfuse.ISFuseTorch()
  twin.load_state_dict(torch.load(_TORCH_CHECKPOINT.value, map_location='cpu', weights_only=True))
  twin.eval()
  variables, config = checkpoints.restore_model_variables(_CHECKPOINT.value)
  fuser = inference.BucketedFuser(inference.model_from_config(config['model_config']), variables)
  rng = np.random.default_rng(0)
  vis, ir = rng.random((height, width), np.float32), rng.random((height, width), np.float32)

  def run_twin():
    with torch.no_grad():
      return twin(torch.from_numpy(vis)[None, None], torch.from_numpy(ir)[None, None])[0][0, 0].numpy()

  run_jax = lambda: fuser.fuse(vis, ir)
  difference = float(np.abs(run_twin() - run_jax()).max())
  times = {'twin': [], 'jax': []}
  for _ in range(_STEADY.value):
    for side, fn in (('twin', run_twin), ('jax', run_jax)):
      start = time.perf_counter()
      fn()
      times[side].append(time.perf_counter() - start)
  twin_s, jax_s = statistics.median(times['twin']), statistics.median(times['jax'])
  return (f'| one {height}x{width} pair, steady state (median of {_STEADY.value}) | {twin_s * 1e3:.0f} ms | '
          f'{jax_s * 1e3:.0f} ms ({twin_s / jax_s:.2f}x) | | max |difference| {difference:.1e} |')


def benchmark() -> None:
  python = sys.executable
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  work = pathlib.Path(tempfile.mkdtemp(prefix='cfi_folder_speed_'))
  rows = []
  for name in _FOLDERS.value:
    ir_dir, vis_dir = (str(pathlib.Path(_DATA.value) / p) for p in FOLDERS[name])
    num_pairs = len(images.find_pairs(ir_dir, vis_dir))
    sizes = len({images.read_image(p.ir_path).shape[:2] for p in images.find_pairs(ir_dir, vis_dir)})
    times = {k: [] for k in ('release_fuse', 'fuse_cold', 'fuse_warm', 'release_eval', 'eval_cold', 'eval_warm')}
    for r in range(_ROUNDS.value):
      cache_env = dict(env, CFI_DFC_JAX_CACHE=str(work / f'cache_{name}_{r}'))
      side = lambda s, out: [python, __file__, f'--side={s}', f'--ir_dir={ir_dir}', f'--vis_dir={vis_dir}',
                             f'--out_dir={out}', f'--torch_checkpoint={_TORCH_CHECKPOINT.value}']
      fuse = lambda out: [python, '-m', 'launch.fuse', f'--checkpoint={_CHECKPOINT.value}', f'--ir_dir={ir_dir}',
                          f'--vis_dir={vis_dir}', f'--out_dir={out}']
      evaluate = lambda out: [python, '-m', 'launch.evaluate_cfi', f'--checkpoint={_CHECKPOINT.value}',
                              f'--ir_dir={ir_dir}', f'--vis_dir={vis_dir}', f'--output_dir={out}', '--num_grid=0']
      times['release_fuse'].append(_timed(side('torch_fuse', work / f'{name}_release'), env))
      times['fuse_cold'].append(_timed(fuse(work / f'{name}_jax'), cache_env))
      times['fuse_warm'].append(_timed(fuse(work / f'{name}_jax'), cache_env))
      times['release_eval'].append(_timed(side('torch_evaluate', work / f'{name}_release_eval'), env))
      eval_env = dict(env, CFI_DFC_JAX_CACHE=str(work / f'eval_cache_{name}_{r}'))
      times['eval_cold'].append(_timed(evaluate(work / f'{name}_eval'), eval_env))
      times['eval_warm'].append(_timed(evaluate(work / f'{name}_eval'), eval_env))
    med = {k: statistics.median(v) for k, v in times.items()}
    diff = _max_level_difference(work / f'{name}_release', work / f'{name}_jax')
    rows.append(f'| {name}: fuse {num_pairs} pairs, {sizes} sizes | {med["release_fuse"]:.1f} s | '
                f'{med["fuse_cold"]:.1f} s ({med["release_fuse"] / med["fuse_cold"]:.2f}x) | '
                f'{med["fuse_warm"]:.1f} s ({med["release_fuse"] / med["fuse_warm"]:.2f}x) | {diff} |')
    rows.append(f'| {name}: fuse + score (tang2023) | {med["release_eval"]:.1f} s | '
                f'{med["eval_cold"]:.1f} s ({med["release_eval"] / med["eval_cold"]:.2f}x) | '
                f'{med["eval_warm"]:.1f} s ({med["release_eval"] / med["eval_warm"]:.2f}x) | |')
    print(rows[-2], rows[-1], sep='\n', flush=True)
  print(f'\n{_ROUNDS.value} round(s), medians, load average {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} '
        'CPUs\n\n| work | release loop (PyTorch twin) | project, first run (empty cache) | project, cached | '
        'max gray-level difference |\n|---|---|---|---|---|')
  print('\n'.join(rows))
  if _STEADY.value:
    print(steady_state())


def main(argv):
  del argv
  if _SIDE.value:
    release_loop(_IR_DIR.value, _VIS_DIR.value, pathlib.Path(_OUT_DIR.value), _SIDE.value == 'torch_evaluate')
  else:
    benchmark()


if __name__ == '__main__':
  app.run(main)
