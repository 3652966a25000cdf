"""``mldcn prepare --workers N``: the same output, byte for byte, as one worker.

Each case prepares the same small inputs with ``workers=1`` and with 2 or 3 worker
processes, over units of work that are several files, a glob, a directory of
Parquet shards, or byte ranges of one file (a tiny ``part_bytes`` cuts a file of a
few KiB into many ranges), and compares every array file byte for byte and the
feature map apart from its timing fields. Where a file is cut, the output is also
compared with a read of the whole file (one unit): that checks that every range
knew its first line number exactly (the random split hashes it, and the bad-row
messages name it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldcn.cli import main
from mldcn.data import encode
from mldcn.data.encode import Encoder, Fitter, row_keys
from mldcn.data.prepare import SplitConfig, prepare
from mldcn.data.prepared import load_prepared
from mldcn.data.readers import DataError, ReadStats, count_line_ends, plan_parts, read_chunks
from mldcn.data.schema import schema_from_dict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMING = ("seconds", "fit_seconds", "rows_per_second")

# every kind of field: vocabulary, hash, quantile buckets, log buckets, two numeric transforms,
# two multi-valued fields; two tasks (a 0/1 column and a threshold rule) and row weights
SCHEMA = schema_from_dict(
    {
        "name": "w",
        "labels": [{"name": "click"}, {"name": "long", "source": "dwell", "threshold": 30}],
        "weight": "w",
        "min_count": 2,
        "categorical": [
            {"name": "c"},
            {"name": "h", "source": "c", "hash_buckets": 7},
            {"name": "b", "source": "x", "derive": "bucketize", "num_buckets": 5},
            {"name": "l", "source": "x", "derive": "log_square_bucket"},
        ],
        "numeric": [{"name": "x", "transform": "log_standardize"}, {"name": "rid", "transform": "standardize"}],
        "sequence": [{"name": "s", "max_len": 3}, {"name": "t", "separator": ";", "max_len": 2}],
    }
)
HEADER = "click,dwell,w,c,x,rid,s,t"


def rows(n: int, seed: int, first_line: int = 2) -> list[str]:
    """``n`` rows; the row at file line L has ``rid = L`` (the header is line 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for line in range(first_line, first_line + n):
        seq = "|".join(f"g{k}" for k in rng.integers(0, 9, size=rng.integers(0, 5)))
        tags = ";".join(f"t{k}" for k in rng.integers(0, 4, size=rng.integers(0, 3)))
        x = "" if rng.random() < 0.1 else f"{rng.normal(10, 20):.3f}"
        out.append(f"{rng.integers(0, 2)},{rng.integers(0, 60)},{rng.random() * 2:.3f},c{rng.integers(0, 30)},{x},{line},{seq},{tags}")
    return out


def write_csv(path: Path, lines: list[str], header: str | None = HEADER, newline: str = "\n") -> Path:
    path.write_bytes(((header + newline if header else "") + "".join(line + newline for line in lines)).encode())
    return path


def feature_map(out: Path) -> dict:
    """The feature map without its timing fields."""
    data = json.loads((out / "feature_map.json").read_text())
    for key in TIMING:
        data["report"].pop(key)
    return data


def assert_identical(a: Path, b: Path) -> None:
    """Every array file byte for byte, every vocabulary, and the feature map apart from timings."""
    arrays = sorted(str(p.relative_to(a)) for p in a.rglob("*.bin"))
    assert arrays == sorted(str(p.relative_to(b)) for p in b.rglob("*.bin"))
    assert len(arrays) >= 9  # three splits, at least categorical, numeric, labels
    for name in arrays:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    vocab = sorted(p.name for p in (a / "vocab").iterdir())
    assert vocab == sorted(p.name for p in (b / "vocab").iterdir())
    for name in vocab:
        assert pq.read_table(a / "vocab" / name).equals(pq.read_table(b / "vocab" / name)), name
    assert feature_map(a) == feature_map(b)
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())  # no parts, no temporary folder


def prepare_each(tmp_path: Path, worker_counts, **kwargs) -> list[tuple[Path, dict]]:
    """Prepare with each number of workers into its own directory; (directory, report) each."""
    results = []
    for workers in worker_counts:
        out = tmp_path / f"out_w{workers}"
        results.append((out, prepare(SCHEMA, out, workers=workers, **kwargs)))
    return results


def rids(out: Path, split: str) -> list[int]:
    """The file line of every row of a split (SCHEMA's ``rid`` column, un-standardised)."""
    data = load_prepared(out)
    stats = Encoder.load(out).numeric_stats["rid"]
    return np.rint(getattr(data, split).numeric[:, 1].double().numpy() * stats["std"] + stats["mean"]).astype(int).tolist()


# ---------------------------------------------------------------------------- units: files, a glob, Parquet shards


def test_several_files_are_identical_to_one_worker_and_to_their_concatenation(tmp_path):
    train = [write_csv(tmp_path / f"train_{i}.csv", rows(n, seed)) for i, (n, seed) in enumerate([(120, 0), (80, 1), (150, 2)])]
    valid = write_csv(tmp_path / "valid.csv", rows(40, 3))
    test = [write_csv(tmp_path / "test_a.csv", rows(30, 4)), write_csv(tmp_path / "test_b.csv", rows(35, 5))]
    results = prepare_each(tmp_path, (1, 2, 3), train=train, valid=valid, test=test)
    for out, _ in results[1:]:
        assert_identical(results[0][0], out)
    report = results[0][1]
    assert [Path(e["path"]).name for e in report["inputs"]] == ["train_0.csv", "train_1.csv", "train_2.csv", "valid.csv", "test_a.csv", "test_b.csv"]
    assert [e["rows_read"] for e in report["inputs"]] == [120, 80, 150, 40, 30, 35]
    assert {k: v["rows"] for k, v in report["splits"].items()} == {"train": 350, "valid": 40, "test": 65}
    # the train split is the three files in the order given: their lines, file after file
    assert rids(results[0][0], "train") == list(range(2, 122)) + list(range(2, 82)) + list(range(2, 152))
    # and fits what one file holding the same rows fits (same vocabularies and boundaries)
    body = [line for path in train for line in path.read_text().splitlines()[1:]]
    whole = write_csv(tmp_path / "train_all.csv", body)
    prepare(SCHEMA, tmp_path / "whole", train=whole, valid=valid, test=test)
    one, many = Encoder.load(tmp_path / "whole"), Encoder.load(results[0][0])
    assert {k: v.to_pylist() for k, v in one.vocabularies.items()} == {k: v.to_pylist() for k, v in many.vocabularies.items()}
    np.testing.assert_array_equal(one.boundaries["b"], many.boundaries["b"])
    for name in ("x", "rid"):
        assert one.numeric_stats[name]["mean"] == pytest.approx(many.numeric_stats[name]["mean"], rel=1e-12)
    a, b = load_prepared(tmp_path / "whole"), load_prepared(results[0][0])
    assert np.array_equal(a.train.categorical.numpy(), b.train.categorical.numpy())
    assert np.array_equal(a.train.sequence.numpy(), b.train.sequence.numpy())


def test_a_glob_via_the_cli(tmp_path, capsys):
    for day, seed in ((3, 2), (1, 0), (2, 1)):  # written out of order: the glob sorts by name
        write_csv(tmp_path / f"day_{day}.csv", rows(60 + day, seed))
    valid = write_csv(tmp_path / "valid.csv", rows(20, 7))
    test = write_csv(tmp_path / "test.csv", rows(25, 8))
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA.to_dict()))
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out_w{workers}"
        args = ["prepare", "--schema", str(schema_file), "--train", str(tmp_path / "day_*.csv"), "--valid", str(valid)]
        assert main(args + ["--test", str(test), "--out", str(out), "--workers", str(workers)]) == 0
        outs.append(out)
        printed = capsys.readouterr().out
        for day in (1, 2, 3):
            assert f"{tmp_path / f'day_{day}.csv'}: {60 + day} rows read = {60 + day} written + 0 skipped" in printed
    assert_identical(*outs)
    assert feature_map(outs[0])["inputs"]["train"] == [str(tmp_path / f"day_{d}.csv") for d in (1, 2, 3)]
    assert rids(outs[0], "train") == list(range(2, 63)) + list(range(2, 64)) + list(range(2, 65))
    # a glob that matches nothing is a clear error, not a traceback
    assert main(["prepare", "--schema", str(schema_file), "--train", str(tmp_path / "nope_*.csv"), "--valid", str(valid),
                 "--test", str(test), "--out", str(tmp_path / "x"), "--workers", "2"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nope_*.csv'}: no file matches (train)" in err and "Traceback" not in err


def write_parquet_shards(directory: Path, shards: list[tuple[int, int]], row_group_size: int = 25) -> None:
    """Parquet shards of SCHEMA's columns (with nulls and NaN), several row groups each, plus Spark's marker files."""
    directory.mkdir()
    for i, (n, seed) in enumerate(shards):
        rng = np.random.default_rng(seed)
        x = rng.normal(10, 20, n)
        x[rng.random(n) < 0.1] = np.nan
        table = pa.table(
            {
                "click": rng.integers(0, 2, n),
                "dwell": rng.integers(0, 60, n).astype(np.float64),
                "w": rng.random(n) * 2,
                "c": pa.array([f"c{v}" if v % 11 else None for v in rng.integers(0, 30, n)]),
                "x": x,
                "rid": np.arange(1, n + 1),
                "s": ["|".join(f"g{k}" for k in rng.integers(0, 9, size=rng.integers(0, 5))) for _ in range(n)],
                "t": [";".join(f"t{k}" for k in rng.integers(0, 4, size=rng.integers(0, 3))) for _ in range(n)],
            }
        )
        pq.write_table(table, directory / f"part-{i:05d}.parquet", row_group_size=row_group_size)
    (directory / "_SUCCESS").write_text("")
    (directory / ".part-00000.parquet.crc").write_text("not data")


def test_a_directory_of_parquet_shards_cut_into_row_groups(tmp_path):
    schema = schema_from_dict({**SCHEMA.to_dict(), "format": "parquet"})
    write_parquet_shards(tmp_path / "train", [(130, 0), (90, 1), (110, 2)])
    write_parquet_shards(tmp_path / "valid", [(40, 3)])
    write_parquet_shards(tmp_path / "test", [(30, 4), (20, 5)])
    files = {name: tmp_path / name for name in ("train", "valid", "test")}
    reports = {}
    for workers, part_bytes in ((1, 1), (2, 1), (3, 1), (1, 1 << 30)):
        out = tmp_path / f"out_w{workers}_{part_bytes}"
        reports[out] = prepare(schema, out, **files, workers=workers, part_bytes=part_bytes)
    outs = list(reports)
    for out in outs[1:3]:
        assert_identical(outs[0], out)
    report = reports[outs[0]]
    assert [Path(e["path"]).name for e in report["inputs"]] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
                                                                "part-00000.parquet", "part-00000.parquet", "part-00001.parquet"]  # fmt: skip
    first = report["inputs"][0]
    assert [p["row_groups"] for p in first["parts"]] == [[g, g + 1] for g in range(6)]  # 130 rows: 6 groups of <= 25
    assert [p["lines"] for p in first["parts"]] == [[1, 25], [26, 50], [51, 75], [76, 100], [101, 125], [126, 130]]
    # the arrays of the row-group units are those of whole-file units
    whole = load_prepared(outs[3])
    for split in ("train", "valid", "test"):
        for name in ("categorical", "numeric", "labels", "sequence", "weights"):
            assert np.array_equal(getattr(getattr(load_prepared(outs[0]), split), name).numpy(), getattr(getattr(whole, split), name).numpy())
    assert reports[outs[3]]["inputs"][0].get("parts") is None


# ---------------------------------------------------------------------------- byte ranges of one file


def bad_rows_file(tmp_path: Path, name: str = "all.csv", newline: str = "\n") -> tuple[Path, set[int]]:
    """One file of 900 rows with bad rows (some around where the ranges are cut); (path, bad lines)."""
    lines = rows(900, 11)
    bad = {}
    for line in (2, 3, 150, 151, 152, 400, 640, 901):
        i = line - 2
        kind = line % 4
        if kind == 0:
            lines[i] = ""  # an empty line
        elif kind == 1:
            lines[i] = lines[i].rsplit(",", 2)[0]  # too few columns
        elif kind == 2:
            lines[i] = "7" + lines[i][1:]  # a label that is not 0/1
        else:
            lines[i] = lines[i].replace(",c", ",c\udce9", 1)  # not UTF-8
        bad[line] = kind
    path = tmp_path / name
    path.write_bytes((HEADER + newline + "".join(line + newline for line in lines)).encode("utf-8", "surrogateescape"))
    return path, set(bad)


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_byte_ranges_with_a_random_split_and_bad_rows(tmp_path, newline):
    path, bad = bad_rows_file(tmp_path, newline=newline)
    split = SplitConfig(kind="random", valid_fraction=0.2, test_fraction=0.15, seed=5)
    kwargs = dict(input=path, split=split, on_bad_rows="skip", part_bytes=3000, chunk_bytes=1000)
    (one, r1), (two, r2), (three, r3) = prepare_each(tmp_path, (1, 2, 3), **kwargs)
    assert_identical(one, two)
    assert_identical(one, three)
    entry = r1["inputs"][0]
    assert len(entry["parts"]) >= 9  # ~30 KB in 3 KB ranges
    assert (entry["rows_read"], entry["rows_kept"], entry["rows_skipped"]) == (900, 892, 8)
    assert [e["line"] for e in entry["skipped_examples"]] == sorted(bad)
    # the ranges tile the file's lines and bytes, and each accounts for its rows
    assert entry["parts"][0]["lines"][0] == 2 and entry["parts"][-1]["lines"][1] == 901
    for before, after in zip(entry["parts"], entry["parts"][1:]):
        assert after["lines"][0] == before["lines"][1] + 1 and after["bytes"][0] == before["bytes"][1]
    for part in entry["parts"]:
        assert part["rows_read"] == part["lines"][1] - part["lines"][0] + 1 == part["rows_kept"] + part["rows_skipped"]
        assert part["rows_skipped"] == len([line for line in bad if part["lines"][0] <= line <= part["lines"][1]])
    # one unit (the whole file) gives the same split of the same lines: every range knew its first line
    whole = tmp_path / "whole"
    report = prepare(SCHEMA, whole, **{**kwargs, "part_bytes": 1 << 30})
    assert "parts" not in report["inputs"][0]
    assert report["splits"] == r1["splits"]
    assert [e for e in report["inputs"][0]["skipped_examples"]] == entry["skipped_examples"]
    kept = set(range(2, 902)) - bad
    assert sorted(rids(one, "train") + rids(one, "valid") + rids(one, "test")) == sorted(kept)
    for name in ("train", "valid", "test"):
        assert rids(one, name) == rids(whole, name)


def test_many_cuts_count_lines_exactly(tmp_path):
    """Cut at every few bytes: each range's first line is 1 + the line ends before it."""
    path, _ = bad_rows_file(tmp_path)
    schema = SCHEMA
    text = path.read_bytes()
    for part_bytes in (97, 1000, 4096):
        ranges = plan_parts(path, schema, part_bytes)
        assert ranges[0][0] == text.index(b"\n") + 1 and ranges[-1][1] == len(text)
        first = 2
        for start, stop in ranges:
            assert text[start - 1 : start] == b"\n"  # cut after a line end
            assert first == text[:start].count(b"\n") + 1
            ends, ended = count_line_ends(path, start, stop)
            assert ended and ends == text[start:stop].count(b"\n")
            first += ends


def test_time_split_over_byte_ranges(tmp_path):
    lines = rows(600, 21)
    path = write_csv(tmp_path / "log.csv", lines)
    split = SplitConfig(kind="time", time_column="rid", valid_from="400", test_from="500")
    (one, r1), (two, _) = prepare_each(tmp_path, (1, 2), input=path, split=split, part_bytes=2500)
    assert_identical(one, two)
    assert len(r1["inputs"][0]["parts"]) >= 8  # ~20 KB in 2.5 KB ranges
    assert rids(one, "train") == list(range(2, 400))
    assert rids(one, "valid") == list(range(400, 500))
    assert rids(one, "test") == list(range(500, 602))


def test_criteo_sample_repeated_in_byte_ranges(tmp_path):
    sample = DATA / "criteo_sample" / "criteo_sample.txt"
    if not sample.exists():
        pytest.skip(f"shared sample data not found at {sample}")
    header, *body = sample.read_text().splitlines()
    path = tmp_path / "criteo.csv"
    path.write_text(header + "\n" + "".join(line + "\n" for _ in range(15) for line in body))  # 3,000 real rows
    from mldcn.data.schema import load_schema  # noqa: PLC0415

    schema = load_schema("criteo_csv")
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out_w{workers}"
        report = prepare(schema, out, input=path, split=SplitConfig(kind="random"), workers=workers, part_bytes=64 << 10)
        outs.append(out)
    assert_identical(*outs)
    assert len(report["inputs"][0]["parts"]) >= 10
    assert report["rows_read"] == report["rows_written"] == 3000


# ---------------------------------------------------------------------------- errors, interrupts


def test_a_bad_row_in_a_worker_is_the_same_clear_error(tmp_path):
    lines = rows(900, 11)
    lines[420 - 2] = lines[420 - 2].rsplit(",", 2)[0]  # line 420, about the 14th of 30 ranges: too few columns
    for line in (700, 880, 899):  # later bad rows, in ranges that other workers may read first
        lines[line - 2] = "7" + lines[line - 2][1:]
    path = write_csv(tmp_path / "all.csv", lines)
    # the first bad row in input order is named, whichever worker met a bad row first
    messages = []
    for workers in (1, 2, 3):
        with pytest.raises(DataError) as error:
            prepare(SCHEMA, tmp_path / "out", input=path, workers=workers, part_bytes=3000)
        messages.append(str(error.value))
    assert messages[0] == messages[1] == messages[2]
    assert messages[0] == f"{path}:420: expected 8 columns, found 6 (no value for field 's') (use --on-bad-rows skip to skip bad rows)"
    assert not (tmp_path / "out").exists()


def test_a_bad_row_late_in_the_encode_pass_via_the_cli(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", rows(300, 0))
    valid = write_csv(tmp_path / "valid.csv", rows(50, 1))
    lines = rows(400, 2)
    lines[350] = lines[350].replace(f",{352},", ",oops,")  # line 352: rid is not a number
    test = write_csv(tmp_path / "test.csv", lines)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA.to_dict()))
    out = tmp_path / "out"
    prepare(SCHEMA, out, train=train, valid=valid, test=write_csv(tmp_path / "good_test.csv", rows(40, 3)))
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    args = ["prepare", "--schema", str(schema_file), "--train", str(train), "--valid", str(valid), "--test", str(test)]
    assert main(args + ["--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{test}:352: field 'rid': 'oops' is not a number" in err
    assert "Traceback" not in err
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before  # the earlier directory as it was, no temporary folder left
    # skipped instead: counted in the test file's entry, the same with both worker counts
    reports = [prepare(SCHEMA, tmp_path / f"skip{w}", train=train, valid=valid, test=test, on_bad_rows="skip", workers=w, part_bytes=8000) for w in (1, 2)]  # fmt: skip
    assert_identical(tmp_path / "skip1", tmp_path / "skip2")
    assert [(e["rows_read"], e["rows_skipped"]) for e in reports[1]["inputs"]] == [(300, 0), (50, 0), (400, 1)]


def test_an_interrupt_stops_the_workers_and_leaves_the_earlier_directory(tmp_path):
    path, _ = bad_rows_file(tmp_path)
    out = tmp_path / "out"
    prepare(SCHEMA, out, input=path, on_bad_rows="skip")
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def interrupt(message: str) -> None:
        if message.startswith("encoding"):
            raise KeyboardInterrupt

    children_before = set(os.listdir("/proc")) if Path("/proc").is_dir() else set()
    with pytest.raises(KeyboardInterrupt):
        prepare(SCHEMA, out, input=path, on_bad_rows="skip", workers=2, part_bytes=3000, force=True, progress=interrupt)
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before
    if children_before:  # the worker processes are gone (waited for, not left as zombies or orphans)
        mine = [pid for pid in set(os.listdir("/proc")) - children_before if pid.isdigit() and _parent(pid) == os.getpid()]
        assert mine == []


def _parent(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------- the fit is a function of the rows


def test_fit_parts_merge_exactly_whatever_the_cut_and_order(monkeypatch):
    """The bucket sample (cut to 50 rows here) and the vocabularies of merged parts are those
    of one pass: the sample keeps the rows with the smallest keys, the vocabulary exact counts."""
    monkeypatch.setattr(encode, "_BUCKET_SAMPLE", 50)
    monkeypatch.setattr(encode, "_COMPACT_ROWS", 4)  # merge partial counts often
    rng = np.random.default_rng(0)
    n = 1000
    columns = {
        "c": pa.array([f"c{v}" for v in rng.zipf(1.5, n) % 40]),
        "x": pa.array([f"{v:.4f}" for v in rng.normal(0, 1, n)]),
    }
    schema = schema_from_dict(
        {"name": "f", "min_count": 3, "categorical": [{"name": "c"}, {"name": "b", "source": "x", "derive": "bucketize", "num_buckets": 4}]}
    )
    keys = row_keys(np.arange(n, dtype=np.uint64), 9)

    def fit(cuts: list[int], order: list[int]) -> Encoder:
        bounds = list(zip([0, *cuts], [*cuts, n]))
        parts = []
        for start, stop in bounds:
            part = Fitter(schema)
            for a in range(start, stop, 37):  # chunks of 37 rows
                b = min(a + 37, stop)
                part.update({k: v.slice(a, b - a) for k, v in columns.items()}, keys[a:b])
            parts.append(part)
        merged = Fitter(schema)
        for i in order:
            merged.merge(parts[i])
        return merged.finish()

    reference = fit([], [0])
    smallest = np.argsort(keys)[:50]
    expected = np.quantile(np.array(columns["x"].to_pylist(), dtype=float)[smallest], [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(reference.boundaries["b"], expected)
    counts = {}
    for value in columns["c"].to_pylist():
        counts[value] = counts.get(value, 0) + 1
    frequent = sorted((v for v in counts if counts[v] >= 3), key=lambda v: (-counts[v], v))
    assert reference.vocabularies["c"].to_pylist() == frequent
    for cuts, order in (([300, 301, 700], [0, 1, 2, 3]), ([500], [1, 0]), ([10, 20, 990], [3, 1, 0, 2])):
        other = fit(cuts, order)
        assert other.vocabularies["c"].to_pylist() == frequent
        np.testing.assert_array_equal(other.boundaries["b"], reference.boundaries["b"])


def test_read_stats_of_parts_merge_into_the_stats_of_the_whole(tmp_path):
    path, bad = bad_rows_file(tmp_path)
    whole = ReadStats(str(path))
    for _ in read_chunks(path, SCHEMA, "skip", whole, 2000):
        pass
    merged = ReadStats(str(path))
    from mldcn.data.readers import FilePart  # noqa: PLC0415

    first = 2
    parts = []
    for start, stop in plan_parts(path, SCHEMA, 5000):
        stats = ReadStats(str(path))
        for _ in read_chunks(path, SCHEMA, "skip", stats, 700, part=FilePart(start, stop, first)):
            pass
        parts.append(stats)
        first += count_line_ends(path, start, stop)[0]
    for stats in reversed(parts):  # the merge does not depend on the order
        merged.merge(stats)
    assert merged.to_dict() == whole.to_dict()
    assert [b.line for b in whole.examples] == sorted(bad)
