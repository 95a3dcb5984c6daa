"""dfc_jax.joint_regressor.fit: the progress hook sees every step and changes nothing it trains."""
import jax
import numpy as np

from dfc_jax import joint_regressor


def test_fit_reports_every_step_to_progress_and_trains_the_same_params():
  rng = np.random.default_rng(0)
  images = rng.random((6, 16, 16, 3), dtype=np.float32)
  joints = rng.uniform(0, 16, (6, 2, 2)).astype(np.float32)
  config = joint_regressor.RegressorConfig(widths=(4, 8), num_steps=3, batch_size=4)
  seen = []

  def progress(steps):
    for i in steps:
      seen.append(i)
      yield i

  with_bar = joint_regressor.fit(images, joints, config, progress=progress)
  without = joint_regressor.fit(images, joints, config)
  assert seen == [0, 1, 2]
  jax.tree.map(np.testing.assert_array_equal, with_bar, without)
  # Every step trained: one step fewer gives other parameters.
  shorter = joint_regressor.fit(images, joints, config._replace(num_steps=2))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(with_bar), jax.tree.leaves(shorter)))
