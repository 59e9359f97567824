"""Subsets by image list (issue 21, part 3): lists, configs, builds on both
engines, missing images, and the `index` command."""

from __future__ import annotations

import hashlib
import json
import random
import logging
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

import segment_anything_tfds
from segment_anything_tfds import cli
from segment_anything_tfds import config as config_lib
from segment_anything_tfds import errors
from segment_anything_tfds.prepare import image_index
from segment_anything_tfds.prepare import image_list
from segment_anything_tfds.prepare import local
from segment_anything_tfds.prepare import plan
from segment_anything_tfds.prepare import rules
from segment_anything_tfds.prepare import runners
from segment_anything_tfds.prepare import tars
from segment_anything_tfds.sources import base
from segment_anything_tfds.sources import links as links_lib
from segment_anything_tfds.sources import manual_dir as shards_lib
from segment_anything_tfds.tools import fake_data

from conftest import DUMMY_DATA, build, make_bad_manual_dir, read_inputs
from _loopback_server import LoopbackServer
from _loopback_server import within

INPUTS = read_inputs(DUMMY_DATA)  # Ids 1-3, 11-13, 21-23 (tars), 31-32.
LISTED = [2, 12, 13, 23, 31]  # In every tar and the folder.


def _canonical_sha(ids) -> str:
  """The documented hash, computed here independently."""
  text = ''.join(f'{i}\n' for i in sorted(set(ids)))
  return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------- the list


def _forms(tmp_path):
  ids = LISTED
  names = [f'sa_{i}.jpg' for i in ids]
  files = {
      'ids.txt': '\n'.join(map(str, ids)) + '\n',
      'names.txt': '\n'.join(names),
      'mixed.txt': '\ufeff  12\r\nsa_2.jpg\r\n\r\n23\nsa_13.jpg\n31\n12\n',
      'ids.json': json.dumps(ids),
      'names.json': json.dumps(names[::-1]),
      'strings.json': json.dumps([str(i) for i in ids]),
      'masa.json': json.dumps({'images': [
          {'id': i, 'width': 1500, 'height': 2250, 'file_name': n}
          for i, n in zip(ids, names)]}),
      'coco_names.json': json.dumps({'images': [{'file_name': n}
                                                for n in names]}),
  }
  paths = []
  for name, text in files.items():
    (tmp_path / name).write_text(text, encoding='utf-8')
    paths.append(tmp_path / name)
  return [*paths, ids, names, np.array(ids[::-1]), [2, 'sa_12.jpg', '13',
                                                    23, 'sa_31.jpg']]


def test_every_accepted_form_gives_one_canonical_list(tmp_path):
  made = [image_list.make(form) for form in _forms(tmp_path)]
  for listed in made:
    assert listed.ids.tolist() == sorted(LISTED), listed
    assert listed.sha256 == _canonical_sha(LISTED)
    assert listed.short == listed.sha256[:12]
  assert [2 in made[0], 3 in made[0], 31 in made[0]] == [True, False, True]
  assert made[0].isin(np.array([1, 2, 31, 99])).tolist() == [
      False, True, True, False]


@pytest.mark.parametrize('name, content, message', [
    ('l.txt', '1\n2\nsa_01.jpg\n', "l.txt:3: 'sa_01.jpg': expected an image"),
    ('l.txt', '1\n\n012\n', "l.txt:3: '012': expected"),
    ('l.txt', '1\nsa_2.json\n', "l.txt:2: 'sa_2.json'"),
    ('l.txt', 'sa_1.jpg sa_2.jpg\n', 'l.txt:1:'),
    ('l.txt', '-3\n', "l.txt:1: '-3'"),
    ('l.txt', '١٢\n', 'l.txt:1:'),  # Not ASCII digits.
    ('l.txt', '1\n99999999999999999999\n', 'l.txt:2:'),
    ('l.txt', '\n \n', 'l.txt: no image ids'),
    ('l.json', '[1, 2, "x"]', "l.json: entry 3: 'x'"),
    ('l.json', '[1, true]', 'l.json: entry 2: True'),
    ('l.json', '[1, 2.5]', 'l.json: entry 2: 2.5'),
    ('l.json', '[]', 'l.json: no image ids'),
    ('l.json', '[1,\n2,\n', 'l.json:3: not valid JSON'),
    ('l.json', '{"files": [1]}', 'l.json: expected a JSON list'),
    ('l.json', '{"images": [{"file_name": "sa_1.jpg"}, {"w": 3}]}',
     'l.json: "images" entry 2:'),
    ('l.json', '{"images": [{"id": 5, "file_name": "sa_6.jpg"}]}',
     '"file_name" \'sa_6.jpg\' and "id" 5 name different images'),
])
def test_bad_lists_are_one_line_errors_naming_file_and_line(
    tmp_path, name, content, message):
  path = tmp_path / name
  path.write_text(content, encoding='utf-8')
  with pytest.raises(errors.ConfigError) as e:
    image_list.make(path)
  text = str(e.value)
  assert '\n' not in text
  assert text.startswith(str(path))
  assert message in text, text


def test_unreadable_lists(tmp_path):
  (tmp_path / 'bin.txt').write_bytes(b'1\n2\n\xff\xfe\n')
  with pytest.raises(errors.ConfigError, match=r'bin.txt:3: not UTF-8'):
    image_list.make(tmp_path / 'bin.txt')
  with pytest.raises(errors.SourceError, match='no such file'):
    image_list.make(tmp_path / 'absent.txt')
  for bad in (b'1\n', {'images': []}, 7, None):
    with pytest.raises(errors.ConfigError, match='expected a path'):
      image_list.make(bad)


def test_a_list_line_ends_at_a_newline_only(tmp_path):
  # \v, \f, \x1c-\x1e, \x85, U+2028/9 are in a line, not between lines.
  path = tmp_path / 'l.txt'
  for data, where, shown in [
      (b'1\x0b2\n', 'l.txt:1:', r"'1\x0b2'"),
      (b'1\x0b2\x1c3\nsa_01.jpg\n', 'l.txt:1:', r"'1\x0b2\x1c3'"),
      (b'1\n2\x0c\n', 'l.txt:2:', r"'2\x0c'"),
      (b'1\n\x1c\n', 'l.txt:2:', r"'\x1c'"),
      ('7\n8\u20289\n'.encode(), 'l.txt:2:', r"'8\u20289'"),
      ('7\n8\x85\n'.encode(), 'l.txt:2:', r"'8\x85'"),
      ('7\n\xa012\n'.encode(), 'l.txt:2:', r"'\xa012'"),
      (b'1\r2\r3\r', 'l.txt:1:', r"'1\r2\r3'"),  # Old Mac lines: one line.
      (b'1\x0b\n2\x0b\n3\n\nsa_01.jpg\n', 'l.txt:1:', r"'1\x0b'"),
      (b'5\n6\n\n8\n9\x1d\nsa_01.jpg\n', 'l.txt:5:', r"'9\x1d'"),
  ]:
    path.write_bytes(data)
    with pytest.raises(errors.ConfigError) as e:
      image_list.make(path)
    assert str(e.value).startswith(f'{tmp_path}/{where} {shown}:'), (data, e)
  # Spaces, tabs and a carriage return around an id are not part of it; the
  # documented recipe then gives the list's hash.
  path.write_bytes(b'12\r\n \t3 \r\n\r\n\t\nsa_7.jpg\n3\n')
  assert image_list.make(path).ids.tolist() == [3, 7, 12]
  path.write_bytes(b'12\n3\n7\n3\n')
  recipe = subprocess.run(f'sort -n -u {path} | sha256sum', shell=True,
                          capture_output=True, text=True, check=True)
  assert recipe.stdout.split()[0] == image_list.make(path).sha256


def _lines_as_documented(data: bytes, origin: str) -> list[int]:
  """The text list rule written plainly: split at b'\n', strip spaces, tabs
  and carriage returns, each line an id (or refused by `parse_item`)."""
  data = data.removeprefix(b'\xef\xbb\xbf')
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b'\n') + 1
    raise errors.ConfigError(f'{origin}:{line}: not UTF-8 text') from None
  ids = []
  for number, line in enumerate(text.split('\n'), 1):
    if line := line.strip(' \t\r'):
      ids.append(image_list.parse_item(line, f'{origin}:{number}'))
  return ids


def test_text_lists_read_from_the_bytes_as_the_rule_says(monkeypatch):
  # The bytes parser (chunks, a fast path for ids and names) accepts and
  # refuses exactly what the plain rule does, with the same message.
  monkeypatch.setattr(image_list, '_CHUNK', 7)  # Many chunks, lines across.
  pieces = ['1', '0', '00', '01', '10', '9' * 19, '9' * 20,
            str((1 << 63) - 1), str(1 << 63), 'sa_', '.jpg', 'sa_5.jpg',
            'sa_05.jpg', 'sa_5.JPG', '5.jpg', ' ', '\t', '\r', '\n', '\n',
            '\n', '\x0b', '\x0c', '\x1c', '\x85', '\xa0', '\u2028', '١',
            '+1', '-1', '1_0', '1 2', 'x', '[', ',', '\ufeff']
  rng = np.random.default_rng(7)
  outcomes = set()
  for trial in range(3000):
    text = ''.join(rng.choice(pieces, rng.integers(0, 12)))
    data = text.encode()
    if trial % 10 == 0:  # Some bytes that are not UTF-8.
      data = data[:len(data) // 2] + b'\xc3' + data[len(data) // 2:]
    if data.removeprefix(b'\xef\xbb\xbf').lstrip(b' \t\r\n')[:1] in (
        b'[', b'{'):
      continue  # JSON.
    try:
      want = sorted(set(_lines_as_documented(data, 'f')))
    except errors.ConfigError as e:
      want = str(e)
    try:
      got = sorted(set(image_list.parse_text(data, 'f').tolist()))
    except errors.ConfigError as e:
      got = str(e)
    assert got == want, data
    outcomes.add(type(want))
  assert outcomes == {list, str}


def _peak_rss_mb(tmp_path, code):
  """The growth of a fresh interpreter's peak RSS (MB) while `code` runs."""
  script = tmp_path / 'peak.py'
  script.write_text(
      'def hwm():\n'
      '  return int(next(l for l in open("/proc/self/status")\n'
      '                  if l.startswith("VmHWM")).split()[1]) / 1024\n'
      'from segment_anything_tfds import errors\n'
      'from segment_anything_tfds.prepare import image_list\n'
      'from segment_anything_tfds.sources import paths\n'
      'import etils.epath\n'
      'before = hwm()\n' + code + '\nprint(hwm() - before)\n')
  res = subprocess.run([sys.executable, str(script)], capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  return float(res.stdout.split()[-1])


def test_a_list_costs_a_small_multiple_of_its_size(tmp_path):
  # 1 M distinct names (15 MB): held once, plus 8 bytes per id (it was 14
  # times the list's size); a file over the cap is refused without a read.
  names = tmp_path / 'names.txt'
  names.write_bytes(b''.join(b'sa_%d.jpg\n' % (i * 11 + 1_000_000)
                             for i in range(1 << 20)))
  size_mb = names.stat().st_size / 1e6
  grew = _peak_rss_mb(tmp_path, f'assert len(image_list.make("{names}"))'
                      ' == 1 << 20')
  assert grew < 3.5 * size_mb, (grew, size_mb)
  assert image_list.MAX_LIST_BYTES == 256 << 20
  big = tmp_path / 'big.txt'
  with big.open('wb') as f:  # Sparse: no disk, 257 MiB of zero bytes.
    f.truncate(image_list.MAX_LIST_BYTES + 1)
  grew = _peak_rss_mb(
      tmp_path, 'try:\n'
      f'  image_list.make("{big}")\n'
      'except errors.ConfigError as e:\n'
      '  assert "over 256 MiB: not an image list" in str(e), e\n')
  assert grew < 20, grew


@pytest.mark.parametrize('form', ['names', 'masa', 'masa_object'])
def test_a_json_list_costs_its_text_not_its_objects(tmp_path, form):
  # 500 k entries, a batch at a time: the bytes and the text (twice the
  # size), 8 bytes per id, and one batch's objects (a few MB). json.loads
  # of the whole took 6 times the size.
  ids = [i * 13 + 1_000_000 for i in range(500_000)]
  if form == 'names':
    value = [f'sa_{i}.jpg' for i in ids]
  else:  # MASA's shape, with annotations to skip (a list, or an object).
    annotations = [{'id': k, 'image_id': i, 'bbox': [1, 2, 3, 4]}
                   for k, i in enumerate(ids[:100_000])]
    value = {'info': {'description': 'SA-1B-500K'},
             'images': [{'id': i, 'file_name': f'sa_{i}.jpg', 'width': 1500,
                         'height': 2250} for i in ids],
             'annotations': annotations if form == 'masa' else {
                 str(a['id']): a for a in annotations}}
  listed = tmp_path / 'list.json'
  listed.write_text(json.dumps(value))
  del value
  size_mb = listed.stat().st_size / 1e6
  grew = _peak_rss_mb(tmp_path, f'assert len(image_list.make("{listed}"))'
                      ' == 500_000')
  assert grew < 2 * size_mb + 8 * len(ids) / 1e6 + 16, (grew, size_mb)


@pytest.mark.parametrize('text', [
    ' \n[1 , "sa_2.jpg",\t"3"]\n ',
    '{"images": [{"id": 7}], "annotations": [{"bbox": [1, [2, {"a": []}]]}]}',
    '{"images": [{"id": 7}], "images": [{"id": 8}, {"file_name": "sa_9.jpg"}]}',
    '{"info": {"images": [1]}, "images": [{"id": 4}]}',
    '["sa_\\u0031.jpg", 22]',
    '{"a": "]}\\",", "images": [{"id": 3, "x": "[,]"}]}',
])
def test_json_lists_read_as_json_loads_reads_them(tmp_path, text):
  """Entries one at a time, the same ids as the whole document: blanks,
  nested values skipped, the last of two "images" keys, escapes."""
  listed = tmp_path / 'l.json'
  listed.write_text(text)
  value = json.loads(text)
  if isinstance(value, dict):
    want = [e.get('id') or int(e['file_name'][3:-4])
            for e in value['images']]
  else:
    want = [int(str(v).removeprefix('sa_').removesuffix('.jpg'))
            for v in value]
  assert image_list.make(listed).ids.tolist() == sorted(set(want))


def test_the_last_images_key_counts_as_json_loads_keeps_it(tmp_path):
  listed = tmp_path / 'l.json'
  listed.write_text('{"images": [{"id": "x"}], "images": [{"id": 2}]}')
  assert image_list.make(listed).ids.tolist() == [2]  # "x" is overridden.
  listed.write_text('{"images": [{"id": 1}], "images": null}')
  with pytest.raises(errors.ConfigError, match='expected a JSON list'):
    image_list.make(listed)
  # An entry that is no image is reported after the text is known to be
  # JSON, as json.loads would see the syntax first.
  listed.write_text('[1, "x", 3] ]')
  with pytest.raises(errors.ConfigError, match='Extra data'):
    image_list.make(listed)


def test_an_int_too_long_for_python_is_a_one_line_error(tmp_path):
  listed = tmp_path / 'l.json'
  for text in ('[1,\n' + '7' * 5000 + ']',
               '{"info": {"n": ' + '7' * 5000 + '}, "images": [{"id": 1}]}'):
    listed.write_text(text)
    with pytest.raises(errors.ConfigError) as e:
      image_list.make(listed)
    assert 'not valid JSON (ValueError: Exceeds the limit' in str(e.value)
    assert '\n' not in str(e.value)
  with pytest.raises(errors.ConfigError) as e:
    image_list.make([10**5000])
  assert str(e.value).startswith('the list given: entry 1: an int too long')


def _a_json_list(rng) -> str:
  """A JSON list with what trips a reader that cuts text: commas and
  brackets inside strings, nested values, escapes, odd blanks."""
  coco = rng.random() < 0.5
  entries = []
  for _ in range(rng.randrange(1, 40)):
    i = rng.randrange(1, 10**6)
    entries.append(rng.choice([
        f'{{"id": {i}, "note": "a,b]}},[", "bbox": [1, [2, 3], {{"x": ","}}]}}',
        f'{{"file_name": "sa_\\u0031{i}.jpg", "crop": {{"a": [",", "]"]}}}}',
    ] if coco else [str(i), f'"sa_{i}.jpg"', f'"{i}"', f'"sa_\\u0031{i}.jpg"']))
  blanks = [' ', '\n', '\t', '\r\n', '']
  text = '[' + ','.join(rng.choice(blanks) + e + rng.choice(blanks)
                        for e in entries) + ']'
  if coco:
    text = '{"annotations": [{"k": "],"}, [1, 2]], "images": ' + text + '}'
  if rng.random() < 0.3:  # Break it somewhere.
    at = rng.randrange(len(text))
    text = text[:at] + rng.choice(['', ',', ']', '"', '{', ' ']) + text[
        at + 1:]
  return text


def _json_loads_verdict(text: str):
  """What the rules say of `text`, from json.loads of the whole: its ids,
  or None if it is refused."""
  try:
    value = json.loads(text)
  except ValueError:
    return None
  if isinstance(value, dict):
    value = value.get('images')
    if not isinstance(value, list):
      return None
  ids = []
  coco = isinstance(value, list) and isinstance(json.loads(text), dict)
  for v in value:
    if coco != isinstance(v, dict):  # Objects in "images", ids in a list.
      return None
    try:
      got = {image_list.parse_item(v[k], '-') for k in ('id', 'file_name')
             if k in v} if coco else {image_list.parse_item(v, '-')}
    except errors.ConfigError:
      return None
    if len(got) != 1:
      return None
    ids.append(got.pop())
  return sorted(set(ids)) or None


@pytest.mark.parametrize('batch', [1, 7, 64])
def test_json_lists_cut_in_batches_read_as_json_loads(tmp_path, monkeypatch,
                                                      batch):
  """Batches this small cut inside strings, escapes and nested values;
  every document gives the ids json.loads would, or is refused."""
  monkeypatch.setattr(image_list._Json, 'BATCH', batch)
  rng = random.Random(batch)
  listed = tmp_path / 'l.json'
  # A batch of blanks alone decodes to []: it must not eat the comma.
  fixed = ['[' + ' ' * 200 + ', 1]', '[1,' + ' ' * 200 + ', 2]']
  for text in fixed + [_a_json_list(rng) for _ in range(300)]:
    listed.write_text(text)
    want = _json_loads_verdict(text)
    try:
      got = image_list.make(listed).ids.tolist()
    except errors.ConfigError as e:
      assert want is None, (text, e)
      assert '\n' not in str(e)
      continue
    assert got == want, text


@pytest.mark.parametrize('text, message', [
    ('[1, 2,]', 'l.json:1: not valid JSON (JSONDecodeError: Expecting value)'),
    ('[1 2]', "l.json:1: not valid JSON (expected ',' or ']' after a list's"
     " entry)"),
    ('[1, 2]\n]', 'l.json:2: not valid JSON (JSONDecodeError: Extra data)'),
    ('{"images": [{"id": 1}]} {}', 'l.json:1: not valid JSON'
     ' (JSONDecodeError: Extra data)'),
    ('{"images" [1]}', "l.json:1: not valid JSON (expected ':' after a key)"),
    ('{\n images: [1]}', 'l.json:2: not valid JSON (expected a key in double'
     ' quotes)'),
    ('{"images": [{"id": 1}] "x": 1}', "l.json:1: not valid JSON (expected ','"
     " or '}' after an object's value)"),
    ('{"images": [{"id": 1}]', "l.json:1: not valid JSON (expected ',' or '}'"
     " after an object's value)"),
    ('{"ima\nges": [1]}', 'l.json:1: not valid JSON (JSONDecodeError: Invalid'
     ' control character at)'),
    ('[1,\n2', "l.json:2: not valid JSON (expected ',' or ']' after a list's"
     ' entry)'),
    ('{"images": {"id": 1}}', 'l.json: expected a JSON list'),
    ('[NaN]', 'l.json: entry 1: nan'),
])
def test_bad_json_lists_name_the_line_as_json_loads_would_refuse(
    tmp_path, text, message):
  listed = tmp_path / 'l.json'
  listed.write_text(text)
  with pytest.raises(errors.ConfigError) as e:
    image_list.make(listed)
  assert str(e.value).startswith(f'{tmp_path}/{message}'), str(e.value)
  assert '\n' not in str(e.value)
  if 'not valid JSON' in message:
    with pytest.raises(ValueError):
      json.loads(text)


def test_lists_that_are_no_regular_file_are_refused_before_a_read(tmp_path):
  fifo = tmp_path / 'fifo.txt'
  os.mkfifo(fifo)
  (tmp_path / 'zero.txt').symlink_to('/dev/zero')
  (tmp_path / 'dir.txt').mkdir()
  try:
    for name, message in [
        ('fifo.txt', 'not a regular file (a FIFO, device or socket)'),
        ('zero.txt', 'not a regular file (a FIFO, device or socket)'),
        ('dir.txt', 'a directory, not a file')]:
      with pytest.raises(errors.SourceError) as e:
        within(30, image_list.make, tmp_path / name)
      assert str(e.value) == f'image list {tmp_path / name}: {message}'
  finally:  # Frees a reader an older version left blocked on the FIFO.
    try:
      os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
      pass


def test_a_deeply_nested_json_list_is_a_one_line_error(tmp_path, capsys):
  deep = tmp_path / 'deep.json'
  deep.write_text('[' * 100_000 + ']' * 100_000)
  with pytest.raises(errors.ConfigError) as e:
    image_list.make(deep)
  assert str(e.value) == f'{deep}: not an image list: JSON nested too deeply'
  # Nested as JSON reads it: the entry is shown, cut, in one line.
  deep.write_text('[' * 300 + ']' * 300)
  with pytest.raises(errors.ConfigError) as e:
    image_list.make(deep)
  assert str(e.value).startswith(f'{deep}: entry 1: {"[" * 57}...: expected')
  nested = []
  for _ in range(100_000):
    nested = [nested]
  assert image_list.shown(nested) == 'a list nested too deeply'
  assert image_list.shown('x' * 10**6) == "'" + 'x' * 56 + '...'
  deep.write_text('[' * 100_000 + ']' * 100_000)
  for argv in (['index', '--manual_dir', DUMMY_DATA, '--images', deep],
               ['build', '--config', 'all', '--images', deep, '--manual_dir',
                DUMMY_DATA, '--data_dir', tmp_path / 'd']):
    code, _, err = run(capsys, *argv, '--no_progress')
    assert code == 1
    assert err.strip().splitlines() == [
        f'segment-anything-tfds {argv[0]}: error: {deep}: not an image list:'
        ' JSON nested too deeply'], err


# ------------------------------------------------------------ the config


def test_config_names_carry_the_list_and_commute_with_lenient(tmp_path):
  short = _canonical_sha(LISTED)[:12]
  one = config_lib.images_config('all', LISTED)
  assert one.name == f'all_images_{short}' and not one.lenient
  assert 'images=' not in repr(one)  # A long list stays out of reprs.
  lenient = config_lib.lenient_config(one)
  assert lenient.name == f'all_images_{short}_lenient'
  assert config_lib.images_config(config_lib.lenient_config('all'),
                                  LISTED[::-1]).name == lenient.name
  assert config_lib.images_config(config_lib.tars_config('0-2'),
                                  LISTED).name == f'tars_0-2_images_{short}'
  other = config_lib.images_config('all', LISTED + [1])
  assert other.name != one.name
  with pytest.raises(errors.ConfigError, match='has an image list already'):
    config_lib.images_config(one, [1])
  with pytest.raises(errors.ConfigError, match='make it with images_config'):
    config_lib.SegmentAnythingConfig(name='mine', images=one.images)


def test_different_lists_never_share_a_data_dir(tmp_path):
  dirs = {tfds.builder('segment_anything', images=ids,
                       data_dir=tmp_path).data_dir
          for ids in ([1], [2], [1, 2], ['sa_2.jpg', 1])}
  assert len(dirs) == 3


# ----------------------------------------------------------------- builds


def _build(data_dir, manual, images, *, beam=False, lenient=False,
           allow_partial=False, stream=False, config='all'):
  config = config_lib.images_config(config, images)
  if lenient:
    config = config_lib.lenient_config(config)
  return build(data_dir, manual, config, beam=beam,
               allow_partial=allow_partial, download_options={
                   'disk_mode': 'stream' if stream else 'keep'})


def _examples(builder):
  return list(tfds.as_numpy(builder.as_dataset(
      split='train', shuffle_files=False,
      decoders={'image': {'content': tfds.decode.SkipDecoding()}})))


def _metadata(builder):
  return json.loads((builder.data_path / 'metadata.json').read_text())


def _shard_files(builder) -> dict[str, bytes]:
  return {p.name: p.read_bytes()
          for p in pathlib.Path(builder.data_dir).glob('*.tfrecord*')}


def _audit_file(builder) -> bytes:
  return (pathlib.Path(builder.data_dir) / 'audit' /
          'records.jsonl').read_bytes()


def test_a_list_builds_exactly_its_images_byte_exact(tmp_path):
  builder = _build(tmp_path, DUMMY_DATA, LISTED)
  examples = _examples(builder)
  assert sorted(int(e['image']['image_id']) for e in examples) == LISTED
  for e in examples:
    jpg, record = INPUTS[int(e['image']['image_id'])]
    assert e['image']['content'] == jpg
    assert [c.decode() for c in e['annotations']['segmentation']['counts']
            ] == [a['segmentation']['counts'] for a in record['annotations']]
  meta = _metadata(builder)
  assert meta['images'] == {'list_sha256': _canonical_sha(LISTED),
                            'listed': 5, 'missing': 0}
  audit = meta['audit']
  # Every image counted in and out: listed ones indexed and written, the
  # others read past.
  assert audit['images_indexed'] == 5 == meta['build']['images']
  assert audit['skipped_images'] == 0
  assert audit['images_unlisted'] == len(INPUTS) - 5
  assert audit['images_per_tar'] == {'sa_000000.tar': 1, 'sa_000001.tar': 2,
                                     'sa_000002.tar': 1, 'sa_000003.tar': 1}
  assert builder.info.splits['train'].num_examples == 5


@pytest.mark.parametrize('engine', ['local', 'beam'])
def test_images_found_in_no_tar_fail_naming_ten_and_the_count(tmp_path,
                                                              engine):
  absent = list(range(100, 112))
  with pytest.raises(Exception) as e:
    _build(tmp_path, DUMMY_DATA, LISTED + absent, beam=engine == 'beam')
  error = errors.from_exception(e.value)
  assert isinstance(error, errors.SourceError), e.value
  text = str(error)
  assert text.startswith('12 of the 17 images listed in the list given are'
                         ' in none of the 4 tars read: 100, 101, 102, 103,'
                         ' 104, 105, 106, 107, 108, 109, ...'), text
  assert '110' not in text and '--allow_partial' in text and '\n' not in text
  builder = tfds.builder('segment_anything', images=LISTED + absent,
                         data_dir=tmp_path)
  assert not builder.is_prepared()


def test_allow_partial_records_the_missing_and_every_load_warns(tmp_path,
                                                                caplog):
  builder = _build(tmp_path, DUMMY_DATA, LISTED + [98, 99],
                   allow_partial=True)
  assert _metadata(builder)['images'] == {
      'list_sha256': _canonical_sha(LISTED + [98, 99]), 'listed': 7,
      'missing': 2, 'missing_ids': [98, 99], 'missing_ids_complete': True}
  caplog.clear()
  again = tfds.builder('segment_anything', images=LISTED + [99, 98],
                       data_dir=tmp_path)
  assert sorted(int(e['image']['image_id']) for e in _examples(again)
                ) == LISTED
  assert any('partial build: 2 of the 7 images of its image list were in no'
             ' tar (first: 98, 99)' in r.getMessage()
             for r in caplog.records if r.levelno == logging.WARNING)


def test_missing_ids_in_the_metadata_say_whether_they_are_all(monkeypatch):
  listed = image_list.make(range(1, 31))
  monkeypatch.setattr(rules, 'MISSING_IN_METADATA', 10)
  block = rules.images_metadata(listed, listed.ids[5:])
  assert block['missing'] == 25 and block['missing_ids'] == list(range(6, 16))
  assert block['missing_ids_complete'] is False


def test_reuse_checks_the_stored_list(tmp_path):
  builder = _build(tmp_path, DUMMY_DATA, LISTED)
  path = builder.data_path / 'metadata.json'
  meta = json.loads(path.read_text())
  meta['images']['list_sha256'] = '0' * 64  # A copied or edited dir.
  path.write_text(json.dumps(meta))
  with pytest.raises(errors.ConfigError, match='not prepared from this image'
                     ' list: its metadata says list sha256 0000'):
    _build(tmp_path, DUMMY_DATA, LISTED)
  with pytest.raises(errors.ConfigError, match='not prepared from this'):
    tfds.builder('segment_anything', images=LISTED,
                 data_dir=tmp_path).as_dataset(split='train')


def test_unlisted_bad_images_do_not_stop_a_strict_build(tmp_path):
  """Tar 1 of the bad manual dir holds a bad image of every kind; a list
  without them builds strictly, and their faults are nowhere."""
  manual = make_bad_manual_dir(tmp_path / 'in')
  builder = _build(tmp_path / 'data', manual, [1, 3, 10])
  assert sorted(int(e['image']['image_id']) for e in _examples(builder)) == [
      1, 3, 10]
  assert not [r for r in rules.read_records(builder.data_dir)
              if r['kind'] != 'shard']
  # A tar whose images are all unlisted is not a tar without images.
  builder = _build(tmp_path / 'data', manual, [1])
  assert _metadata(builder)['audit']['skipped_tars'] == []


@pytest.mark.integration
def test_both_engines_same_records_from_files_and_links(tmp_path):
  """A lenient list build of hostile tars, by both engines, from local
  files and streamed from links: the same shard files, audit file and
  metadata; only listed images are audited."""
  manual = make_bad_manual_dir(tmp_path / 'in')
  listed = [1, 2, 10, 11, 13, 40]  # 2: in both tars; 11, 13: bad; 40: none.
  files = {p.name: p.read_bytes() for p in sorted(manual.iterdir())}
  builds = {}
  for engine in ('local', 'beam'):
    builds['files', engine] = _build(
        tmp_path / f'files_{engine}', manual, listed, beam=engine == 'beam',
        lenient=True, allow_partial=True)
  with LoopbackServer(files) as srv:
    links = tmp_path / 'links'
    links.mkdir()
    fake_data.write_links(links / links_lib.LINKS_FILE_NAME,
                          [(n, srv.url(n)) for n in files])
    for engine in ('local', 'beam'):
      builds['links', engine] = within(
          600, _build, tmp_path / f'links_{engine}', links, listed,
          beam=engine == 'beam', lenient=True, allow_partial=True,
          stream=True)
    for name in files:
      assert len(srv.gets(name)) == 2  # One per streamed build.
  first = builds['files', 'local']
  meta = _metadata(first)
  for key, builder in builds.items():
    assert _shard_files(builder) == _shard_files(first), key
    assert _audit_file(builder) == _audit_file(first), key
    other = _metadata(builder)
    assert other['build']['engine'] == key[1], key
    assert other['audit'] == meta['audit'], key
    assert other['images'] == meta['images'], key
  assert meta['images']['missing_ids'] == [40]
  audit = meta['audit']
  assert audit['skipped_by_reason'] == {'duplicate_id': 1, 'malformed_json': 1,
                                        'missing_jpg': 1}
  assert audit['images_indexed'] == 6  # 1, 2, 10, 11, 13 and 2 again.
  assert audit['images_unlisted'] == 3  # 3; 12 and 14.
  assert sorted(int(e['image']['image_id']) for e in _examples(first)) == [
      1, 2, 10]


def test_stream_and_index_take_the_same_listed_images(tmp_path):
  """The walker's two modes filter alike, and a stream holds nothing of
  an unlisted image."""
  rng = np.random.default_rng(3)
  records = [(i, *fake_data.image_record(rng, i, height=8, width=6,
                                         num_masks=2)) for i in range(1, 41)]
  fake_data.write_tar(tmp_path / 'sa_000000.tar', records)
  source = shards_lib.find_shards(tmp_path).shards[0]
  listed = image_list.make([3, 17, 40, 77])
  indexed = tars.index(source, images=listed)
  assert [p.image_id for p in indexed.pairs] == [3, 17, 40]
  assert indexed.unlisted == 37
  held = []
  real_put = tars._Held.put  # pylint: disable=protected-access

  def put(self, stem, data):
    held.append(stem)
    real_put(self, stem, data)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tars._Held, 'put', put)  # pylint: disable=protected-access
    events = list(tars.stream(source, hold_bytes=1 << 30, images=listed))
  built = [e.pair.image_id for e in events[:-1]]
  assert sorted(built) == [3, 17, 40]
  assert set(held) <= {'sa_3', 'sa_17', 'sa_40'}
  assert events[-1] == indexed


class _Counted(base.Source):
  """A local tar whose reads are counted (`reads`: bytes per read)."""

  reads: list[int] = []
  remote = False
  folder = False
  downloaded = False

  def __init__(self, inner: base.Source):
    self.inner = inner
    self.name = inner.name
    self.where = inner.where

  def size(self):
    return self.inner.size()

  def open_random(self):
    return _CountedReader(self.inner.open_random())

  def open_sequential(self, start=0):
    raise AssertionError('a local tar is never read front to back')

  def list_members(self):
    return self.inner.list_members()

  def read_member(self, member):
    return self.inner.read_member(member)


class _CountedReader:

  def __init__(self, reader):
    self.reader = reader

  def read_at(self, offset, size):
    data = self.reader.read_at(offset, size)
    _Counted.reads.append(len(data))
    return data

  def close(self):
    self.reader.close()


@pytest.mark.parametrize('engine', ['local', 'beam'])
def test_a_list_reads_only_headers_and_the_listed_members(tmp_path, engine):
  """A local tar of 300 images, 3 listed: exactly a 512-byte read per
  header and one read per listed member."""
  rng = np.random.default_rng(11)
  records = [(i, *fake_data.image_record(rng, i, height=64, width=64,
                                         num_masks=6)) for i in range(1, 301)]
  manual = tmp_path / 'in'
  manual.mkdir()
  members = fake_data.write_tar(manual / 'sa_000000.tar', records, rng=rng)
  listed = image_list.make([7, 150, 299])
  source = _Counted(shards_lib.find_shards(manual).shards[0])
  output = plan.Output(os.fspath(tmp_path / 'out'), 'segment_anything',
                       'train')
  os.makedirs(output.data_dir)
  _Counted.reads.clear()
  if engine == 'local':
    result = local.build([source], output, lenient=False, workers=1,
                         show_progress=False, images=listed)
  else:
    from segment_anything_tfds.prepare import beam  # pylint: disable=g-import-not-at-top
    result = beam.build([source], output, lenient=False, hold_bytes=0,
                        runner=runners.local_runner(), images=listed)
  assert result.images == 3 and result.missing_images.tolist() == []
  listed_bytes = sum(len(jpg) + len(js) for i, jpg, js in records
                     if i in listed)
  assert sorted(_Counted.reads) == sorted(
      [512] * (members + 1) + [len(b) for i, jpg, js in records
                               if i in listed for b in (jpg, js)])
  assert sum(_Counted.reads) == 512 * (members + 1) + listed_bytes
  # Tiny members: the headers are a sixth of this tar (of an SA-1B tar, a
  # thousandth).
  assert sum(_Counted.reads) < source.size() / 5


# ------------------------------------------------------------- the index


def run(capsys, *argv):
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _truth():
  """(tar, member) -> (data offset or None, size), read with tarfile and
  plain file reads."""
  truth = {}
  for path in sorted(DUMMY_DATA.iterdir()):
    if path.suffix == '.tar':
      with tarfile.open(path) as t:
        for m in t.getmembers():
          truth[path.name, m.name] = (m.offset_data, m.size)
    elif path.is_dir():
      for f in path.iterdir():
        truth[path.name + '.tar', f.name] = (None, f.stat().st_size)
  assert any('/' in member for _, member in truth)  # Members in folders.
  return truth


def _read_rows(path):
  if path.suffix == '.jsonl':
    return [json.loads(l) for l in path.read_text().splitlines()]
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  return pq.read_table(path).to_pylist()


@pytest.mark.parametrize('ext', ['.jsonl', '.parquet'])
def test_index_file_matches_the_tars(tmp_path, capsys, ext):
  out = tmp_path / f'index{ext}'
  code, _, err = run(capsys, 'index', '--manual_dir', DUMMY_DATA, '--out',
                     out, '--no_progress')
  assert code == 0, err
  assert f'wrote {out}: 11 images in 4 tars' in err
  rows = _read_rows(out)
  assert [list(r) for r in rows[:1]] == [list(image_index.COLUMNS)]
  assert sorted(r['image_id'] for r in rows) == sorted(INPUTS)
  truth = _truth()
  for r in rows:
    for ext_ in ('jpg', 'json'):
      assert r[ext_].rsplit('/', 1)[-1] == f'sa_{r["image_id"]}.{ext_}'
      assert (r[f'{ext_}_offset'], r[f'{ext_}_size']) == truth[
          r['tar'], r[ext_]], r
  # The offsets read the members' bytes back exactly.
  for r in rows:
    if r['jpg_offset'] is not None:
      blob = (DUMMY_DATA / r['tar']).read_bytes()
      jpg = blob[r['jpg_offset']:r['jpg_offset'] + r['jpg_size']]
      assert jpg == INPUTS[r['image_id']][0]
  assert not list(tmp_path.glob('*.part'))


def test_index_file_replaces_an_old_one_and_makes_its_folder(tmp_path,
                                                             capsys):
  out = tmp_path / 'new' / 'dir' / 'index.jsonl'
  victim = tmp_path / 'victim'
  victim.write_text('keep')
  for _ in range(2):  # The second run replaces the first's file.
    code, _, err = run(capsys, 'index', '--manual_dir', DUMMY_DATA, '--out',
                       out, '--no_progress')
    assert code == 0, err
    # A symlink planted where an older version wrote its part file.
    (out.parent / 'index.jsonl.part').symlink_to(victim)
    assert sorted(r['image_id'] for r in _read_rows(out)) == sorted(INPUTS)
    (out.parent / 'index.jsonl.part').unlink()
  assert victim.read_text() == 'keep'
  assert sorted(p.name for p in out.parent.iterdir()) == ['index.jsonl']
  (tmp_path / 'file').write_text('')
  code, _, err = run(capsys, 'index', '--manual_dir', DUMMY_DATA, '--out',
                     tmp_path / 'file' / 'index.jsonl', '--no_progress')
  assert code == 1
  [line] = err.strip().splitlines()
  assert line.startswith(
      f'segment-anything-tfds index: error: {tmp_path}/file/index.jsonl:'
      ' cannot write the index there (')  # File exists: 'file' is a file.


def test_index_images_says_which_tars_and_which_are_in_none(tmp_path,
                                                           capsys):
  listed = tmp_path / 'list.json'
  listed.write_text(json.dumps(['sa_2.jpg', 3, 12, 32, 98, 99]))
  out = tmp_path / 'index.parquet'
  code, printed, err = run(capsys, 'index', '--manual_dir', DUMMY_DATA,
                           '--out', out, '--images', listed, '--json',
                           tmp_path / 'r.json', '--no_progress')
  assert code == 0, err
  assert printed.splitlines() == [
      'sa_000000.tar\t2', 'sa_000001.tar\t1', 'sa_000003.tar\t1',
      '4 of the 6 listed images are in 3 tars (--tars 0-1,3); 2 are in'
      ' none: 98, 99']
  report = json.loads((tmp_path / 'r.json').read_text())
  assert report['missing'] == [98, 99] and report['tar_spec'] == '0-1,3'
  assert report['list_sha256'] == _canonical_sha([2, 3, 12, 32, 98, 99])
  # The same answer from the index file, without the tars.
  code, again, err = run(capsys, 'index', '--from', out, '--images', listed)
  assert code == 0, err
  assert again == printed


def test_index_counts_an_image_in_two_tars_in_the_lowest(tmp_path):
  manual = make_bad_manual_dir(tmp_path / 'in')  # Id 2 in tars 0 and 1.
  listed = tmp_path / 'l.txt'
  listed.write_text('2\n10\n')
  # A process of its own: the CLI's warnings go to its stderr.
  res = subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', 'index',
       '--manual_dir', str(manual), '--images', str(listed),
       '--no_progress'], capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert res.stdout.splitlines()[:2] == ['sa_000000.tar\t1',
                                         'sa_000001.tar\t1']
  # Images whose members cannot be read are left out, with a warning (the
  # index is of members: JSON is not parsed).
  assert res.stderr.splitlines() == [
      'segment-anything-tfds: warning: sa_000001.tar: 2 images left out'
      ' (missing_jpg, missing_json), e.g. sa_000001.tar:sa_12.jpg:'
      ' sa_12.jpg has no sa_12.json [missing_json]'], res.stderr


@pytest.mark.integration
def test_index_of_links_reads_each_tar_once_front_to_back(tmp_path, capsys):
  names = ['sa_000000.tar', 'sa_000001.tar', 'sa_000002.tar']
  files = {n: (DUMMY_DATA / n).read_bytes() for n in names}
  local_dir = tmp_path / 'local'
  local_dir.mkdir()
  for n in names:
    (local_dir / n).write_bytes(files[n])
  code, _, err = run(capsys, 'index', '--manual_dir', local_dir, '--out',
                     tmp_path / 'local.jsonl', '--no_progress')
  assert code == 0, err
  with LoopbackServer(files) as srv:
    links = tmp_path / 'links'
    links.mkdir()
    fake_data.write_links(links / links_lib.LINKS_FILE_NAME,
                          [(n, srv.url(n)) for n in names])
    code, _, err = within(120, run, capsys, 'index', '--manual_dir', links,
                          '--out', tmp_path / 'remote.jsonl',
                          '--no_progress')
    assert code == 0, err
    for n in names:
      assert [g[2] for g in srv.gets(n)] == [f'bytes=0-{len(files[n]) - 1}']
  assert (tmp_path / 'remote.jsonl').read_text() == (
      tmp_path / 'local.jsonl').read_text()


def test_index_errors_are_one_line(tmp_path, capsys, monkeypatch):
  bad_rows = tmp_path / 'bad.jsonl'
  bad_rows.write_text('{"image_id": 1, "tar": "sa_000000.tar"}\n'
                      '{"image_id": "2", "tar": "sa_000000.tar"}\n')
  listed = tmp_path / 'l.txt'
  listed.write_text('1\n')
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.table({'id': [1, 2]}), tmp_path / 'other.parquet')
  (tmp_path / 'text.parquet').write_text('hello')
  cases = [
      (['--from', tmp_path / 'other.parquet', '--images', listed],
       'other.parquet: not an image index: no image_id and tar columns (it'
       ' has id)'),
      (['--from', tmp_path / 'text.parquet', '--images', listed],
       'text.parquet: not a parquet file ('),
      (['--from', bad_rows, '--images', listed],
       f"{bad_rows}:2: image_id '2' is not an image id"),
      (['--manual_dir', DUMMY_DATA, '--out', tmp_path / 'i.csv'],
       'i.csv: an index file name ends in .jsonl or .parquet'),
      (['--from', tmp_path / 'none.jsonl', '--images', listed],
       'no such file'),
  ]
  for argv, message in cases:
    code, _, err = run(capsys, 'index', *argv, '--no_progress')
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
  # Without pyarrow: a hint, before any work.
  monkeypatch.setitem(sys.modules, 'pyarrow', None)
  code, _, err = run(capsys, 'index', '--manual_dir', DUMMY_DATA, '--out',
                     tmp_path / 'i.parquet', '--no_progress')
  assert code == 1
  assert err.strip() == ('segment-anything-tfds index: error: parquet needs'
                         ' pyarrow, which is not installed: pip install'
                         ' pyarrow, or use a .jsonl index (always'
                         ' available)')
  assert not list(tmp_path.glob('i.parquet*'))


def _one_error(capsys, *argv):
  """The one line of a failed command (exit code 1), after 'error: '."""
  code, out, err = run(capsys, 'index', *argv, '--no_progress')
  assert code == 1, (out, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  return out, lines[0].split(': error: ', 1)[1]


def test_index_paths_are_checked_before_any_work(tmp_path, capsys,
                                                 monkeypatch):
  listed = tmp_path / 'l.txt'
  listed.write_text('2\n12\n')
  index_file = tmp_path / 'i.jsonl'
  index_file.write_text('{"image_id": 2, "tar": "sa_000000.tar"}\n')
  for name in ('dir.jsonl', 'out.jsonl', 'report'):
    (tmp_path / name).mkdir()
  indexed = []
  real_index = tars.index
  monkeypatch.setattr(tars, 'index',
                      lambda source: indexed.append(source) or
                      real_index(source))
  out, line = _one_error(capsys, '--from', tmp_path / 'dir.jsonl',
                         '--images', listed)
  assert line == f'index {tmp_path}/dir.jsonl: a directory, not a file'
  out, line = _one_error(capsys, '--from', index_file, '--images', listed,
                         '--json', tmp_path / 'report')
  assert not out  # Refused before the report is printed.
  assert line == (f'{tmp_path}/report: cannot write the report there (it is'
                  ' a directory)')
  out, line = _one_error(capsys, '--manual_dir', DUMMY_DATA, '--out',
                         tmp_path / 'out.jsonl')
  assert line == (f'{tmp_path}/out.jsonl: cannot write the index there (it'
                  ' is a directory)')
  out, line = _one_error(capsys, '--manual_dir', DUMMY_DATA, '--out',
                         listed / 'x.jsonl')
  assert line == (f'{listed}/x.jsonl: cannot write the index there'
                  f' ({listed} is not a directory)')
  out, line = _one_error(capsys, '--manual_dir', DUMMY_DATA, '--images',
                         listed, '--json', listed / 'no' / 'r.json')
  assert line == (f'{listed}/no/r.json: cannot write the report there'
                  f' ({listed} is not a directory)')
  assert not indexed  # No tar was read for any of them.
  # A report's missing folder is made.
  code, _, err = run(capsys, 'index', '--from', index_file, '--images',
                     listed, '--json', tmp_path / 'new' / 'dir' / 'r.json')
  assert code == 0, err
  assert json.loads((tmp_path / 'new' / 'dir' / 'r.json').read_text())[
      'missing'] == [12]
  # Made a directory while the tars are read: the index cannot be put in
  # place; one line, and no part file left.
  late = tmp_path / 'late' / 'index.parquet'
  real_write = image_index.Writer.write

  def write_then_block(writer, batch):
    real_write(writer, batch)
    late.mkdir(exist_ok=True)
  monkeypatch.setattr(image_index.Writer, 'write', write_then_block)
  out, line = _one_error(capsys, '--manual_dir', DUMMY_DATA, '--out', late)
  assert line == f'{late}: cannot write the index there (it is a directory)'
  assert os.listdir(late.parent) == ['index.parquet']  # The directory.
  # The same for the report, once it is printed.
  monkeypatch.setattr(image_index.Holders, 'report', lambda self: (
      (tmp_path / 'late.json').mkdir(), {
          'list': 'l', 'listed': 0, 'tars': {}, 'missing': []})[1])
  out, line = _one_error(capsys, '--from', index_file, '--images', listed,
                         '--json', tmp_path / 'late.json')
  assert line == (f'{tmp_path}/late.json: cannot write the report there (it'
                  ' is a directory)')
  assert not list(tmp_path.glob('.*.part'))


def test_hostile_index_files_are_one_line_errors(tmp_path, capsys):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  listed = tmp_path / 'l.txt'
  listed.write_text('1\n2\n')
  # A good footer, a corrupt data page.
  n = 100_000
  pq.write_table(pa.table({'image_id': list(range(n)),
                           'tar': ['sa_000000.tar'] * n}),
                 tmp_path / 'good.parquet', compression='snappy')
  data = bytearray((tmp_path / 'good.parquet').read_bytes())
  data[100:2000] = b'\xff' * 1900
  (tmp_path / 'corrupt.parquet').write_bytes(data)
  _, line = _one_error(capsys, '--from', tmp_path / 'corrupt.parquet',
                       '--images', listed)
  assert line.startswith(f'{tmp_path}/corrupt.parquet:row group 1 of 1:'
                         ' cannot be read ('), line
  # A row group with a huge string: refused from the footer, before it is
  # read (parquet would read the whole column chunk). Shown with a cap of
  # 1 MiB instead of 256.
  pq.write_table(pa.table({'image_id': [1, 2],
                           'tar': ['sa_000000.tar', 'x' * (2 << 20)]}),
                 tmp_path / 'huge.parquet', compression='zstd')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(image_index, 'MAX_GROUP_BYTES', 1 << 20)
    _, line = _one_error(capsys, '--from', tmp_path / 'huge.parquet',
                         '--images', listed)
  assert line.startswith(f'{tmp_path}/huge.parquet:row group 1 of 1: its'
                         ' image_id and tar columns take '), line
  assert 'over 1 MiB: not read' in line, line
  assert (tmp_path / 'huge.parquet').stat().st_size < 100_000  # Compressed.
  # More rows than SA-1B has images: refused from the footer (a few kB of
  # parquet can say millions of rows, each read and checked). Shown with a
  # cap of 50 k rows instead of 12 M.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(image_index, 'MAX_ROWS', 50_000)
    _, line = _one_error(capsys, '--from', tmp_path / 'good.parquet',
                         '--images', listed)
  assert line == (f'{tmp_path}/good.parquet: 100000 rows, over 50000: not an'
                  ' SA-1B index (11.2 M images); not read'), line
  row = b'{"image_id": 1, "tar": "sa_000000.tar"}'
  files = {
      'deep.jsonl': (row + b'\n' + b'[' * 100_000 + b']' * 100_000 + b'\n',
                     ':2: not a JSON object (nested too deeply)'),
      'long.jsonl': (row + b'\n' + row[:-1] + b', "pad": "' + b'x' * (2 << 20)
                     + b'"}\n', ':2: a line over 1 MiB: not an index row'),
      'long_end.jsonl': (row + b'\n' + b'x' * (2 << 20),
                         ':2: a line over 1 MiB: not an index row'),
      'huge_id.jsonl': (b'{"image_id": "' + b'A' * 1_000_000 + b'", "tar":'
                        b' "sa_000000.tar"}\n',
                        f":1: image_id '{'A' * 56}... is not an image id"),
      'huge_tar.jsonl': (b'{"image_id": 1, "tar": "' + b'\\u001b' * 1000
                         + b'"}\n', r":1: tar '\x1b\x1b"),
  }
  for name, (content, message) in files.items():
    (tmp_path / name).write_bytes(content)
    _, line = _one_error(capsys, '--from', tmp_path / name, '--images',
                         listed)
    assert line.startswith(f'{tmp_path}/{name}{message}'), line
    assert len(line) < 250, line
  # A line of exactly the cap is a row like any other.
  pad = image_index.MAX_LINE_BYTES - len(row) - len(b', "pad": ""')
  (tmp_path / 'edge.jsonl').write_bytes(
      row[:-1] + b', "pad": "' + b'x' * pad + b'"}\n' + row + b'\n')
  code, out, err = run(capsys, 'index', '--from', tmp_path / 'edge.jsonl',
                       '--images', listed)
  assert code == 0, err
  assert out.splitlines()[-1].startswith('1 of the 2 listed images')
  # Endless or blocking files are refused before a read.
  os.mkfifo(tmp_path / 'fifo.jsonl')
  (tmp_path / 'zero.jsonl').symlink_to('/dev/zero')
  try:
    for name in ('zero.jsonl', 'fifo.jsonl'):
      _, line = within(30, _one_error, capsys, '--from', tmp_path / name,
                       '--images', listed)
      assert line == (f'index {tmp_path}/{name}: not a regular file (a FIFO,'
                      ' device or socket)')
  finally:  # Frees a reader an older version left blocked on the FIFO.
    try:
      os.close(os.open(tmp_path / 'fifo.jsonl', os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
      pass


# ------------------------------------------------------------------ CLI


def test_cli_build_with_a_list(tmp_path, capsys):
  listed = tmp_path / 'l.txt'
  listed.write_text('sa_2.jpg\n31\n98\n')
  base = ['build', '--config', 'all', '--images', listed, '--manual_dir',
          DUMMY_DATA, '--data_dir', tmp_path / 'd', '--no_progress']
  code, _, err = run(capsys, *base)
  assert code == 1
  assert err.strip().splitlines()[-1] == (
      f'segment-anything-tfds build: error: 1 of the 3 images listed in'
      f' {listed} is in none of the 4 tars read: 98. Find their tars with'
      ' `segment-anything-tfds index --images`, or build the others with'
      ' allow_partial=True (--allow_partial)')
  code, out, err = run(capsys, *base, '--allow_partial', '--summary_json',
                       tmp_path / 's.json')
  assert code == 0, err
  assert 'list:      3 images listed, 1 in no tar (first: 98)' in out
  summary = json.loads((tmp_path / 's.json').read_text())
  assert summary['images'] == 2 and summary['images_missing'] == 1
  assert summary['config'] == 'all_images_' + _canonical_sha([2, 31, 98])[:12]
  listed.write_text('2\nsa_3.JPG\n')
  code, _, err = run(capsys, *base)
  assert code == 1
  assert err.strip().splitlines()[-1] == (
      f"segment-anything-tfds build: error: {listed}:2: 'sa_3.JPG': expected"
      ' an image id or an sa_<id>.jpg name, e.g. 223750 or sa_223750.jpg'
      ' (ids in ASCII digits without leading zeros, below 2**63, as in the'
      ' tars)')


def test_an_aborted_parquet_index_leaves_no_file_and_no_late_write(tmp_path):
  """Its parquet writer is closed with it: left open, it wrote into the
  closed file when it went ('Exception ignored in ParquetWriter.__del__')."""
  import gc  # pylint: disable=g-import-not-at-top
  unraisable = []
  hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
  try:
    writer = image_index.Writer(tmp_path / 'index.parquet')
    writer.write([{'image_id': 1, 'tar': 'sa_000000.tar', 'jpg': 'sa_1.jpg',
                   'json': 'sa_1.json', 'jpg_offset': 512, 'jpg_size': 10,
                   'json_offset': 1024, 'json_size': 20}])
    writer.abort()
    del writer
    gc.collect()
  finally:
    sys.unraisablehook = hook
  assert unraisable == []
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('name', ['idx.jsonl', 'idx.parquet'])
def test_index_out_on_a_full_disk_is_one_line_and_leaves_no_file(
    tmp_path, name):
  """The index passes what a file may hold (RLIMIT_FSIZE: writes fail with
  EFBIG, as ENOSPC on a full disk) while it is written: one line naming
  it, no part file, nothing under its name."""
  import resource  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  manual.mkdir()
  fake_data.write_tar(manual / 'sa_000000.tar',
                      [(i, b'x', b'{}') for i in range(1, 4000)])
  out = tmp_path / 'out'
  out.mkdir()

  def limited():
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
  res = subprocess.run(
      [sys.executable, '-m', 'segment_anything_tfds', 'index',
       '--manual_dir', str(manual), '--out', str(out / name),
       '--no_progress'], capture_output=True, text=True, check=False,
      timeout=300, preexec_fn=limited,
      env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
  assert res.returncode == 1, res.stderr[-2000:]
  assert res.stderr.splitlines()[-1] == (
      f'segment-anything-tfds index: error: {out}/{name}: cannot write the'
      " index there (file too large: over the file system's or this"
      " process's limit on a file's size (ulimit -f))")
  assert 'Traceback' not in res.stderr
  assert os.listdir(out) == []
