"""meta.json (SPEC §10) for the benchmarks as downloaded, the VCP-CLIP authors'
meta_<dataset>.json for their standardised layout (SPEC_VCP §11), and a synthetic dataset.

    python -m generate_dataset_json mvtec --root data/mvtec
    python -m generate_dataset_json mvisa --root data --dataset mvtec   # data/meta_mvtec.json

or, from Python, `write_meta(build_meta("mvtec", root), root / "meta.json")` and
`build_mvisa_meta(data, "mvtec")`. The datasets and their layouts are the rows of
`registry.DATASETS`.
"""

from .files import DatasetError
from .meta import DatasetWarning, build_meta, format_table, write_meta
from .mvisa import build_mvisa_meta
from .registry import DATASETS, get_spec
from .spec import DatasetSpec
from .synthetic import make_synthetic_dataset

__all__ = ["DATASETS", "DatasetError", "DatasetSpec", "DatasetWarning", "build_meta", "build_mvisa_meta",
           "format_table", "get_spec", "make_synthetic_dataset", "write_meta"]
