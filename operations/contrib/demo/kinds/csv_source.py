"""The CSV source shared by ``csv_import`` and ``csv_summary``: an upload or a server-side file."""

from pathlib import Path

from django import forms

from operations import uploads
from operations.catalogue import InvalidParams

from ..conf import conf
from ..csvio import CsvFileError, check_file
from ..files import PEOPLE_HEADER, RECORD_HEADER
from .chunking import ChunkedForm


def csv_dir():
    """The server's CSV folder (TAP_CSV_DIR); None when neither it nor MEDIA_ROOT is set."""
    folder = conf.CSV_DIR
    return None if folder is None else Path(folder)


def server_files():
    """The CSV files a user may pick on the New page (the demo files live here)."""
    folder = csv_dir()
    return sorted(p.name for p in folder.glob("*.csv") if p.is_file()) if folder and folder.is_dir() else []


def path_schema(form):
    """The API's schema of ``path``: one of the files in the CSV folder now whose first line is
    the form's header and that has a data row after it, as a start requires (read per request,
    two lines per file)."""
    names = [name for name in server_files() if _header_and_data(csv_dir() / name) == form.header]
    return {"type": "string", "enum": names} if names else {"type": "string", "maxLength": 255}


def _header_and_data(path):
    """The file's header fields, or None if it cannot be read or has no line after the header."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            header = tuple(field.strip().lower() for field in f.readline(4096).split(","))
            return header if f.readline(4096).strip() else None
    except OSError:
        return None


class CsvSourceForm(ChunkedForm):
    file = forms.FileField(required=False, help_text="Upload a CSV file.")
    path = forms.CharField(required=False, max_length=255,
                           help_text="Or the name of a CSV file in the server's CSV folder.")
    path.json_schema = path_schema
    field_order = ["file", "path"]
    #: A JSON request cannot carry an upload: there the server-side file is required.
    json_required = ("path",)
    setting_defaults = {"chunk_rows": lambda: conf.CSV_CHUNK_ROWS}
    #: The demo file of the format this kind reads, named in the help, and that format's header.
    example_file = "demo-records.csv"
    header = RECORD_HEADER

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["path"].help_text = (f"Or the name of a CSV file in the server's CSV folder "
                                         f"(e.g. {self.example_file}).")
        self.fields["file"].help_text = f"Upload a CSV file whose first line is {','.join(self.header)}."
        # On the New page, a list of the server's files (the demo files among them).
        self.fields["path"].widget = forms.Select(
            choices=[("", "— or pick a file on the server —")] + [(name, name) for name in server_files()])

    def clean_file(self):
        upload = self.cleaned_data.get("file")
        limit = conf.CSV_MAX_UPLOAD_MB * 1024 * 1024
        if upload and upload.size > limit:
            raise forms.ValidationError(
                f"{upload.name} is {upload.size / 1048576:.1f} MB; uploads are limited to "
                f"{conf.CSV_MAX_UPLOAD_MB} MB (put larger files in the server's CSV folder)")
        return upload

    def clean_path(self):
        name = self.cleaned_data.get("path", "").strip()
        if not name:
            return ""
        folder = csv_dir()
        if folder is None:
            raise forms.ValidationError("this server has no CSV folder (TAP_CSV_DIR): upload a file instead")
        folder = folder.resolve()
        candidate = (folder / name).resolve()
        if candidate.parent != folder:
            raise forms.ValidationError(f"{name}: give the name of a file in the CSV folder, not a path")
        if not candidate.is_file():
            available = ", ".join(server_files()) or "none"
            raise forms.ValidationError(f"{name}: no such file in the CSV folder (available: {available})")
        return str(candidate)

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        if cleaned.get("file") and cleaned.get("path"):
            raise forms.ValidationError("Give either a file to upload or the name of a server-side file, not both.")
        if not cleaned.get("file") and not cleaned.get("path"):
            raise forms.ValidationError("Give a file to upload, or pick a file on the server.")
        return cleaned


def start_again_from(params):
    """The New form for Start again: the same server-side file by its name; an upload (stored
    under the upload folder) cannot be filled in, so people choose the corrected file."""
    initial = {name: value for name, value in params.items() if name not in ("path", "source")}
    folder = csv_dir()
    path = Path(params.get("path") or "")
    if folder is not None and path.parent.resolve() == folder.resolve():
        initial["path"] = path.name
    return initial


class PeopleCsvForm(CsvSourceForm):
    example_file = "demo-people.csv"
    header = PEOPLE_HEADER


def prepare_source(header):
    """A kind's ``prepare``: store an upload, check the file's header, keep only JSON params."""

    def prepare(params, files):
        upload = params.pop("file", None)
        if upload:
            params.update(path=str(uploads.store(upload)), source=Path(upload.name).name)
        else:
            params["source"] = Path(params["path"]).name
        try:
            check_file(params["path"], header, params["source"])
        except CsvFileError as exc:
            if upload:
                Path(params["path"]).unlink(missing_ok=True)
            raise InvalidParams({"file" if upload else "path": [str(exc)]}) from None
        return params

    return prepare
