"""examples/finetune_sam.py fine-tunes a tiny KerasHub SAM on the dummy data."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from conftest import load_example

keras = pytest.importorskip('keras')
pytest.importorskip('keras_hub')

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_finetunes_tiny_sam_and_saves_a_model_that_reloads(tmp_path, capsys):
  finetune_sam = load_example('finetune_sam')
  out = tmp_path / 'sam.keras'
  result = finetune_sam.main([
      '--tiny', '--manual_dir', str(REPO / 'dummy_data'), '--data_dir',
      str(tmp_path / 'data'), '--steps', '30', '--validation_fraction',
      '0.2', '--out', str(out)])
  losses = result['loss']
  assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
  # The loss falls: the last steps well below the first ones.
  assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
  assert math.isfinite(result['validation_loss'])
  printed = capsys.readouterr().out
  assert f'loss {losses[0]:.4f} -> {losses[-1]:.4f}' in printed
  assert (tmp_path / 'data' / 'segment_anything' / 'all').is_dir()
  # The saved model is KerasHub's SAMImageSegmenter with the trained layers.
  loaded = keras.models.load_model(out)
  assert type(loaded).__name__ == 'SAMImageSegmenter'
  rng = np.random.default_rng(0)
  x = {'images': rng.random((1, 64, 64, 3)).astype(np.float32),
       'points': np.array([[[20.0, 30.0], [0.0, 0.0]]], np.float32),
       'labels': np.array([[1.0, -1.0]], np.float32),
       'boxes': np.zeros((1, 0, 2, 2), np.float32),
       'masks': np.zeros((1, 0, 256, 256, 1), np.float32)}
  np.testing.assert_allclose(loaded(x)['masks'],
                             result['trainer'].segmenter()(x)['masks'],
                             atol=1e-5)


def test_bad_flags():
  finetune_sam = load_example('finetune_sam')
  with pytest.raises(SystemExit):
    finetune_sam.main(['--tiny', '--preset', 'sam_base_sa1b', '--data_dir',
                       '/tmp/none'])
  with pytest.raises(SystemExit, match=r'\.keras'):
    finetune_sam.main(['--tiny', '--data_dir', '/tmp/none', '--out', 'x.h5'])
