"""Deterministic demo CSV files (``manage.py operations make-csv``): the same rows every time."""

import datetime
from pathlib import Path

RECORD_HEADER = ("id", "name", "email", "amount", "date")
PEOPLE_HEADER = ("first_name", "last_name", "gender", "company")

FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus",
         "Margaret", "Dennis", "Hedy", "Tim", "Katherine", "Guido", "Sophie", "Niklaus", "Joan", "Bjarne"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman",
        "Torvalds", "Hamilton", "Ritchie", "Lamarr", "Berners-Lee", "Johnson", "Rossum", "Wilson", "Wirth",
        "Clarke", "Stroustrup", "Kay", "Goldberg", "Shannon"]
COMPANIES = [f"{a} {b}" for a in ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell")
             for b in ("Labs", "Works", "Systems", "Group", "Holdings")]
EPOCH = datetime.date(2020, 1, 1)
DAYS = [str(EPOCH + datetime.timedelta(days=d)) for d in range(2191)]
BATCH = 10_000


def record_line(i):
    first, last = FIRST[i % len(FIRST)], LAST[(i * 7) % len(LAST)]
    cents = (i * 7919) % 10_000_000
    return (f"{i},{first} {last},{first.lower()}.{last.lower()}{i}@example.com,"
            f"{cents // 100}.{cents % 100:02d},{DAYS[i % len(DAYS)]}\n")


def people_line(i):
    if i % 997 == 0:
        gender = "Agender"
    elif i % 50 == 0:
        gender = "Non-binary"
    else:
        gender = "Female" if i % 2 else "Male"
    return f"{FIRST[i % len(FIRST)]},{LAST[(i * 7) % len(LAST)]},{gender},{COMPANIES[(i * 31) % len(COMPANIES)]}\n"


FORMATS = {"records": (RECORD_HEADER, record_line), "people": (PEOPLE_HEADER, people_line)}


def write_demo_csv(path, *, rows, fmt="records"):
    """Write ``rows`` data rows (plus the header) to ``path``; returns the path."""
    if rows < 0:
        raise ValueError(f"--rows must be 0 or more, got {rows}")
    try:
        header, line = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="") as out:
        out.write(",".join(header) + "\n")
        for start in range(1, rows + 1, BATCH):
            out.write("".join(line(i) for i in range(start, min(rows, start + BATCH - 1) + 1)))
    partial.replace(path)  # never a half-written demo file under the real name
    return path


DEMO_FILES = {"demo-records.csv": "records", "demo-people.csv": "people"}


def ensure_demo_files(folder, *, rows):
    """Write the demo files the New page offers, unless they are already there; list what was written."""
    written = []
    for name, fmt in DEMO_FILES.items():
        path = Path(folder) / name
        if not path.exists():
            written.append(write_demo_csv(path, rows=rows, fmt=fmt))
    return written
