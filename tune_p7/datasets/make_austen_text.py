"""Rebuild ``austen.txt.gz`` (one document per chapter) from Debian's r-cran-janeaustenr.

Build-time tool, not imported by tune_p7. Needs the PyPI package ``rdata`` (reads R's
serialized objects) and the Debian package file, which needs no R installation::

    apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb deb/
    pip install rdata
    python tune_p7/datasets/make_austen_text.py deb/ tune_p7/datasets/austen.txt.gz

The R package keeps its data in a lazy-load database (``data/Rdata.rdx`` index +
``data/Rdata.rdb`` blobs); each novel is a character vector of the Project Gutenberg
lines. Cleaning, per novel: keep the text from the first "Chapter N" heading on, one
document per chapter; drop "VOLUME N" headings, end marks (THE END, FINIS), editorial
bracketed notes about editions, the editor's "A NOTE ON THE TEXT" after Northanger
Abbey, ``* * *`` separators and the ``_underscore_`` italics marks; join each
paragraph's wrapped lines into one line. The output is the text format read by
``tune_p7.corpus`` (see its module docstring).
"""

from __future__ import annotations

import argparse
import gzip
import re
import struct
import zlib
from pathlib import Path

import rdata

# R object name -> (document name prefix, title), in publication order.
NOVELS = {
    "sensesensibility": ("sense-and-sensibility", "Sense and Sensibility (1811)"),
    "prideprejudice": ("pride-and-prejudice", "Pride and Prejudice (1813)"),
    "mansfieldpark": ("mansfield-park", "Mansfield Park (1814)"),
    "emma": ("emma", "Emma (1815)"),
    "northangerabbey": ("northanger-abbey", "Northanger Abbey (1818)"),
    "persuasion": ("persuasion", "Persuasion (1818)"),
}
DEB_VERSION = "1.0.0-1"
CHAPTER = re.compile(r"^chapter [\divxlc]+\.?$", re.IGNORECASE)
DROP_LINE = re.compile(r"^(volume [ivx]+|the end|finis|[* ]+)$", re.IGNORECASE)
EDITORIAL = re.compile(r"^\[.*(edition|volume).*\]$", re.IGNORECASE)
ITALICS = re.compile(r"_([^_]+)_")
HEADER = f"""\
# corpus: austen
# title: Jane Austen's six completed novels, one document per chapter
# source: Debian package r-cran-janeaustenr {DEB_VERSION} (CRAN janeaustenr 1.0.0 by Julia Silge; texts from Project Gutenberg)
# license: novels public domain; janeaustenr packaging MIT
# rebuild: python tune_p7/datasets/make_austen_text.py DEB_DIR tune_p7/datasets/austen.txt.gz
# format: a line "### NAME" starts document NAME; one paragraph per line, blank line between paragraphs
"""


def read_novels(deb_root: Path) -> dict[str, list[str]]:
    """Read every novel from the extracted .deb tree.

    Input: the folder that ``dpkg-deb -x`` wrote. Output: R object name -> list of text
    lines (the R character vector, one printed line each).
    """
    data = next(deb_root.glob("usr/lib/R/site-library/janeaustenr/data"))
    index = rdata.read_rds(data / "Rdata.rdx")["variables"]
    blob = (data / "Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in index.items():
        record = blob[int(offset) : int(offset) + int(length)]
        (size,) = struct.unpack(">I", record[:4])
        raw = zlib.decompress(record[4:])
        assert len(raw) == size, f"{name}: corrupt lazy-load record"
        parsed = rdata.parser.parse_data(raw, extension=".rds")
        novels[str(name)] = [str(line) for line in rdata.conversion.convert(parsed)]
    return novels


def split_chapters(lines: list[str]) -> list[list[str]]:
    """Cut a novel's lines at the chapter headings; front matter before chapter 1 is dropped.

    Output: one list of raw lines per chapter, heading excluded.
    """
    chapters: list[list[str]] = []
    for line in lines:
        if CHAPTER.match(line.strip()):
            chapters.append([])
        elif chapters:
            if line.strip() == "A NOTE ON THE TEXT":  # editor's afterword, Northanger Abbey
                break
            chapters[-1].append(line)
    return chapters


def paragraphs(lines: list[str]) -> list[str]:
    """Join wrapped lines into cleaned paragraphs (one string each, single-spaced)."""
    result, current = [], []
    for line in lines + [""]:
        text = line.strip()
        if text and not DROP_LINE.match(text):
            current.append(text)
        elif not text and current:
            paragraph = ITALICS.sub(r"\1", " ".join(" ".join(current).split()))
            if not EDITORIAL.match(paragraph):
                result.append(paragraph)
            current = []
    return result


def render(novels: dict[str, list[str]]) -> str:
    """The whole corpus as marker text: header, then ``### prefix/chNN`` + paragraphs."""
    parts = [HEADER]
    for key, (prefix, _title) in NOVELS.items():
        for number, chapter in enumerate(split_chapters(novels[key]), start=1):
            parts.append(f"### {prefix}/ch{number:02d}\n" + "\n\n".join(paragraphs(chapter)) + "\n")
    return "\n".join(parts)


def main() -> None:
    """CLI: DEB_DIR OUT (.txt or .txt.gz); prints chapter and word counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("deb_dir", type=Path, help="folder written by dpkg-deb -x")
    parser.add_argument("out", type=Path, help="output text file (.gz: gzip, mtime 0)")
    args = parser.parse_args()
    text = render(read_novels(args.deb_dir))
    data = text.encode("utf-8")
    if args.out.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    args.out.write_bytes(data)
    print(f"{args.out}: {text.count(chr(10) + '### ')} chapters, {len(text.split())} words")


if __name__ == "__main__":
    main()
