"""The demo's verbs of ``manage.py operations``: make-csv and make-demo-files."""

from pathlib import Path

from django.core.management.base import CommandError

from operations.cli import Verb, register_verb

from .conf import conf
from .files import DEMO_FILES, FORMATS, ensure_demo_files, write_demo_csv


def _make_csv_arguments(parser):
    parser.add_argument("path")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--format", choices=sorted(FORMATS), default="records")
    parser.add_argument("--force", action="store_true", help="replace the file if it exists")
    parser.add_argument("--parents", action="store_true", help="create the folder if it does not exist")


def make_csv(command, *, path, rows, format, force, parents, **options):
    """A typo should not replace a file or scatter folders: both need asking for."""
    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{path} is a folder; give the path of the file to write")
    if target.exists() and not force:
        raise CommandError(f"{path} exists; add --force to replace it")
    if not target.parent.is_dir() and not parents:
        raise CommandError(f"folder {target.parent} does not exist; add --parents to create it")
    written = write_demo_csv(target, rows=rows, fmt=format)
    command.stdout.write(f"wrote {rows} rows ({format}) to {written}")


def _make_demo_files_arguments(parser):
    parser.add_argument("--rows", type=int, default=1_000_000)


def make_demo_files(command, *, rows, **options):
    folder = conf.CSV_DIR
    if folder is None:
        raise CommandError("no CSV folder: set TAP_CSV_DIR (or MEDIA_ROOT)")
    for path in ensure_demo_files(Path(folder), rows=rows):
        command.stdout.write(f"wrote {rows} rows to {path}")
    command.stdout.write(f"demo files in {folder}: {', '.join(sorted(DEMO_FILES))}")


register_verb(Verb("make-csv", "write a deterministic demo CSV file", _make_csv_arguments, make_csv))
register_verb(Verb("make-demo-files", "write the demo CSV files into the CSV folder if missing",
                   _make_demo_files_arguments, make_demo_files))
