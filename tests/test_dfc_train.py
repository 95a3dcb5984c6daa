"""DFC-Net's G + D step (sharded = single device, gradients through the re-encoding) and the smoke config end to
end with the shared loop: training, evaluation, checkpoint restore, transfer and evaluation binaries."""
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
import pytest

from dfc_jax import evaluate as dfc_evaluate
from dfc_jax import joint_regressor
from dfc_jax import losses
from dfc_jax import model as model_lib
from dfc_jax import steps as dfc_steps
from dfc_jax import transforms
from input_pipeline import images
from input_pipeline import pose_data
from launch import checkpoints
from launch import dfc_files
from launch import trainer
from launch.configs import dfc as dfc_config
from launch.tasks import dfc as dfc_task

_GENERATOR = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4))
_DISCRIMINATOR = model_lib.MultiScaleDiscriminator(num_scales=2, width=4, num_layers=2)
# 'rbg' keys: XLA compiles threefry's unrolled rounds slowly on a CPU.
_KEY = jax.random.key(0, impl='rbg')


def _batch(n: int, size: int = 16) -> dict[str, np.ndarray]:
  keys = ('source', 'target', 'truth', 'support_source', 'support_target')
  rng = np.random.default_rng(0)
  return {k: rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32) for k in keys}


def test_step_on_eight_devices_equals_one_device():
  assert jax.device_count() == 8
  # Plain SGD: Adam's first step is lr * sign(gradient), which turns float noise in ~zero gradients into lr-sized
  # differences.
  tx = optax.sgd(0.1)
  # With the demo's switches (keypoint warp, learned sharpening, pose-conditioned discriminator, equivariance and
  # separation priors, normalised perceptual pyramid), so that they are checked under sharding too (the smoke run
  # below trains without them).
  generator = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True, amplifier='sharpen',
                               learn_sharpen=True)
  discriminator = model_lib.MultiScaleDiscriminator(num_scales=2, width=4, num_layers=2, pose_condition=True)
  state = dfc_steps.create_train_state(jax.random.PRNGKey(0), generator, discriminator, tx, tx, (1, 16, 16, 3))
  config = losses.LossConfig(vgg_layers=1, equivariance=1.0, separation=1.0, perceptual_normalize=True,
                             perceptual_scales=2)
  step = functools.partial(dfc_steps.train_step, generator=generator, discriminator=discriminator, config=config,
                           vgg_params=losses.vgg16_params(1), key=_KEY)
  batch = _batch(8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    jitted = jax.jit(step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated))
    new_state, metrics = jitted(jax.device_put(state, replicated), jax.device_put(batch, sharded))
    results.append((jax.device_get(new_state.params), jax.device_get(metrics)))
  (params_1, metrics_1), (params_8, metrics_8) = results
  assert set(metrics_1) >= {'loss', 'd_loss', 'l1', 'perceptual', 'adversarial', 'feature_matching',
                            'pose_consistency', 'static_consistency', 'self_reconstruction', 'equivariance',
                            'separation'}
  for name in metrics_1:
    np.testing.assert_allclose(metrics_8[name], metrics_1[name], rtol=1e-4, atol=1e-6, err_msg=name)
  # The updates agree to float32 reduction-order noise (L1-type losses turn it into sign flips of tiny residuals),
  # far below the size of the updates themselves; and both networks moved.
  initial = jax.device_get(state.params)
  for net in ('generator', 'discriminator'):
    update = max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params_1[net], initial[net])))
    mismatch = max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params_8[net], params_1[net])))
    assert update > 0 and mismatch < 1e-2 * update


def test_consistency_gradients_reach_the_generator_through_the_reencoding():
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  d_params = jax.jit(_DISCRIMINATOR.init)(_KEY, image, image)['params']
  batch = _batch(2)
  weights = dict(l1=0.0, perceptual=0.0, adversarial=0.0, feature_matching=0.0, self_reconstruction=0.0)

  def grads_of(generator, params, **consistency):
    config = losses.LossConfig(**consistency, **weights)
    loss_fn = lambda g: dfc_steps._generator_loss(g, d_params, batch, 0, generator=generator,  # noqa: E731
                                                  discriminator=_DISCRIMINATOR, config=config, vgg_params=None)[0]
    grads = jax.jit(jax.grad(loss_fn))(params)
    return grads, {k: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(v))) for k, v in grads.items()}

  # Only one consistency loss is on: the decoder gets gradients solely through E_p(output) or E_s(output).
  _, static = grads_of(_GENERATOR, g_params, pose_consistency=0.0, static_consistency=1.0)
  assert static['generator'] > 0 and static['static_encoder'] > 0
  # Pose consistency trains the generator to draw the source's pose, never E_p: constant keypoints would zero it.
  # With the learned sharpening and the warp (where E_p's keypoints also steer the motion) too.
  for generator in (_GENERATOR, model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True,
                                                 amplifier='sharpen', learn_sharpen=True)):
    params = g_params if generator is _GENERATOR else jax.jit(generator.init)(_KEY, image, image)['params']
    grads, pose = grads_of(generator, params, pose_consistency=1.0, static_consistency=0.0)
    assert pose['generator'] > 0 and pose['static_encoder'] > 0
    jax.tree.map(lambda g: np.testing.assert_array_equal(g, 0.0), grads['pose_encoder'])
    if 'log_sharpen' in grads:
      assert float(grads['log_sharpen']) == 0.0


def test_equivariance_prior_penalises_keypoints_that_ignore_the_image():
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  d_params = jax.jit(_DISCRIMINATOR.init)(_KEY, image, image)['params']
  batch = _batch(2)
  weights = dict(l1=0.0, perceptual=0.0, adversarial=0.0, feature_matching=0.0, self_reconstruction=0.0,
                 use_consistency=False)
  config = losses.LossConfig(equivariance=1.0, support=0.5, **weights)
  key = jax.random.key(3, impl='rbg')
  loss_fn = lambda g: dfc_steps._generator_loss(g, d_params, batch, 0, generator=_GENERATOR,  # noqa: E731
                                                discriminator=_DISCRIMINATOR, config=config, vgg_params=None,
                                                key=key)
  (total, (parts, _, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(g_params)
  # Only the pose encoder can lower it.
  assert float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(grads['pose_encoder']))) > 0
  for part in ('generator', 'static_encoder'):
    assert float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(grads[part]))) == 0, part

  # A pose encoder blind to the image (heatmap head zeroed) puts every keypoint at the centre (0, 0), which the
  # transform moves to its shift: the loss is the mean |shift| of the 2 paired + 0.5 x that of the 2 support samples.
  # Conv_0 is the heatmap head (the encoder's other convs sit inside ConvNormAct blocks).
  head = jax.tree.map(jnp.zeros_like, g_params['pose_encoder']['Conv_0'])
  blind = {**g_params, 'pose_encoder': {**g_params['pose_encoder'], 'Conv_0': head}}
  (total, (parts, _, _)), _ = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(blind)
  shift = np.abs(np.asarray(transforms.random_similarity(
      key, 4, max_rotation=config.equivariance_rotation, max_log_scale=config.equivariance_log_scale,
      max_shift=config.equivariance_shift).shift)).mean(axis=1)
  expected = shift[:2].mean() + 0.5 * shift[2:].mean()
  assert expected > 0.01
  np.testing.assert_allclose(parts['equivariance'], expected, rtol=1e-5)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  with pytest.raises(ValueError, match='needs a key'):
    dfc_steps._generator_loss(g_params, d_params, batch, 0, generator=_GENERATOR, discriminator=_DISCRIMINATOR,
                              config=config, vgg_params=None)


def test_adversarial_warmup_silences_the_discriminator_then_ramps_linearly():
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  d_params = jax.jit(_DISCRIMINATOR.init)(_KEY, image, image)['params']
  other_d_params = jax.jit(_DISCRIMINATOR.init)(jax.random.key(1, impl='rbg'), image, image)['params']
  batch = _batch(2)
  config = losses.LossConfig(perceptual=0.0, adversarial_warmup_steps=4, adversarial_ramp_steps=4)
  # D's parameters and the step are traced: one compilation serves every call.
  loss_fn = lambda g, d, step: dfc_steps._generator_loss(  # noqa: E731
      g, d, batch, step, generator=_GENERATOR, discriminator=_DISCRIMINATOR, config=config, vgg_params=None)[0]
  grad = jax.jit(jax.grad(loss_fn))
  flat = lambda d, step: np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad(g_params, d, step))])  # noqa: E731
  # Up to the end of the warm-up the generator gradient does not depend on D at all ...
  without = flat(d_params, 0)
  for step in (0, 4):
    np.testing.assert_allclose(flat(other_d_params, step), without, rtol=1e-5, atol=1e-7)
  # ... after the ramp it does, and midway through the ramp D's contribution is exactly half.
  full = flat(d_params, 9)
  assert np.abs(flat(other_d_params, 9) - full).max() > 1e-3
  np.testing.assert_allclose(flat(d_params, 8), full, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(flat(d_params, 6), 0.5 * (without + full), rtol=1e-4, atol=1e-6)


def test_discriminator_learning_rate_ratio():
  config = dfc_config.get_config('smoke')
  config.optimizer.d_learning_rate_ratio = 0.25
  task = dfc_task.DFCTask(config)
  size = config.data.image_size
  state = task.init_state(_KEY, {'source': np.zeros((1, size, size, 3), np.float32)})
  # Adam's first update is -rate x sign(gradient): the two optimizers' rates are read off a gradient of ones.
  g_update, _ = state.g_tx.update(jnp.ones(()), state.g_tx.init(jnp.zeros(())))
  d_update, _ = state.d_tx.update(jnp.ones(()), state.d_tx.init(jnp.zeros(())))
  np.testing.assert_allclose(float(g_update), -config.optimizer.learning_rate, rtol=1e-4)
  np.testing.assert_allclose(float(d_update), -0.25 * config.optimizer.learning_rate, rtol=1e-4)


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('dfc_smoke')
  config = dfc_config.get_config('smoke')
  with pytest.MonkeyPatch.context() as patch:  # the fixed joint regressor's cache, kept out of the user's
    patch.setenv('DFC_REGRESSOR_CACHE', str(tmp_path_factory.mktemp('regressor_cache')))
    state = trainer.train_and_evaluate(config, workdir)
    yield workdir, config, state


def test_smoke_trains_checkpoints_and_evaluates(smoke_run):
  workdir, config, state = smoke_run
  assert int(state.step) == config.num_steps
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  evals = [r for r in records if r['split'] == 'eval']
  assert evals and {'test_unseen_characters/ssim', 'test_unseen_animations/keypoint_error',
                    'test_unseen_animations/encoder_keypoint_error', 'test_unseen_characters/copy_target/fg_l1',
                    'test_unseen_characters/blurred_target/iou'} <= set(evals[-1])
  grid = np.asarray(Image.open(workdir / evals[-1]['image']))
  size = config.data.image_size
  assert grid.shape == (config.eval.grid_rows * size, 4 * size, 3)
  variables, ckpt_config = checkpoints.restore_model_variables(workdir / 'checkpoints')
  assert ckpt_config['model'] == 'dfc' and ckpt_config['model_config']['image_size'] == size
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               variables['params'], jax.device_get(state.params))


def test_transfer_outputs_round_half_to_even_like_the_fusion_outputs(tmp_path):
  # 0.5 and 1.5 levels: half to even gives 0 and 2 (adding 0.5 and truncating would give 1 and 2).
  image = np.array([[[0.5, 1.5, 255.0]]], np.float32) / 255
  dfc_files._save_png(tmp_path / 'out.png', image)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'out.png')), [[[0, 2, 255]]])


def test_transfer_and_evaluate_binaries(smoke_run, tmp_path, repo_root):
  workdir, config, _ = smoke_run
  ckpt = workdir / 'checkpoints'
  frames = tmp_path / 'frames'
  frames.mkdir()
  rng = np.random.default_rng(0)
  for name in ('f1', 'f2', 'f3'):
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(frames / f'{name}.png')
  out = dfc_files.transfer_paths(ckpt, frames / 'f1.png', frames / 'f2.png', tmp_path / 'out.png')
  assert np.asarray(Image.open(out[0])).shape == (config.data.image_size, config.data.image_size, 3)
  written = dfc_files.transfer_paths(ckpt, frames, frames / 'f3.png', tmp_path / 'out_dir', batch_size=2)
  assert sorted(p.name for p in written) == ['f1.png', 'f2.png', 'f3.png'] and all(p.exists() for p in written)
  (tmp_path / 'broken.png').write_bytes(b'no image')
  with pytest.raises(images.ImageReadError, match='broken.png'):
    dfc_files.transfer_paths(ckpt, tmp_path / 'broken.png', frames / 'f1.png', tmp_path / 'x.png')
  with pytest.raises(images.ImageReadError, match='missing.png'):
    dfc_files.transfer_paths(ckpt, tmp_path / 'missing.png', frames / 'f1.png', tmp_path / 'x.png')
  with pytest.raises(checkpoints.CheckpointNotFoundError, match='does not exist'):
    dfc_files.transfer_paths(tmp_path / 'nowhere', frames / 'f1.png', frames / 'f2.png', tmp_path / 'x.png')
  # The binary reports an unreadable input by name and fails.
  result = subprocess.run([sys.executable, '-m', 'launch.transfer', f'--checkpoint={ckpt}',
                           f'--source={tmp_path / "broken.png"}', f'--target={frames / "f1.png"}',
                           f'--out={tmp_path / "y.png"}'], capture_output=True, text=True, check=False,
                          cwd=repo_root)
  assert result.returncode == 1 and 'broken.png' in result.stderr and 'not a readable image' in result.stderr
  assert 'Traceback' not in result.stderr
  results = dfc_files.evaluate_checkpoint(ckpt, tmp_path / 'eval', splits=['test_unseen_characters'],
                                          num_samples=2, calibration_samples=8, grid_rows=2, regressor_steps=5)
  rows = results['test_unseen_characters']
  assert list(rows) == ['model', 'copy_target', 'background', 'blurred_target']
  image_metrics = {'ssim', 'psnr', 'lpips', 'iou', 'fg_l1', 'keypoint_error'}
  assert set(rows['model']) == image_metrics | {'keypoint_spread', 'encoder_keypoint_error'}
  assert all(set(rows[row]) == image_metrics for row in dfc_evaluate.TRIVIAL_ROWS)
  assert all(np.isfinite(v) for values in rows.values() for v in values.values())
  assert rows['background']['iou'] == 0.0  # the character erased
  assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text()) == results
  assert (tmp_path / 'eval' / 'test_unseen_characters.png').exists()
  assert dfc_task.training_crop(ckpt) == 'center'
  with pytest.raises(ValueError, match='trained on puppets'):
    dfc_files.evaluate_checkpoint(ckpt, tmp_path / 'eval', splits=[], num_samples=2, calibration_samples=8,
                                  grid_rows=2, test_frames_dir=str(frames))


def test_smoke_trains_on_video_frames_and_evaluates_the_held_out_frames(shared_dir, tmp_path):
  edn = shared_dir / 'data' / 'pose' / 'edn_subject4'
  config = dfc_config.get_config('smoke')
  # 10 frames: the last 2 are held out; support poses come from the 3 sample-data frames.
  config.data.update(name='frames', frames_dir=str(edn / 'train_img'), holdout_fraction=0.2, support=True,
                     support_frames_dir=str(edn / 'sample_data' / 'train' / 'train_img'), crop='0,128,512,512')
  config.update(num_steps=2, eval_every=2, checkpoint_every=2)
  trainer.train_and_evaluate(config, tmp_path / 'run')
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  evaluation = [r for r in records if r['split'] == 'eval'][-1]
  # Video frames have no silhouettes, joints or background: whole-image metrics, beside the two trivial rows.
  image_metrics = ('ssim', 'psnr', 'lpips')
  assert {k for k in evaluation if '/' in k} == {f'test_frames/{m}' for m in (*image_metrics, 'keypoint_spread')} | {
      f'test_frames/{row}/{m}' for row in ('copy_target', 'blurred_target') for m in image_metrics}
  ckpt = tmp_path / 'run' / 'checkpoints'
  results = dfc_files.evaluate_checkpoint(ckpt, tmp_path / 'eval', splits=['test_unseen_characters'],
                                          num_samples=8, calibration_samples=8, grid_rows=4, sample_seed=0)
  # With training's sample seed, the binary evaluates the final checkpoint on the same held-out pairs as training
  # did at that step.
  assert set(results) == {'test_frames'} and list(results['test_frames']) == ['model', 'copy_target',
                                                                               'blurred_target']
  for metric, value in results['test_frames']['model'].items():
    assert value == pytest.approx(evaluation[f'test_frames/{metric}'], rel=1e-5)
  size = config.data.image_size
  assert np.asarray(Image.open(tmp_path / 'eval' / 'test_frames.png')).shape == (2 * size, 4 * size, 3)
  other = dfc_files.evaluate_checkpoint(ckpt, tmp_path / 'other', splits=[], num_samples=8,
                                        calibration_samples=8, grid_rows=8,
                                        test_frames_dir=str(edn / 'sample_data' / 'train' / 'train_img'))
  assert np.asarray(Image.open(tmp_path / 'other' / 'test_frames.png')).shape == (6 * size, 4 * size, 3)
  assert other['test_frames']['model']['ssim'] != results['test_frames']['model']['ssim']
  # launch.transfer crops new frames as training did unless told otherwise.
  assert dfc_task.training_crop(ckpt) == '0,128,512,512'


def test_checkpoints_from_before_video_frames_and_equivariance_resume():
  config = dfc_config.get_config('demo')
  # A checkpoint from before the prior trained without it: the current demo turns it on, so compare with the demo
  # as it was then.
  config.loss.equivariance = losses.LossConfig().equivariance
  experiment = json.loads(config.to_json_best_effort())  # as the trainer saves it
  now = {'model': 'dfc', 'process_count': 1, 'experiment': experiment}
  older = json.loads(json.dumps(now))
  for field in ('frames_dir', 'test_frames_dir', 'support_frames_dir', 'crop', 'holdout_fraction'):
    del older['experiment']['data'][field]
  older['experiment']['loss'] = {k: v for k, v in older['experiment']['loss'].items()
                                 if not k.startswith('equivariance')}
  added = dfc_task.DFCTask.added_field_defaults
  assert trainer.config_differences(older, now, added_field_defaults=added) == []
  now['experiment']['data']['crop'] = 'none'
  assert trainer.config_differences(older, now, added_field_defaults=added) == [
      "data.crop: checkpoint 'center', now 'none'"]


def test_fixed_joint_regressor_is_cached_and_judges_every_row_on_the_same_pairs(tmp_path, monkeypatch):
  monkeypatch.setenv('DFC_REGRESSOR_CACHE', str(tmp_path / 'cache'))
  config = dfc_config.get_config('smoke')
  joints_of = dfc_task.fixed_joint_regressor(config.data, num_steps=3, num_renders=8)
  assert len(list((tmp_path / 'cache').glob('joint_regressor_*.msgpack'))) == 1
  eval_set = pose_data.make_eval_set(config.data, 'test_unseen_characters', 4, sample_seed=1)
  joints = joints_of(eval_set['truth'])
  assert joints.shape == eval_set['truth_joints'].shape
  # The second call reads the cache instead of training again, and gives the same regressor.
  monkeypatch.setattr(joint_regressor, 'fit', lambda *args, **kwargs: pytest.fail('trained again'))
  np.testing.assert_array_equal(dfc_task.fixed_joint_regressor(config.data, 3, 8)(eval_set['truth']), joints)

  # Two different models: the trivial rows, keypoint error included, do not change with the model.
  image = jnp.zeros((1, 32, 32, 3))
  evaluator = dfc_evaluate.Evaluator(_GENERATOR, batch_size=4)
  params = [jax.jit(_GENERATOR.init)(jax.random.key(seed, impl='rbg'), image, image)['params'] for seed in (0, 1)]
  scores = [evaluator.evaluate(p, eval_set, joints_of)[0] for p in params]
  assert scores[0]['model'] != scores[1]['model']
  for row in dfc_evaluate.TRIVIAL_ROWS:
    assert scores[0][row] == scores[1][row] and set(scores[0][row]) >= {'keypoint_error', 'iou', 'fg_l1'}
  # A "model" that copies the target scores exactly the copy_target row: the rows are scored on the same pairs.
  monkeypatch.setattr(evaluator, 'transfer', lambda params, source, target: target)
  copying = evaluator.evaluate(params[0], eval_set, joints_of)[0]
  assert {k: v for k, v in copying['model'].items() if k != 'keypoint_spread'} == copying['copy_target']
