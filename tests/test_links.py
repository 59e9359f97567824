"""Links file parsing and validation, and signed-link expiry."""

from __future__ import annotations

import time

import pytest

from segment_anything_tfds.sources import download
from segment_anything_tfds import errors
from segment_anything_tfds.sources import links as links_lib

HEADER = 'file_name\tcdn_link\n'
CDN = ('https://scontent.example/m1/v/t6/{n}?ccb=10-5&oh=00_SIG'
       '&oe={oe:X}&_nc_sid=0fdd5c')


def test_parses_shards_and_reports_other_rows():
  text = (HEADER + 'sa_images_ids.txt\thttps://x/ids.txt\n'
          'sa_000000.tar\thttps://x/sa_000000.tar\n\n'
          'sa_000001.tar\tgs://bucket/sa_000001.tar\r\n'
          'sa_000002.tar\t/data/sa_000002.tar\n'
          'sa_1.tar\thttps://x/sa_1.tar\n')
  links = links_lib.parse_links(text, source='f.txt')
  assert links.shards == {'sa_000000.tar': 'https://x/sa_000000.tar',
                          'sa_000001.tar': 'gs://bucket/sa_000001.tar',
                          'sa_000002.tar': '/data/sa_000002.tar'}
  assert sorted(links.other) == ['sa_1.tar', 'sa_images_ids.txt']


def test_dummy_links_file_parses():
  links = links_lib.read_links('dummy_data/segment_anything_links.txt')
  assert len(links.shards) == 4 and list(links.other) == ['sa_images_ids.txt']


@pytest.mark.parametrize('text, match', [
    ('', r'f.txt: the links file is empty'),
    ('\n  \n', r'the links file is empty'),
    ('sa_000000.tar\thttps://x/a\n', r'f.txt:1: expected the header .*'
     r'the header row is missing'),
    ('file_name,cdn_link\nsa_000000.tar,https://x\n',
     r'f.txt:1: expected the header .*1 column.*TAB'),
    ('name\turl\n', r'f.txt:1: expected the header "file_name<TAB>cdn_link"'),
    (HEADER + 'sa_000000.tar https://x/a\n',
     r'f.txt:2: expected 2 tab-separated columns .*got 1'),
    (HEADER + 'sa_000000.tar\thttps://x/a\textra\n',
     r'f.txt:2: expected 2 tab-separated columns .*got 3'),
    (HEADER + 'sa_000000.tar\t\n', r'f.txt:2: expected 2 tab-separated'),
    (HEADER + 'sa_000000.tar\thttps://x/a\nsa_000000.tar\thttps://x/a\n',
     r'f.txt:3: sa_000000.tar is listed twice \(first on line 2\)'),
    (HEADER + 'sa_000000.tar\thttps://x/a\nsa_000000.tar\thttps://y/a\n',
     r'f.txt:3: sa_000000.tar is listed twice with different URLs'),
    (HEADER + 'sa_000000.tar\tftp://x/a?oh=SECRET\n',
     r"f.txt:2: sa_000000.tar: unsupported URL scheme ftp:// in "
     r"'ftp://x/a\?oh=SECRET'; links must be http://, https://, gs:// or"
     r' local paths'),
    (HEADER + 'sa_000000.tar\ts3://b/a\n', r'unsupported URL scheme s3://'),
])
def test_invalid_links_files(text, match):
  with pytest.raises(errors.LinksError, match=match):
    links_lib.parse_links(text, source='f.txt')


def test_links_file_error_is_one_of_the_package_errors():
  assert issubclass(errors.LinksError, errors.Error)


def test_expiry_and_redaction():
  url = CDN.format(n='sa_000000.tar', oe=0x67A1B2C3)
  assert links_lib.expiry(url) == 0x67A1B2C3
  assert links_lib.format_time(0x67A1B2C3) == '2025-02-04 06:25 UTC'
  assert links_lib.expiry('https://mirror.example/sa_000000.tar') is None
  assert links_lib.expiry('gs://b/sa_000000.tar?oe=1') is None
  assert links_lib.expiry('https://x/a?oe=nothex') is None
  assert links_lib.redact(url) == (
      'https://scontent.example/m1/v/t6/sa_000000.tar?...')
  assert links_lib.redact('/local/sa_000000.tar') == '/local/sa_000000.tar'
  # Credentials in a link are never shown.
  assert links_lib.redact('https://me:hf_secret@host:8443/d/sa_000000.tar'
                          '?token=hf_secret') == (
                              'https://host:8443/d/sa_000000.tar?...')


def test_check_expiry_counts_and_dates():
  now = time.time()
  links = {
      'sa_000000.tar': CDN.format(n='a', oe=int(now) - 86400),
      'sa_000001.tar': CDN.format(n='b', oe=int(now) - 3 * 86400),
      'sa_000002.tar': CDN.format(n='c', oe=int(now) + 30 * 86400),
      'sa_000003.tar': 'https://mirror.example/sa_000003.tar',
  }
  with pytest.raises(download.LinksExpiredError) as e:
    download.check_expiry(links, now=now, source='/m/links.txt')
  msg = str(e.value)
  assert msg.startswith('2 of the 4 links this build needs have expired')
  assert links_lib.format_time(int(now) - 3 * 86400) in msg
  assert 'sa_000000.tar, sa_000001.tar' in msg
  assert 'replace /m/links.txt' in msg and 'mirror' in msg
  assert 'SIG' not in msg
  del links['sa_000000.tar'], links['sa_000001.tar']
  download.check_expiry(links, now=now)  # Mirrors and future links pass.


def test_tolerant_parse_lists_every_problem_strict_raises_the_first():
  text = (HEADER + 'sa_000000.tar\thttps://x/a\textra\n'
          'sa_000001.tar\tftp://x/b\n'
          'sa_000002.tar\thttps://x/c\n'
          '\n'
          'sa_000002.tar\thttps://x/c2\n'
          'sa_images_ids.txt\thttps://x/ids\n'
          'sa_000003.tar\thttps://x/d\n')
  links = links_lib.parse_links(text, source='f.txt', strict=False)
  assert [(p.lineno, p.kind) for p in links.problems] == [
      (2, 'columns'), (3, 'scheme'), (6, 'duplicate')]
  assert links.problems[2].message == (
      'f.txt:6: sa_000002.tar is listed twice with different URLs (first on'
      ' line 4); keep one row per file')
  with pytest.raises(errors.LinksError) as e:
    links_lib.parse_links(text, source='f.txt')
  assert str(e.value) == links.problems[0].message
  # Every row with two columns, in file order; the first of a name wins.
  assert [(r.lineno, r.name) for r in links.rows] == [
      (3, 'sa_000001.tar'), (4, 'sa_000002.tar'), (6, 'sa_000002.tar'),
      (7, 'sa_images_ids.txt'), (8, 'sa_000003.tar')]
  assert links.shards == {'sa_000002.tar': 'https://x/c',
                          'sa_000003.tar': 'https://x/d'}
  assert links.other == {'sa_images_ids.txt': 'https://x/ids'}
  # A file that is not a links file at all stops either way.
  with pytest.raises(errors.LinksError, match='expected the header'):
    links_lib.parse_links('name,url\n', source='f.txt', strict=False)


def test_strict_parse_has_no_problems_and_all_rows():
  text = HEADER + 'sa_000000.tar\thttps://x/a\n'
  links = links_lib.parse_links(text, source='f.txt')
  assert links.problems == ()
  assert [(r.lineno, r.name, r.url) for r in links.rows] == [
      (2, 'sa_000000.tar', 'https://x/a')]
