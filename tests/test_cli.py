"""End-to-end tests of the `segment-anything-tfds` CLI on the dummy data.

The dataset is built once per module, by the CLI's own `build`.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import pytest

from segment_anything_tfds import cli
from segment_anything_tfds import errors
from segment_anything_tfds.tools import fake_data

from conftest import tar_bytes

REPO = pathlib.Path(__file__).resolve().parents[1]
DUMMY = REPO / 'dummy_data'
# (image id, height, width, masks) of every dummy image; see
# dummy_data/make_dummy_data.py.
DUMMY_IMAGES = {
    1: (24, 32, 5), 2: (32, 24, 3), 3: (17, 29, 7),
    11: (20, 20, 4), 12: (1, 9, 2), 13: (30, 40, 6),
    21: (36, 18, 5), 22: (25, 25, 3), 23: (9, 1, 1),
    31: (28, 22, 4), 32: (16, 48, 8),
}
DUMMY_MASKS = sum(m for _, _, m in DUMMY_IMAGES.values())


def run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """Builds tars 0-3 of the dummy data with the CLI; returns the data dir."""
  data_dir = tmp_path_factory.mktemp('data')
  summary = data_dir / 'summary.json'
  code = cli.main(['build', '--tars', '0-3', '--data_dir', str(data_dir),
                   '--manual_dir', str(DUMMY), '--summary_json', str(summary),
                   '--no_progress'])
  assert code == 0
  return data_dir, json.loads(summary.read_text())


def test_build_summary(built, capsys):
  data_dir, summary = built
  assert summary['images'] == len(DUMMY_IMAGES)
  assert summary['masks'] == DUMMY_MASKS
  assert summary['config'] == 'tars_0-3'
  assert summary['file_format'] == 'tfrecord'
  assert summary['size_bytes'] > 0
  assert summary['tars'] == [f'sa_00000{i}.tar' for i in range(4)]
  dataset_dir = pathlib.Path(summary['data_dir'])
  assert dataset_dir == data_dir / 'segment_anything' / 'tars_0-3' / '2.0.0'
  assert list(dataset_dir.glob('*.tfrecord*'))
  # Building again reuses the data and prints the summary.
  code, out, _ = run(capsys, 'build', '--tars', '0-3', '--data_dir', data_dir,
                     '--manual_dir', DUMMY, '--no_progress',
                     '--file_format', 'array_record')
  assert code == 0
  assert 'Already prepared' in out
  assert 'already prepared as tfrecord; --file_format array_record was not' in out
  assert f'masks:     {DUMMY_MASKS}' in out
  assert f'data dir:  {dataset_dir}' in out


def test_build_summary_time_counts_from_the_command_not_the_shell(built):
  """A shell that execs the command hands it its pid, and so its start time:
  `time:` must not count the shell's work before the exec."""
  data_dir, _ = built
  exe = (shutil.which('segment-anything-tfds',
                      path=os.path.dirname(sys.executable))
         or shutil.which('segment-anything-tfds'))
  assert exe, 'console script not installed (pip install -e .)'
  shell_seconds = 3
  script = (f'sleep {shell_seconds}; exec "$0" build --tars 0-3 --data_dir'
            f' "$1" --manual_dir "$2" --no_progress')
  start = time.monotonic()
  res = subprocess.run(['bash', '-c', script, exe, str(data_dir), str(DUMMY)],
                       capture_output=True, text=True, check=False,
                       timeout=300)
  waited = time.monotonic() - start
  assert res.returncode == 0, res.stderr
  assert 'Already prepared' in res.stdout
  (line,) = [l for l in res.stdout.splitlines() if l.startswith('time:')]
  reported = float(line.split()[1])
  assert 0 < reported <= waited - shell_seconds, (reported, waited)


def test_build_summary_time_of_a_later_command_in_one_process(built, capsys):
  """Commands run one after another in one Python process each count their
  own time, not the process's."""
  data_dir, _ = built  # Its build was a command of this process already.
  time.sleep(2)
  code, out, _ = run(capsys, 'build', '--tars', '0-3', '--data_dir',
                     data_dir, '--manual_dir', DUMMY, '--no_progress')
  assert code == 0 and 'Already prepared' in out
  (line,) = [l for l in out.splitlines() if l.startswith('time:')]
  assert float(line.split()[1]) < 2, line


def test_console_script_help_and_usage():
  exe = (shutil.which('segment-anything-tfds',
                      path=os.path.dirname(sys.executable))
         or shutil.which('segment-anything-tfds'))
  assert exe, 'console script not installed (pip install -e .)'
  res = subprocess.run([exe, '--help'], capture_output=True, text=True,
                       check=False)
  assert res.returncode == 0
  for command in ('build', 'index', 'check-links', 'stats', 'show',
                  'evaluate', 'export'):
    assert command in res.stdout
  res = subprocess.run([sys.executable, '-m', 'segment_anything_tfds',
                        'build', '--tars', 'x-y'], capture_output=True,
                       text=True, check=False)
  assert res.returncode == 2
  assert 'bad tar list' in res.stderr
  assert 'Traceback' not in res.stderr


@pytest.mark.parametrize('argv', [
    [],  # No command.
    ['nope'],
    ['build', '--manual_dir', '/x'],  # Neither --config nor --tars.
    ['build', '--config', 'first_1', '--tars', '0'],
    ['build', '--config', 'first_7'],
    ['build', '--tars', '0', '--num_worker=2'],  # A typo, not a Beam option.
    ['build', '--tars', '0', '--runner', 'DataflowRunner',
     '--beam_pipeline_options', 'runner=DirectRunner'],  # Two runners.
    ['build', '--tars', '0', '--runner', 'Nope'],  # Beam knows no such one.
    ['build', '--tars', '0', '--runner', 'apache_beam.runners.NoSuchRunner'],
    ['stats', '--config', 'first_1'],  # No --out.
    ['show', '--config', 'first_1', '--out', '/tmp/x'],  # No pick.
    ['show', '--config', 'first_1', '--out', '/tmp/x', '--index', 'a'],
    ['check-links'],  # Neither --links nor --manual_dir.
    ['check-links', '--links', 'f', '--extra'],
    ['index', '--out', 'i.jsonl'],  # Neither --manual_dir nor --from.
    ['index', '--manual_dir', '/x'],  # Neither --out nor --images.
    ['index', '--from', 'i.jsonl', '--out', 'j.jsonl'],
    ['index', '--manual_dir', '/x', '--out', 'i.jsonl', '--json', 'r.json'],
])
def test_usage_errors_exit_2(argv, capsys):
  code, _, err = run(capsys, *argv)
  assert code == 2, err
  assert 'usage:' in err


@pytest.mark.parametrize('argv, option', [
    # `--images "$LIST"` with LIST unset built every image; `--data_dir ""`
    # wrote into the current dir.
    (['build', '--tars', '0', '--images', ''], '--images'),
    (['build', '--tars', '0', '--data_dir', ''], '--data_dir'),
    (['build', '--tars', '0', '--summary_json', ''], '--summary_json'),
    (['build', '--tars', '0', '--checksums', ''], '--checksums'),
    (['index', '--manual_dir', '', '--out', 'i.jsonl'], '--manual_dir'),
    (['export', '--tars', '0', '--format', 'coco', '--out', ''], '--out'),
    (['evaluate', '--tars', '0', '--predictions', ''], '--predictions'),
])
def test_an_empty_path_is_bad_usage(argv, option, capsys):
  code, _, err = run(capsys, *argv)
  assert code == 2, err
  assert err.splitlines()[-1] == (
      f'segment-anything-tfds {argv[0]}: error: {option}: an empty path (an'
      ' unset shell variable?)')


def test_help_exits_0(capsys):
  for argv in (['--help'], ['build', '--help'], ['index', '--help'],
               ['check-links', '--help'],
               ['stats', '--help'], ['show', '--help'], ['evaluate', '--help'],
               ['export', '--help']):
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert 'usage:' in out


@pytest.mark.parametrize('argv, message', [
    (['--tars', '5'], 'sa_000005.tar were asked for'),
    (['--config', 'first_1', '--manual_dir', 'EMPTY'],
     'does not exist or is empty'),
    (['--tars', '0', '--manual_dir', '/nonexistent/dir'], 'is not a directory'),
    # No bucket: TensorFlow's filesystem raises its own error.
    (['--tars', '0', '--manual_dir', 'gs://'],
     "manual_dir gs://: cannot be read: GCS path doesn't contain a bucket"),
])
def test_build_failures_exit_1_with_one_line(argv, message, tmp_path, capsys):
  if '--manual_dir' not in argv:
    argv = [*argv, '--manual_dir', DUMMY]
  if 'EMPTY' in argv:
    (tmp_path / 'empty').mkdir()
    argv = [tmp_path / 'empty' if a == 'EMPTY' else a for a in argv]
  code, _, err = run(capsys, 'build', '--data_dir', tmp_path, *argv,
                     '--no_progress')
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert last.startswith('segment-anything-tfds build: error:'), err
  assert message in last
  assert 'Traceback' not in err


@pytest.mark.parametrize('flags, message', [
    (['--summary_json', 'ADIR'], 'ADIR: cannot write the summary'
     ' (--summary_json) there (it is a directory)'),
    (['--summary_json', 'AFILE/s.json'], 'AFILE/s.json: cannot write the'
     ' summary (--summary_json) there (AFILE is not a directory)'),
    (['--data_dir', 'AFILE'], 'AFILE: cannot write the dataset (--data_dir)'
     ' there (it is not a directory)'),
    (['--data_dir', 'AFILE/sub'], 'AFILE/sub: cannot write the dataset'
     ' (--data_dir) there (AFILE is not a directory)'),
    (['--download_dir', 'AFILE'], 'AFILE: cannot write downloads'
     ' (--download_dir) there (it is not a directory)'),
    # No check foresees it: the OS's own reason, in one line.
    (['--data_dir', '/proc/no_such_dir'],
     '/proc/no_such_dir: No such file or directory'),
])
def test_build_output_locations_fail_in_one_line_before_any_work(
    flags, message, tmp_path, capsys):
  (tmp_path / 'adir').mkdir()
  (tmp_path / 'afile').write_text('x')
  named = lambda a: str(a).replace('ADIR', str(tmp_path / 'adir')).replace(
      'AFILE', str(tmp_path / 'afile'))
  flags = [named(f) for f in flags]
  if '--data_dir' not in flags:
    flags += ['--data_dir', str(tmp_path / 'data')]
  code, _, err = run(capsys, 'build', '--tars', '0', '--manual_dir', DUMMY,
                     *flags, '--no_progress')
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert last == f'segment-anything-tfds build: error: {named(message)}' or (
      named(message) in last), err
  assert 'Traceback' not in err
  assert not (tmp_path / 'data').exists()  # Nothing built.


@pytest.mark.parametrize('command', [['stats'], ['export', '--format',
                                                 'coco']])
def test_results_written_with_local_files_refuse_a_bucket(
    command, built, tmp_path, capsys, monkeypatch):
  """They went to a local dir named `gs:`."""
  data_dir, _ = built
  monkeypatch.chdir(tmp_path)
  code, _, err = run(capsys, *command, '--tars', '0-3', '--data_dir',
                     data_dir, '--out', 'gs://bucket/x', '--no_progress')
  assert code == 1
  assert err.strip().splitlines()[-1].endswith(
      'error: gs://bucket/x: cannot write ' + (
          'statistics' if command[0] == 'stats' else 'the export')
      + ' (--out) there (a local path is needed; copy the results to the'
      ' bucket afterwards)')
  assert not list(tmp_path.iterdir())


def test_a_summary_in_a_bucket_makes_no_local_dir(tmp_path, monkeypatch):
  """It is written through the bucket's filesystem (epath), not into a
  local dir named `gs:`."""
  from segment_anything_tfds.sources import local  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  local.check_writable('gs://bucket/runs/s.json', 'the summary')
  assert not list(tmp_path.iterdir())


def test_stats_out_that_is_a_file_fails_before_scanning(built, tmp_path,
                                                        capsys):
  data_dir, _ = built
  (tmp_path / 'afile').write_text('x')
  code, _, err = run(capsys, 'stats', '--tars', '0-3', '--data_dir',
                     data_dir, '--out', tmp_path / 'afile', '--no_progress')
  assert code == 1
  assert err.strip().splitlines()[-1] == (
      f'segment-anything-tfds stats: error: {tmp_path / "afile"}: cannot'
      ' write statistics (--out) there (it is not a directory)')


def test_build_bad_input_strict_fails_lenient_audits(tmp_path, capsys):
  manual = tmp_path / 'manual'
  manual.mkdir()
  data = bytearray((DUMMY / 'sa_000000.tar').read_bytes())
  json_at = data.find(b'{"image"')
  assert json_at > 0
  data[json_at:json_at + 8] = b'{{{{{{{{'  # Malformed JSON, same length.
  (manual / 'sa_000000.tar').write_bytes(bytes(data))
  args = ['build', '--config', 'first_1', '--data_dir', tmp_path / 'data',
          '--manual_dir', manual, '--no_progress']
  code, _, err = run(capsys, *args)
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert 'malformed JSON' in last and '[malformed_json]' in last
  assert 'Traceback' not in err

  summary = tmp_path / 'summary.json'
  code, out, _ = run(capsys, *args, '--lenient', '--summary_json', summary)
  assert code == 0, out
  s = json.loads(summary.read_text())
  assert s['config'] == 'first_1_lenient'
  assert s['images'] == 2
  assert s['skipped_images'] == 1
  assert 'skipped:   1 images' in out


def test_download_config_local_build_and_workers():
  from apache_beam.options import pipeline_options
  from segment_anything_tfds.prepare import runners
  parser = cli.build_parser()
  # Local (no runner): no Beam options at all; --workers goes to the builder.
  args, leftover = parser.parse_known_args(
      ['build', '--tars', '0', '--workers', '3', '--manual_dir', 'm'])
  cfg = cli.build.download_config(args, leftover)
  assert cfg.beam_options is None and cfg.beam_runner is None
  assert not runners.names_runner(cfg)
  assert args.workers == 3 and cfg.manual_dir == 'm'
  # `tfds build`-style direct_num_workers also sets a local build's workers.
  args, leftover = parser.parse_known_args(
      ['build', '--tars', '0', '--beam_pipeline_options',
       'direct_num_workers=2'])
  cfg = cli.build.download_config(args, leftover)
  assert not runners.names_runner(cfg)
  assert runners.local_workers(cfg, 0) == 2
  # Other Beam options need a runner, and say so.
  for argv in (['--beam_pipeline_options', 'job_name=x'], ['--num_workers',
                                                          '3']):
    args, leftover = parser.parse_known_args(['build', '--tars', '0', *argv])
    with pytest.raises(cli.common.UsageError, match='runner'):
      cli.build.download_config(args, leftover)

  args, leftover = parser.parse_known_args(
      ['build', '--tars', '0', '--runner', 'DataflowRunner',
       '--num_workers', '5', '--region=europe-west4',
       '--machine_type=n2-standard-4'])
  cfg = cli.build.download_config(args, leftover)
  assert cfg.beam_runner is None and runners.names_runner(cfg)
  opts = cfg.beam_options
  assert opts.view_as(pipeline_options.StandardOptions).runner == (
      'DataflowRunner')
  assert opts.view_as(pipeline_options.WorkerOptions).num_workers == 5
  assert opts.view_as(pipeline_options.WorkerOptions).machine_type == (
      'n2-standard-4')
  assert opts.view_as(pipeline_options.GoogleCloudOptions).region == (
      'europe-west4')


def test_build_array_record(tmp_path, capsys):
  summary = tmp_path / 'summary.json'
  code, out, err = run(
      capsys, 'build', '--tars', '1-2', '--data_dir', tmp_path,
      '--manual_dir', DUMMY, '--workers', '2', '--file_format',
      'array_record', '--summary_json', summary, '--no_progress')
  assert code == 0, err
  s = json.loads(summary.read_text())
  assert s['images'] == 6
  assert s['masks'] == sum(DUMMY_IMAGES[i][2] for i in (11, 12, 13, 21, 22, 23))
  assert s['file_format'] == 'array_record'
  assert list(pathlib.Path(s['data_dir']).glob('*.array_record*'))
  assert 'local' in err


# ------------------------------------------------------------------ stats


def test_stats(built, tmp_path, capsys):
  data_dir, _ = built
  code, out, err = run(capsys, 'stats', '--tars', '0-3', '--data_dir',
                       data_dir, '--out', tmp_path, '--no_progress')
  assert code == 0, err
  s = json.loads((tmp_path / 'stats.json').read_text())
  assert s['images'] == len(DUMMY_IMAGES)
  assert s['masks'] == DUMMY_MASKS
  counts = sorted(m for _, _, m in DUMMY_IMAGES.values())
  mpi = s['masks_per_image']
  assert (mpi['min'], mpi['max']) == (counts[0], counts[-1])
  assert mpi['quantiles']['0.5'] == counts[len(counts) // 2]
  assert sum(mpi['histogram']['counts']) == len(DUMMY_IMAGES)
  for key in ('predicted_iou', 'stability_score', 'mask_area_fraction'):
    assert s[key]['count'] == DUMMY_MASKS
    assert 0 < s[key]['min'] <= s[key]['quantiles']['0.5'] <= s[key]['max']
  assert s['mask_area_fraction']['max'] <= 1
  assert s['image_size']['distinct_sizes'] == len(
      {(h, w) for h, w, _ in DUMMY_IMAGES.values()})
  with Image.open(tmp_path / 'stats.png') as im:
    im.load()
    assert im.format == 'PNG'
    assert im.size == (1500, 900)
  assert f'masks:            {DUMMY_MASKS}' in out


def test_stats_split_slice(built, tmp_path, capsys):
  data_dir, summary = built
  code, _, err = run(capsys, 'stats', '--dataset_dir', summary['data_dir'],
                     '--split', 'train[:4]', '--out', tmp_path,
                     '--no_progress')
  assert code == 0, err
  s = json.loads((tmp_path / 'stats.json').read_text())
  assert s['images'] == 4
  assert s['split'] == 'train[:4]'
  assert (tmp_path / 'stats.png').exists()
  del data_dir


def test_stats_not_prepared_exit_1(tmp_path, capsys):
  code, _, err = run(capsys, 'stats', '--config', 'first_1', '--data_dir',
                     tmp_path, '--out', tmp_path / 'o')
  assert code == 1
  assert 'is not prepared in' in err
  assert 'Traceback' not in err


def test_stats_json_never_holds_nan_or_infinity(tmp_path):
  """JSON has no NaN nor Infinity: a summary holding one (an infinite
  score makes the mean NaN) is refused in one line, and nothing is
  written."""
  from segment_anything_tfds.tools import stats as stats_lib
  acc = stats_lib.Accumulator()
  acc.predicted_iou.add(np.array([0.5, np.inf]))
  acc.predicted_iou.add(np.array([-np.inf]))
  path = tmp_path / 'stats.json'
  with pytest.raises(errors.BadRecordError) as e:
    acc.write_json(path)
  assert str(e.value) == (
      f'{path}: the statistics hold predicted_iou.mean nan, not finite (NaN'
      ' or infinity), which JSON cannot hold; not written')
  assert not path.exists()


def test_stats_of_a_dataset_holding_infinity_is_one_line(nonfinite_data_dir,
                                                         tmp_path, capsys):
  """An infinite score (a dataset built by older code) made stats.json
  hold NaN; now stats stops naming the example, the image and the field."""
  code, out, err = run(capsys, 'stats', '--tars', '1', '--data_dir',
                       nonfinite_data_dir, '--out', tmp_path / 'o',
                       '--no_progress')
  assert (code, out) == (1, '')
  assert err == (
      'segment-anything-tfds stats: error: example 1, image_id 12:'
      ' annotations[0].predicted_iou [inf] is not finite (NaN or'
      ' infinity)\n')
  assert not (tmp_path / 'o' / 'stats.json').exists()


def test_stats_figure_panels():
  from matplotlib import collections as mcollections
  from segment_anything_tfds.tools import stats as stats_lib
  rng = np.random.default_rng(0)
  acc = stats_lib.Accumulator()
  for _ in range(40):
    n = int(rng.integers(1, 30))
    acc.add({'image': {'height': int(rng.choice([1500, 2250])),
                       'width': 1500 + 250 * int(rng.integers(0, 3))},
             'annotations': {'id': np.arange(n),
                             'area': rng.integers(1, 10**6, n),
                             'predicted_iou': rng.uniform(0.85, 1.0, n),
                             'stability_score': rng.uniform(0.9, 1.0, n)}})
  summary = acc.summary()
  fig = acc.figure(title='t')
  fig.canvas.draw()
  panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
  counts = ('Masks per image', 'Mask area / image area', 'predicted_iou',
            'stability_score')
  for name in (*counts, 'Image sizes (2-D histogram)'):
    assert panels[name].get_xlabel(), name  # An x label on every panel.
  for name in counts:
    ax = panels[name]
    # Integer ticks on the count axes.
    assert all(float(t).is_integer() for t in ax.get_yticks()), name
    # Bars with edges of their own colour.
    bars = ax.patches
    assert bars and all(b.get_linewidth() > 0 and b.get_edgecolor() !=
                        b.get_facecolor() for b in bars)
  assert all(float(t).is_integer()
             for t in panels['Masks per image'].get_xticks())

  def marks(name):
    return [round(float(line.get_xdata()[0]), 9)
            for line in panels[name].lines]

  mpi = summary['masks_per_image']
  assert marks('Masks per image') == [round(mpi['mean'], 9),
                                      mpi['quantiles']['0.5']]
  for name, threshold in (('predicted_iou', 0.88), ('stability_score', 0.95)):
    s = summary[name]
    assert marks(name) == [round(s['mean'], 9),
                           round(s['quantiles']['0.5'], 9), threshold]
  sizes = panels['Image sizes (2-D histogram)']
  [mesh] = [c for c in sizes.collections
            if isinstance(c, mcollections.QuadMesh)]
  assert not [c for c in sizes.collections
              if isinstance(c, mcollections.PathCollection)]  # No scatter.
  assert mesh.get_array().sum() == 40


# ------------------------------------------------------------------ show


def _dataset_example(data_dir, image_id):
  """The prepared example of `image_id` (numpy, JPEG bytes undecoded)."""
  import tensorflow_datasets as tfds
  builder = cli.common.make_builder(cli.build_parser().parse_args(
      ['stats', '--tars', '0-3', '--data_dir', str(data_dir), '--out', 'x']))
  return next(e for e in tfds.as_numpy(cli.common.as_dataset(builder, 'train'))
              if e['image']['image_id'] == image_id)


def _factor(h, w, min_size=512):
  return -(-min_size // max(h, w))


def test_show_by_index_with_boxes_and_points(built, tmp_path, capsys):
  data_dir, _ = built
  code, out, err = run(capsys, 'show', '--tars', '0-3', '--data_dir',
                       data_dir, '--index', '0,3', '--boxes', '--points',
                       '--out', tmp_path, '--no_progress')
  assert code == 0, err
  written = sorted(tmp_path.glob('sa_*.png'))
  assert len(written) == 2
  for path in written:
    image_id = int(path.stem.split('_')[1])
    assert path.name == f'sa_{image_id}_boxes_points.png'
    h, w, masks = DUMMY_IMAGES[image_id]
    k = _factor(h, w)  # Tiny images are scaled up to >= 512 px.
    with Image.open(path) as im:
      im.load()
      assert im.format == 'PNG'
      assert im.size == (w * k, h * k)
      assert max(im.size) >= 512 > max(im.size) - max(h, w)  # The least k.
    assert f'image id {image_id}, {w * k}x{h * k}, {masks} masks' in out


def test_show_refuses_a_nan_box_in_one_line(nonfinite_data_dir, tmp_path,
                                            capsys):
  """A NaN box (a dataset built by older code) was a traceback with
  --boxes; now one line naming the index, the image and the annotation,
  nothing drawn. Without --boxes the image is drawn as before."""
  argv = ['show', '--tars', '1', '--data_dir', nonfinite_data_dir,
          '--image_id', '12', '--no_progress']
  code, out, err = run(capsys, *argv, '--boxes', '--out', tmp_path / 'b')
  assert (code, out) == (1, '')
  assert err == (
      'segment-anything-tfds show: error: index 1, image_id 12:'
      ' annotations[1].bbox [nan, nan, nan, nan] is not finite (NaN or'
      ' infinity)\n')
  assert not list((tmp_path / 'b').glob('*'))  # Nothing drawn or written.
  code, out, err = run(capsys, *argv, '--points', '--out', tmp_path / 'p')
  assert code == 0, err
  assert (tmp_path / 'p' / 'sa_12_points.png').exists()


def test_show_by_image_id_draws_masks(built, tmp_path, capsys):
  data_dir, _ = built
  code, out, err = run(capsys, 'show', '--tars', '0-3', '--data_dir',
                       data_dir, '--image_id', '32,1', '--out', tmp_path,
                       '--alpha', '1', '--min_size', '0', '--no_progress')
  assert code == 0, err
  for image_id in (32, 1):
    h, w, _ = DUMMY_IMAGES[image_id]
    with Image.open(tmp_path / f'sa_{image_id}_alpha1_min0.png') as im:
      assert im.size == (w, h)
  # The overlay differs from the plain JPEG wherever masks are.
  from segment_anything_tfds.tools import viz
  ex = _dataset_example(data_dir, 32)
  plain = viz.image_array(ex['image']['content'])
  masks = viz.full_masks(ex['annotations'], *plain.shape[:2])
  with Image.open(tmp_path / 'sa_32_alpha1_min0.png') as im:
    drawn = np.asarray(im)
  covered = masks.any(axis=0)
  assert covered.any()
  assert (np.abs(drawn.astype(int) - plain).sum(-1)[covered] > 0).mean() > 0.5
  assert np.array_equal(drawn[~covered], plain[~covered])
  assert 'image id 32' in out


def _no_partial_files(out):
  return not [n for n in os.listdir(out) if n.endswith('.partial')]


def test_show_and_stats_replace_links_planted_in_out_never_write_through(
    built, tmp_path, capsys):
  """A symlink (to a file outside OUT) and a hard link planted under the
  names show and stats write are replaced, never written through."""
  data_dir, _ = built
  out = tmp_path / 'out'
  out.mkdir()
  victims = {n: tmp_path / f'victim_{n}' for n in ('sa_21.png', 'stats.json',
                                                   'stats.png')}
  for name, victim in victims.items():
    victim.write_bytes(b'precious\n')
  os.symlink(victims['sa_21.png'], out / 'sa_21.png')
  os.link(victims['stats.json'], out / 'stats.json')
  os.symlink(victims['stats.png'], out / 'stats.png')
  code, printed, err = run(capsys, 'show', '--tars', '0-3', '--data_dir',
                           data_dir, '--index', '0', '--out', out,
                           '--no_progress')
  assert code == 0, err
  assert printed.startswith(f'wrote {out}/sa_21.png (index 0, image id 21,')
  code, _, err = run(capsys, 'stats', '--tars', '0-3', '--data_dir',
                     data_dir, '--out', out, '--no_progress')
  assert code == 0, err
  for victim in victims.values():
    assert victim.read_bytes() == b'precious\n'
  for name in victims:
    assert not (out / name).is_symlink()
    assert (out / name).stat().st_nlink == 1
  with Image.open(out / 'sa_21.png') as im:
    assert im.format == 'PNG'
  assert json.loads((out / 'stats.json').read_text())['images'] == len(
      DUMMY_IMAGES)
  assert _no_partial_files(out)


@pytest.mark.parametrize('command,name', [('show', 'sa_21.png'),
                                          ('stats', 'stats.json'),
                                          ('stats', 'stats.png')])
def test_a_fifo_or_dir_under_a_name_show_or_stats_writes_is_one_line(
    built, tmp_path, capsys, command, name):
  """Never opened (a FIFO would block the write), never replaced."""
  data_dir, _ = built
  what = ('the picture (--out)' if command == 'show' else
          'the statistics (--out)')
  for kind, make in (('a FIFO', os.mkfifo), ('a directory', os.mkdir)):
    out = tmp_path / kind.split()[-1]
    out.mkdir()
    make(out / name)
    argv = ['--index', '0'] if command == 'show' else []
    code, _, err = run(capsys, command, '--tars', '0-3', '--data_dir',
                       data_dir, *argv, '--out', out, '--no_progress')
    assert (code, err) == (1, f'segment-anything-tfds {command}: error:'
                           f' {out}/{name}: cannot write {what} there (it is'
                           f' {kind}; remove it or choose another --out)\n')
    assert _no_partial_files(out)


def test_show_and_stats_into_a_dir_an_export_writes_into_are_one_line(
    built, tmp_path, capsys):
  """They took no lock: an export starting into their --out removed their
  partial files. Now they hold its lock while they write, and one whose
  --out an export holds is refused as a second export is."""
  from segment_anything_tfds.tools import export  # pylint: disable=g-import-not-at-top
  data_dir, _ = built
  out = tmp_path / 'out'
  with export.OutDir.made(out) as exporting:
    exporting.lock()
    for command, argv in (('show', ['--index', '0']), ('stats', [])):
      code, printed, err = run(capsys, command, '--tars', '0-3',
                               '--data_dir', data_dir, *argv, '--out', out,
                               '--no_progress')
      assert (code, err) == (1, f'segment-anything-tfds {command}: error:'
                             f' another export is writing into {out} (it'
                             f' holds {out}/.export.lock): wait for it to'
                             ' end, or choose another --out\n'), printed
    assert os.listdir(out) == ['.export.lock']
  code, _, err = run(capsys, 'show', '--tars', '0-3', '--data_dir', data_dir,
                     '--index', '0', '--out', out, '--no_progress')
  assert code == 0, err
  assert os.listdir(out) == ['sa_21.png']


def _cli_under_size_limit(limit, *argv):
  """The CLI in a process that cannot write past `limit` bytes in a file
  (RLIMIT_FSIZE: writes fail with EFBIG, as with ENOSPC on a full disk)."""
  import resource  # pylint: disable=g-import-not-at-top
  def limited():
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', *map(str, argv),
       '--no_progress'], capture_output=True, text=True, check=False,
      timeout=300, preexec_fn=limited,
      env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})


_TOO_LARGE = ("file too large: over the file system's or this process's"
              " limit on a file's size (ulimit -f)")


def test_show_and_stats_on_a_full_disk_are_one_line_and_leave_no_part(
    built, tmp_path):
  data_dir, _ = built
  out = tmp_path / 'show'
  res = _cli_under_size_limit(2048, 'show', '--tars', '0-3', '--data_dir',
                              data_dir, '--index', '0', '--out', out)
  assert (res.returncode, res.stderr) == (
      1, f'segment-anything-tfds show: error: {out}/sa_21.png: cannot write'
      f' the picture (--out) there ({_TOO_LARGE})\n')
  assert os.listdir(out) == []  # No PNG cut short, no partial file.
  out = tmp_path / 'stats'
  res = _cli_under_size_limit(20 << 10, 'stats', '--tars', '0-3',
                              '--data_dir', data_dir, '--out', out)
  assert (res.returncode, res.stderr) == (
      1, f'segment-anything-tfds stats: error: {out}/stats.png: cannot write'
      f' the statistics (--out) there ({_TOO_LARGE})\n')
  assert os.listdir(out) == ['stats.json']  # Whole; written first.
  json.loads((out / 'stats.json').read_text())


def test_export_on_a_full_disk_is_one_line_and_leaves_no_part(built,
                                                             tmp_path):
  data_dir, _ = built
  out = tmp_path / 'coco'
  res = _cli_under_size_limit(4096, 'export', '--tars', '0-3', '--data_dir',
                              data_dir, '--format', 'coco', '--out', out)
  # It said "export to OUT failed: [Errno 27] File too large".
  assert (res.returncode, res.stderr) == (
      1, f'segment-anything-tfds export: error: {out}: cannot write the'
      f' export (--out) there ({_TOO_LARGE})\n')
  assert _no_partial_files(out)


def _huge_header_record(image_id, side):
  """(JPEG, JSON) the build accepts: an 8x8 JPEG whose header says
  side x side, as the JSON does, with one empty mask (a few hundred
  bytes in all)."""
  import io  # pylint: disable=g-import-not-at-top
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.new('RGB', (8, 8), (100, 50, 20)).save(buf, 'JPEG')
  jpg = bytearray(buf.getvalue())
  sof = jpg.find(b'\xff\xc0')
  jpg[sof + 5:sof + 9] = side.to_bytes(2, 'big') * 2
  rle = mask_utils.frPyObjects({'counts': [side * side],
                                'size': [side, side]}, side, side)
  record = {'image': {'image_id': image_id, 'width': side, 'height': side,
                      'file_name': f'sa_{image_id}.jpg'},
            'annotations': [{
                'bbox': [0, 0, 1, 1], 'area': 0,
                'segmentation': {'size': [side, side],
                                 'counts': rle['counts'].decode()},
                'predicted_iou': 0.9, 'point_coords': [[1, 1]],
                'crop_box': [0, 0, side, side], 'id': 1,
                'stability_score': 0.9}]}
  return image_id, bytes(jpg), json.dumps(record).encode()


def test_show_refuses_an_image_too_large_to_draw_before_decoding_it(
    tmp_path, capsys):
  """JPEG headers and JSON agree on 12000x12000 (decoded: 3 GB and more)
  and 30000x30000 (PIL's decompression bomb): one line naming the image,
  nothing written."""
  from segment_anything_tfds.tools import viz  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  manual.mkdir()
  fake_data.write_tar(manual / 'sa_000000.tar', [
      _huge_header_record(7, 30000), _huge_header_record(8, 12000)])
  data_dir = tmp_path / 'data'
  code, _, err = run(capsys, 'build', '--manual_dir', manual, '--tars', '0',
                     '--data_dir', data_dir, '--no_progress')
  assert code == 0, err
  show = ['show', '--tars', '0', '--data_dir', data_dir, '--out',
          tmp_path / 'show', '--no_progress', '--image_id']
  code, out, err = run(capsys, *show, 8)
  assert (code, out, err) == (
      1, '', 'segment-anything-tfds show: error: image id 8: 12000x12000 px'
      ' is 144.0 MP, over the 33.6 MP a picture is drawn with'
      ' (viz.MAX_PIXELS)\n')
  code, out, err = run(capsys, *show, 7)
  assert (code, out) == (1, '')
  assert err.startswith(
      'segment-anything-tfds show: error: image id 7: its JPEG is over the'
      ' 33.6 MP a picture is drawn with (viz.MAX_PIXELS): Image size'
      ' (900000000 pixels) exceeds limit of ')
  assert len(err.splitlines()) == 1
  assert not (tmp_path / 'show').exists()
  # The CLI as a user runs it: no warning from PIL besides the one line.
  res = subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', *map(str, show), '8'],
      capture_output=True, text=True, check=False, timeout=300,
      env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
  assert (res.returncode, len(res.stderr.splitlines())) == (1, 1), res.stderr
  # The masks decoded at once are bounded too: SA-1B's largest images with
  # ~3800 masks pass, more are refused (scaled up, the scaled size counts).
  viz.check_drawable(5, 1500, 2250, masks=3800)
  with pytest.raises(errors.ConfigError, match=re.escape(
      'image id 5: 3900 masks of 2250x1500 px are 12.3 GiB decoded, over the'
      ' 12 GiB drawn at once (viz.MAX_MASK_PIXELS); draw fewer (--max_masks)'
      )):
    viz.check_drawable(5, 1500, 2250, masks=3900)
  with pytest.raises(errors.ConfigError, match=re.escape(
      'image id 6: 1000x1000 px scaled up 6x is 36.0 MP, over the 33.6 MP')):
    viz.check_drawable(6, 1000, 1000, factor=6)


def test_show_upscales_pixels_and_masks_alike(built, tmp_path, capsys):
  data_dir, _ = built
  code, _, err = run(capsys, 'show', '--tars', '0-3', '--data_dir', data_dir,
                     '--image_id', '12', '--min_size', '90', '--out',
                     tmp_path, '--no_progress')
  assert code == 0, err
  from segment_anything_tfds.tools import viz
  ex = _dataset_example(data_dir, 12)  # 1 x 9 pixels, 2 masks.
  plain = viz.image_array(ex['image']['content'])
  masks = viz.full_masks(ex['annotations'], 1, 9)
  with Image.open(tmp_path / 'sa_12_min90.png') as im:
    drawn = np.asarray(im)
  assert drawn.shape == (10, 90, 3)  # Factor 10: nearest, every pixel a block.
  big = np.repeat(np.repeat(plain, 10, 0), 10, 1)
  covered = np.repeat(np.repeat(masks.any(0), 10, 0), 10, 1)
  assert np.array_equal(drawn[~covered], big[~covered])
  assert (drawn[covered] != big[covered]).any(-1).all()


def _nested_example(num=100, size=256, seed=0):
  """`num` nested squares, each inside the previous, on a random photo."""
  from pycocotools import mask as mask_utils
  rng = np.random.default_rng(seed)
  photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
  counts = []
  for i in range(num):
    m = np.zeros((size, size), np.uint8, order='F')
    lo = i * (size // 2 - 1) // num
    m[lo:size - lo, lo:size - lo] = 1
    counts.append(mask_utils.encode(m)['counts'])
  return photo, {'image': {'content': photo, 'image_id': 7},
                 'annotations': {
                     'segmentation': {'counts': np.array(counts, object),
                                      'size': np.tile([[size, size]],
                                                      (num, 1))},
                     'predicted_iou': np.linspace(0.8, 0.99, num)}}


def test_show_alpha_blends_each_pixel_once_under_100_masks():
  from segment_anything_tfds.tools import viz
  photo, ex = _nested_example()
  alpha = viz.DEFAULT_ALPHA
  drawn = np.asarray(viz.render(ex, outline=False)).astype(np.float64)
  masks = viz.full_masks(ex['annotations'], 256, 256)
  assert masks.sum(0).max() == 100
  area = masks.reshape(len(masks), -1).sum(1)
  assert len(set(area)) == 100
  # The colour of a pixel is its smallest mask's (drawn last), blended once
  # with the photo, however many masks cover it.
  top = np.where(masks, area[:, None, None], np.inf).argmin(0)
  want = (1 - alpha) * photo + alpha * viz.colors(100)[top]
  np.testing.assert_allclose(drawn, want, atol=0.51)
  # So under 100 masks (inside the smallest) the photo keeps 1 - alpha of
  # its contrast.
  centre = np.s_[125:131, 125:131]
  for c in range(3):
    ratio = drawn[centre][..., c].std() / photo[centre][..., c].std()
    assert ratio == pytest.approx(1 - alpha, abs=0.02)


def test_show_refuses_a_mask_whose_size_is_not_its_images():
  """Each mask's stored size was trusted: an edited dataset declaring a
  65536 x 65536 mask on a 16 x 16 image had it decoded (4 GiB). Now one
  line names the image, the mask (its index in the example, also when
  drawing a selection) and both sizes, before any mask is decoded."""
  from segment_anything_tfds.tools import viz
  _, ex = _nested_example(num=4, size=16)
  ex['annotations']['segmentation']['size'][2] = [65536, 65536]
  refused = re.escape(
      'image_id 7: annotations[2].segmentation.size [65536, 65536] is not'
      " the image's [16, 16] (height, width)")
  with pytest.raises(errors.BadRecordError, match=f'^{refused}$'):
    viz.render(ex)
  with pytest.raises(errors.BadRecordError, match=f'^{refused}$'):
    viz.render(ex, max_masks=2)  # Masks 2 and 3: the highest scores.
  with pytest.raises(errors.BadRecordError, match=re.escape(
      "image_id ?: annotations[2].segmentation.size [65536, 65536] is not"
      " the image's [16, 16]")):
    viz.full_masks(ex['annotations'], 16, 16)
  assert viz.render(ex, max_masks=1).size == (16, 16)  # Mask 3 only.
  # Fewer sizes than masks: the last masks were dropped without a word.
  seg = ex['annotations']['segmentation']
  seg['size'] = np.tile([[16, 16]], (3, 1))
  with pytest.raises(errors.BadRecordError, match=re.escape(
      'image_id ?: 4 masks but 3 mask sizes')):
    viz.full_masks(ex['annotations'], 16, 16)


def test_show_selects_masks_by_predicted_iou():
  from segment_anything_tfds.tools import viz
  ann = {'segmentation': {'counts': np.array([b''] * 6, object)},
         'predicted_iou': np.array([0.9, 0.7, 0.95, 0.88, 0.99, 0.88])}
  assert viz.select_masks(ann).tolist() == [0, 1, 2, 3, 4, 5]
  assert viz.select_masks(ann, min_predicted_iou=0.88).tolist() == [
      0, 2, 3, 4, 5]
  assert viz.select_masks(ann, max_masks=2).tolist() == [2, 4]
  # Ties keep the first; the order of the dataset is kept.
  assert viz.select_masks(ann, max_masks=4,
                          min_predicted_iou=0.88).tolist() == [0, 2, 3, 4]
  assert viz.select_masks(ann, min_predicted_iou=1.0).tolist() == []


def test_show_names_encode_the_options(built, tmp_path, capsys):
  data_dir, _ = built
  argv = ['show', '--tars', '0-3', '--data_dir', data_dir, '--image_id',
          '13', '--out', tmp_path, '--no_progress']
  code, out, err = run(capsys, *argv, '--max_masks', '50',
                       '--min_predicted_iou', '0.88')
  assert code == 0, err
  ex = _dataset_example(data_dir, 13)
  kept = int((ex['annotations']['predicted_iou'] >= 0.88).sum())
  assert 0 < kept < 6
  assert f'6 masks, {kept} drawn' in out
  code, _, err = run(capsys, *argv, '--max_masks', '2')
  assert code == 0, err
  code, _, err = run(capsys, *argv)
  assert code == 0, err
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'sa_13.png', 'sa_13_max2.png', 'sa_13_max50_iou0.88.png']


@pytest.mark.parametrize('argv', [
    ['--alpha', '1.5'], ['--alpha', 'nan'], ['--min_predicted_iou', '-0.1'],
    ['--max_masks', '0'], ['--min_size', '-1'],
    ['--paste_from', '1', '--predictions', 'p.json'],
])
def test_show_bad_options_exit_2(argv, tmp_path, capsys):
  code, _, err = run(capsys, 'show', '--tars', '0-3', '--index', '0',
                     '--out', tmp_path, *argv)
  assert code == 2, err
  assert 'usage:' in err


def test_show_option_conflicts_exit_2(built, tmp_path, capsys):
  data_dir, _ = built
  code, _, err = run(capsys, 'show', '--tars', '0-3', '--data_dir', data_dir,
                     '--index', '0', '--paste_from', '1', '--boxes',
                     '--out', tmp_path, '--no_progress')
  assert code == 2
  assert '--boxes cannot go with --paste_from' in err
  assert not list(tmp_path.iterdir())


def test_show_copy_paste_draws_the_ops_output(built, tmp_path, capsys):
  import tensorflow as tf
  from segment_anything_tfds.read import copy_paste
  from segment_anything_tfds.tools import viz
  data_dir, _ = built
  code, out, err = run(capsys, 'show', '--tars', '0-3', '--data_dir',
                       data_dir, '--image_id', '13', '--paste_from', '0',
                       '--paste_objects', '3', '--seed', '5', '--out',
                       tmp_path, '--no_progress')
  assert code == 0, err
  target = _dataset_example(data_dir, 13)
  source_id = 21  # Position 0 of the split.
  assert f'objects of image id {source_id} pasted' in out
  path = tmp_path / f'sa_13_paste{source_id}x3_seed5.png'
  assert path.exists()
  # The picture holds the op's own output, called directly here.
  source = _dataset_example(data_dir, source_id)
  pixels = viz.image_array(target['image']['content'])
  seg = source['annotations']['segmentation']
  direct = copy_paste.paste_from_example(
      tf.constant(pixels),
      {'image': {'content': tf.constant(
          viz.image_array(source['image']['content'])),
                 'image_id': tf.constant(source_id, tf.int64)},
       'annotations': {'segmentation': {'counts': tf.constant(
           list(seg['counts'])), 'size': tf.constant(seg['size'].astype(
               np.int64))}}},
      num_objects=3, seed=5, scale_range=(0.5, 1.5), drop_empty=True,
      as_rle=True)
  picture, result = viz.render_copy_paste(target, source, num_objects=3,
                                          seed=5, min_size=0)
  np.testing.assert_array_equal(result['image'], direct['image'].numpy())
  assert list(result['pasted_counts']) == list(
      direct['pasted_counts'].numpy())
  assert len(result['pasted_indices']) > 0
  # Its right panel: the pasted image, untouched outside the pasted masks.
  masks = viz.full_masks({'segmentation': {
      'counts': result['pasted_counts'],
      'size': [[30, 40]] * len(result['pasted_counts'])}}, 30, 40)
  panel = np.asarray(picture)
  # Panels start below a 26 px caption, 6 px from the edges; the target is
  # 30 x 40.
  right = panel[6 + 26:6 + 26 + 30, -46:-6]
  outside = ~masks.any(0)
  np.testing.assert_array_equal(right[outside], result['image'][outside])


def test_docs_pictures_are_what_the_cli_makes(tmp_path, monkeypatch, capsys):
  from conftest import load_example  # pylint: disable=g-import-not-at-top
  script = load_example('docs_pictures')
  monkeypatch.setattr(sys, 'argv', ['docs_pictures.py', '--out',
                                    str(tmp_path)])
  script.main()
  out = capsys.readouterr().out
  assert '3 objects of image id 2 pasted' in out
  assert '6 masks with a prediction, mean IoU' in out
  for name in ('copy_paste.png', 'evaluation.png', 'show.png', 'stats.png'):
    committed = REPO / 'docs' / name
    assert committed.stat().st_size < 200_000
    with Image.open(tmp_path / name) as made, Image.open(committed) as doc:
      assert made.size == doc.size
      # Equal but for JPEG decoders' and font renderers' last bits.
      diff = np.abs(np.asarray(made, np.int16) - np.asarray(doc, np.int16))
      assert diff.mean() < 0.5, name


# --------------------------------------------------------------- evaluate


def _shifted(counts, size, dy, dx):
  """The mask moved by (dy, dx) pixels, as RLE counts (str)."""
  from pycocotools import mask as mask_utils
  m = mask_utils.decode({'size': size, 'counts': counts})
  out = np.zeros_like(m)
  h, w = m.shape
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = m[
      max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return mask_utils.encode(np.asfortranarray(out))['counts'].decode()


@pytest.fixture(scope='module')
def predictions(tmp_path_factory):
  """Predictions for the dummy data and their expected scores.

  Per image: mask 0 has no prediction; mask 1 has two candidates, itself
  (score 0.2) and itself moved one column (score 0.9); the others are moved
  one row. One more prediction names no ground-truth mask. The expected IoUs
  are pycocotools'.
  """
  from pycocotools import mask as mask_utils
  from conftest import read_inputs
  preds = []
  best, by_score = [], []
  iou = lambda a, b, size: float(np.float32(mask_utils.iou(
      [{'size': size, 'counts': a}], [{'size': size, 'counts': b}], [0])[0, 0]))
  for image_id, (_, js) in sorted(read_inputs(DUMMY).items()):
    for j, ann in enumerate(js['annotations']):
      seg = ann['segmentation']
      entry = lambda counts, score: {
          'segmentation': {'size': seg['size'], 'counts': counts},
          'image_id': image_id, 'id': ann['id'], 'score': score}
      if j == 0:
        continue
      if j == 1:
        moved = _shifted(seg['counts'], seg['size'], 0, 1)
        preds += [entry(seg['counts'], 0.2), entry(moved, 0.9)]
        best.append(1.0)
        by_score.append(iou(moved, seg['counts'], seg['size']))
      else:
        moved = _shifted(seg['counts'], seg['size'], 1, 0)
        preds.append(entry(moved, 0.5))
        best.append(iou(moved, seg['counts'], seg['size']))
        by_score.append(best[-1])
  preds.append({'segmentation': preds[0]['segmentation'], 'image_id': 1,
                'id': 999999})
  path = tmp_path_factory.mktemp('preds') / 'predictions.json'
  path.write_text(json.dumps(preds))
  return path, {'best_iou': best, 'score': by_score}, len(preds)


@pytest.mark.parametrize('select', ['best_iou', 'score'])
def test_evaluate_prints_and_writes_the_table(built, predictions, select,
                                              tmp_path, capsys):
  data_dir, _ = built
  path, expected, num_predictions = predictions
  report = tmp_path / 'r.json'
  code, out, err = run(capsys, 'evaluate', '--tars', '0-3', '--data_dir',
                       data_dir, '--predictions', path, '--select', select,
                       '--json', report, '--no_progress')
  assert code == 0, err
  ious = np.array(expected[select])
  assert len(set(ious.round(6))) > 2  # Not a trivial case.
  r = json.loads(report.read_text())
  assert r['select'] == select and r['split'] == 'train'
  assert r['num_gt_masks'] == DUMMY_MASKS
  assert r['num_predictions'] == num_predictions
  assert r['num_matched_gt_masks'] == len(ious) == DUMMY_MASKS - len(
      DUMMY_IMAGES)
  assert r['gt_without_prediction'] == len(DUMMY_IMAGES)
  assert r['predictions_without_gt'] == 1
  assert r['mean_iou'] == pytest.approx(ious.mean(), abs=1e-7)
  assert r['iou_ge_0.5'] == pytest.approx((ious >= 0.5).mean())
  assert r['iou_ge_0.75'] == pytest.approx((ious >= 0.75).mean())
  assert f'mean IoU {r["mean_iou"]:.4f}'.replace('mean IoU', '') in out
  assert 'gt masks without a prediction' in out
  assert f'predictions:  {path} (select {select})' in out


def test_evaluate_a_slice(built, predictions, capsys):
  import tensorflow_datasets as tfds
  data_dir, _ = built
  path, _, _ = predictions
  code, out, err = run(capsys, 'evaluate', '--tars', '0-3', '--data_dir',
                       data_dir, '--predictions', path, '--split',
                       'train[:2]', '--no_progress')
  assert code == 0, err
  ds = tfds.load('segment_anything/tars_0-3', split='train[:2]',
                 data_dir=data_dir, shuffle_files=False)
  ids = [int(ex['image']['image_id']) for ex in tfds.as_numpy(ds)]
  masks = sum(DUMMY_IMAGES[i][2] for i in ids)
  table = dict(line.rsplit(None, 1) for line in out.splitlines()[3:])
  assert table['gt masks'] == str(masks)
  assert table['gt masks with a prediction'] == str(masks - 2)


@pytest.mark.parametrize('content, message', [
    (None, 'p.json: no such file'),
    ('FIFO', 'p.json: not a regular file (a FIFO, device or socket)'),
    ('[{"image_id": 1', 'is not JSON'),
    ('{"a": 1}', 'must be a list'),
    ('[{"image_id": 1, "id": 1000}]', 'prediction 0 is not'),
    ('[{"segmentation": {"size": [3, 3], "counts": "9"}, "image_id": 1,'
     ' "id": 1000}]', 'has size [3, 3], its ground truth [24, 32]'),
    # RLE strings TensorFlow's decoder refuses: checked before scoring.
    *[(json.dumps([{'segmentation': {'size': [24, 32], 'counts': 'Ph0'},
                    'image_id': 1, 'id': 1000},
                   {'segmentation': {'size': [24, 32], 'counts': counts},
                    'image_id': 2, 'id': 7}]),
       'p.json: prediction 1 (image_id 2, id 7): segmentation.counts '
       + problem) for counts, problem in (
           ('zz~', "has the character 'z' outside"),
           ('0P', 'ends inside a count'),
           ('01', 'has runs summing to 1, not h*w = 24*32 = 768'),
           ('0@', 'decodes to a negative run length'))],
    ('[{"segmentation": {"size": [-1, 3], "counts": "0"}, "image_id": 1,'
     ' "id": 5}]', 'prediction 0 (image_id 1, id 5): segmentation.size'
     ' [-1, 3] is not two int64 sides >= 0'),
    # Wrong types, named, not coerced (21.7 was truncated to 21, matched).
    ('[{"segmentation": {"size": ["36", 18.9], "counts": "T21Sb0"},'
     ' "image_id": 21.7, "id": "21000", "score": "nan"}]',
     'p.json: prediction 0: image_id must be an integer, got 21.7'),
    ('[{"segmentation": {"size": [36, 18], "counts": "T21Sb0"},'
     ' "image_id": 21, "id": "21000"}]',
     'p.json: prediction 0: id must be an integer, got \'21000\''),
    ('[{"segmentation": {"size": ["36", 18.9], "counts": "T21Sb0"},'
     ' "image_id": 21, "id": 21000}]', 'p.json: prediction 0:'
     " segmentation.size must be [h, w], two integers, got ['36', 18.9]"),
    ('[{"segmentation": {"size": [36, 18], "counts": "T21Sb0"},'
     ' "image_id": 21, "id": 21000, "score": "nan"}]',
     'p.json: prediction 0: score must be a finite number, got \'nan\''),
])
def test_evaluate_bad_predictions_exit_1(built, content, message, tmp_path,
                                         capsys):
  data_dir, _ = built
  path = tmp_path / 'p.json'
  if content == 'FIFO':  # No writer: reading it would wait for ever.
    os.mkfifo(path)
  elif content is not None:
    path.write_text(content)
  code, _, err = run(capsys, 'evaluate', '--tars', '0-3', '--data_dir',
                     data_dir, '--predictions', path, '--no_progress')
  assert code == 1
  [line] = err.strip().splitlines()
  assert line.startswith('segment-anything-tfds evaluate: error:')
  assert message in line


def test_evaluate_json_into_a_new_dir_or_a_bad_one(built, predictions,
                                                   tmp_path, capsys):
  data_dir, _ = built
  path, _, _ = predictions
  argv = ('evaluate', '--tars', '0-3', '--data_dir', data_dir,
          '--predictions', path, '--no_progress', '--json')
  # A dir that does not exist yet is created.
  report = tmp_path / 'new' / 'dir' / 'r.json'
  code, out, err = run(capsys, *argv, report)
  assert code == 0, err
  assert json.loads(report.read_text())['num_gt_masks'] == DUMMY_MASKS
  assert f'wrote {report}' in out
  # One that cannot be made, or a dir given as the file: one line, before
  # any scoring (nothing on stdout).
  (tmp_path / 'file').write_text('x')
  for target, message in (
      (tmp_path / 'file' / 'r.json',
       f'cannot write the result (--json) there ({tmp_path / "file"} is not'
       ' a directory)'),
      (tmp_path / 'new', 'cannot write the result (--json) there (it is a'
       ' directory)')):
    code, out, err = run(capsys, *argv, target)
    assert code == 1 and not out
    [line] = err.strip().splitlines()
    assert line.startswith('segment-anything-tfds evaluate: error: ')
    assert message in line and str(target) in line


def test_evaluate_usage_errors_exit_2(capsys):
  for argv in (['--tars', '0'], ['--tars', '0', '--predictions', 'p',
                                 '--select', 'first']):
    code, _, err = run(capsys, 'evaluate', *argv)
    assert code == 2 and 'usage:' in err


def test_show_predictions_tiles_and_scores(built, predictions, tmp_path,
                                           capsys):
  data_dir, _ = built
  path, expected, _ = predictions
  code, out, err = run(capsys, 'show', '--tars', '0-3', '--data_dir',
                       data_dir, '--image_id', '13', '--predictions', path,
                       '--min_size', '0', '--out', tmp_path, '--no_progress')
  assert code == 0, err
  assert (tmp_path / 'sa_13_eval_min0.png').exists()
  # Image 13's masks come after images 1, 2, 3, 11, 12 in `expected`.
  start = sum(DUMMY_IMAGES[i][2] - 1 for i in (1, 2, 3, 11, 12))
  ious = expected['best_iou'][start:start + 5]
  assert f'5 masks with a prediction, mean IoU {np.mean(ious):.4f}' in out
  from segment_anything_tfds.train import evaluation
  from segment_anything_tfds.tools import viz
  ex = _dataset_example(data_dir, 13)
  by_image = [(p[1], p[2], p[3], p[4]) for p in
              evaluation.parse_predictions(str(path)) if p[0] == 13]
  scored = viz.evaluation_ious(ex, by_image)
  assert [s[0] for s in scored] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([s[1] for s in scored], ious, atol=1e-7)
  for _, _, pred, gt in scored:
    assert pred.shape == gt.shape == (30, 40)


# ------------------------------------------------------- optional modules


@pytest.mark.parametrize('command, module, package', [
    ('stats', 'matplotlib', 'matplotlib'), ('show', 'PIL', 'Pillow')])
def test_missing_optional_module_is_one_line_before_any_work(
    command, module, package, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, module, None)  # `import` now fails.
  # An unprepared data dir: the check comes before reading anything.
  argv = [command, '--config', 'first_1', '--data_dir', tmp_path / 'none',
          '--out', tmp_path / 'out']
  if command == 'show':
    argv += ['--index', '0']
  code, _, err = run(capsys, *argv)
  assert code == 1
  [line] = err.strip().splitlines()
  assert line == (f'segment-anything-tfds {command}: error: {command} needs'
                  f' {package}, which is not installed: pip install'
                  ' "segment_anything_tfds[viz]"')
  assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------ check-links


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    pass


@pytest.fixture
def http_dir(tmp_path):
  """A local HTTP server over a folder; yields (folder, base URL)."""
  root = tmp_path / 'www'
  root.mkdir()
  handler = functools.partial(_QuietHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield root, f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()


def _oe(delta: datetime.timedelta) -> str:
  now = datetime.datetime.now(tz=datetime.timezone.utc)
  return format(int((now + delta).timestamp()), 'x')


@pytest.mark.integration
def test_check_links_probe(http_dir, tmp_path, capsys):
  root, base = http_dir
  (root / 'sa_000000.tar').write_bytes(b'a' * 1000)
  (root / 'sa_000001.tar').write_bytes(b'b' * 2500)
  (root / 'sa_images_ids.txt').write_bytes(b'c' * 10)
  day = datetime.timedelta(days=1)
  future, past = _oe(7 * day), _oe(-day)
  rows = [
      ('sa_images_ids.txt', f'{base}/sa_images_ids.txt?oe={future}'),
      ('sa_000000.tar', f'{base}/sa_000000.tar?ccb=1&oe={future}&x=1'),
      ('sa_000001.tar', f'{base}/sa_000001.tar?oe={past}'),
      ('sa_000002.tar', f'{base}/sa_000002.tar?oe={future}'),  # 404.
      ('sa_000000.tar', f'{base}/sa_000000.tar?ccb=1&oe={future}&x=1'),
  ]
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'segment_anything_links.txt').write_text(
      'file_name\tcdn_link\n' + ''.join(f'{n}\t{u}\n' for n, u in rows))
  shutil.copy(DUMMY / 'sa_000000.tar', manual / 'sa_000000.tar')
  shutil.copytree(DUMMY / 'sa_000003', manual / 'sa_000003')
  report_path = tmp_path / 'report.json'
  code, out, err = run(capsys, 'check-links', '--manual_dir', manual,
                       '--probe', '--json', report_path, '--no_progress')
  assert code == 0, err
  r = json.loads(report_path.read_text())
  assert r['rows'] == 5
  assert r['sa1b_tar_rows'] == 4 and r['sa1b_tars'] == 3
  assert r['other_rows'] == ['sa_images_ids.txt']
  assert r['duplicates'] == {'sa_000000.tar': [3, 6]}
  assert not r['builder_accepts_file']
  assert 'listed twice' in r['builder_error']
  assert r['expired'] == 1
  assert r['earliest_expiry'] == datetime.datetime.fromtimestamp(
      int(past, 16), tz=datetime.timezone.utc).isoformat()
  assert r['latest_expiry'] == datetime.datetime.fromtimestamp(
      int(future, 16), tz=datetime.timezone.utc).isoformat()
  assert r['local_listed'] == ['sa_000000.tar']
  assert r['local_not_listed'] == ['sa_000003.tar']
  assert r['to_download'] == 2
  by_line = {e['line']: e for e in r['links']}
  assert by_line[3]['size_bytes'] == 1000 and by_line[3]['local'] == 'tar'
  assert by_line[4]['size_bytes'] == 2500 and by_line[4]['expired']
  assert by_line[5]['size_bytes'] is None and by_line[5]['probe'] == 'HTTP 404'
  assert r['probe'] == {'ok': 4, 'failed': 1,
                        'sa1b_total_bytes': 1000 + 2500 + 1000,
                        'to_download_bytes': 2500}
  assert 'expired:      1 of 5' in out
  assert 'DUPLICATE' in out and 'EXPIRED' in out
  # --strict turns the problems into exit code 1, on one line.
  code, _, err = run(capsys, 'check-links', '--manual_dir', manual,
                     '--strict', '--summary_only', '--no_progress')
  assert code == 1
  last = err.strip().splitlines()[-1]
  assert '1 duplicated names' in last and '1 expired links' in last


def test_check_links_dummy_data(capsys):
  code, out, err = run(capsys, 'check-links', '--manual_dir', DUMMY,
                       '--summary_only')
  assert code == 0, err
  assert '4 SA-1B tar rows for 4 tars, 1 other rows' in out
  assert 'duplicates:   none' in out
  assert 'builder:      accepts the file' in out
  assert '4 listed tars are in' in out and '0 would be downloaded' in out
  # oe=67A1B2C3 is 2025-02-04 06:25:07 UTC.
  assert 'earliest 2025-02-04 06:25 UTC, latest 2025-02-04 06:25 UTC' in out


def test_check_links_not_a_links_file(tmp_path, capsys):
  bad = tmp_path / 'links.txt'
  bad.write_text('name,url\nsa_000000.tar,http://x\n')
  code, _, err = run(capsys, 'check-links', '--links', bad)
  assert code == 1
  assert 'not a links file' in err
  code, _, err = run(capsys, 'check-links', '--links', tmp_path / 'missing')
  assert code == 1
  assert 'does not exist' in err


def test_link_expiry():
  assert cli.check_links.link_expiry('https://x/a.tar?ccb=1&oe=67A1B2C3&y=2') == (
      datetime.datetime(2025, 2, 4, 6, 25, 7, tzinfo=datetime.timezone.utc))
  assert cli.check_links.link_expiry('https://x/a.tar?ccb=1') is None
  assert cli.check_links.link_expiry('https://x/a.tar?oe=zz') is None



def test_check_links_accepts_a_bom_like_the_builder(tmp_path, capsys):
  # Windows editors save UTF-8 with a BOM; the builder reads such a file.
  text = (DUMMY / 'segment_anything_links.txt').read_text(encoding='utf-8')
  links = tmp_path / 'segment_anything_links.txt'
  links.write_bytes(b'\xef\xbb\xbf' + text.encode('utf-8'))
  from segment_anything_tfds.sources import links as links_lib
  assert len(links_lib.read_links(links).shards) == 4
  code, out, err = run(capsys, 'check-links', '--links', links,
                       '--summary_only')
  assert code == 0, err
  assert 'builder:      accepts the file' in out
  assert '4 SA-1B tar rows for 4 tars, 1 other rows' in out


def test_check_links_reports_every_problem_with_the_builders_words(
    tmp_path, capsys):
  links = tmp_path / 'links.txt'
  links.write_text(
      'file_name\tcdn_link\n'
      'sa_000000.tar\thttps://x/a\textra\n'
      'sa_000001.tar\tftp://x/b\n'
      'sa_000002.tar\thttps://x/c\n'
      'sa_000002.tar\thttps://x/c2\n')
  report = tmp_path / 'r.json'
  code, out, err = run(capsys, 'check-links', '--links', links, '--json',
                       report, '--summary_only')
  assert code == 0, err
  r = json.loads(report.read_text())
  assert r['malformed_lines'] == [
      f'{links}:2: expected 2 tab-separated columns (file_name, cdn_link),'
      " got 3: 'sa_000000.tar\\thttps://x/a\\textra'",
      f'{links}:3: sa_000001.tar: unsupported URL scheme ftp:// in'
      " 'ftp://x/b'; links must be http://, https://, gs:// or local paths"]
  assert r['duplicates'] == {'sa_000002.tar': [4, 5]}
  assert r['builder_error'] == r['malformed_lines'][0]
  code, _, err = run(capsys, 'check-links', '--links', links, '--strict',
                     '--summary_only')
  assert code == 1
  assert '2 malformed lines, 1 duplicated names' in err


@pytest.mark.parametrize('argv, message', [
    (['--timeout', '-1'], 'timeout'),
    (['--timeout', '0'], 'timeout'),
    (['--timeout', 'nan'], 'timeout'),
    (['--timeout', 'soon'], 'expected a number'),
    (['--probe_workers', '0'], 'workers'),
    (['--probe_workers', '100000'], 'workers'),
])
def test_check_links_validates_timeout_and_workers(argv, message, capsys):
  code, _, err = run(capsys, 'check-links', '--manual_dir', DUMMY, '--probe',
                     *argv)
  assert code == 2, err
  assert 'usage:' in err and message in err.strip().splitlines()[-1]


def test_check_links_strict_ignores_expired_links_of_local_tars(
    tmp_path, capsys):
  # Every link of dummy_data expired in 2025, but its tars are all local:
  # nothing would be downloaded, so nothing is wrong.
  report = tmp_path / 'r.json'
  code, out, err = run(capsys, 'check-links', '--manual_dir', DUMMY,
                       '--strict', '--summary_only', '--json', report)
  assert code == 0, err
  r = json.loads(report.read_text())
  assert r['expired'] == 5 and r['expired_to_download'] == 0
  assert '0 would be downloaded' in out
  # Without the local tars the same links are a problem.
  code, _, err = run(capsys, 'check-links', '--links',
                     DUMMY / 'segment_anything_links.txt', '--strict',
                     '--summary_only')
  assert code == 1
  assert '4 expired links of tars to download' in err


@pytest.mark.integration
def test_check_links_probe_uses_the_package_client(tmp_path, capsys,
                                                    monkeypatch):
  # The probe honours http_proxy (`sa1b.example` does not resolve: only the
  # proxy answers), and refuses a redirect to another scheme.
  from _loopback_server import LoopbackServer
  with LoopbackServer({'sa_000000.tar': b'a' * 1234,
                       'sa_000001.tar': b'b'}) as proxy:
    proxy.redirects['sa_000001.tar'] = 'ftp://files.example/sa_000001.tar'
    monkeypatch.setenv('http_proxy', proxy.address)
    links = tmp_path / 'links.txt'
    links.write_text('file_name\tcdn_link\n'
                     'sa_000000.tar\thttp://sa1b.example/sa_000000.tar\n'
                     'sa_000001.tar\thttp://sa1b.example/sa_000001.tar\n')
    report = tmp_path / 'r.json'
    code, _, err = run(capsys, 'check-links', '--links', links, '--probe',
                       '--json', report, '--no_progress', '--timeout', '5')
    assert code == 0, err
    by_line = {e['line']: e for e in json.loads(report.read_text())['links']}
    assert by_line[2]['size_bytes'] == 1234
    assert by_line[2]['probe'] == 'HTTP 200'
    assert by_line[3]['size_bytes'] is None
    assert 'ftp://' in by_line[3]['probe']
    assert sorted((e[0], e[4]) for e in proxy.log) == [
        ('HEAD', 'http://sa1b.example/sa_000000.tar'),
        ('HEAD', 'http://sa1b.example/sa_000001.tar')]


def test_check_links_probe_of_a_closed_port_is_fast(tmp_path, capsys):
  from _loopback_server import closed_port
  port = closed_port()
  links = tmp_path / 'links.txt'
  links.write_text('file_name\tcdn_link\n'
                   f'sa_000000.tar\thttp://127.0.0.1:{port}/sa_000000.tar\n')
  report = tmp_path / 'r.json'
  started = time.monotonic()
  code, _, err = run(capsys, 'check-links', '--links', links, '--probe',
                     '--json', report, '--no_progress')
  assert time.monotonic() - started < 5
  assert code == 0, err
  [entry] = json.loads(report.read_text())['links']
  assert entry['size_bytes'] is None
  assert 'refused' in entry['probe'] and f'127.0.0.1:{port}' in entry['probe']


@pytest.mark.parametrize('argv, message', [
    (['--download_retries', '0'], 'retries=0: expected an integer from 1'),
    (['--download_retries', 'many'], 'expected an integer'),
    (['--download_timeout', '-1'], 'timeout=-1.0: expected a number from'),
    (['--download_timeout', 'inf'], 'timeout=inf'),
    (['--download_workers', '1000'], 'workers=1000: expected an integer'),
    (['--download_min_rate', '-5'], 'min_rate=-5.0: expected a number'),
    (['--download_min_rate', 'fast'], 'expected a number'),
])
def test_build_download_flags_are_validated(argv, message, tmp_path, capsys):
  code, _, err = run(capsys, 'build', '--tars', '0', '--manual_dir', DUMMY,
                     '--data_dir', tmp_path, *argv)
  assert code == 2, err
  last = err.strip().splitlines()[-1]
  assert 'usage:' in err and message in last, last
  assert not list(tmp_path.iterdir())  # Nothing was built.


def test_build_download_flags_map_to_download_options():
  from segment_anything_tfds import options as options_lib
  args = cli.build_parser().parse_args(
      ['build', '--tars', '0', '--download_retries', '3',
       '--download_timeout', '2.5', '--download_workers', '2',
       '--download_min_rate', '0', '--disk_mode', 'stream',
       '--checksums', 'sums.txt', '--no_progress'])
  mapped = cli.build._download_options(args)
  assert mapped == {'retries': 3, 'timeout': 2.5, 'workers': 2,
                    'min_rate': 0.0, 'disk_mode': 'stream',
                    'checksums': 'sums.txt', 'progress': False}
  opts = options_lib.DownloadOptions.make(mapped)
  assert (opts.retries, opts.timeout, opts.max_attempts, opts.min_rate) == (
      3, 2.5, 12, 0.0)
  # mirror takes the same flags (but no --download_workers).
  args = cli.build_parser().parse_args(
      ['mirror', '--links', 'l.txt', '--dest', '/tmp/d',
       '--download_retries', '2', '--download_min_rate', '5000'])
  opts = cli.mirror.download_options(args)
  assert (opts.retries, opts.min_rate) == (2, 5000.0)
  # Flags not given leave the defaults alone.
  args = cli.build_parser().parse_args(['build', '--tars', '0'])
  assert cli.build._download_options(args) == {}


def _doc_commands(prefix: str) -> list[list[str]]:
  """Commands in README.md and docs/ starting with `prefix`, continuations
  joined."""
  import re
  import shlex
  pages = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
  text = '\n'.join(p.read_text() for p in pages)
  text = text.replace('\\\n', ' ')
  out = []
  for line in text.splitlines():
    line = line.strip()
    if line.startswith(prefix):
      line = re.sub(r'<([A-Z_]+)>', lambda m: m.group(1).lower(), line)
      out.append(shlex.split(line, comments=True))
  return out


def test_documented_dataflow_commands_parse():
  commands = [c for c in _doc_commands('segment-anything-tfds build')
              if 'DataflowRunner' in c]
  assert len(commands) == 2  # The runbook's smoke test and full build.
  for command in commands:
    args, leftover = cli.build_parser().parse_known_args(command[1:])
    cfg = cli.build.download_config(args, leftover)
    assert cfg.beam_runner is None
    assert cfg.manual_dir == 'gs://bucket/sa1b'
    opts = cfg.beam_options.get_all_options(drop_default=True)
    assert opts['runner'] == 'DataflowRunner'
    assert opts['setup_file'] == './setup.py'
    assert opts['machine_type'] == 'n2-standard-4'
    assert opts['region'] == 'region' and opts['project'] == 'project'
    assert opts['temp_location'] == 'gs://bucket/tmp'
    assert opts['max_num_workers'] in (4, 100)


def test_every_documented_command_parses():
  """Each `segment-anything-tfds ...` line of the README and docs/ parses
  as the CLI parses it (Beam's own flags are left over for build and
  mirror alone); `[...]` marks an optional part, `...` more flags."""
  commands = [[a for a in c if a != '...'] for c in _doc_commands(
      'segment-anything-tfds ') if not c[1].endswith(':')]  # Not errors.
  assert len(commands) >= 40
  for command in commands:
    argv = [a.strip('[]') for a in command[1:]]
    args, leftover = cli.build_parser().parse_known_args(argv)
    # Only Beam's flags are left over, and only with a Beam runner.
    assert not leftover or (args.allow_leftover and '--runner' in argv), (
        command)


_NOISE = ('apitools', 'Variant folder', 'oneDNN', 'cudart', 'cuInit',
          'cpu_feature_guard', 'absl::InitializeLog', 'Converting string'
          ' literal', 'Unparseable argument', 'Downloading and preparing',
          'Subsequent calls will reuse', 'Traceback')


def _readme_command_1() -> str:
  """README command 1, from the README itself: the part after `pip install`."""
  import re  # pylint: disable=g-import-not-at-top
  text = (REPO / 'README.md').read_text()
  block = re.search(r'```bash\n(python3 -m venv .*?)\n```', text).group(1)
  return block.split('&&')[-1].strip()


def test_readme_command_1_is_quiet_and_fits_one_screen(tmp_path):
  command = _readme_command_1()
  assert command.startswith('segment-anything-tfds build --manual_dir'
                            ' dummy_data'), command
  command = command.replace('/tmp/sa1b_tfds', str(tmp_path / 'data'))
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
             + os.environ['PATH'])
  out = subprocess.run(command, shell=True, cwd=REPO, env=env, timeout=300,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  text = out.stdout + out.stderr
  # A progress bar redraws its line: each \r-separated redraw is one line.
  lines = [l for l in text.replace('\r', '\n').splitlines() if l.strip()]
  screen = [l for l in text.splitlines() if l.strip()]
  for noise in _NOISE:
    assert noise not in text, f'{noise!r} in:\n{text}'
  assert len(screen) <= 20, text
  assert any(l.startswith('images:    11') for l in lines), text
  # -v shows what quiet mode hides (here: the package's own INFO lines).
  out = subprocess.run(command.replace('build ', 'build -v --overwrite ', 1),
                       shell=True, cwd=REPO, env=env, timeout=300,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'segment-anything-tfds: info: Preparing' in out.stderr, out.stderr


@functools.lru_cache(maxsize=None)
def _tensorflow_load_notes() -> tuple[str, ...]:
  """What `import tensorflow` alone prints here, without its timestamps."""
  res = subprocess.run([sys.executable, '-c', 'import tensorflow'],
                       capture_output=True, text=True, timeout=300,
                       check=True)
  return tuple(sorted({l.split('] ', 1)[-1] for l in res.stderr.splitlines()
                       if l.strip()}))


def _quiet_commands(data_dir, predictions, out):
  common = ['--tars', '0-3', '--data_dir', data_dir, '--no_progress']
  return {
      'build': ['build', *common, '--manual_dir', DUMMY],
      'check-links': ['check-links', '--manual_dir', DUMMY],
      'index': ['index', '--manual_dir', DUMMY, '--out', out / 'i.jsonl',
                '--no_progress'],
      'stats': ['stats', *common, '--out', out / 'stats'],
      'show': ['show', *common, '--index', '0', '--out', out / 'show'],
      'export': ['export', *common, '--format', 'coco', '--out',
                 out / 'coco'],
      'evaluate': ['evaluate', *common, '--predictions', predictions],
  }


@pytest.mark.parametrize('command', ['build', 'index', 'check-links',
                                     'stats', 'show', 'export', 'evaluate'])
def test_every_command_is_quiet_unless_verbose(command, built, predictions,
                                               tmp_path):
  argv = _quiet_commands(built[0], predictions[0], tmp_path)[command]
  run_cli = lambda *extra: subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', argv[0], *extra,
       *map(str, argv[1:])], capture_output=True, text=True, timeout=300,
      cwd=REPO, env={k: v for k, v in os.environ.items()
                     if not k.startswith('TF_CPP_')})
  res = run_cli()
  assert res.returncode == 0, res.stderr[-2000:]
  text = res.stdout + res.stderr
  for noise in (*_NOISE, *_tensorflow_load_notes()):
    assert noise not in text, f'{noise!r} in:\n{text}'
  assert len([l for l in text.splitlines() if l.strip()]) <= 20, text
  if command == 'stats':
    # -v shows them all: TensorFlow's own start-up lines included.
    assert _tensorflow_load_notes()
    res = run_cli('-v')
    assert res.returncode == 0, res.stderr[-2000:]
    for note in _tensorflow_load_notes():
      assert note in res.stderr


def test_tensorflow_load_notes_dropped_other_lines_kept(capfd, monkeypatch):
  from segment_anything_tfds import logs  # pylint: disable=g-import-not-at-top
  lines = [b'WARNING: All log messages before absl::InitializeLog() is called'
           b' are written to STDERR\n',
           b'I0000 00:00:1796497641.376161   17041 port.cc:153] oneDNN on\n',
           b'E0000 00:00:1796497641.376763   17041 cuda.cc:52] cuInit\n',
           b'F0000 00:00:1796497641.376763   17041 x.cc:1] fatal\n',
           b'a line of its own\n']
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '3')
  with logs._load_notes_dropped():  # pylint: disable=protected-access
    os.write(2, b''.join(lines))
  assert capfd.readouterr().err.encode() == lines[3] + lines[4]
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '1')
  with logs._load_notes_dropped():  # pylint: disable=protected-access
    os.write(2, b''.join(lines))
  assert capfd.readouterr().err.encode() == b''.join(lines[2:])
  # A failed import: every line is passed on.
  with pytest.raises(ImportError):
    with logs._load_notes_dropped():  # pylint: disable=protected-access
      os.write(2, b''.join(lines))
      raise ImportError('no')
  assert capfd.readouterr().err.encode() == b''.join(lines)


def test_printable_escapes_what_a_terminal_would_obey():
  cases = {
      '\x1b[2J\x1b]0;owned\x07/sa_9.jpg': '\\x1b[2J\\x1b]0;owned\\x07/sa_9.jpg',
      'a\tb\nc\rd\x00\x7f': 'a\\x09b\\x0ac\\x0dd\\x00\\x7f',
      '\x9b31m': '\\x9b31m',  # C1: the one-byte CSI.
      'gpj.\u202eexe': 'gpj.\\u202eexe',  # Bidi override.
      '\u2066x\u2069\u200f': '\\u2066x\\u2069\\u200f',
      'a\u2028b\u00a0c': 'a\\u2028b\\xa0c',
      'sa_\udcff.jpg': 'sa_\\udcff.jpg',  # An undecodable byte.
      '\U000e0041': '\\U000e0041',  # A tag character.
      'sa_1.jpg café 日本 \\x1b': 'sa_1.jpg café 日本 \\x1b',  # As it is.
  }
  for raw, shown in cases.items():
    assert errors.printable(raw) == shown
    assert errors.printable(shown) == shown
    assert shown.isprintable()
  e = errors.BadInputError('bad_value', 't\x1b.tar', 'm\x07', 'd\x1b[31m')
  assert e.message == str(e) == 't\\x1b.tar:m\\x07: d\\x1b[31m [bad_value]'
  assert (e.tar, e.member, e.detail) == ('t\x1b.tar', 'm\x07', 'd\x1b[31m')
  assert errors.SourceError('x\x1by').message == 'x\\x1by'


_EVIL_DIRS = ('\x1b[2J\x1b]0;owned\x07/', 'x\u202egpj.\x9b/')


def test_hostile_member_names_are_escaped_in_errors_and_warnings(tmp_path):
  rng = np.random.default_rng(12)
  manual = tmp_path / 'manual'
  manual.mkdir()
  entries = list(zip(('sa_5.jpg', 'sa_5.json'), fake_data.image_record(
      rng, 5, height=10, width=8, num_masks=1)))
  for i, evil in enumerate(_EVIL_DIRS):
    jpg, _ = fake_data.image_record(rng, 8 + i, height=10, width=8,
                                    num_masks=1)
    entries += [(f'{evil}sa_{8 + i}.jpg', jpg),
                (f'{evil}sa_{8 + i}.json', b'{')]  # Malformed JSON.
  (manual / 'sa_000000.tar').write_bytes(tar_bytes(entries))
  raw = ('\x1b', '\x07', '\x9b', '\u202e')
  for mode in ('strict', 'lenient'):
    res = subprocess.run(
        [sys.executable, '-m', 'segment_anything_tfds', 'build', '--tars',
         '0', '--manual_dir', str(manual), '--data_dir', str(tmp_path / mode),
         '--no_progress', *(['--lenient'] if mode == 'lenient' else [])],
        capture_output=True, text=True, timeout=300, errors='surrogateescape')
    assert res.returncode == (1 if mode == 'strict' else 0), res.stderr
    assert 'Traceback' not in res.stderr
    for char in raw:
      assert char not in res.stdout + res.stderr, (mode, res.stderr)
    shown = [errors.printable(evil) for evil in _EVIL_DIRS]
    assert shown[0] == '\\x1b[2J\\x1b]0;owned\\x07/'
    if mode == 'strict':
      [line] = [l for l in res.stderr.splitlines() if 'error' in l]
      assert line.startswith('segment-anything-tfds build: error:'
                             f' sa_000000.tar:{shown[0]}sa_8.json: malformed'
                             ' JSON'), line
    else:
      for i, name in enumerate(shown):
        assert (f'warning: Skipping image sa_000000.tar:{name}sa_{8 + i}.json:'
                ' malformed JSON') in res.stderr
  # The audit keeps the raw names (JSON escapes them).
  records = [json.loads(l)
             for p in (tmp_path / 'lenient').rglob('audit/*.jsonl')
             for l in p.read_text().splitlines()]
  assert sorted(r['member'] for r in records if r['kind'] == 'skip') == [
      f'{evil}sa_{8 + i}.json' for i, evil in enumerate(_EVIL_DIRS)]


def test_a_hostile_checksum_list_name_is_escaped_in_its_warning(tmp_path):
  """The sources' warnings go through the package's logger: shown as the
  CLI's warnings, escaped (they went to the root logger, raw)."""
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in ('sa_000000.tar', 'sa_000001.tar'):
    shutil.copy(DUMMY / name, manual / name)
  listed = tmp_path / 'sums\x1b[2J.txt'
  listed.write_text(
      f'{hashlib.md5((DUMMY / "sa_000000.tar").read_bytes()).hexdigest()}'
      '  sa_000000.tar\n')
  res = subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', 'build', '--tars',
       '0-1', '--manual_dir', str(manual), '--data_dir', str(tmp_path / 'd'),
       '--checksums', str(listed), '--no_progress'],
      capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert '\x1b' not in res.stderr
  [line] = [l for l in res.stderr.splitlines() if 'lists no checksum' in l]
  assert line == (f'segment-anything-tfds: warning: {tmp_path}/sums\\x1b[2J.txt'
                  ' lists no checksum for 1 tars, not verified: sa_000001.tar')


def test_the_package_logs_through_its_own_loggers():
  """Never `logging.warning(...)`: the root logger's records get neither
  the CLI's format nor its escaping."""
  import ast  # pylint: disable=g-import-not-at-top
  import segment_anything_tfds  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(segment_anything_tfds.__file__).parent
  calls = []
  for path in sorted(root.rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and isinstance(node.func.value, ast.Name)
          and node.func.value.id == 'logging' and node.func.attr in (
              'debug', 'info', 'warning', 'error', 'exception', 'critical',
              'log')):
        calls.append(f'{path.relative_to(root)}:{node.lineno}')
  assert calls == []


def test_beam_build_does_not_parse_the_callers_argv(tmp_path, monkeypatch,
                                                    caplog):
  """beam_options=None must not let Beam parse the caller's sys.argv."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from segment_anything_tfds.prepare import runners  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sys, 'argv', ['train.py', '--lr=0.1', 'positional'])
  builder = tfds.builder('segment_anything', config='first_1',
                         data_dir=tmp_path)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=DUMMY, beam_runner=runners.local_runner()))
  assert builder.info.splits['train'].num_examples > 0
  assert not [r for r in caplog.records
              if 'Unparseable' in r.getMessage()
              or 'Converting string literal' in r.getMessage()]


def _cli_reference_hook():
  """docs/hooks/cli_reference.py: the mkdocs hook that writes the CLI page."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'cli_reference', REPO / 'docs' / 'hooks' / 'cli_reference.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cli_reference_lists_every_flag_of_every_command():
  """The generated CLI page: every flag of every command, with its help."""
  import argparse  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  hook = _cli_reference_hook()
  assert 'docs/hooks/cli_reference.py' in (REPO / 'mkdocs.yml').read_text()
  text = (REPO / 'docs' / hook.PAGE).read_text()
  page = hook.reference_page(text)
  parser = cli.build_parser()
  sub = next(a for a in parser._actions  # pylint: disable=protected-access
             if isinstance(a, argparse._SubParsersAction))  # pylint: disable=protected-access
  assert set(sub.choices) == {m.add_parser.__module__.rsplit('.', 1)[-1]
                              .replace('_', '-') for m in cli.COMMANDS}
  sections = {'': page[:page.index('\n## ')]}
  for name in sub.choices:
    m = re.search(rf'^## {re.escape(name)}\n(.*?)(?=^## |\Z)', page,
                  re.S | re.M)
    assert m, f'no "## {name}" section on the CLI page'
    sections[name] = m.group(1)
  for name, command in [('', parser), *sub.choices.items()]:
    section = sections[name]
    assert f'usage: {command.prog} ' in section, name
    for action in command._actions:  # pylint: disable=protected-access
      if isinstance(action, argparse._HelpAction):  # pylint: disable=protected-access
        continue
      for flag in action.option_strings:
        # In the first cell of a table row: `-v`, `--verbose` or `--x N`.
        assert re.search(rf'^\| [^|\n]*`{re.escape(flag)}[ `]', section,
                         re.M), (
            f'{name} {flag} is in --help but not on the CLI page')
      if action.help and action.option_strings:
        assert hook._inline(action.help) in section, (  # pylint: disable=protected-access
            f'{name} {action.option_strings}: help text not on the page')
  # A command left without its marker fails the docs build.
  with pytest.raises(ValueError, match=r"without a marker \['export'\]"):
    hook.reference_page(text.replace('<!-- cli: export -->', ''))


def test_links_row_pointing_at_a_directory_is_one_line(tmp_path, capsys):
  manual = tmp_path / 'manual'
  manual.mkdir()
  folder = tmp_path / 'not_a_tar'
  folder.mkdir()
  (manual / 'segment_anything_links.txt').write_text(
      f'file_name\tcdn_link\nsa_000005.tar\t{folder}\n')
  code, out, err = run(capsys, 'build', '--tars', '5', '--manual_dir', manual,
                       '--data_dir', tmp_path / 'data', '--no_progress')
  assert code == 1, err
  lines = [l for l in err.splitlines() if l.strip()]
  assert 'Traceback' not in err
  assert lines[-1].startswith('segment-anything-tfds build: error: ')
  assert 'sa_000005.tar' in lines[-1]
