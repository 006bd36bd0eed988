"""The one place that names concrete methods: ``method.name`` in a config -> (class, options).

The library's own: :mod:`minedet.run` builds a run's method through it and ``minedet train`` lists its options.
"""

from __future__ import annotations

import dataclasses
import difflib

from minedet.errors import MinedetError
from minedet.methods.base import Method
from minedet.methods.acrst import Acrst, AcrstOptions, StacAcrst, StacAcrstOptions
from minedet.methods.co_mining import CoMining, CoMiningOptions
from minedet.methods.mean_teacher import MeanTeacher, MeanTeacherOptions
from minedet.methods.mixed import Mixed, MixedOptions
from minedet.methods.stac import Stac, StacOptions
from minedet.methods.supervised import Supervised, SupervisedOptions
from minedet.models.detector import DetectorAdapter
from minedet.options import from_dict

METHODS: dict[str, tuple[type[Method], type]] = {
    "supervised": (Supervised, SupervisedOptions),
    "co_mining": (CoMining, CoMiningOptions),
    "mean_teacher": (MeanTeacher, MeanTeacherOptions),
    "stac": (Stac, StacOptions),
    "acrst": (Acrst, AcrstOptions),
    "stac_acrst": (StacAcrst, StacAcrstOptions),
    "mixed": (Mixed, MixedOptions),
}


def build_method(cfg: dict, detector: DetectorAdapter, *, file: str | None = None) -> Method:
    """``cfg`` is the ``method`` section: ``name`` plus that method's options."""
    name = cfg.get("name")
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(METHODS)}"
        raise MinedetError(f"unknown method {name!r}{hint}", file=file)
    cls, opts_cls = METHODS[name]
    opts = from_dict(opts_cls, {k: v for k, v in cfg.items() if k != "name"}, where="method", file=file)
    return cls(detector, opts)


def method_options_help() -> str:
    lines = []
    for name, (_, opts) in METHODS.items():
        fields = ", ".join(f"{f.name}={f.default!r}" + (f" ({f.metadata['none']})" if "none" in f.metadata else "")
                           for f in dataclasses.fields(opts) if f.default is not dataclasses.MISSING)
        lines.append(f"  {name}: {fields}")
    lines.append("  (None turns an option off, except where the listing says what it stands for;"
                 " method.paper=true sets the paper's behaviour)")
    return "\n".join(lines)
