"""A second real labelled text catalog, built offline from this machine's manual pages: section =
class, the NAME line's description and the start of DESCRIPTION = two text views (all-MiniLM-L6-v2,
the packaged model that ``pairwise_dask.prompts`` loads).

    PYTHONPATH=. python benchmarks/experiments/make_manpages.py OUTDIR [--cap 1200] [--seed 0]

Not Debian-shaped (7 classes, a different kind of text); its contents depend on which packages the
machine has installed, so the figures measured on it are only comparable on the same machine.
"""
from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SECTIONS = {
    "1": "user commands and programs", "2": "system calls", "3": "library functions",
    "4": "special files and devices", "5": "file formats and configuration files",
    "7": "overviews, conventions and miscellaneous topics", "8": "system administration commands and daemons",
}
TEMPLATE = "a manual page about {}"


def _clean(text: str) -> str:
    text = re.sub(r"^\.(?:\\\"|\").*$", "", text, flags=re.M)            # comments
    text = re.sub(r"^\.[A-Za-z]{1,3}\s?", "", text, flags=re.M)           # macros, keep their args
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\s[+-]?\d|\\\(..|\\&|\\e|\\-", lambda m: "-" if m.group() == "\\-" else "",
                  text)
    text = re.sub(r"\\.", "", text)
    return re.sub(r"\s+", " ", text).strip()


def parse(path: Path) -> tuple[str, str] | None:
    try:
        raw = gzip.open(path, "rt", errors="replace").read() if path.suffix == ".gz" else path.read_text(errors="replace")
    except (OSError, EOFError):
        return None
    if raw.startswith(".so "):
        return None  # an alias of another page
    secs = re.split(r"^\.S[Hh]\s+\"?([^\n\"]*)\"?\s*$", raw, flags=re.M)
    name = desc = ""
    for title, body in zip(secs[1::2], secs[2::2]):
        t = title.strip().upper()
        if t in ("NAME", "NOM", "NOMBRE") and not name:
            name = _clean(body)
        elif t == "DESCRIPTION" and not desc:
            desc = " ".join(_clean(body).split()[:60])
    if " - " in name:
        name = name.split(" - ", 1)[1]
    if len(name) < 5 or len(desc) < 20:
        return None
    return name, desc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--cap", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    rows = []
    for sec in SECTIONS:
        files = sorted(Path(f"/usr/share/man/man{sec}").glob("*"))
        files = [files[i] for i in rng.permutation(len(files))]
        got = 0
        for f in files:
            if got >= a.cap:
                break
            p = parse(f)
            if p:
                rows.append((f"man{sec}/{f.name}", p[0], p[1], SECTIONS[sec]))
                got += 1
        print(sec, got)
    from pairwise_dask.prompts import load_model

    model = load_model()
    ids, a_txt, b_txt, label = zip(*rows)
    ea = model.encode(list(a_txt), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    eb = model.encode(list(b_txt), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    names = list(SECTIONS.values())
    ec = model.encode([TEMPLATE.format(n) for n in names], normalize_embeddings=True)
    fsl = lambda m: pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(m, np.float32).ravel()), m.shape[1])  # noqa: E731
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(ids), "emb_a": fsl(ea), "emb_b": fsl(eb), "label": list(label)}),
                   out / "items.parquet", row_group_size=4000)
    pq.write_table(pa.table({"name": names, "embedding": fsl(ec)}), out / "classes.parquet")
    print(len(rows), "items written to", out)


if __name__ == "__main__":
    main()
