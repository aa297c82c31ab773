"""Batch files: every line checked, valid ones spooled as entries, bad ones reported by line."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from fluxq.tasks import batchfile
from fluxq.tasks.batchfile import (
    MAX_LINE_ID_CHARS,
    MAX_REPORTED_ERRORS,
    Entry,
    LineError,
    Scan,
    detect_format,
    parse_params,
    scan_file,
)

PROMPT = "a heron at dawn"
SAME_REQUEST = "the same endpoint and request (give each line an id to run it twice)"


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Each item a line: a str as it is, anything else as its JSON."""
    text = "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines)
    path.write_text(text, encoding="utf-8")
    return path


def scan(
    path: Path,
    *,
    endpoint: str | None = "flux-dev",
    params: dict[str, str] | None = None,
    fmt: str | None = None,
) -> tuple[Scan, list[Entry], list[dict[str, Any]]]:
    """Scan with a real spool and rejected file; the entries read back, the rejected records."""
    spool_path, rejected_path = path.with_suffix(".spool"), path.with_suffix(".rejected")
    with (
        spool_path.open("w+", encoding="utf-8") as spool,
        rejected_path.open("w", encoding="utf-8") as rejected,
    ):
        result = scan_file(
            path, endpoint=endpoint, params=params or {}, fmt=fmt, spool=spool, rejected=rejected
        )
    rows = spool_path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in rejected_path.read_text(encoding="utf-8").splitlines()]
    return result, [Entry.decode(row) for row in rows], records


def digest(endpoint: str, request_json: str) -> str:
    return hashlib.sha256(f"{endpoint}\n{request_json}".encode()).hexdigest()[:16]


def fields(result: Scan) -> list[tuple[int, str]]:
    return [(error.line, error.field) for error in result.errors]


# --- JSONL -----------------------------------------------------------------------------------


def test_a_good_jsonl_file_spools_one_entry_per_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "night.jsonl",
        [
            {"prompt": PROMPT, "seed": 1, "id": "heron-1"},
            {"prompt": "a fox", "width": 512, "name": "Fox.Picture"},
            "",
            {"prompt": "a ship", "endpoint": "flux-pro-1.1-ultra", "aspect_ratio": "21:9"},
            {"prompt": "ünïcödé\ttab", "endpoint": "flux-2-pro", "width": 1440, "height": 1440},
        ],
    )
    result, entries, rejected = scan(path)
    assert (result.lines, result.valid, result.error_count, result.errors) == (4, 4, 0, [])
    assert rejected == []
    assert result.by_endpoint == {"flux-dev": 2, "flux-pro-1.1-ultra": 1, "flux-2-pro": 1}
    assert result.credits == 2.5 + 2.5 + 6.0 + 4.5  # flux-2-pro at 1.98 MP: 3 + 1.5
    assert [e.credits for e in entries] == [2.5, 2.5, 6.0, 4.5]
    heron, fox, ship, unicode = entries
    assert (heron.line_id, heron.name, heron.endpoint) == ("heron-1", "heron-1", "flux-dev")
    assert json.loads(heron.request_json) == {"prompt": PROMPT, "seed": 1}
    assert fox.name == "Fox.Picture"
    assert fox.line_id == digest("flux-dev", fox.request_json)
    assert ship.line_id == ship.name == digest("flux-pro-1.1-ultra", ship.request_json)
    assert unicode.request_json == '{"prompt":"ünïcödé\\ttab","width":1440,"height":1440}'


def test_an_id_or_name_given_as_a_json_number_is_taken_as_text(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a", "id": 17, "name": 2}])
    _, entries, _ = scan(path)
    assert (entries[0].line_id, entries[0].name) == ("17", "2")


def test_entries_decode_to_what_was_encoded() -> None:
    entry = Entry(7, "a.b-1", "name_x", "flux-dev", 2.5, '{"prompt":"x\\ny\\t\\u0000 ☃"}')
    assert entry.encode() == 'a.b-1\tname_x\tflux-dev\t2.5\t{"prompt":"x\\ny\\t\\u0000 ☃"}'
    assert Entry.decode(entry.encode() + "\n", line=7) == entry
    with pytest.raises(ValueError, match="not a spool entry"):
        Entry.decode("just\ttwo")


def test_a_line_number_counts_blank_lines_and_a_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n\n   \n{"prompt": "b", "seed": "x"}')
    result, entries, _ = scan(path)
    assert (result.lines, result.valid, len(entries)) == (2, 1, 1)
    assert fields(result) == [(4, "seed")]


@pytest.mark.parametrize(
    ("line", "endpoint", "field", "reason"),
    [
        ("{not json", "flux-dev", "json", "not JSON"),
        ('{"prompt": NaN}', "flux-dev", "json", "NaN"),
        ("[" * 100_000, "flux-dev", "json", "nested too deeply"),
        ('{"prompt": "a \\ud800 b"}', "flux-dev", "prompt", "lone surrogate"),
        ('{"prompt": "a", "image_prompt": "\\udfff"}', "flux-dev", "image_prompt", "surrogate"),
        ('{"prompt": "\\ud83d", "endpoint": "flux-2-pro"}', None, "prompt", "lone surrogate"),
        ('{"prompt": "a", "w\\udc80": 1}', "flux-dev", "w\\udc80", "lone surrogate"),
        ('["prompt"]', "flux-dev", "line", "must be a JSON object, not an array"),
        ("42", "flux-dev", "line", "not a number"),
        ({"prompt": PROMPT, "widht": 512}, "flux-dev", "widht", "Extra inputs"),
        ({"prompt": PROMPT, "width": "wide"}, "flux-dev", "width", "integer"),
        ({"prompt": PROMPT, "width": 128}, "flux-dev", "width", "greater than or equal"),
        ({"seed": 1}, "flux-2-pro", "prompt", "Field required"),
        ({"prompt": "x" * 10_001}, "flux-dev", "prompt", "at most 10000 characters"),
        ({"prompt": "x" * 10_001, "endpoint": "flux-2-pro"}, None, "prompt", "at most 10000"),
        ({"prompt": PROMPT, "endpoint": "flux-9"}, "flux-dev", "endpoint", "unknown endpoint"),
        ({"prompt": PROMPT}, None, "endpoint", "no endpoint"),
        ({"prompt": PROMPT, "endpoint": 3.5}, "flux-dev", "endpoint", "must be a string"),
        ({"prompt": PROMPT, "webhook_secret": "s3cr3t"}, "flux-dev", "webhook_secret", "never"),
        ({"prompt": PROMPT, "id": "-bad"}, "flux-dev", "id", "starting with a letter"),
        ({"prompt": PROMPT, "id": "x" * 61}, "flux-dev", "id", f"at most {MAX_LINE_ID_CHARS}"),
        ({"prompt": PROMPT, "id": ["a"]}, "flux-dev", "id", "not an array"),
        ({"prompt": PROMPT, "name": "../etc"}, "flux-dev", "name", "starting with a letter"),
        ({"prompt": PROMPT, "name": ""}, "flux-dev", "name", "starting with a letter"),
        ({"prompt": PROMPT, "width": 4096, "height": 4096}, "flux-2-pro", "<request>", "4.0 MP"),
    ],
)
def test_a_bad_line_is_one_error_naming_its_line_and_field(
    tmp_path: Path, line: Any, endpoint: str | None, field: str, reason: str
) -> None:
    fine = {"prompt": "fine", "endpoint": "flux-dev"}
    path = write_jsonl(tmp_path / "bad.jsonl", [fine, line, {**fine, "seed": 2}])
    result, entries, rejected = scan(path, endpoint=endpoint)
    assert (result.lines, result.valid, result.error_count) == (3, 2, 1)
    assert [(e.line, e.field) for e in result.errors] == [(2, field)]
    assert reason in result.errors[0].reason
    assert [r["line"] for r in rejected] == [2]
    assert rejected[0]["errors"] == [{"field": field, "reason": result.errors[0].reason}]
    assert len(entries) == 2


def test_one_line_may_have_several_errors_but_counts_once(tmp_path: Path) -> None:
    line = {"prompt": 5, "width": "w", "id": "-x", "name": "/n", "webhook_secret": "hunter22"}
    path = write_jsonl(tmp_path / "several.jsonl", [line])
    result, entries, rejected = scan(path)
    assert result.error_count == 1
    assert sorted(f for _, f in fields(result)) == sorted(
        ["id", "name", "webhook_secret", "prompt", "width"]
    )
    assert entries == []
    # The rejected file keeps the line's text, but never a secret in it.
    assert "hunter22" not in rejected[0]["text"]
    assert "[redacted]" in rejected[0]["text"]


def test_a_lone_surrogate_is_named_with_the_lines_other_errors(tmp_path: Path) -> None:
    line = '{"prompt": "a heron \\udc80", "id": "-x", "webhook_secret": "hunter22"}'
    path = write_jsonl(tmp_path / "surrogate.jsonl", [line, {"prompt": "fine"}])
    result, entries, rejected = scan(path)
    assert (result.lines, result.valid, result.error_count) == (2, 1, 1)
    assert sorted(fields(result)) == [(1, "id"), (1, "prompt"), (1, "webhook_secret")]
    assert len(entries) == 1
    assert rejected[0]["text"].count("[redacted]") == 1


def test_a_line_that_is_not_utf8_is_an_error_of_that_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n{"prompt": "b"}\n')
    result, _, rejected = scan(path)
    assert (result.valid, fields(result)) == (2, [(2, "line")])
    assert "not UTF-8" in result.errors[0].reason
    assert rejected[0]["text"] == '{"prompt": "caf\ufffd"}'


def test_only_the_first_errors_are_kept_but_every_bad_line_counts(tmp_path: Path) -> None:
    lines: list[Any] = []
    for i in range(100):
        lines.append({"prompt": f"good {i}"} if i % 2 else {"prompt": f"bad {i}", "width": 7})
    path = write_jsonl(tmp_path / "fifty.jsonl", lines)
    result, entries, rejected = scan(path)
    assert (result.lines, result.valid, result.error_count) == (100, 50, 50)
    assert len(result.errors) == MAX_REPORTED_ERRORS
    assert [e.line for e in result.errors] == list(range(1, 40, 2))
    assert len(rejected) == 50
    assert len(entries) == 50
    assert rejected[0]["text"] == json.dumps({"prompt": "bad 0", "width": 7})


def test_a_long_bad_line_is_cut_in_the_rejected_file(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "x" * 5000, "width": 1}])
    _, _, rejected = scan(path)
    assert len(rejected[0]["text"]) == 2000


def test_progress_is_reported_every_ten_thousand_lines_and_at_the_end(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(25_000)])
    seen: list[int] = []
    scan_file(path, endpoint="flux-dev", params={}, progress=seen.append)
    assert seen == [10_000, 20_000, 25_000]


# --- CSV -------------------------------------------------------------------------------------


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_cells_are_typed_by_the_request_field(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "typed.csv",
        "prompt,width,guidance,prompt_upsampling,output_format,seed,id\n"
        "a heron,512,3.5,YES,png,,h1\n"
        '"a fox, at night",,,false,,7,\n',
    )
    result, entries, _ = scan(path)
    assert (result.valid, result.errors) == (2, [])
    assert json.loads(entries[0].request_json) == {
        "prompt": "a heron",
        "width": 512,
        "guidance": 3.5,
        "prompt_upsampling": True,
        "output_format": "png",
    }
    assert entries[0].line_id == "h1"
    assert json.loads(entries[1].request_json) == {
        "prompt": "a fox, at night",
        "prompt_upsampling": False,
        "seed": 7,
    }
    assert entries[1].line_id == digest("flux-dev", entries[1].request_json)


def test_a_video_csv_types_duration_as_a_number_or_keeps_the_word_auto(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "clips.csv",
        "mode,prompt,duration,generate_audio,id\nt2v,a storm,7,no,c1\nt2v,a fox,auto,,c2\n",
    )
    result, entries, _ = scan(path, endpoint="flux-3-video")
    assert (result.valid, result.errors) == (2, [])
    assert json.loads(entries[0].request_json) == {
        "mode": "t2v",
        "prompt": "a storm",
        "duration": 7,
        "generate_audio": False,
    }
    assert json.loads(entries[1].request_json)["duration"] == "auto"


def test_a_csv_cell_that_does_not_convert_is_an_error_naming_its_column(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "conv.csv",
        "prompt,width,guidance,prompt_upsampling\n"
        "a,wide,,\n"
        "b,,nan,\n"
        "c,,,maybe\n"
        "d,512,2\n"
        '"e\nspans two lines",512,2,no\n'
        "f,128,,\n",
    )
    result, entries, rejected = scan(path)
    assert fields(result) == [
        (2, "width"),
        (3, "guidance"),
        (4, "prompt_upsampling"),
        (5, "line"),
        (8, "width"),
    ]
    assert result.errors[0].reason == "'wide' is not a whole number"
    assert "has 3 cells; the header has 4" in result.errors[3].reason
    assert "greater than or equal to 256" in result.errors[4].reason
    assert [json.loads(e.request_json)["prompt"] for e in entries] == ["e\nspans two lines"]
    assert [r["text"] for r in rejected][:2] == ["a,wide,,", "b,,nan,"]


def test_a_csv_endpoint_column_picks_each_rows_endpoint(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "mixed.csv",
        "prompt,endpoint,aspect_ratio,width,name\n"
        "a,flux-pro-1.1-ultra,9:21,,ultra\n"
        "b,,,512,dev\n"
        "c,flux-pro-1.1-ultra,,512,bad\n"
        "d,flux-kontext-max,3:2,,max\n",
    )
    result, entries, _ = scan(path)
    assert fields(result) == [(4, "width")]
    assert "Extra inputs" in result.errors[0].reason
    assert [(e.endpoint, e.name) for e in entries] == [
        ("flux-pro-1.1-ultra", "ultra"),
        ("flux-dev", "dev"),
        ("flux-kontext-max", "max"),
    ]
    assert result.by_endpoint == {"flux-pro-1.1-ultra": 1, "flux-dev": 1, "flux-kontext-max": 1}
    assert result.credits == 6 + 2.5 + 8


@pytest.mark.parametrize(
    ("text", "endpoint", "message"),
    [
        ("text,width\na,512\n", "flux-dev", "no prompt column; its header is: text, width"),
        ("prompt,widht\na,512\n", "flux-dev", "column widht is no request field of flux-dev"),
        ("prompt,aspect_ratio\na,1:1\n", "flux-dev", "column aspect_ratio"),
        ("prompt,colour,endpoint\na,red,\n", "flux-dev", "colour is no request field of any"),
        ("prompt,webhook_secret\na,s\n", "flux-dev", "webhook_secret is refused"),
        ("prompt,prompt\na,b\n", "flux-dev", "every column needs its own name"),
        ("prompt,,seed\na,,1\n", "flux-dev", "every column needs its own name"),
        ("prompt\na\n", None, "no endpoint"),
        ("", "flux-dev", "no CSV header row"),
    ],
)
def test_a_bad_csv_header_is_a_file_error(
    tmp_path: Path, text: str, endpoint: str | None, message: str
) -> None:
    path = write_csv(tmp_path / "head.csv", text)
    with pytest.raises(ValueError, match=message):
        scan(path, endpoint=endpoint)


def test_a_csv_header_names_may_have_spaces_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfprompt, seed\r\na,1\r\n,\r\n\r\nb,2\r\n")
    result, entries, _ = scan(path, fmt="csv")
    assert (result.lines, result.valid) == (2, 2)
    assert [json.loads(e.request_json)["seed"] for e in entries] == [1, 2]


# --- --param ---------------------------------------------------------------------------------


def test_params_are_typed_defaults_that_a_line_overrides(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a"},
            {"prompt": "b", "width": 768},
            {"prompt": "c", "endpoint": "flux-pro-1.1"},
            {"prompt": "d", "endpoint": "flux-2-pro"},
        ],
    )
    params = parse_params(["width=1024", "prompt_upsampling=true", "guidance=4"])
    result, entries, _ = scan(path, params=params)
    requests = [json.loads(e.request_json) for e in entries]
    assert requests[0] == {"prompt": "a", "width": 1024, "prompt_upsampling": True, "guidance": 4}
    assert requests[1]["width"] == 768
    # flux-pro-1.1 has no guidance, flux-2-pro no prompt_upsampling: those lines are refused.
    assert fields(result) == [(3, "guidance"), (4, "prompt_upsampling"), (4, "guidance")]


def test_a_param_of_another_endpoint_that_does_not_convert_fails_its_lines(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "endpoint": "flux-2-pro"}])
    result, _, _ = scan(path, endpoint=None, params={"width": "wide"})
    assert [(e.field, e.reason) for e in result.errors] == [
        ("width", "'wide' is not a whole number")
    ]


@pytest.mark.parametrize(
    ("params", "endpoint", "message"),
    [
        ({"widht": "1024"}, "flux-dev", "--param widht: not flux-dev's request field; known: "),
        ({"colour": "red"}, None, "not any endpoint's request field"),
        ({"width": "wide"}, "flux-dev", "--param width: 'wide' is not a whole number"),
        ({"name": "x"}, "flux-dev", "--param name is not allowed"),
        ({"webhook_secret": "x"}, "flux-dev", "--param webhook_secret is not allowed"),
        ({}, "flux-9", "unknown endpoint 'flux-9'"),
    ],
)
def test_a_param_no_line_could_use_is_refused_upfront(
    tmp_path: Path, params: dict[str, str], endpoint: str | None, message: str
) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match=message):
        scan(path, endpoint=endpoint, params=params)


def test_params_parse_key_value_pairs() -> None:
    assert parse_params(["width=1024", "prompt=a=b", " seed =1"]) == {
        "width": "1024",
        "prompt": "a=b",
        "seed": "1",
    }
    with pytest.raises(ValueError, match="'width' is not key=value"):
        parse_params(["width"])
    with pytest.raises(ValueError, match="not key=value"):
        parse_params(["=1"])
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        parse_params(["prompt=\udcff"])  # an argv byte that was not UTF-8
    with pytest.raises(ValueError, match="width is given twice"):
        parse_params(["width=1", "width=2"])


@pytest.mark.parametrize(
    ("name", "given", "found"),
    [
        ("a.jsonl", None, "jsonl"),
        ("a.NDJSON", None, "jsonl"),
        ("a.json", None, "jsonl"),
        ("a.csv", None, "csv"),
        ("a.txt", "CSV", "csv"),
        ("a.csv", "jsonl", "jsonl"),
    ],
)
def test_the_format_comes_from_the_option_or_the_suffix(
    name: str, given: str | None, found: str
) -> None:
    assert detect_format(Path(name), given) == found


def test_an_unknown_format_names_the_choices() -> None:
    with pytest.raises(ValueError, match="give --format jsonl or csv"):
        detect_format(Path("prompts.txt"), None)
    with pytest.raises(ValueError, match="use jsonl or csv"):
        detect_format(Path("prompts.jsonl"), "xml")


def test_a_missing_file_is_a_sentence_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read .*nope\.jsonl: No such file"):
        scan_file(tmp_path / "nope.jsonl", endpoint="flux-dev", params={})


def test_a_write_only_spool_is_refused_before_reading(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a"}])
    with (tmp_path / "spool").open("w") as spool, pytest.raises(ValueError, match="spool"):
        scan_file(path, endpoint="flux-dev", params={}, spool=spool)


# --- Duplicates ------------------------------------------------------------------------------


def test_later_lines_repeating_an_id_a_request_or_a_name_are_rejected(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "dups.jsonl",
        [
            {"prompt": "one", "id": "a"},  # 1
            {"prompt": "two", "id": "a"},  # 2: id of 1
            {"prompt": "same"},  # 3
            {"prompt": "bad", "width": 128},  # 4: invalid
            {"prompt": "same"},  # 5: request of 3
            {"prompt": "three", "name": "Pic"},  # 6
            {"prompt": "four", "name": "pic"},  # 7: name of 6, ignoring case
            {"prompt": "five", "id": "A"},  # 8: name "A" is 1's name "a"
            {"prompt": "six", "endpoint": "flux-pro-1.1"},  # 9
            {"prompt": "same"},  # 10: request of 3
        ],
    )
    result, entries, rejected = scan(path)
    assert (result.lines, result.valid, result.error_count, result.duplicates) == (10, 4, 6, 5)
    assert [(e.line, e.field, e.reason) for e in result.errors] == [
        (2, "id", "duplicates line 1: the same id 'a'"),
        (4, "width", "Input should be greater than or equal to 256"),
        (5, "id", f"duplicates line 3: {SAME_REQUEST}"),
        (7, "name", "duplicates line 6: the same file name 'pic' (names ignore case)"),
        (8, "name", "duplicates line 1: the same file name 'A' (names ignore case)"),
        (10, "id", f"duplicates line 3: {SAME_REQUEST}"),
    ]
    assert [json.loads(e.request_json)["prompt"] for e in entries] == [
        "one",
        "same",
        "three",
        "six",
    ]
    assert [r["line"] for r in rejected] == [4, 2, 5, 7, 8, 10]  # duplicates come last
    assert rejected[1] == {
        "line": 2,
        "errors": [{"field": "id", "reason": result.errors[0].reason}],
        "text": json.dumps({"prompt": "two", "id": "a"}),
    }
    assert result.by_endpoint == {"flux-dev": 3, "flux-pro-1.1": 1}
    assert result.credits == 3 * 2.5 + 4.0


def test_without_duplicates_the_spool_is_written_once(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": f"p{i}"} for i in range(50)])
    result, entries, _ = scan(path)
    assert (result.valid, result.duplicates, len(entries)) == (50, 0, 50)


def test_duplicates_are_found_without_a_spool_and_in_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "prompt,id\na,x\nb,y\nc,x\nd,\nd,\n")
    result = scan_file(path, endpoint="flux-dev", params={})
    assert (result.valid, result.duplicates) == (3, 2)
    assert fields(result) == [(4, "id"), (6, "id")]
    assert result.credits == 7.5
    assert result.by_endpoint == {"flux-dev": 3}


# --- Determinism and scale --------------------------------------------------------------------


def test_the_same_file_gives_the_same_ids_and_any_change_a_new_one(tmp_path: Path) -> None:
    base = {"prompt": PROMPT, "seed": 3, "width": 512}
    variants = [
        base,
        {"seed": 3, "width": 512, "prompt": PROMPT},  # the same request, keys reordered
        {**base, "seed": 4},
        {**base, "prompt": PROMPT + "."},
        {**base, "width": 544},
        {**base, "steps": 28},  # the default, but given: BFL sees it
        {**base, "endpoint": "flux-pro"},
    ]
    first = [scan(write_jsonl(tmp_path / f"v{i}.jsonl", [v]))[1][0] for i, v in enumerate(variants)]
    again = [scan(write_jsonl(tmp_path / f"w{i}.jsonl", [v]))[1][0] for i, v in enumerate(variants)]
    assert [e.line_id for e in first] == [e.line_id for e in again]
    assert first[0].line_id == first[1].line_id
    assert len({e.line_id for e in first[1:]}) == len(variants) - 1


def _scan_peak(tmp_path: Path, count: int) -> tuple[Scan, int]:
    """Scan a file of ``count`` distinct lines plus one duplicate; the scan's peak traced bytes."""
    path = tmp_path / f"big-{count}.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            out.write(json.dumps({"prompt": f"a watercolour heron at dawn, {i:07d}", "seed": i}))
            out.write("\n")
        out.write(json.dumps({"prompt": "a watercolour heron at dawn, 0000000", "seed": 0}) + "\n")
    tracemalloc.start()
    try:
        with (tmp_path / f"spool-{count}").open("w+", encoding="utf-8") as spool:
            rejected = io.StringIO()
            result = scan_file(path, endpoint="flux-dev", params={}, spool=spool, rejected=rejected)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.valid, result.duplicates) == (count, 1)
    assert result.errors == [LineError(count + 1, "id", result.errors[0].reason)]
    return result, peak


@pytest.mark.slow  # 50,000 lines under tracemalloc: about 6 s of CPU
def test_a_large_file_is_scanned_in_constant_memory(tmp_path: Path) -> None:
    # A file four times as long costs no more than the 8-byte hashes kept per line (the
    # duplicate check) and a constant: nothing else of a line is kept
    _, small = _scan_peak(tmp_path, 10_000)
    _, large = _scan_peak(tmp_path, 40_000)
    per_line = (large - small) / 30_000
    why = f"peak {small / 2**20:.1f} MB -> {large / 2**20:.1f} MB: {per_line:.0f} B/line"
    assert per_line < 64, why
    assert large < 16 * 2**20, f"peak {large / 2**20:.1f} MB"


def test_a_line_longer_than_the_limit_is_a_bad_line_and_never_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a limit of 1,000 bytes, a 50,000-byte line with no newline in the middle of a file
    monkeypatch.setattr(batchfile, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    with path.open("wb") as out:
        out.write(b'{"prompt": "first"}\n')
        out.write(b'{"prompt": "' + b"x" * 50_000 + b'"}\n')
        out.write(b'{"prompt": "third"}\n')
        out.write(b"y" * 5_000)  # and a last line with no newline at all
    scan = batchfile.scan_file(path, endpoint="flux-dev", params={})
    assert (scan.lines, scan.valid, scan.error_count) == (4, 2, 2)
    assert [(e.line, e.field) for e in scan.errors] == [(2, "line"), (4, "line")]
    assert "longer than" in scan.errors[0].reason
