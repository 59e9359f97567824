"""segment_anything_tfds: SA-1B (Segment Anything) for TensorFlow Datasets."""

import os
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent

_BEAM = ['apache-beam>=2.60']
# TensorFlow is needed, but users pick the package: `tensorflow` (CPU and
# GPU on Linux) or `tensorflow-cpu`. Depending on one would install it next
# to the other; see README "Installing".
_TF = ['tensorflow>=2.15']
_TF_CPU = ['tensorflow-cpu>=2.15']
# Only TFDS's own `tfds` command needs it (it imports mlcroissant at start).
_TFDS_CLI = ['mlcroissant']
_PYCOCOTOOLS = ['pycocotools>=2.0.7']
_VIZ = ['matplotlib>=3.7', 'pillow>=9']
_ARRAY_RECORD = ['array_record>=0.5']
# Fine-tuning KerasHub's SAM (keras_sam.py); tested with keras-hub 0.32.
_KERAS_HUB = ['keras-hub>=0.32,<0.33']
# The numpy training inputs (numpy_inputs.py) read ArrayRecord builds and
# decode JPEGs with PIL and masks with the C extension (_rle; its fallback is
# the TF decoder); Grain's loader on top (tested with 0.2.18).
_NUMPY_INPUTS = [*_ARRAY_RECORD, 'pillow>=9']
_GRAIN = ['grain>=0.2.18,<0.3', *_NUMPY_INPUTS]
# The docs site (mkdocs.yml); tested with mkdocs 1.6.0 and 1.6.1,
# mkdocs-material 9.5.0 and 9.8.2.
_DOCS = ['mkdocs>=1.6,<2', 'mkdocs-material>=9.5,<10']
# manual_dir on the Hugging Face Hub (hf://datasets/...) is listed with it,
# and its token lookup (HF_TOKEN, the stored login) is used for Hub links;
# tested with 2.4.0 (sources/hub.py).
_HUB = ['huggingface_hub>=0.24']
_TEST = [
    *_TF,
    *_TFDS_CLI,
    'pytest>=7',
    'dill',  # tfds.testing needs it and TFDS does not declare it.
    'psutil',  # benchmarks/prepare.py measures peak RSS with it.
    # tests/test_gcs.py: a GCS-API server on loopback; gcsfs (epath's fsspec
    # backend) and google-cloud-storage (Beam's gs:// file system) reach it
    # through STORAGE_EMULATOR_HOST; cryptography makes the certificate of
    # the TLS front that TensorFlow's GCS client reaches it through.
    'gcp-storage-emulator',
    'gcsfs',
    'google-cloud-storage',
    'cryptography',
    *_BEAM,
    *_PYCOCOTOOLS,
    *_VIZ,
    *_ARRAY_RECORD,
    *_KERAS_HUB,
    *_GRAIN,
    # torch is not here: PyPI's default torch wheel on x86_64 is a large CUDA
    # build. tests/test_numpy_inputs.py runs its DataLoader test when torch
    # is installed, and tests the dataset's protocol without it.
    # `export` writes webdataset shards with the stdlib alone; the tests read
    # them back with the webdataset package.
    'webdataset>=0.2',
    *_HUB,
]

setuptools.setup(
    name='segment_anything_tfds',
    version='2.0.0',
    description=(
        'SA-1B (Segment Anything, 11 M images, 1.1 B masks) for TensorFlow'
        ' Datasets: streaming Beam preparation, subsets and fast mask decoding.'
    ),
    long_description=(_HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    # CPython's tarfile parses pax headers in time quadratic in their
    # length before 3.10.15, 3.11.10, 3.12.6 and 3.13.0 (CVE-2024-6232,
    # also fixed in 3.8.20 and 3.9.20); prefer those or later. The floor
    # is not raised to them (CI and the dev machine run 3.11.7): tars.py
    # checks every tar header before tarfile reads it (extended headers at
    # most 64 KiB and well formed), which bounds that cost on every version.
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['segment_anything_tfds*']),
    package_data={
        'segment_anything_tfds.segment_anything': [
            'README.md',
            'CITATIONS.bib',
            'TAGS.txt',
            'checksums.tsv',
        ],
        # The published md5s of the 1000 tars (`checksums='known'`), and
        # where they come from.
        'segment_anything_tfds.sources': [
            'data/checklist.txt',
            'data/README.md',
        ],
    },
    include_package_data=True,
    # COCO RLE in C: the build-time check (prepare/records.check_counts)
    # and the numpy path's low-resolution mask decoder
    # (read/numpy_inputs.decode_masks_np). Optional: without a compiler,
    # builds run the check's plain-Python reference (the same verdicts,
    # slower) and the numpy path decodes with TensorFlow's `rle.decode`
    # (the same masks, slower).
    # Also the numpy path's area resize (numpy_inputs.resize_area_np), TF's
    # bit for bit: no fused multiply-adds (-ffp-contract=off); without the
    # extension it runs TensorFlow's kernel itself.
    ext_modules=[setuptools.Extension(
        'segment_anything_tfds._rle',
        ['segment_anything_tfds/_rle.c'], optional=True,
        extra_compile_args=[] if os.name == 'nt' else ['-ffp-contract=off']),
        # MD5 of several tars at once, one per SIMD lane (sources/md5x.py):
        # the first check of local tars against a list of md5s. Optional:
        # without it each tar is hashed by hashlib (the same digests).
        setuptools.Extension(
            'segment_anything_tfds._md5x',
            ['segment_anything_tfds/_md5x.c'], optional=True)],
    install_requires=[
        # The local build relies on a few TFDS internals (tfds_seam.py),
        # checked by tests/test_tfds_seam.py on the versions below.
        'tensorflow-datasets>=4.9.10,<4.10',
        'etils[epath]',
        'numpy',
        'tqdm',
        # The one HTTP client: downloads, HEAD probes and streamed tars.
        'requests>=2.28',
        # Buckets (gs://) are read with fsspec: gcsfs (sources/bucket.py),
        # on the launcher and on Dataflow's workers alike.
        'gcsfs',
        # HTTPResponse.read1 and .shutdown: bodies read as they arrive, and
        # a read stopped at its deadline (http.Body).
        'urllib3>=2.3',
        # Speed only: a faster JSON parser, and the C CRC-32C that lets local
        # builds write TFRecords without importing TensorFlow.
        'orjson',
        'google-crc32c',
        # TFDS 4.9.10 forgets it: on Python 3.11 it imports importlib_resources.
        'importlib_resources; python_version < "3.12"',
    ],
    extras_require={
        'tensorflow': _TF,
        'tensorflow-cpu': _TF_CPU,
        'tfds_cli': _TFDS_CLI,
        'beam': _BEAM,
        'gcp': ['apache-beam[gcp]>=2.60'],
        'pycocotools': _PYCOCOTOOLS,
        'viz': _VIZ,
        'array_record': _ARRAY_RECORD,
        'keras_hub': _KERAS_HUB,
        'grain': _GRAIN,
        # PyTorch's DataLoader over numpy_inputs.SamDataset; torch itself is
        # yours to install (CPU or CUDA build).
        'pytorch': _NUMPY_INPUTS,
        'hub': _HUB,
        'test': _TEST,
        'docs': _DOCS,
    },
    entry_points={
        'console_scripts': [
            'segment-anything-tfds=segment_anything_tfds.cli:main',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
