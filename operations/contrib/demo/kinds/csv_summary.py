"""``csv_summary``: per company, how many people of each gender — the original long-running demo.

It streams a people CSV (first_name,last_name,gender,company) chunk by chunk; the partial counts
travel in the checkpoint, never the rows, so memory and the stored cursor stay small. A gender
other than the usual ones is counted under its own name.
"""

from celery import chain

from operations.catalogue import AUTO_RECOVERY, Kind, register_kind
from operations.workflow import step

from ..csvio import chunks, parse
from ..files import PEOPLE_HEADER
from .csv_source import PeopleCsvForm, prepare_source, start_again_from


@step(name="operations.csv_summary", context=True, atomic=False)
def summarize_csv(ctx, path, source, chunk_rows, rows_per_second=None):
    for chunk, state in chunks(ctx.state, path, PEOPLE_HEADER, source, chunk_rows, rows_per_second, counts={}):
        counts = state["counts"]
        for _, (_first, _last, gender, company) in parse(chunk, len(PEOPLE_HEADER), source, PEOPLE_HEADER):
            per_company = counts.setdefault(company, {})
            per_company[gender] = per_company.get(gender, 0) + 1
        with ctx.checkpoint(state, done=state["rows"], total=state["total"]):
            pass  # nothing to write but the cursor and the partial counts
    return (ctx.state or {}).get("counts", {})


def summary_table(counts):
    """Per company (alphabetical), the count of each gender seen anywhere, and the total."""
    genders = sorted({gender for per_company in counts.values() for gender in per_company})
    rows = [[company, *(per_company.get(gender, 0) for gender in genders), sum(per_company.values())]
            for company, per_company in sorted(counts.items())]
    return ["company", *genders, "total"], rows


register_kind(Kind(
    name="csv_summary",
    label="Summarize a people CSV",
    description="Counts, per company, the people of each gender in a CSV of "
                "first_name,last_name,gender,company.",
    form=PeopleCsvForm,
    hidden_params=("path",),  # a server path: faces show the source's name
    start_again=start_again_from,
    build=lambda p: chain(summarize_csv.si(p["path"], p["source"], p["chunk_rows"], p["rows_per_second"])),
    prepare=prepare_source(PEOPLE_HEADER),
    progress="custom",
    progress_unit="rows",
    result_table=summary_table,
    recovery=AUTO_RECOVERY,  # the demo kinds come back by themselves after a crash
))
