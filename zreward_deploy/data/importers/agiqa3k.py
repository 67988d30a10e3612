"""AGIQA-3K (Li et al. 2023, arXiv:2306.04717): 2,982 AI-generated images with a perceptual-quality
and a text-alignment MOS each.

Format (the set's ``data.csv``, github.com/lcysyzxdxc/AGIQA-3k-Database, and its README's column list):
``name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align``; ``name`` is the image file
(``AttnGAN_normal_000.jpg``) in the images folder of ``file.zip``; the MOS are normalised z-scores on
[0, 5] ("Normalized MOS and STD"), with their standard deviations across observers.

Default mapping: ``mos_quality`` -> realism (the study's "perception" score rates distortions, blur,
noise and unnatural texture: how real the image looks, not how appealing), ``mos_align`` -> alignment.
Only means and standard deviations are published (no per-observer ratings): the means become scores,
the standard deviations are kept in ``meta.std`` on the model's scale (there is no soft-target field in
the format). No official split: prompts are split by hash.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from ...errors import ZRewardInputError
from .base import ImageItem, Importer, SourceOptions, SourceRow, find_file, resolve_image
from .mapping import FieldSpec
from .sources import SourceProblem, iter_csv

REQUIRED = ("name", "prompt", "mos_quality", "mos_align")


class Agiqa3kImporter(Importer):
    name = "agiqa-3k"
    prefix = "agiqa3k"
    title = "AGIQA-3K"
    own_splits = False
    source_doc = "github.com/lcysyzxdxc/AGIQA-3k-Database (data.csv, README)"
    fields: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(
            "mos_quality", "score", 0.0, 5.0, "realism", why="perceptual quality: distortions, not appeal"
        ),
        FieldSpec("mos_align", "score", 0.0, 5.0, "alignment", why="text-image alignment"),
        FieldSpec("std_quality", "std", of="mos_quality"),
        FieldSpec("std_align", "std", of="mos_align"),
    )

    def __init__(self, src: Path, options: SourceOptions):
        super().__init__(src, options)
        self.csv = find_file(src, ["data.csv", "AIGC_MOS_Zscore.csv"], "AGIQA-3K data.csv")
        base = self.csv.parent
        # file.zip unpacks to file/; some copies keep the images beside data.csv or in images/
        self.image_dirs = [options.images] if options.images else [base / "file", base / "images", base]
        if options.images is not None and not options.images.is_dir():
            raise ZRewardInputError(str(options.images), "is not a folder of images")
        with open(self.csv, "rb") as f:
            header = f.readline().decode("utf-8-sig", "replace").strip().split(",")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ZRewardInputError(
                str(self.csv), f"is not AGIQA-3K's data.csv: no column {missing} (its header: {header})"
            )

    def rows(self, skip: int = 0) -> Iterator[SourceRow]:
        file = self.csv.name
        done = 0
        for line, row in iter_csv(self.csv):
            done += 1
            if done <= skip:
                continue
            if isinstance(row, SourceProblem):
                yield SourceRow.malformed(file, line, None, row.reason)
                continue
            name = (row.get("name") or "").strip()
            if not name or "/" in name or "\\" in name or name.startswith("."):
                yield SourceRow.malformed(file, line, "name", f"not an image file name: {name!r}")
                continue
            image = resolve_image([d / name for d in self.image_dirs])
            if image is None:
                where = " or ".join(str(d) for d in self.image_dirs)
                yield SourceRow.malformed(file, line, "image", f"missing image: no {name} in {where}")
                continue
            item = ImageItem(
                key=Path(name).stem,
                prompt=row.get("prompt") or "",
                image=image,
                scores={"mos_quality": row.get("mos_quality"), "mos_align": row.get("mos_align")},
                std={k: row[k] for k in ("std_quality", "std_align") if row.get(k) not in (None, "")},
                original={"name": name, **{k: row[k] for k in ("adj1", "adj2", "style") if row.get(k)}},
            )
            yield SourceRow(file, line, images=[item])
