"""Where tars come from, read through one protocol (`base.Source`).

  base.py          Source, Member, the random and sequential readers
  local.py         LocalTar (pread), LocalFolder: on this machine
  bucket.py        BucketTar, BucketFolder: fsspec (gcsfs for gs://)
  http_tar.py      HttpTar: an http(s) link, by Range requests
  hub.py           Hugging Face Hub: hf:// folders listed, the token's hosts
  manual_dir.py    what manual_dir offers, a config's choice (tar_source)
  materialize.py   links downloaded, streamed or found in the cache
  links.py         the links file
  http.py          the one HTTP client (requests, urllib3's Retry)
  download.py      checked, locked, resumable downloads into the cache
  checksums.py     checksum lists (the published md5s: data/), hashing
                   as tars are read, verdicts, quarantine
  mirror.py        tars mirrored into a bucket on Beam workers
  paths.py         whether a dir is local (data_dir, download_dir)
"""
