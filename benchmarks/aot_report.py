r"""Compiles a task's real train step (or the fusion program) for a TPU or GPU on a machine that has neither, and
reports its per-device memory, cost and a roofline estimate of the step time.

  python benchmarks/aot_report.py --target=tpu-v5e --config=launch/configs/cfi.py:paper [--num_devices=4]
  python benchmarks/aot_report.py --target=tpu-v5p --config=launch/configs/dfc.py:paper --out_json=dfc_v5p.json
  python benchmarks/aot_report.py --target=tpu-v5e --config=launch/configs/cfi.py:paper --program=fuse \
      --fuse_size=1024x1280

The train step is built exactly as `launch.train` builds it: launch.trainer.make_mesh over the target's devices,
make_init_state / make_train_step (same shardings, donated state, the task's view batching resolved for the target's
platform), with every argument abstract (shapes, dtypes and shardings only). The fusion program is the one
`launch.fuse` runs (cfi_jax.inference, eval-mode BatchNorm) on one device. Ahead-of-time compilation follows
../shared/aot/README.md: TPU targets need libtpu (`pip install -e '.[tpu]'`), GPU targets a CUDA build of jaxlib's
plugin (`jax[cuda12]` at the jax version in use); neither opens a device.

Per device it prints (and writes to --out_json) temp / argument / output bytes (XLA's memory analysis), flops and
bytes accessed (XLA's cost analysis; GPU compiles give none, so those come from a TPU compile of the same program),
the chip's HBM, whether XLA rematerialised on its own to fit (libtpu's log), and a roofline ESTIMATE
max(flops / peak, bytes / bandwidth) from the chip's published peak and bandwidth (`TARGETS`, with sources). The
peak is that of the program's arithmetic: the model's dtype (`--config.model.dtype=bfloat16` compiles the bfloat16
option) and, for float32, the matmul precision (the train step's config.matmul_precision; fusion always runs at
'highest'), since a TPU computes a float32 product as 1, 3 or 6 bfloat16 passes and an H100 as TF32 or plain FP32.
The estimate is a lower bound: it assumes every flop at that peak and every byte at full bandwidth. A program that
does not fit the chip is reported (fits: false, with XLA's message), not raised.
"""
import dataclasses
import glob
import json
import os
import pathlib
import re
import sys
import tempfile
import time

# Compile only: never open a device. libtpu must not query a metadata server, and may be loaded by several
# processes at once. (Set before jax is imported.)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from jax.experimental import topologies
import jax.numpy as jnp
from ml_collections import config_flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from cfi_jax import inference  # noqa: E402  (needs the sys.path line above)
from input_pipeline import pose_data  # noqa: E402
from launch import tasks  # noqa: E402
from launch import trainer  # noqa: E402

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
  """One accelerator chip: how to get its devices, and its published memory, peak and bandwidth."""
  platform: str  # 'tpu' | 'cuda'
  hbm_bytes: float
  peak_bf16: float  # dense FLOP/s
  peak_f32: dict  # dense FLOP/s of float32 matmuls per matmul precision ('default', 'high', 'highest')
  bandwidth: float  # HBM bytes/s
  source: str
  topology: str = ''  # TPU topology family, e.g. 'v5e'




def _tpu_f32(peak_bf16: float) -> dict:
  # XLA on TPU: a float32 product is one bfloat16 pass at DEFAULT, three at HIGH (bf16_3x), six at HIGHEST.
  return {'default': peak_bf16, 'high': peak_bf16 / 3, 'highest': peak_bf16 / 6}


TARGETS = {
    # 16 GiB HBM2e, 819 GB/s, 197 TFLOP/s bf16.
    'tpu-v5e': Target('tpu', 16 * GIB, 197e12, _tpu_f32(197e12), 819e9, 'https://cloud.google.com/tpu/docs/v5e',
                      'v5e'),
    # 32 GiB HBM2, 1200 GB/s, 275 TFLOP/s bf16 (one megacore chip).
    'tpu-v4': Target('tpu', 32 * GIB, 275e12, _tpu_f32(275e12), 1200e9, 'https://cloud.google.com/tpu/docs/v4', 'v4'),
    # 95 GiB HBM2e, 2765 GB/s, 459 TFLOP/s bf16.
    'tpu-v5p': Target('tpu', 95 * GIB, 459e12, _tpu_f32(459e12), 2765e9, 'https://cloud.google.com/tpu/docs/v5p',
                      'v5p'),
    # 32 GiB HBM, 1640 GB/s, 918 TFLOP/s bf16 (Trillium).
    'tpu-v6e': Target('tpu', 32 * GIB, 918e12, _tpu_f32(918e12), 1640e9, 'https://cloud.google.com/tpu/docs/v6e',
                      'v6e'),
    # H100 SXM5: 80 GB HBM3, 3.35 TB/s, 989 TFLOP/s bf16 and 495 TFLOP/s TF32 dense (half the sparsity figures), 67
    # TFLOP/s FP32 (no tensor cores: XLA's HIGHEST).
    'gpu-h100': Target('cuda', 80e9, 989e12, {'default': 495e12, 'high': 495e12, 'highest': 67e12}, 3.35e12,
                       'https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM datasheet)'),
}
# jax's other names of the same precisions.
_PRECISION_ALIASES = {'bfloat16': 'default', 'tensorfloat32': 'high', 'float32': 'highest'}
# Single-host topology names per device count; v4 chips compile as one megacore device each.
_TPU_TOPOLOGIES = {'v5e': {1: '1x1', 4: '2x2', 8: '2x4'}, 'v6e': {1: '1x1', 4: '2x2', 8: '2x4'},
                   'v4': {1: '1x1x1', 4: '2x2x1', 8: '2x2x2'}, 'v5p': {1: '1x1x1', 4: '2x2x1', 8: '2x2x2'}}
GPU_TARGET_CONFIG = REPO_ROOT.parent / 'shared' / 'aot' / 'h100_sxm.txtpb'

_TARGET = flags.DEFINE_enum('target', None, list(TARGETS), 'Accelerator to compile for.')
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config, e.g. launch/configs/cfi.py:paper.',
                                          lock_config=False)
_PROGRAM = flags.DEFINE_enum('program', 'train', ['train', 'fuse'],
                             "'train': the task's train step; 'fuse': CFI fusion of one image pair (eval mode).")
_FUSE_SIZE = flags.DEFINE_string('fuse_size', '1024x1280', 'HEIGHTxWIDTH of the fused pair (--program=fuse).')
_NUM_DEVICES = flags.DEFINE_integer('num_devices', 1, 'Devices of the data-parallel mesh (1, 4 or 8); the batch '
                                    'is split over them.')
_GPU_TARGET_CONFIG = flags.DEFINE_string('gpu_target_config', str(GPU_TARGET_CONFIG),
                                         'GPU description (text proto) for gpu-* targets.')
_OUT_JSON = flags.DEFINE_string('out_json', None, 'Also write the report here.')
flags.mark_flags_as_required(['target', 'config'])


class UsageError(ValueError):
  """A target / device count / size the report cannot compile for; the message says what is possible."""


def target_devices(name: str, num_devices: int, gpu_target_config: str | os.PathLike = GPU_TARGET_CONFIG) -> list:
  """Abstract devices of `num_devices` chips of target `name` (no device is opened)."""
  target = TARGETS[name]
  if target.platform == 'tpu':
    shapes = _TPU_TOPOLOGIES[target.topology]
    if num_devices not in shapes:
      raise UsageError(f'--num_devices={num_devices}: {name} compiles for {sorted(shapes)} devices')
    kwargs = {'chips_per_host_bounds': (1, 1, 1)} if num_devices == 1 else {}
    if target.topology == 'v4':
      kwargs['chip_config_name'] = 'megacore'
    topology = topologies.get_topology_desc(topology_name=f'{target.topology}:{shapes[num_devices]}',
                                            platform='tpu', **kwargs)
  else:
    topology = topologies.get_topology_desc(platform='cuda', target_config=pathlib.Path(gpu_target_config).read_text(),
                                            topology=f'1x1x{num_devices}')
  devices = list(topology.devices)
  if len(devices) != num_devices:
    raise UsageError(f'{name} topology gave {len(devices)} devices, expected {num_devices}')
  return devices


def batch_spec(config) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of one global training batch of `config` (what its task's train_dataset yields, for one process)."""
  if config.task == 'cfi':
    shape = (config.batch_size, config.data.crop_size, config.data.crop_size, 1)
    keys = ('vis', 'ir')
  elif config.task == 'dfc':
    shape = (config.batch_size, config.data.image_size, config.data.image_size, 3)
    keys = pose_data.TRAIN_KEYS + (pose_data.SUPPORT_KEYS if config.data.support else ())
  else:
    raise UsageError(f'no batch shapes known for task {config.task!r}')
  # A DFC render cache's batches carry 8-bit images (launch.tasks.dfc converts them in the step).
  cached = config.task == 'dfc' and config.data.name == 'puppets' and config.data.get('render_cache', False)
  return {k: jax.ShapeDtypeStruct(shape, jnp.uint8 if cached else jnp.float32) for k in keys}


def _with_sharding(tree, sharding):
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def lower_train_step(config, devices):
  """launch.train's jitted train step for `devices`, lowered with abstract arguments."""
  task = tasks.make_task(config)
  mesh = trainer.make_mesh(devices)
  if config.batch_size % mesh.size:
    raise UsageError(f'batch_size {config.batch_size} does not divide by {mesh.size} devices')
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(trainer.DATA_AXIS))
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # jax.random.PRNGKey's raw key, as train_and_evaluate makes it
  state = _with_sharding(jax.eval_shape(trainer.make_init_state(task, mesh), key, batch_spec(config)), replicated)
  return trainer.make_train_step(task, mesh, config.matmul_precision).lower(
      state, _with_sharding(batch_spec(config), data), _with_sharding(key, replicated))


def lower_fuse(config, devices, height: int, width: int):
  """launch.fuse's fusion program (cfi_jax.inference) for one HxW pair on the first of `devices`."""
  if config.task != 'cfi':
    raise UsageError('--program=fuse is the CFI fusion program; use a launch/configs/cfi.py config')
  task = tasks.make_task(config)
  one_device = jax.sharding.SingleDeviceSharding(devices[0])
  image = jax.ShapeDtypeStruct((1, height, width, 1), jnp.float32, sharding=one_device)
  state = jax.eval_shape(task.init_state, jax.ShapeDtypeStruct((2,), jnp.uint32), batch_spec(config))
  variables = _with_sharding({'params': state.params, 'batch_stats': state.batch_stats}, one_device)
  return inference._fuse.lower(task.model, variables, image, image)  # pylint: disable=protected-access


def _tpu_log_lines(since: float) -> list[str]:
  """This process's libtpu log lines on rematerialisation and HBM needs, written after `since`."""
  pattern = os.path.join(tempfile.gettempdir(), 'tpu_logs', f'*.log.INFO.*.{os.getpid()}')
  lines = []
  for path in glob.glob(pattern):
    if os.path.getmtime(path) >= since:
      lines += [line.strip() for line in pathlib.Path(path).read_text(errors='replace').splitlines()
                if 'rematerialization' in line.lower() or 'hbm requirement' in line.lower()]
  return lines


def _first(analysis):
  return analysis[0] if isinstance(analysis, (list, tuple)) else analysis


def compile_report(lowered, target_name: str) -> dict:
  """Memory, cost, XLA's own rematerialisation and a roofline estimate of one lowered program on `target_name`."""
  target = TARGETS[target_name]
  started = time.time()
  report = {'target': target_name, 'hbm_bytes': target.hbm_bytes, 'source': target.source}
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    report.update(fits=False, error=str(e).splitlines()[0][:1000], compile_seconds=time.time() - started)
    return report
  report['compile_seconds'] = time.time() - started
  memory = compiled.memory_analysis()
  report.update(fits=True, temp_bytes=memory.temp_size_in_bytes, argument_bytes=memory.argument_size_in_bytes,
                output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
                code_bytes=memory.generated_code_size_in_bytes)
  # Donated arguments alias outputs: what is alive at once is arguments + outputs - aliased + temp.
  report['total_bytes'] = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                           + memory.temp_size_in_bytes)
  cost = _first(compiled.cost_analysis()) or {}
  report['flops'] = cost.get('flops')
  report['bytes_accessed'] = cost.get('bytes accessed')
  if target.platform == 'tpu':
    log = _tpu_log_lines(started)
    report['xla_remat'] = any('rematerialization hbm reduction' in line.lower() for line in log)
    report['xla_remat_log'] = log
  else:
    report['xla_remat'] = None  # Only libtpu logs it.
  return report


def matmul_peak(target_name: str, dtype: str, matmul_precision: str) -> float:
  """Published dense FLOP/s of the target's products in `dtype` ('float32' | 'bfloat16') at `matmul_precision`."""
  target = TARGETS[target_name]
  if dtype == 'bfloat16':
    return target.peak_bf16
  return target.peak_f32[_PRECISION_ALIASES.get(matmul_precision, matmul_precision)]


def add_roofline(report: dict, dtype: str, matmul_precision: str = 'default') -> dict:
  """Adds the roofline ESTIMATE (seconds, steps/s) of a compiled program from the target's published figures."""
  target = TARGETS[report['target']]
  if not report.get('fits') or report.get('flops') is None:
    return report
  peak = matmul_peak(report['target'], dtype, matmul_precision)
  compute, memory = report['flops'] / peak, report['bytes_accessed'] / target.bandwidth
  report.update(estimate_compute_seconds=compute, estimate_memory_seconds=memory,
                estimate_seconds=max(compute, memory), estimate_bound='memory' if memory > compute else 'compute',
                estimate_per_second=1.0 / max(compute, memory), peak_flops=peak, bandwidth=target.bandwidth)
  return report


def describe(report: dict) -> str:
  """One human-readable block of a report."""
  head = (f"{report['program']} {report['config']} ({report['dtype']}, matmul precision "
          f"{report['matmul_precision']}) on {report['target']} x{report['num_devices']}")
  if not report['fits']:
    return f"{head}: DOES NOT FIT ({report['hbm_bytes'] / GIB:.2f} GiB HBM): {report['error']}"
  gb = lambda b: f'{b / GIB:.2f} GiB'  # noqa: E731
  lines = [f'{head} (per device; compiled in {report["compile_seconds"]:.0f} s)',
           f"  temp {gb(report['temp_bytes'])}, arguments {gb(report['argument_bytes'])}, outputs "
           f"{gb(report['output_bytes'])} (aliased {gb(report['alias_bytes'])}), total {gb(report['total_bytes'])} "
           f"of {gb(report['hbm_bytes'])} HBM",
           f"  XLA rematerialised on its own to fit: {report['xla_remat']}"]
  if report.get('flops') is not None:
    lines.append(f"  {report['flops'] / 1e9:.0f} GFLOP, {report['bytes_accessed'] / 1e9:.1f} GB accessed")
  if 'estimate_seconds' in report:
    lines.append(f"  roofline ESTIMATE: {report['estimate_seconds'] * 1e3:.1f} ms ({report['estimate_bound']}-bound; "
                 f"compute {report['estimate_compute_seconds'] * 1e3:.1f} ms at {report['peak_flops'] / 1e12:.0f} "
                 f"TFLOP/s, memory {report['estimate_memory_seconds'] * 1e3:.1f} ms at "
                 f"{report['bandwidth'] / 1e9:.0f} GB/s; {report['source']}) = {report['estimate_per_second']:.2f}/s")
  return '\n'.join(lines)


def run(config, target: str, program: str = 'train', num_devices: int = 1, fuse_size: tuple[int, int] = (1024, 1280),
        gpu_target_config: str | os.PathLike = GPU_TARGET_CONFIG, config_name: str = '') -> dict:
  """Compiles `program` of `config` for `num_devices` chips of `target`; the report as a dict."""
  devices = target_devices(target, num_devices, gpu_target_config)
  lowered = lower_train_step(config, devices) if program == 'train' else lower_fuse(config, devices, *fuse_size)
  report = compile_report(lowered, target)
  report.update(program=program, config=config_name, num_devices=num_devices,
                dtype=config.model.get('dtype', 'float32'), batch_size=config.batch_size if program == 'train' else 1,
                # Fusion runs at 'highest' whatever the config (cfi_jax/inference.py).
                matmul_precision=config.matmul_precision if program == 'train' else 'highest')
  if program == 'fuse':
    report['fuse_size'] = list(fuse_size)
  return add_roofline(report, report['dtype'], report['matmul_precision'])


def _parse_size(text: str) -> tuple[int, int]:
  match = re.fullmatch(r'(\d+)x(\d+)', text)
  if not match:
    raise app.UsageError(f'--fuse_size must be HEIGHTxWIDTH, e.g. 1024x1280; got {text!r}')
  return int(match[1]), int(match[2])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config_name = flags.FLAGS['config'].serialize().split('=', 1)[1]
  try:
    report = run(_CONFIG.value, _TARGET.value, _PROGRAM.value, _NUM_DEVICES.value, _parse_size(_FUSE_SIZE.value),
                 _GPU_TARGET_CONFIG.value, config_name=config_name)
  except UsageError as e:
    sys.exit(f'Error: {e}')
  except RuntimeError as e:
    if 'Unable to initialize backend' in str(e) or 'libtpu' in str(e).lower():
      sys.exit(f'Error: cannot compile for {_TARGET.value}: {str(e).splitlines()[0]}\n'
               "TPU targets need libtpu (pip install -e '.[tpu]'); GPU targets need jax[cuda12] at the jax version in "
               'use (../shared/aot/README.md).')
    raise
  print(describe(report))
  if _OUT_JSON.value:
    pathlib.Path(_OUT_JSON.value).write_text(json.dumps(report, indent=2) + '\n')


if __name__ == '__main__':
  app.run(main)
