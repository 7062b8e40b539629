"""manifest.py: formats, path resolution, default ids, bad rows with line numbers, streaming."""
from __future__ import annotations

import json
import tracemalloc

import pytest

from batchasr.errors import ManifestError
from batchasr.manifest.read import ManifestRow, default_id, open_manifest
from batchasr.manifest.scan import iter_audio_files, scan_folder


def rows(path, **kw):
    m = open_manifest(path, **kw)
    out = list(m)
    return m, out


def test_csv_relative_paths_default_ids_and_extras(tmp_path):
    (tmp_path / "m.csv").write_text(
        "path,id,language,speaker,notes\n"
        "a.wav,,zh,s1,\n"
        "./sub/b.flac,bee,,s2,\"quoted, with comma\"\n"
        f"{tmp_path}/sub/c.wav,,en,s3,x\n"
        "/elsewhere/d.wav,,,s4,y\n"
    )
    m, got = rows(tmp_path / "m.csv")
    assert m.problems == [] and m.format == "csv"
    assert got[0] == ManifestRow(2, "a.wav", str(tmp_path / "a.wav"), "zh",
                                 {"speaker": "s1", "notes": ""})
    assert (got[1].id, got[1].path, got[1].language) == ("bee", str(tmp_path / "sub/b.flac"), None)
    assert got[1].extra["notes"] == "quoted, with comma"
    assert (got[2].id, got[2].path) == ("sub/c.wav", str(tmp_path / "sub/c.wav"))
    assert (got[3].id, got[3].path) == ("/elsewhere/d.wav", "/elsewhere/d.wav")


def test_relative_paths_resolve_against_the_manifest_folder_not_cwd(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "m.tsv").write_text("path\n../audio/a.wav\n")
    monkeypatch.chdir("/")
    _, got = rows(tmp_path / "jobs" / "m.tsv")
    assert got[0].path == str(tmp_path / "audio" / "a.wav")
    assert got[0].id == "../audio/a.wav"


def test_tsv_and_header_case_and_bom(tmp_path):
    (tmp_path / "m.tsv").write_bytes("\ufeffPath\tID\tLanguage\ttopic\nx.wav\tone\tyue\tnews\n".encode())
    m, got = rows(tmp_path / "m.tsv")
    assert m.format == "tsv"
    assert got == [ManifestRow(2, "one", str(tmp_path / "x.wav"), "yue", {"topic": "news"})]


def test_jsonl(tmp_path):
    lines = [
        {"path": "a.wav", "id": 7, "language": None, "meta": {"k": 1}, "tag": "t"},
        {"path": "b.wav"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    m, got = rows(tmp_path / "m.jsonl")
    assert m.problems == []
    assert got[0] == ManifestRow(1, "7", str(tmp_path / "a.wav"), None,
                                 {"meta": '{"k": 1}', "tag": "t"})
    assert got[1].id == "b.wav"


@pytest.mark.parametrize("text,fmt", [
    ('{"path": "a.wav"}\n', "jsonl"),
    ("path\tid\na.wav\tx\n", "tsv"),
    ("path,id\na.wav,x\n", "csv"),
])
def test_unknown_extension_is_sniffed(tmp_path, text, fmt):
    (tmp_path / "list.txt").write_text(text)
    m, got = rows(tmp_path / "list.txt")
    assert m.format == fmt and got[0].path == str(tmp_path / "a.wav")


def test_no_path_column_is_a_whole_manifest_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,id\na.wav,1\n")
    with pytest.raises(ManifestError, match="no 'path' column") as info:
        open_manifest(tmp_path / "m.csv")
    assert info.value.problems[0][0] == 1


def test_empty_and_missing_manifest(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ManifestError, match="empty manifest"):
        open_manifest(tmp_path / "e.csv")
    with pytest.raises(ManifestError, match="no such file"):
        open_manifest(tmp_path / "nope.csv")


def test_bad_rows_are_collected_with_line_numbers_and_skipped(tmp_path):
    (tmp_path / "m.csv").write_bytes(
        b"path,id\n"            # 1
        b"good1.wav,\n"         # 2
        b",no-path\n"           # 3  empty path
        b"a.wav,x,extra\n"      # 4  too many fields
        b"caf\xe9.wav,\n"       # 5  latin-1, not UTF-8
        b"\n"                   # 6  blank: ignored
        b'"multi\n'             # 7  quoted field over two lines: a row starting at 7
        b'line.wav",m\n'        # 8
        b"good2.wav,\n"         # 9
    )
    m, got = rows(tmp_path / "m.csv")
    assert [r.line for r in got] == [2, 7, 9]
    assert got[1].path == str(tmp_path / "multi\nline.wav")
    assert [n for n, _ in m.problems] == [3, 4, 5]
    assert "empty path" in m.problems[0][1]
    assert "3 fields" in m.problems[1][1]
    assert "UTF-8" in m.problems[2][1]
    with pytest.raises(ManifestError) as info:
        m.raise_if_problems()
    assert "line 3: empty path" in str(info.value) and str(tmp_path / "m.csv") in str(info.value)


def test_bad_jsonl_lines(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav"}\n{oops\n[1, 2]\n{"id": "x"}\n{"path": ""}\n')
    m, got = rows(tmp_path / "m.jsonl")
    assert len(got) == 1
    assert [n for n, _ in m.problems] == [2, 3, 4, 5]


def test_problems_kept_are_bounded_but_counted(tmp_path):
    n = 3000
    (tmp_path / "m.csv").write_text("path,id\n" + ",x\n" * n)
    m, got = rows(tmp_path / "m.csv")
    assert got == [] and m.n_problems == n and len(m.problems) == 1000
    with pytest.raises(ManifestError, match=f"{n} problem"):
        m.raise_if_problems()


def test_default_id():
    assert default_id("./a/../b/c.wav", "/data") == "b/c.wav"
    assert default_id("/data/x/y.wav", "/data") == "x/y.wav"
    assert default_id("/other/y.wav", "/data") == "/other/y.wav"


def test_streams_100k_rows_in_bounded_memory(tmp_path):
    n = 100_000
    with open(tmp_path / "big.csv", "w") as f:
        f.write("path,speaker\n")
        for i in range(n):
            f.write(f"audio/{i:07d}.wav,s{i % 7}\n")
    m = open_manifest(tmp_path / "big.csv")
    tracemalloc.start()
    count = 0
    for row in m:
        count += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n and m.n_problems == 0
    assert peak < 2_000_000, f"peak {peak} bytes: the manifest is not streamed"


def test_scan_folder_writes_a_resumable_manifest(tmp_path):
    audio = tmp_path / "audio"
    (audio / "b").mkdir(parents=True)
    (audio / ".hidden").mkdir()
    for name in ["z.wav", "a.FLAC", "b/c.mp3", "notes.txt", "._a.wav", ".hidden/x.wav"]:
        (audio / name).write_bytes(b"x")
    job = tmp_path / "job"
    out = scan_folder(audio, job)
    assert out == job / "manifest.csv"
    got = list(open_manifest(out))
    assert [r.id for r in got] == ["a.FLAC", "z.wav", "b/c.mp3"]
    assert [r.path for r in got] == [str(audio / i) for i in ["a.FLAC", "z.wav", "b/c.mp3"]]
    # scanning again gives the same ids; new files are added
    (audio / "b" / "d.wav").write_bytes(b"x")
    again = [r.id for r in open_manifest(scan_folder(audio, job))]
    assert again[:3] == ["a.FLAC", "z.wav", "b/c.mp3"] and "b/d.wav" in again
    assert not any(p.name.endswith(".tmp") for p in job.iterdir())


def test_scan_folder_of_a_file_is_an_error(tmp_path):
    (tmp_path / "f.wav").write_bytes(b"x")
    with pytest.raises(ManifestError, match="not a folder"):
        scan_folder(tmp_path / "f.wav", tmp_path / "job")


def test_iter_audio_files_is_sorted_depth_first(tmp_path):
    for name in ["b/2.wav", "b/1.wav", "a.wav", "c/x/0.ogg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_audio_files(tmp_path)]
    assert got == ["a.wav", "b/1.wav", "b/2.wav", "c/x/0.ogg"]
