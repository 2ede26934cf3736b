"""Reading training documents: .txt blocks, .jsonl/.json/.parquet fields, Hub sources, and
one-line errors naming file and line, on the shipped PubMedQA and Devil's Dictionary text."""

from __future__ import annotations

import json

import pytest
from data_files import GENERAL, MEDICAL, PUBMEDQA_TRAIN, one_line

from mergemed.train.sources import DataError, Source, read_documents


def test_txt_documents_are_blank_line_separated_blocks(tmp_path):
    path = tmp_path / "general.txt"
    path.write_text("\n\nFirst line\n  indented second\n \t\n\n\nSecond block\nend\n\nlast")
    assert read_documents(Source("g", path)) == [
        "First line\n  indented second",
        "Second block\nend",
        "last",
    ]
    documents = read_documents(GENERAL)
    assert len(documents) > 1000
    assert documents[0].startswith("ABASEMENT, n.") and "\n\n" not in documents[0]


def test_jsonl_list_field_is_joined_with_newlines_and_json_parquet_read_alike(tmp_path):
    documents = read_documents(MEDICAL)
    first = json.loads(PUBMEDQA_TRAIN.read_text().splitlines()[0])
    assert len(documents) == 500
    assert documents[0] == "\n".join(first["contexts"])

    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"body": "alpha"}, {"body": "  "}, {"body": ["b", "c"]}]
    pq.write_table(pa.table({"body": ["alpha", "  ", "b\nc"]}), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(records))
    for name in ("d.parquet", "d.json"):  # blank texts are skipped
        assert read_documents(Source("x", tmp_path / name, "body")) == ["alpha", "b\nc"]


def test_missing_empty_unsupported_and_malformed_files(tmp_path):
    with pytest.raises(DataError) as error:
        read_documents(Source("x", tmp_path / "absent.jsonl"))
    assert "absent.jsonl: file not found" in one_line(error)

    for name, text in (("empty.txt", ""), ("blank.txt", "\n  \n\n"), ("empty.jsonl", "\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError) as error:
            read_documents(Source("x", tmp_path / name))
        assert f"{name}: no documents" in one_line(error)

    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(DataError, match=r"data\.csv: unsupported file type '\.csv'"):
        read_documents(Source("x", tmp_path / "data.csv"))

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"txt": "typo"}\n')
    with pytest.raises(DataError) as error:
        read_documents(Source("x", bad))
    assert f"{bad}:3: no field 'text' (fields: txt)" == one_line(error)

    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DataError) as error:
        read_documents(Source("x", bad))
    assert one_line(error).startswith(f"{bad}:2: not valid JSON")

    bad.write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'text' must be a string"):
        read_documents(Source("x", bad))


def test_hub_source_offline_is_one_line_error():
    with pytest.raises(DataError) as error:
        read_documents(Source("web", "hub:mergemed-test/no-such-dataset"))
    message = one_line(error)
    assert "hub:mergemed-test/no-such-dataset" in message and "HF_HUB_OFFLINE" in message
