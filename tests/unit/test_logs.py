"""JSON log lines carry the structured fields of a record (e.g. a rejected policy's errors)."""

from __future__ import annotations

import json
import logging

from l7.logs import JsonFormatter


def test_json_line_has_fields() -> None:
    record = logging.LogRecord("l7gate.agent", logging.ERROR, __file__, 1, "rejected %s", ("p.yaml",), None)
    record.fields = {"errors": ["spec.ingress[0]: bad"], "policy": "p.yaml"}
    line = json.loads(JsonFormatter("agent[n1]").format(record))
    assert line["message"] == "rejected p.yaml" and line["level"] == "error"
    assert line["component"] == "agent[n1]" and line["errors"] == ["spec.ingress[0]: bad"]
    assert line["time"].endswith("Z")
