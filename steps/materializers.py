"""ZenML materializers for the pipeline's records (steps/records.py).

`JsonlFile`: the file is copied into the artifact store and its sha256 is the content hash, so a step
downstream of an unchanged data set is served from ZenML's cache even when the upstream step ran again;
row count and hash show in the dashboard, with a Markdown preview of the first rows.
`Report`: report.json plus report.md, the Markdown shown as the visualization.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from steps.records import ABEval, JsonlFile, Report, ab_eval_metadata

DATA_FILE = "data.jsonl"
PREVIEW_FILE = "preview.md"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
RESULT_JSON = "result.json"
PREVIEW_ROWS = 3
PREVIEW_CHARS = 600  # per row: enough to recognise a row without flooding the page


class JsonlFileMaterializer(BaseMaterializer):
    """Stores the JSONL file as is; loading gives a fresh local copy."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (JsonlFile,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def save(self, data: JsonlFile) -> None:
        fileio.copy(str(data.path), os.path.join(self.uri, DATA_FILE), overwrite=True)

    def load(self, data_type: type[Any]) -> JsonlFile:
        with self.get_temporary_directory(delete_at_exit=False) as directory:
            local = Path(directory) / DATA_FILE
            fileio.copy(os.path.join(self.uri, DATA_FILE), str(local), overwrite=True)
        return JsonlFile.of(local)

    def extract_metadata(self, data: JsonlFile) -> dict[str, Any]:
        return {"rows": data.rows, "sha256": data.sha256}

    def compute_content_hash(self, data: JsonlFile) -> str | None:
        return data.sha256

    def save_visualizations(self, data: JsonlFile) -> dict[str, VisualizationType]:
        lines = [f"**{data.rows} rows**, sha256 `{data.sha256[:16]}`", ""]
        with open(data.path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if i >= PREVIEW_ROWS:
                    break
                text = _pretty(line)
                if len(text) > PREVIEW_CHARS:
                    text = text[:PREVIEW_CHARS] + " …"
                lines += [f"Row {i + 1}:", "```json", text, "```", ""]
        path = os.path.join(self.uri, PREVIEW_FILE)
        with fileio.open(path, "w") as f:
            f.write("\n".join(lines))
        return {path: VisualizationType.MARKDOWN}


class ReportMaterializer(BaseMaterializer):
    """Stores report.json and report.md; the Markdown is the dashboard visualization."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (Report,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: Report) -> None:
        with fileio.open(os.path.join(self.uri, REPORT_JSON), "w") as f:
            f.write(_canonical(data.data))
        with fileio.open(os.path.join(self.uri, REPORT_MD), "w") as f:
            f.write(data.markdown)

    def load(self, data_type: type[Any]) -> Report:
        with fileio.open(os.path.join(self.uri, REPORT_JSON), "r") as f:
            data = json.loads(f.read())
        with fileio.open(os.path.join(self.uri, REPORT_MD), "r") as f:
            markdown = f.read()
        return Report(data=data, markdown=markdown)

    def extract_metadata(self, data: Report) -> dict[str, Any]:
        """The report's top-level numbers and warnings, so they show without opening the artifact."""
        meta: dict[str, Any] = {}
        for key, value in data.data.items():
            if isinstance(value, bool | int | float | str):
                meta[key] = value
        if isinstance(data.data.get("warnings"), list):
            meta["warnings"] = len(data.data["warnings"])
        return meta

    def compute_content_hash(self, data: Report) -> str | None:
        return hashlib.sha256(_canonical(data.data).encode()).hexdigest()

    def save_visualizations(self, data: Report) -> dict[str, VisualizationType]:
        return {os.path.join(self.uri, REPORT_MD): VisualizationType.MARKDOWN}


class ABEvalMaterializer(BaseMaterializer):
    """Stores result.json, report.md and the charts; the report and every chart are dashboard visualizations."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ABEval,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: ABEval) -> None:
        with fileio.open(os.path.join(self.uri, RESULT_JSON), "w") as f:
            f.write(_canonical({"result": data.data, "charts": sorted(data.charts), "complete": data.complete,
                                "passed": data.passed}))
        with fileio.open(os.path.join(self.uri, REPORT_MD), "w") as f:
            f.write(data.markdown)
        for name, png in data.charts.items():
            with fileio.open(os.path.join(self.uri, name), "wb") as f:
                f.write(png)

    def load(self, data_type: type[Any]) -> ABEval:
        with fileio.open(os.path.join(self.uri, RESULT_JSON), "r") as f:
            saved = json.loads(f.read())
        with fileio.open(os.path.join(self.uri, REPORT_MD), "r") as f:
            markdown = f.read()
        charts = {}
        for name in saved["charts"]:
            with fileio.open(os.path.join(self.uri, name), "rb") as f:
                charts[name] = f.read()
        return ABEval(data=saved["result"], markdown=markdown, charts=charts, complete=saved.get("complete", True),
                      passed=saved.get("passed", True))

    def extract_metadata(self, data: ABEval) -> dict[str, Any]:
        return {**ab_eval_metadata(data.data), "complete": data.complete, "passed": data.passed}

    def compute_content_hash(self, data: ABEval) -> str | None:
        return hashlib.sha256(_canonical({**data.data, "_verdict": [data.complete, data.passed]}).encode()).hexdigest()

    def save_visualizations(self, data: ABEval) -> dict[str, VisualizationType]:
        shown = {os.path.join(self.uri, REPORT_MD): VisualizationType.MARKDOWN}
        shown.update({os.path.join(self.uri, name): VisualizationType.IMAGE for name in sorted(data.charts)})
        return shown


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, indent=1, default=str)


def _pretty(line: str) -> str:
    try:
        return json.dumps(json.loads(line), indent=1, ensure_ascii=False)
    except ValueError:
        return line.rstrip("\n")
