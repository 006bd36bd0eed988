"""``minedet data ...``: build, check, convert, degrade and describe COCO datasets.

Every output file is written atomically; bad input is a one-line MinedetError (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minedet.data.split_files import file_sha256, write_sparsified
from minedet.errors import MinedetError

_RAW = argparse.RawDescriptionHelpFormatter

SPARSIFY_HELP = """\
Erase box annotations of a COCO training set by a named protocol (sparsely annotated detection).

The protocols follow the BRL paper (Zhang, Chen, Shen, Hao, Zhu, Savvides, "Solving Missing-Annotation
Object Detection with Background Recalibration Loss", ICASSP 2020), as used by Co-mining (Wang, Yang,
Cao, Zhang, AAAI 2021). No official script exists; minedet's are seeded and exact:

  easy     erase exactly 1 box of every image that has any (an image with 1 box ends with 0)
  hard     erase floor(n/2) of every image's n boxes (an image with 1 box keeps it)
  extreme  keep exactly 1 box of every image that has any
  missing  erase round-half-up(P * n_c) of each category's n_c boxes, uniformly over the whole
           dataset (--rate 0.5 is COCO-50miss)
  keep1    keep one box per category per image (minedet's definition)

Images left without boxes stay in the set. The draw uses numpy default_rng(SEED) over annotations
sorted by id, so the result does not depend on the order of records in the file.

Writes OUT.json (the sparse set), OUT.hidden.json (the erased boxes under their original ids, same
images and categories) and OUT.manifest.json (seed, rule, rounding, per-category counts, the input's
SHA-256).

With --images P only P% of the images are sparsified (drawn by numpy default_rng(SEED).permutation) and
every image record says which it is: "labels": "sparse" or "complete" (a mixed file for the mixed
method; modes easy, hard, extreme, keep1). OUT.hidden.json then holds the erased boxes of every image.
"""

SEMI_HELP = """\
Split a COCO training set into labelled and unlabelled images (semi-supervised detection,
"COCO-standard" of Unbiased Teacher, Liu et al., ICLR 2021, used by ACRST, Zhang, Pan, Wang, AAAI 2022).

Default: k = round-half-up(P/100 * N) image ids are drawn WITHOUT replacement from the sorted image ids
with numpy default_rng(SEED) (MMDetection's split tool samples with replacement, a known bug). Images
without boxes take part like any other.

With --split-file COCO_supervision.txt the split of Unbiased Teacher is reproduced instead: the file
maps a percent string ("1.0") and a seed index ("0".."9", given by --seed) to POSITIONS, not image
ids, in detectron2's list: image ids sorted ascending, with images that have no non-crowd box removed
(117,266 images of COCO train2017). The number of positions must be floor(P/100 * that count).
Images removed by that filter are in neither set (as in Unbiased Teacher) and are listed in the manifest.

Writes, in --out-dir (default: beside the input), files named STEM.semiPpct.seedS.*:
labelled.json (labelled images and their boxes), unlabelled.json (the other images, no boxes),
unlabelled.hidden.json (their boxes) and manifest.json (the labelled image ids, sorted).

With --sparse S --mode M one mixed file is written instead, for the mixed method: P% of the images
flagged "labels": "complete" (boxes kept), S% "sparse" (boxes erased by 'minedet data sparsify --mode M'
with the same seed) and the rest "none" (every box erased), drawn by numpy default_rng(SEED).permutation.
Files STEM.mixedPcSs-M.seedS.json, .hidden.json (every erased box) and .manifest.json.
"""


CONVERT_HELP = """\
Convert annotations between COCO JSON and YOLO, Pascal VOC, LabelMe or CVAT for images 1.1 (read and
written through the globox library; XML is parsed with defusedxml first, DTDs refused).

  minedet data convert --from yolo|voc|labelme|cvat SRC... --out x.json     into one COCO file
  minedet data convert IN.json --to yolo|voc|labelme|cvat --out DIR         out of COCO

Coordinates: COCO, YOLO, LabelMe and CVAT use continuous pixel coordinates. VOC boxes are 1-based
inclusive pixel indices: x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1, h = ymax - ymin + 1 (and
back); 'difficult' boxes are kept as "difficult": 1. Without --from or --to, SRC is Pascal VOC.

YOLO: SRC is the labels folder (or a root holding labels/ and images/); the images give the sizes
(--images, default labels/ -> images/), the class names come from --names (data.yaml or one name a
line; default data.yaml / classes.txt / obj.names beside the labels); an image without a label file
has no boxes. LabelMe: rectangles and polygons (a polygon's box is its extent); file_name is the image
relative to SRC (or --images). CVAT: <box> only; the labels of <meta> give the class order.
Every shape becomes exactly one box or the conversion stops with one line naming the file, the shape
(YOLO 'line N', VOC 'object[i]', LabelMe 'shapes[i]', CVAT 'image[i] box[j]') and the rule: another
shape kind (LabelMe point/line/circle, CVAT polygon/points/...), too few points, a non-finite value,
zero width or height, or a box more than 1 px outside its image (within 1 px it is clipped). Nothing
is skipped, nothing is made up. The COCO file passes 'minedet data check --strict' before it is written.
Out of COCO: IN.json is read with 'data check --strict' rules (a zero-area or clipped box is an error).
YOLO writes DIR/labels/*.txt + DIR/data.yaml; VOC DIR/Annotations/*.xml; LabelMe one JSON per image
(to sit beside the image); CVAT DIR/annotations.xml. Crowd boxes are not exported (counted).
"""

MERGE_HELP = """\
Merge a reviewer's export of the review files 'minedet mine' wrote (OUT.labelstudio.json, OUT.cvat.xml)
back into a completed COCO dataset. ORIGINAL.json is the COCO file 'minedet mine --out' wrote: its
boxes marked "mined": true are the ones offered for review, the others are labelled.

Each box of the output carries its provenance:
  "provenance": "labelled"          a labelled box of ORIGINAL.json (always kept as it was)
  "provenance": "mined-accepted"    a mined box the reviewer kept (moved by <= --tolerance px, same class)
  "provenance": "mined-corrected"   a mined box the reviewer moved or re-classed ("mined_bbox" = before)
  "provenance": "added"             a box the reviewer drew
Mined boxes the reviewer deleted are known non-objects: they go into the top-level list "rejected"
(same record shape as an annotation, "provenance": "rejected"), which is not an annotation: training,
evaluation and 'data check' do not count it as an object. Mined boxes on images that are not in the
review export are left out. Reviewed boxes are matched to the offered ones by the region id the
review file carried (Label Studio keeps it), else by geometry: the same box within --tolerance, then
the best IoU >= 0.5.

Refused in one line (nothing written), as it cannot be a review of ORIGINAL.json: an ORIGINAL without
mined boxes (the training file), a REVIEWED that is ORIGINAL or a review file 'mine' wrote (or a
copy), a Label Studio export that is not JSON (JSON-MIN), a task whose minedet_image_id and file_name
name different images or whose region ids are not ORIGINAL's boxes, a review where no offered image
was reviewed or every reviewed image came back blank (the tool did not show the pre-annotations), and
any value that cannot be read (a coordinate or rotation that is not a finite number, an empty box, a
box outside its image, a field of the wrong type): an unreadable box is never taken for a rejection.
Images offered nothing (no mined box) that come back without boxes (a CVAT task of every image) were
not reviewed.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``minedet data`` and its subcommands (one ``_register_<cmd>`` each)."""
    p = subparsers.add_parser(
        "data",
        help="build, check, convert, sparsify, split and describe COCO datasets",
        description="Dataset tools: the digits demo set, checks, format conversion, review merging, annotation degradation, statistics.",
        formatter_class=_RAW,
    )
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    def _help(_args: argparse.Namespace) -> int:
        p.print_help(sys.stderr)
        return 2

    p.set_defaults(func=_help)

    _register_digits(sub)
    _register_sparsify(sub)
    _register_split_semi(sub)
    _register_stats(sub)
    _register_convert(sub)
    _register_merge_reviewed(sub)
    _register_check(sub)
    _register_tile(sub)
    _register_folds(sub)


def _register_digits(sub: argparse._SubParsersAction) -> None:
    """Add ``minedet data digits``."""
    d = sub.add_parser(
        "digits",
        help="build the embedded digits dataset (handwritten digits composed into scenes)",
        description=(
            "Build the 'digits' detection dataset from scikit-learn's bundled handwritten digits: real handwriting\n"
            "composed into scenes with complete ground truth (COCO JSON + PNG). Deterministic by seed; no digit\n"
            "sample appears in both train and val. Degrade it with 'minedet data sparsify' / 'split-semi'."
        ),
        formatter_class=_RAW,
    )
    d.add_argument("out_dir", metavar="OUT_DIR", help="folder to create the dataset in")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--train", type=int, default=1000, metavar="N", help="training images (default 1000)")
    d.add_argument("--val", type=int, default=200, metavar="M", help="validation images (default 200)")
    d.add_argument("--imbalance", type=float, default=1.0, metavar="R",
                   help="class imbalance ratio, most/least frequent digit (default 1.0: balanced)")
    d.add_argument("--image-size", type=int, default=128, metavar="PX", help="square image side in pixels (default 128)")
    d.set_defaults(func=_cmd_digits)


def _register_sparsify(sub: argparse._SubParsersAction) -> None:
    """Add ``minedet data sparsify``."""
    s = sub.add_parser("sparsify", help="erase boxes by the easy/hard/extreme/50miss/keep1 protocols",
                       description=SPARSIFY_HELP, formatter_class=_RAW)
    s.add_argument("input", metavar="IN.json", help="COCO training annotations")
    s.add_argument("output", metavar="OUT.json", help="sparse annotations to write (name must end in .json)")
    s.add_argument("--mode", required=True, choices=["easy", "hard", "extreme", "missing", "keep1"],
                   help="the erasure protocol (see above)")
    s.add_argument("--seed", type=int, required=True, metavar="S", help="random seed of the draw (required, for reproducibility)")
    s.add_argument("--rate", type=float, default=None, metavar="P",
                   help="fraction of each category's boxes erased, mode 'missing' only (0.5 = COCO-50miss)")
    s.add_argument("--images", type=float, default=None, metavar="P",
                   help="sparsify only P%% of the images and flag each image sparse or complete (a mixed file)")
    s.set_defaults(func=_cmd_sparsify)


def _register_split_semi(sub: argparse._SubParsersAction) -> None:
    """Add ``minedet data split-semi``."""
    m = sub.add_parser("split-semi", help="labelled/unlabelled split (COCO-standard, or Unbiased Teacher's file)",
                       description=SEMI_HELP, formatter_class=_RAW)
    m.add_argument("input", metavar="IN.json", help="COCO training annotations")
    m.add_argument("--percent", type=float, required=True, metavar="P", help="labelled percentage, in (0, 100]")
    m.add_argument("--seed", type=int, required=True, metavar="S",
                   help="random seed; with --split-file, the seed index in that file")
    m.add_argument("--out-dir", default=None, metavar="DIR", help="output folder (default: the input's folder)")
    m.add_argument("--split-file", default=None, metavar="COCO_supervision.txt",
                   help="reproduce Unbiased Teacher's split from its position file")
    m.add_argument("--sparse", type=float, default=None, metavar="S",
                   help="also flag S%% of the images sparse (with --mode): one mixed file for the mixed method")
    m.add_argument("--mode", default=None, choices=["easy", "hard", "extreme", "keep1"],
                   help="with --sparse: how the sparse images' boxes are erased (see minedet data sparsify)")
    m.set_defaults(func=_cmd_split_semi)


def _register_stats(sub: argparse._SubParsersAction) -> None:
    """Add ``minedet data stats``."""
    t = sub.add_parser(
        "stats",
        help="per-category counts, boxes per image, box sizes",
        description=(
            "Print per-category instance and image counts, the boxes-per-image histogram, images without boxes,\n"
            "and box sizes in sqrt(area) bins with COCO small/medium/large counts (area < 32^2, < 96^2, >= 96^2,\n"
            "from the annotation's 'area' as pycocotools uses it)."
        ),
        formatter_class=_RAW,
    )
    t.add_argument("input", metavar="IN.json", help="COCO annotations to describe")
    t.add_argument("--plot", default=None, metavar="OUT.png", help="also draw the histograms into a PNG")
    t.add_argument("--json", action="store_true", help="print the statistics as JSON instead of a table")
    t.set_defaults(func=_cmd_stats)


def _register_convert(sub: argparse._SubParsersAction) -> None:
    """Add ``minedet data convert``."""
    c = sub.add_parser("convert", help="YOLO / Pascal VOC / LabelMe / CVAT <-> COCO JSON",
                       description=CONVERT_HELP, formatter_class=_RAW)
    c.add_argument("sources", nargs="+", metavar="SRC",
                   help="annotation files or folders (--from), or one COCO JSON (--to)")
    c.add_argument("--from", dest="from_fmt", choices=["yolo", "voc", "labelme", "cvat"], default=None,
                   help="read this format into one COCO JSON (default voc, unless --to is given)")
    c.add_argument("--to", dest="to_fmt", choices=["yolo", "voc", "labelme", "cvat"], default=None,
                   help="write the COCO JSON SRC in this format into the folder --out")
    c.add_argument("--out", required=True, metavar="OUT", help="COCO JSON to write (--from), or a folder (--to)")
    c.add_argument("--classes", default=None, metavar="a,b,c",
                   help="category names in order (ids 1..K); default: every name found, sorted (CVAT: its <meta> labels)")
    c.add_argument("--names", default=None, metavar="FILE",
                   help="YOLO class names: data.yaml (names:) or a names file, one a line "
                        "(default: data.yaml / classes.txt / obj.names beside the labels)")
    c.add_argument("--images", default=None, metavar="DIR",
                   help="YOLO: the image folder (default: labels/ -> images/); LabelMe: the folder file_name is relative to")
    c.add_argument("--filename-from-stem", action="store_true",
                   help="VOC: use the XML file's stem + .jpg as file_name instead of <filename>")
    c.set_defaults(func=_cmd_convert)


def _register_merge_reviewed(sub: argparse._SubParsersAction) -> None:
    """Add ``minedet data merge-reviewed``."""
    r = sub.add_parser("merge-reviewed", help="merge a reviewed export (Label Studio / CVAT / COCO) into a completed COCO",
                       description=MERGE_HELP, formatter_class=_RAW)
    r.add_argument("original", metavar="ORIGINAL.json", help="the COCO file 'minedet mine --out' wrote (labelled + mined boxes)")
    r.add_argument("reviewed", metavar="REVIEWED", help="the reviewer's export: Label Studio JSON, CVAT for images XML or COCO JSON")
    r.add_argument("--format", required=True, choices=["labelstudio", "cvat", "coco"], help="format of REVIEWED")
    r.add_argument("--out", required=True, metavar="COMPLETED.json", help="completed COCO JSON to write")
    r.add_argument("--tolerance", type=float, default=0.5, metavar="PX",
                   help="a mined box moved by at most this many pixels (each side), same class, counts as accepted (default 0.5)")
    r.set_defaults(func=_cmd_merge_reviewed)


def _register_check(sub: argparse._SubParsersAction) -> None:
    """Add ``minedet data check``."""
    k = sub.add_parser(
        "check",
        help="validate a COCO file (and its images)",
        description=(
            "Validate a COCO detection file: structure, unique ids, references, boxes, file names (relative, inside\n"
            "the image folder). Boxes partly outside their image are clipped and zero-area boxes dropped when\n"
            "loading; this command counts them, and --strict makes them errors. With --images DIR every image\n"
            "file is opened, verified, and its size compared with the record."
        ),
        formatter_class=_RAW,
    )
    k.add_argument("input", metavar="IN.json", help="COCO annotations to validate")
    k.add_argument("--images", default=None, metavar="DIR", help="image folder: check every image file")
    k.add_argument("--strict", action="store_true", help="clipped or zero-area boxes are errors")
    k.set_defaults(func=_cmd_check)


# --------------------------------------------------------------------------------------------------
# handlers


def _cmd_digits(args: argparse.Namespace) -> int:
    try:
        from minedet.data.digits import build_digits
    except ModuleNotFoundError as e:  # pragma: no cover - the module ships with minedet
        raise MinedetError(f"the digits builder is not available ({e})") from None
    from minedet.io import check_outputs

    check_outputs([], folders=[args.out_dir])
    for name, v, lo in (("--train", args.train, 1), ("--val", args.val, 1), ("--image-size", args.image_size, 32)):
        if v < lo:
            raise MinedetError(f"{name} must be at least {lo}, got {v}")
    if not args.imbalance >= 1.0:
        raise MinedetError(f"--imbalance must be >= 1 (most/least frequent class), got {args.imbalance}")
    paths = build_digits(
        args.out_dir,
        seed=args.seed,
        n_train=args.train,
        n_val=args.val,
        image_size=args.image_size,
        imbalance=args.imbalance,
        progress=True,
    )
    print(f"root        {paths.root}")
    print(f"train       {paths.train_json}")
    print(f"val         {paths.val_json}")
    print(f"images      {paths.image_root}")
    return 0


def _cmd_sparsify(args: argparse.Namespace) -> int:
    if args.images is not None:
        return _write_mixed(args, 100 - args.images, args.images, Path(args.output),
                            f"minedet data sparsify {args.input} {args.output} --mode {args.mode} --seed {args.seed} "
                            f"--images {_pct(args.images)}")
    out = Path(args.output)
    hidden_path = out.with_suffix(".hidden.json")
    manifest = write_sparsified(args.input, out, args.mode, args.seed, args.rate)
    a = manifest["annotations"]
    print(f"{out}: {a['after']} of {a['before']} boxes kept ({manifest['images_emptied']} images left without boxes)")
    print(f"{hidden_path}: {a['hidden']} hidden boxes")
    print(out.with_suffix(".manifest.json"))
    return 0


def _pct(p: float) -> str:
    return f"{p:g}"


def _cmd_split_mixed(args: argparse.Namespace) -> int:
    if args.mode is None or args.split_file:
        raise MinedetError("--sparse needs --mode (easy, hard, extreme or keep1) and takes no --split-file")
    src = Path(args.input)
    out_dir = Path(args.out_dir) if args.out_dir else src.parent
    stem = src.name[:-5] if src.name.endswith(".json") else src.name
    out = out_dir / f"{stem}.mixed{_pct(args.percent)}c{_pct(args.sparse)}s-{args.mode}.seed{args.seed}.json"
    return _write_mixed(args, args.percent, args.sparse, out,
                        f"minedet data split-semi {src} --percent {_pct(args.percent)} --sparse {_pct(args.sparse)} "
                        f"--mode {args.mode} --seed {args.seed}")


def _write_mixed(args: argparse.Namespace, complete: float, sparse: float, out: Path, command: str) -> int:
    """Write a mixed file OUT.json (images flagged complete / sparse / none), OUT.hidden.json and
    OUT.manifest.json (written last: its presence marks a complete split)."""
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.mixed import split_mixed
    from minedet.io import check_outputs, write_json_atomic

    if out.suffix != ".json":
        raise MinedetError("output name must end in .json", file=str(out))
    if args.mode == "missing":
        raise MinedetError("a mixed file sparsifies per image: use --mode easy, hard, extreme or keep1")
    src = Path(args.input)
    paths = {k: out.with_suffix(k + ".json") if k else out for k in ("", ".hidden", ".manifest")}
    check_outputs([src], files=paths.values(), folders=[out.parent])
    res = split_mixed(load_coco(src).raw, complete, sparse, args.mode, args.seed)
    manifest = {**res.manifest, "source_file": str(src), "source_file_sha256": file_sha256(src), "command": command}
    save_coco(paths[".hidden"], res.hidden, validate=False)
    save_coco(paths[""], res.mixed, validate=False)
    write_json_atomic(paths[".manifest"], manifest, indent=1)
    n = manifest["images"]
    print(f"{paths['']}: {n['complete']} complete, {n['sparse']} sparse, {n['none']} unlabelled images, "
          f"{manifest['annotations']['kept']} boxes")
    print(f"{paths['.hidden']}: {manifest['annotations']['hidden']} hidden boxes")
    print(paths[".manifest"])
    return 0


def _cmd_split_semi(args: argparse.Namespace) -> int:
    if args.sparse is not None:
        return _cmd_split_mixed(args)
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.splits import split_semi, split_semi_from_supervision_file
    from minedet.io import check_outputs, write_json_atomic

    src = Path(args.input)
    out_dir = Path(args.out_dir) if args.out_dir else src.parent
    stem = src.name[:-5] if src.name.endswith(".json") else src.name
    tag = f"{stem}.semi{_pct(args.percent)}pct.seed{args.seed}"
    if args.split_file:
        tag += ".ubteacher"
    paths = {k: out_dir / f"{tag}.{k}.json" for k in ("labelled", "unlabelled", "unlabelled.hidden", "manifest")}
    check_outputs([src, args.split_file], files=paths.values(), folders=[out_dir])
    data = load_coco(src)
    if args.split_file:
        if data.emptied_image_ids:
            raise MinedetError(
                f"{len(data.emptied_image_ids)} image(s) lost their only boxes to the zero-area rule when loading "
                f"(e.g. image id={min(data.emptied_image_ids)}), so positions in the split file would shift; "
                "fix those boxes first",
                file=str(src),
            )
        res = split_semi_from_supervision_file(data.raw, args.split_file, args.percent, args.seed)
    else:
        res = split_semi(data.raw, args.percent, args.seed)
    manifest = dict(res.manifest)
    manifest["source_file"] = str(src)
    manifest["source_file_sha256"] = file_sha256(src)
    manifest["outputs"] = {k: str(v) for k, v in paths.items() if k != "manifest"}
    manifest["command"] = f"minedet data split-semi {src} --percent {_pct(args.percent)} --seed {args.seed}" + (
        f" --split-file {args.split_file}" if args.split_file else ""
    )
    save_coco(paths["labelled"], res.labelled, validate=False)
    save_coco(paths["unlabelled"], res.unlabelled, validate=False)
    save_coco(paths["unlabelled.hidden"], res.hidden, validate=False)
    write_json_atomic(paths["manifest"], manifest, indent=1)
    print(f"{paths['labelled']}: {manifest['labelled']} labelled images, {manifest['annotations']['labelled']} boxes")
    print(f"{paths['unlabelled']}: {manifest['unlabelled']} unlabelled images")
    print(f"{paths['unlabelled.hidden']}: {manifest['annotations']['hidden']} hidden boxes")
    print(f"{paths['manifest']}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from minedet.data.coco import load_coco
    from minedet.data.stats import dataset_stats, format_stats, plot_stats

    data = load_coco(args.input)
    st = dataset_stats(data)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(format_stats(st))
    if args.plot:
        from minedet.io import check_outputs

        if Path(args.plot).suffix.lower() != ".png":
            raise MinedetError("plot name must end in .png", file=args.plot)
        check_outputs([args.input], files=[args.plot])
        plot_stats(st, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.formats import coco_to_format, convert_to_coco, find_files
    from minedet.io import check_outputs

    out = Path(args.out)
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    if args.to_fmt is not None:
        if args.from_fmt is not None:
            raise MinedetError("give --from (into COCO) or --to (out of COCO), not both")
        if len(args.sources) != 1:
            raise MinedetError("--to takes one COCO JSON file")
        check_outputs(args.sources, folders=[out])
        data = load_coco(args.sources[0], strict=True)  # a box it would drop or clip is an error, never silent
        res = coco_to_format(data, args.to_fmt, out, inputs=args.sources)
        print(f"{out}: {res['images']} images, {res['boxes']} boxes as {args.to_fmt} ({len(res['files'])} files)"
              + (f"; {res['crowd_skipped']} crowd boxes not exported" if res["crowd_skipped"] else ""))
        return 0
    fmt = args.from_fmt or "voc"
    if out.suffix != ".json":
        raise MinedetError("output name must end in .json", file=str(out))
    suffix = {"voc": ".xml", "cvat": ".xml", "labelme": ".json"}.get(fmt)
    found = [] if suffix is None else find_files(args.sources, suffix, sub="Annotations" if fmt == "voc" else None)
    check_outputs([*args.sources, *found, args.images, args.names], files=[out])
    d = convert_to_coco(fmt, args.sources, class_names=classes, images=args.images, names_file=args.names,
                        filename_from_stem=args.filename_from_stem)
    save_coco(out, d)
    n_diff = sum(a.get("difficult", 0) for a in d["annotations"])
    print(
        f"{out}: {len(d['images'])} images, {len(d['annotations'])} boxes"
        + (f" ({n_diff} difficult)" if fmt == "voc" else "")
        + f", {len(d['categories'])} categories: {', '.join(c['name'] for c in d['categories'])}"
    )
    return 0


def _cmd_merge_reviewed(args: argparse.Namespace) -> int:
    from minedet.data.coco import load_coco, save_coco
    from minedet.io import check_outputs
    from minedet.review import merge_reviewed, read_reviewed

    src, rev, out = Path(args.original), Path(args.reviewed), Path(args.out)
    if out.suffix != ".json":
        raise MinedetError("output name must end in .json", file=str(out))
    check_outputs([src, rev], files=[out])
    if not (args.tolerance >= 0):
        raise MinedetError(f"--tolerance must be >= 0, got {args.tolerance}")
    original = load_coco(src)
    reviewed = read_reviewed(rev, args.format, original)
    merged = merge_reviewed(original, reviewed, tolerance=args.tolerance)
    save_coco(out, merged.coco)
    c = merged.counts
    print(f"{out}: {len(merged.coco['annotations'])} boxes on {len(original.images)} images "
          f"({c['reviewed_images']} reviewed)")
    print("  " + ", ".join(f"{k} {c[k]}" for k in ("labelled", "mined-accepted", "mined-corrected", "added", "rejected")))
    if c["unreviewed_mined"]:
        print(f"  {c['unreviewed_mined']} mined boxes on images nobody reviewed were left out")
    if c["labelled_changed"]:
        print(f"  {c['labelled_changed']} labelled boxes were moved or deleted in the review; they are kept as labelled "
              "(edit ORIGINAL.json to change labelled boxes)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from minedet.data.coco import load_coco

    data = load_coco(args.input, strict=args.strict, image_root=args.images, check_images=args.images is not None)
    n_ann = len(data.raw["annotations"])
    empty = sum(1 for v in data.anns_by_image.values() if not v)
    print(f"{args.input}: OK")
    print(f"  images {len(data.images)} ({empty} without boxes), annotations {n_ann}, categories {len(data.categories)}")
    print(f"  boxes clipped to their image: {data.n_clipped}; zero-area boxes dropped: {data.n_dropped}")
    if args.images is not None:
        print(f"  image files checked: {len(data.images)} in {args.images}")
    return 0


# --------------------------------------------------------------------------------------------------
# tile (big images)

TILE_HELP = """\
Cut the big images of a COCO dataset into tiles of SIZE x SIZE px that overlap their neighbours by
at least PX px (the last tile of a row or column ends on the image border; an image smaller than SIZE
is one tile). A box crossing a tile edge is kept in that tile, clipped, when at least --min-visible of
its area is inside; less visible, it is kept as "iscrowd": 1 (--cut crowd: evaluation and mining ignore
it) or left out (--cut drop).

Writes OUT_DIR/images/<name>_x<X>_y<Y>.png and OUT_DIR/tiles.json (last). Each tile's image record
carries the manifest back to its big image, "tile": {"source": ID, "x": X, "y": Y, ...}, and each
annotation its "source_ann" id: train, evaluate and mine on OUT_DIR/tiles.json like any COCO file, and
predict on big images with 'minedet predict --tile SIZE --overlap PX'.

Images whose names differ only by case or suffix (a.png, a.PNG, a.jpg) get tiles named <stem>_id<ID>_x..
so no tile is written over another. An image that is a symlink inside --images to a file outside it is
refused (as a file_name climbing out with '..' is), in this and every other command; set the
environment variable MINEDET_FOLLOW_LINKS=1 to follow such links. Images are read through one guard:
more pixels than Pillow's MAX_IMAGE_PIXELS (about 89 Mpx: a decompression bomb) or a truncated file is one
line; to tile a larger orthomosaic, raise the limit with MINEDET_MAX_PIXELS=<pixels>.
"""


def _register_tile(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tile", help="cut big images into overlapping tiles (COCO JSON + PNGs + manifest)",
                       description=TILE_HELP, formatter_class=_RAW)
    t.add_argument("input", metavar="IN.json", help="COCO annotations of the big images")
    t.add_argument("--images", required=True, metavar="DIR", help="folder the big images' file_name entries are relative to")
    t.add_argument("--size", type=int, required=True, metavar="N", help="tile side in pixels")
    t.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="minimum overlap of neighbouring tiles in pixels (default: a quarter of --size); "
                        "choose it larger than the objects")
    t.add_argument("--min-visible", type=float, default=0.5, metavar="F",
                   help="keep a cut box (clipped) when at least this fraction of its area is in the tile (default 0.5)")
    t.add_argument("--cut", choices=["crowd", "drop"], default="crowd",
                   help="what to do with a box less visible than that: keep it as iscrowd=1 (default) or drop it")
    t.add_argument("--out", required=True, metavar="OUT_DIR", help="folder to write tiles.json and images/ into")
    t.set_defaults(func=_cmd_tile)


def _cmd_tile(args: argparse.Namespace) -> int:
    from minedet.data.coco import load_coco
    from minedet.data.tiles import check_tiling, tile_coco, write_tiles
    from minedet.engine.tiled import default_overlap
    from minedet.io import check_outputs

    src, out = Path(args.input), Path(args.out)
    overlap = default_overlap(args.size) if args.overlap is None else args.overlap
    check_tiling(args.size, overlap)
    data = load_coco(src, image_root=args.images, check_images=True)
    tiled = tile_coco(data, args.size, overlap, min_visible=args.min_visible, cut=args.cut)
    check_outputs([src, args.images, *(Path(args.images) / im["file_name"] for im in data.images)],
                  files=[out / "tiles.json", *(out / im["file_name"] for im in tiled.coco["images"])],
                  folders=[out, out / "images"])
    path = write_tiles(tiled, args.images, out, progress=True)
    n_empty = sum(1 for im in tiled.coco["images"]) - len({a["image_id"] for a in tiled.coco["annotations"]})
    print(f"{path}: {len(tiled.coco['images'])} tiles of {args.size} px (overlap {overlap} px) from "
          f"{len(data.images)} images, {n_empty} tiles without boxes")
    print(f"  boxes: {tiled.n_kept} kept (whole or >= {args.min_visible:g} visible), {tiled.n_cut} cut below that "
          f"kept as crowd, {tiled.n_dropped} dropped")
    print(f"  images: {out / 'images'}")
    return 0


FOLDS_HELP = """\
Split a labelled COCO dataset into K folds for held-out mining: each image is then mined by a model
that never trained on it. A model mining its own training images has been taught that their
unlabelled objects are background and scores them low; a model that never saw the image does not
(on the nuclei benchmark of docs/benchmarks.md: mined recall 0.07 on its own images; see there for
held-out folds).

Tiles of one big image ('minedet data tile') stay in one fold; other images are shuffled (--seed)
and dealt to the smallest fold. One big image (an orthomosaic) or a few: --strips S cuts each into S
strips along its longer side, and the strips are dealt instead. A fold's training set leaves out
every tile that overlaps one of its held-out tiles (tiled with --overlap, the row along a seam), so a
held-out tile shares no pixel with its model's training set.

Writes OUT_DIR/foldF.train.json (the data without fold F's images) for F = 0..K-1 and
OUT_DIR/folds.json (each fold's image ids). Then:

  minedet train CONFIG --train OUT_DIR/fold0.train.json --images IMAGES --out runs/fold0   # ... one per fold
  minedet mine 'runs/fold{fold}/model.pt' IN.json --folds OUT_DIR/folds.json --images IMAGES --out mined.json
"""


def _register_folds(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("folds", help="K held-out folds for mining each image with a model that did not train on it",
                       description=FOLDS_HELP, formatter_class=_RAW)
    f.add_argument("input", metavar="IN.json", help="labelled COCO annotations")
    f.add_argument("--k", type=int, default=2, help="number of folds (default 2)")
    f.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    f.add_argument("--strips", type=int, default=1,
                   help="cut each big image's tiles into this many strips along its longer side, each dealt to a "
                        "fold on its own (default 1: a big image's tiles stay in one fold)")
    f.add_argument("--out-dir", required=True, metavar="OUT_DIR", help="folder to write foldF.train.json and folds.json into")
    f.set_defaults(func=_cmd_folds)


def _cmd_folds(args: argparse.Namespace) -> int:
    from minedet.data.coco import load_coco, read_json_file, save_coco
    from minedet.data.folds import assign_folds, fold_training_set, folds_record
    from minedet.io import write_json_atomic

    from minedet.io import check_outputs

    src, out = Path(args.input), Path(args.out_dir)
    trains = [out / f"fold{f}.train.json" for f in range(max(args.k, 0))]
    check_outputs([src], files=[*trains, out / "folds.json"], folders=[out])
    source = read_json_file(src)
    data = load_coco(src)
    folds = assign_folds(data, args.k, args.seed, args.strips)  # every check before anything is written
    sets = [fold_training_set(source, ids) for ids in folds]
    for f, train in enumerate(sets):
        if not train["images"]:
            raise MinedetError(f"fold {f} leaves no image to train on (every other tile overlaps one it holds out): "
                               "use fewer --strips or tiles with less --overlap", file=str(src))
    out.mkdir(parents=True, exist_ok=True)
    for f, train in enumerate(sets):
        save_coco(trains[f], train)
    write_json_atomic(out / "folds.json", folds_record(str(src), folds, args.seed, [str(p) for p in trains],
                                                       args.strips), indent=1)
    for f, ids in enumerate(folds):
        seam = len(data.images) - len(ids) - len(sets[f]["images"])
        print(f"fold {f}: {len(ids)} images held out, train on {trains[f]} ({len(sets[f]['images'])} images"
              f"{f'; {seam} tiles overlapping a held-out one left out' if seam else ''})")
    print(f"folds: {out / 'folds.json'}; train one model per fold, then mine with "
          f"'minedet mine \'RUNS/fold{{fold}}/model.pt\' {src} --folds {out / 'folds.json'} ...'")
    return 0
