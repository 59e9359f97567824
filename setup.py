"""segment_anything_tfds: SA-1B (Segment Anything) for TensorFlow Datasets."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent

_BEAM = ['apache-beam>=2.60']
_PYCOCOTOOLS = ['pycocotools>=2.0.7']
_VIZ = ['matplotlib>=3.7', 'pillow>=9']
_ARRAY_RECORD = ['array_record>=0.5']
_TEST = [
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
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['segment_anything_tfds*']),
    package_data={
        'segment_anything_tfds.segment_anything': [
            'README.md',
            'CITATIONS.bib',
            'TAGS.txt',
            'checksums.tsv',
        ],
    },
    include_package_data=True,
    install_requires=[
        'tensorflow>=2.15',
        # The local build relies on a few TFDS internals (tfds_seam.py),
        # checked by tests/test_tfds_seam.py on the versions below.
        'tensorflow-datasets>=4.9.10,<4.10',
        'etils[epath]',
        'numpy',
        'tqdm',
        # The one HTTP client: downloads, HEAD probes and streamed tars.
        'requests>=2.28',
        # Speed only: a faster JSON parser, and the C CRC-32C that lets local
        # builds write TFRecords without importing TensorFlow.
        'orjson',
        'google-crc32c',
        # TFDS 4.9.10 forgets these: the `tfds` CLI imports mlcroissant, and on
        # Python 3.11 TFDS imports importlib_resources.
        'mlcroissant',
        'importlib_resources; python_version < "3.12"',
        # The local Beam build is the main path, so Beam is a core dependency.
        *_BEAM,
    ],
    extras_require={
        'beam': _BEAM,
        'gcp': ['apache-beam[gcp]>=2.60'],
        'pycocotools': _PYCOCOTOOLS,
        'viz': _VIZ,
        'array_record': _ARRAY_RECORD,
        'test': _TEST,
    },
    entry_points={
        'console_scripts': [
            'segment-anything-tfds=segment_anything_tfds.cli:main',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
