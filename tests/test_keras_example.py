"""examples/train_keras.py trains on the prepared dummy data."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from conftest import load_example

pytest.importorskip('keras')

# Every test trains a Keras model.
pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_trains_on_prepared_dummy_data(prepared_dummy, capsys):
  train_keras = load_example('train_keras')
  result = train_keras.main(['--data_dir', str(prepared_dummy), '--config',
                             'all', '--steps', '12', '--batch_size', '2',
                             '--overfit_batches', '1'])
  losses = result['loss']
  assert len(losses) == 12
  assert all(math.isfinite(v) for v in losses)
  # Learning happens: on one repeated batch the loss goes down.
  assert losses[-1] < 0.8 * losses[0]
  assert 'trained 12 steps' in capsys.readouterr().out
  model = result['model']
  assert model.output_shape == (None, 8, 16, 16)


def test_prepares_from_manual_dir(tmp_path):
  train_keras = load_example('train_keras')
  result = train_keras.main([
      '--data_dir', str(tmp_path), '--manual_dir', str(REPO / 'dummy_data'),
      '--config', 'first_1', '--steps', '2', '--image_size', '32',
      '--mask_size', '8', '--num_masks', '4'])
  assert len(result['loss']) == 2
  assert np.isfinite(result['loss']).all()
  assert (tmp_path / 'segment_anything' / 'first_1').is_dir()
