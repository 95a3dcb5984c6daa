"""The DFC task in the shared loop (launch/tasks/dfc.py, launch/dfc_files.py): the smoke config end to end with
training, evaluation, checkpoint restore, the transfer and evaluation binaries, video frames, older checkpoints and
the fixed joint regressor."""
import dataclasses
import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from dfc_jax import evaluate as dfc_evaluate
from dfc_jax import joint_regressor
from dfc_jax import losses
from dfc_jax import metrics
from dfc_jax import model as model_lib
from input_pipeline import errors
from input_pipeline import images
from input_pipeline import pose_data
from input_pipeline import puppets
from launch import checkpoints
from launch import dfc_files
from launch import trainer
from launch.configs import dfc as dfc_config
from launch.tasks import dfc as dfc_task

_GENERATOR = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4))
# 'rbg' keys: XLA compiles threefry's unrolled rounds slowly on a CPU.
_KEY = jax.random.key(0, impl='rbg')


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
                                          num_samples=2, calibration_samples=8, grid_rows=2, regressor_steps=5,
                                          regressor_renders=8)
  rows = results['test_unseen_characters']
  assert list(rows) == ['model', 'copy_target', 'background', 'blurred_target']
  image_metrics = {'ssim', 'psnr', 'lpips', 'iou', 'fg_l1', 'keypoint_error'}
  assert set(rows['model']) == image_metrics | {'keypoint_spread', 'encoder_keypoint_error', 'drawn_keypoint_error',
                                                'truth_keypoint_error'}
  assert all(set(rows[row]) == image_metrics for row in dfc_evaluate.TRIVIAL_ROWS)
  assert all(np.isfinite(v) for values in rows.values() for v in values.values())
  assert rows['background']['iou'] == 0.0  # the character erased
  assert json.loads((tmp_path / 'eval' / 'metrics.json').read_text()) == results
  assert (tmp_path / 'eval' / 'test_unseen_characters.png').exists()
  assert dfc_task.training_crop(ckpt) == 'center'
  assert not dfc_task.trained_on_joints(ckpt)  # smoke learns its keypoints: the encoder is read by a fitted map
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


def test_config_holds_the_librarys_defaults():
  # The config file holds values (no library imports); these are the library's defaults, kept in step here.
  config = dfc_config.get_config('paper')
  assert config.loss.to_dict() == {f.name: f.default for f in dataclasses.fields(losses.LossConfig)
                                   if f.name != 'use_support'}
  assert {k: config.data[k] for k in pose_data.FRAMES_DEFAULTS} == pose_data.FRAMES_DEFAULTS


def test_config_variants_combine_in_order():
  frames_smoke = dfc_config.get_config('frames,smoke')
  # The video frames data (frames' own fields) at smoke sizes (smoke's, applied last).
  assert (frames_smoke.data.name, frames_smoke.data.support) == ('frames', False)
  assert (frames_smoke.data.image_size, frames_smoke.batch_size, frames_smoke.num_steps) == (32, 8, 4)
  assert frames_smoke.model.num_keypoints == 4
  # Later variants win where both set a field.
  smoke_frames = dfc_config.get_config('smoke,frames')
  assert (smoke_frames.data.name, smoke_frames.data.image_size, smoke_frames.num_steps) == ('frames', 128, 100_000)
  assert smoke_frames.model.num_keypoints == 4  # frames leaves the network alone
  assert dfc_config.get_config('smoke').data.name == 'puppets'
  with pytest.raises(errors.ConfigArgumentError, match='unknown: bogus'):
    dfc_config.get_config('smoke,bogus')
  with pytest.raises(errors.ConfigArgumentError, match='need one or more of smoke, demo, unsupervised, paper, frames'):
    dfc_config.get_config('')


def test_the_puppet_skeleton_retargets_exact_joints_of_unseen_pairs_much_closer_to_the_truth_than_none():
  # What a skeleton retargeter starts from (its MLP then corrects it): from the renderer's exact joints, the truth's
  # body in the source's pose, measured against no retargeting (the source's joints).
  config = dfc_config.get_config('demo')
  index = {name: i for i, name in enumerate(puppets.JOINT_NAMES)}
  skeleton = tuple((index[parent], index[child]) for parent, child in puppets.SKELETON)
  size = config.data.image_size
  eval_set = pose_data.make_eval_set(config.data, 'test_unseen_characters', 32, sample_seed=1)
  unit = lambda pixels: jnp.asarray(2.0 * pixels / size - 1.0)  # noqa: E731
  # At the world's ground line, where the trained model's ground parameter goes.
  ground = jnp.float32(2 * puppets._GROUND - 1)  # noqa: SLF001
  drawn = model_lib.skeleton_prior(unit(eval_set['source_joints']), unit(eval_set['target_joints']),
                                   skeleton, config.model.bones, ground)
  error = lambda joints: float(np.mean(np.linalg.norm(joints - eval_set['truth_joints'], axis=-1)))  # noqa: E731
  assert error((np.asarray(drawn) + 1.0) * size / 2) < 0.4 * error(eval_set['source_joints'])


def test_demo_bones_are_the_puppet_skeleton_and_joint_supervision_needs_renders():
  demo = dfc_config.get_config('demo')
  names = [tuple(puppets.JOINT_NAMES[i] for i in bone) for bone in demo.model.bones]
  assert tuple(names) == puppets.BONES and demo.model.num_keypoints == puppets.NUM_JOINTS
  # The unsupervised variant is the same model with learned keypoints that each move by a translation.
  unsupervised = dfc_config.get_config('demo,unsupervised')
  assert (unsupervised.loss.joint_supervision, unsupervised.model.bones) == (0.0, None)
  assert unsupervised.model.retarget and unsupervised.model.occlusion
  # ... with the pose encoder README measures it with: the demo encoder's first three stages, no hourglass.
  assert demo.model.pose_upsample == 1 and unsupervised.model.pose_upsample == 0
  assert unsupervised.model.pose_widths == demo.model.pose_widths[:-1]
  # Joint supervision reads the renderer's joints from the training batches; video frames have none.
  smoke = dfc_config.get_config('smoke')
  smoke.loss.joint_supervision = 1.0
  element = next(iter(dfc_task.make_task(smoke).train_dataset(seed=0, process_index=0, process_count=1)))
  for key in pose_data.JOINT_KEYS:
    assert element[key].shape == (smoke.batch_size, puppets.NUM_JOINTS, 2)
  sampler = puppets.PuppetSampler(pose_data.make_world(smoke.data), 'train', smoke.data.image_size)
  np.testing.assert_array_equal(element['truth_joints'][0], sampler.paired(0)['truth_joints'])
  frames = dfc_config.get_config('frames,smoke')
  frames.data.frames_dir = '/nonexistent'
  with pytest.raises(errors.DataConfigError, match='joint_supervision=0'):
    pose_data.make_train_dataset(frames.data, seed=0, batch_size=8, with_joints=True)
  # The foreground loss reads the renderer's silhouettes of the same samples; cached renders and frames have none.
  smoke.loss.foreground = 1.0
  element = next(iter(dfc_task.make_task(smoke).train_dataset(seed=0, process_index=0, process_count=1)))
  sample = sampler.paired(0)
  for key in pose_data.SILHOUETTE_KEYS:
    assert element[key].shape == (smoke.batch_size, smoke.data.image_size, smoke.data.image_size)
    np.testing.assert_array_equal(element[key][0], sample[key])
  with pytest.raises(errors.DataConfigError, match='loss.foreground=0'):
    pose_data.make_train_dataset(frames.data, seed=0, batch_size=8, with_silhouettes=True)
  with pytest.raises(errors.DataConfigError, match='render_cache=False'):
    pose_data.make_train_dataset(smoke.data, seed=0, batch_size=8, with_silhouettes=True, render_cache_dir='/tmp')
  # Field mistakes are refused when the task is made, as one line naming the field (no traceback from inside jit).
  smoke.loss.pose_pretrain_steps = smoke.num_steps
  with pytest.raises(errors.ConfigError, match=r'config.loss.pose_pretrain_steps \(4\) must be below config.num_steps'):
    dfc_task.make_task(smoke)
  smoke.loss.update(pose_pretrain_steps=0, train_pose_encoder=False)
  with pytest.raises(errors.ConfigError, match=r'config.loss: train_pose_encoder=False .* needs pose_pretrain_steps'):
    dfc_task.make_task(smoke)


def test_a_render_cache_feeds_uint8_images_that_the_step_takes_as_the_floats_they_stand_for(tmp_path):
  assert dfc_config.get_config('paper').data.render_cache and not dfc_config.get_config('demo').data.render_cache
  assert 'data.render_cache_dir' in dfc_task.DFCTask.resumable_fields
  config = dfc_config.get_config('smoke')
  config.data.update(render_cache=True, render_cache_dir=str(tmp_path))
  task = dfc_task.make_task(config)
  batch = next(iter(task.train_dataset(seed=0, process_index=0, process_count=1)))
  assert {v.dtype for v in batch.values()} == {np.dtype(np.uint8)}
  assert len(list(tmp_path.iterdir())) == 2  # train and support renders, built on first use
  state = task.init_state(_KEY, batch)
  _, from_bytes = jax.jit(task.train_step)(state, batch, _KEY)
  _, from_floats = jax.jit(task.train_step)(state, pose_data.images_to_float(batch), _KEY)
  for name, value in from_floats.items():
    np.testing.assert_allclose(from_bytes[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_collapsed_generator_stops_the_demo_but_its_pretraining_and_a_noisy_descent_do_not():
  config = dfc_config.get_config('demo')
  pretrain, log_every = config.loss.pose_pretrain_steps, config.log_every
  collapse = functools.partial(dfc_task.generator_collapse, ratio=config.collapse_l1_ratio, first_step=pretrain,
                               log_every=log_every)
  # The pretraining runs no generator: its intervals log an L1 of 0, which must not count as the lowest.
  history = [(step, {'l1': 0.0, 'loss': 7.0}) for step in range(log_every, pretrain + 1, log_every)]
  descent = [0.45, 0.3, 0.2, 0.16, 0.13, 0.12, 0.19, 0.15, 0.28, 0.14]  # down, then the GAN ramping in
  history += [(pretrain + log_every * (i + 1), {'l1': l1}) for i, l1 in enumerate(descent)]
  for end in range(1, len(history) + 1):
    assert collapse(history[:end]) is None
  collapsed = [*history, (pretrain + 550, {'l1': 1.02})]
  message = collapse(collapsed)
  assert message and f'up to {pretrain + 550} is 1.02, 8.5x the lowest before it (0.12, up to step {pretrain + 300}' \
      in message and '--config.collapse_l1_ratio=0' in message
  assert dfc_task.generator_collapse(collapsed, ratio=0, first_step=pretrain, log_every=log_every) is None
  # An interval that straddles the pretraining's end averages in its zeros: it is not the lowest either.
  straddling = [(pretrain + 25, {'l1': 0.06}), (pretrain + 75, {'l1': 0.4})]
  assert collapse(straddling) is None
  assert dfc_task.generator_collapse(straddling, ratio=config.collapse_l1_ratio, first_step=pretrain - 25,
                                     log_every=log_every) is not None
  # The check never changes what a step computes: a run may resume with another value.
  assert 'collapse_l1_ratio' in dfc_task.DFCTask.resumable_fields


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
  assert {k: v for k, v in copying['model'].items()
          if k not in ('keypoint_spread', 'truth_keypoint_error')} == copying['copy_target']
  # ... and a "model" that draws the truth reads the judge's own error on the truths.
  monkeypatch.setattr(evaluator, 'transfer', lambda params, source, target: eval_set['truth'])
  oracle = evaluator.evaluate(params[0], eval_set, joints_of)[0]['model']
  assert oracle['keypoint_error'] == oracle['truth_keypoint_error']


def test_a_pose_encoder_supervised_with_the_joints_is_read_without_a_fitted_map():
  config = dfc_config.get_config('smoke')
  eval_set = pose_data.make_eval_set(config.data, 'test_unseen_characters', 4, sample_seed=1)
  calibration = pose_data.make_calibration_set(config.data, 8)
  num_joints = eval_set['source_joints'].shape[1]
  generator = model_lib.DFCNet(num_keypoints=num_joints + 1, pose_widths=(4, 4), widths=(4, 4))
  image = jnp.zeros((1, 32, 32, 3))
  params = jax.jit(generator.init)(jax.random.key(0, impl='rbg'), image, image)['params']
  evaluator = dfc_evaluate.Evaluator(generator, batch_size=4)
  named = dfc_task.named_joints_readout(generator, config.data)
  # An encoder whose first keypoints are the sources' true joints (the last one a free landmark) reads 0 px.
  size = eval_set['source'].shape[1]
  exact = np.concatenate([eval_set['source_joints'] / size * 2.0 - 1.0, np.zeros((4, 1, 2))], axis=1)
  np.testing.assert_allclose(metrics.regress_joints(named, exact), eval_set['source_joints'], atol=1e-4)
  rows = evaluator.evaluate(params, eval_set, encoder_map=named)[0]['model']
  direct = np.linalg.norm((evaluator.keypoints(params, eval_set['source'])[:, :num_joints] + 1.0) / 2.0 * size
                          - eval_set['source_joints'], axis=-1).mean()
  assert abs(rows['encoder_keypoint_error'] - direct) < 1e-4
  # An untrained encoder's keypoints are no joints: the fitted map is another read-out.
  fitted = evaluator.encoder_calibration(params, calibration)
  assert not np.allclose(fitted, named)
