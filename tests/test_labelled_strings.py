"""A user's labelled strings folder: read in order, every layout error one clear line, a seeded split."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.inference.labelled_strings import (
    LABELS_FILE,
    MIN_STRINGS,
    LabelledStrings,
    LabelledStringsError,
    read_labelled_strings,
    split_strings,
)

TEXTS = ["2250", "60", "100", "12.50", "3-7", "1/2", "1,480", "90210"]


def write_png(path: Path, width: int, value: int) -> None:
    pixels = np.full((16, width), 255, np.uint8)
    pixels[4:12, 2:width - 2] = value  # dark ink on white, distinct per file
    Image.fromarray(pixels).save(path)


def make_folder(root: Path, n: int = 8) -> list[tuple[str, str]]:
    """``n`` small PNGs and a labels.tsv listing them; returns the (file, text) pairs."""
    root.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        name = f"{i:04d}.png"
        write_png(root / name, 20 + 4 * i, 10 * i)
        pairs.append((name, TEXTS[i % len(TEXTS)]))
    write_labels(root, "".join(f"{f}\t{t}\n" for f, t in pairs))
    return pairs


def write_labels(root: Path, text: str, encoding: str = "utf-8") -> None:
    (root / LABELS_FILE).write_bytes(text.encode(encoding))


def read_error(folder: Path, min_strings: int = 1) -> str:
    with pytest.raises(LabelledStringsError) as info:
        read_labelled_strings(folder, min_strings=min_strings)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_folder_loads_in_order(tmp_path: Path) -> None:
    pairs = make_folder(tmp_path, 8)
    (tmp_path / "unlisted.png").write_bytes(b"not read")  # a file labels.tsv does not list is ignored
    (tmp_path / "notes.txt").write_text("ignored too")
    strings = read_labelled_strings(tmp_path, min_strings=8)
    assert isinstance(strings, LabelledStrings) and len(strings) == 8
    assert strings.path == tmp_path
    assert strings.files == [f for f, _ in pairs] and strings.texts == [t for _, t in pairs]
    for i, gray in enumerate(strings.grays):
        assert gray.dtype == np.float32 and gray.shape == (16, 20 + 4 * i)
        assert gray.min() >= 0.0 and gray.max() <= 1.0
        assert gray[8, 10] == pytest.approx(10 * i / 255, abs=1e-3)


def test_bom_crlf_header_comments_and_trailing_whitespace(tmp_path: Path) -> None:
    make_folder(tmp_path, 3)
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "a.png", 24, 0)
    body = ("# amounts from my cheques\r\n"
            "file\ttext\r\n"
            "\r\n"
            "0000.png\t2250  \r\n"
            "  # another comment\r\n"
            "0001.png\t12.50 \r\n"
            "./0002.png\t3-7\r\n"
            "sub/a.png\t1/2\r\n")
    write_labels(tmp_path, "\ufeff" + body)
    strings = read_labelled_strings(tmp_path, min_strings=4)
    assert strings.files == ["0000.png", "0001.png", "./0002.png", "sub/a.png"]
    assert strings.texts == ["2250", "12.50", "3-7", "1/2"]


@pytest.mark.parametrize("header", ["file\tlabel", "FILE\tText"])
def test_header_variants(tmp_path: Path, header: str) -> None:
    make_folder(tmp_path, 2)
    write_labels(tmp_path, f"{header}\n0000.png\t1\n0001.png\t2\n")
    assert read_labelled_strings(tmp_path, min_strings=2).texts == ["1", "2"]


def test_missing_folder_and_not_a_folder(tmp_path: Path) -> None:
    message = read_error(tmp_path / "nope")
    assert "no such folder" in message and "nope" in message
    (tmp_path / "file.png").write_bytes(b"x")
    assert "not a folder" in read_error(tmp_path / "file.png")


def test_no_labels_file(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    write_png(tmp_path / "0000.png", 20, 0)
    message = read_error(tmp_path)
    assert LABELS_FILE in message and "no " in message and str(tmp_path) in message


@pytest.mark.parametrize("content", ["", "\n\n  \n", "# only a comment\n\n", "file\ttext\n", "\ufeff"])
def test_empty_labels_file(tmp_path: Path, content: str) -> None:
    make_folder(tmp_path, 2)
    write_labels(tmp_path, content)
    message = read_error(tmp_path)
    assert "no labelled strings" in message and LABELS_FILE in message


def test_not_utf8(tmp_path: Path) -> None:
    make_folder(tmp_path, 2)
    write_labels(tmp_path, "0000.png\t1\n0001.png\t2\xe9\n", encoding="latin-1")
    assert "not UTF-8" in read_error(tmp_path)


@pytest.mark.parametrize(("line", "words"), [
    ("0001.png 2250", ["line 2", "no TAB", "spaces"]),
    ("0001.png", ["line 2", "no TAB"]),
    ("0001.png\t22\t50", ["line 2", "2 TABs"]),
])
def test_line_without_one_tab(tmp_path: Path, line: str, words: list[str]) -> None:
    make_folder(tmp_path, 2)
    write_labels(tmp_path, f"0000.png\t1\n{line}\n")
    message = read_error(tmp_path)
    assert all(w in message for w in words), message
    assert LABELS_FILE in message


def test_empty_label_and_empty_file_name(tmp_path: Path) -> None:
    make_folder(tmp_path, 3)
    write_labels(tmp_path, "0000.png\t1\n0001.png\t2\n0002.png\t  \n")
    message = read_error(tmp_path)
    assert "line 3: empty label for 0002.png" in message
    write_labels(tmp_path, "0000.png\t1\n\t250\n")
    message = read_error(tmp_path)
    assert "line 2: empty file name" in message and "250" in message


@pytest.mark.parametrize("label", ["12a", "12 50", "½", "-12O"])
def test_non_digit_label(tmp_path: Path, label: str) -> None:
    make_folder(tmp_path, 3)
    write_labels(tmp_path, f"0000.png\t1\n0001.png\t2\n0002.png\t{label}\n")
    message = read_error(tmp_path)
    assert f"line 3: label {label!r} for 0002.png is not a digit string" in message
    assert "digits and . , - / only" in message


def test_listed_but_missing(tmp_path: Path) -> None:
    make_folder(tmp_path, 2)
    write_labels(tmp_path, "0000.png\t1\n0001.png\t2\n0007.png\t7\n")
    message = read_error(tmp_path)
    assert "line 3: 0007.png is listed but missing" in message and str(tmp_path) in message


def test_listed_twice(tmp_path: Path) -> None:
    make_folder(tmp_path, 2)
    write_labels(tmp_path, "0000.png\t1\n0001.png\t2\n./0000.png\t3\n")
    message = read_error(tmp_path)
    assert "line 3" in message and "listed twice" in message and "first on line 1" in message


def test_non_image_suffix(tmp_path: Path) -> None:
    make_folder(tmp_path, 2)
    (tmp_path / "notes.txt").write_text("x")
    write_labels(tmp_path, "0000.png\t1\nnotes.txt\t2\n")
    message = read_error(tmp_path)
    assert "line 2: notes.txt is not an image file" in message and ".png" in message


@pytest.mark.parametrize("name", ["../outside.png", "/abs/0000.png"])
def test_file_outside_the_folder(tmp_path: Path, name: str) -> None:
    make_folder(tmp_path / "f", 1)
    write_labels(tmp_path / "f", f"0000.png\t1\n{name}\t2\n")
    message = read_error(tmp_path / "f")
    assert "line 2" in message and "not inside" in message


def test_too_few_strings(tmp_path: Path) -> None:
    make_folder(tmp_path, 5)
    message = read_error(tmp_path, min_strings=MIN_STRINGS)
    assert "5 labelled string(s)" in message and f"at least {MIN_STRINGS}" in message


def test_everything_is_checked_before_decoding(tmp_path: Path) -> None:
    make_folder(tmp_path, 3)
    (tmp_path / "0000.png").write_bytes(b"corrupt")  # an image error would come first if decoding began early
    write_labels(tmp_path, "0000.png\t1\n0001.png\t2\n0002.png\tx\n")
    assert "not a digit string" in read_error(tmp_path)


@pytest.mark.parametrize("data", [b"", b"not a png at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_image(tmp_path: Path, data: bytes) -> None:
    make_folder(tmp_path, 3)
    (tmp_path / "0001.png").write_bytes(data)
    message = read_error(tmp_path)
    assert "0001.png" in message and LABELS_FILE in message


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    make_folder(tmp_path, 20)
    strings = read_labelled_strings(tmp_path)
    train, val = split_strings(strings, 0.2, 0)
    again_train, again_val = split_strings(strings, 0.2, 0)
    assert (train.files, val.files) == (again_train.files, again_val.files)
    assert len(val) == 4 and len(train) == 16
    assert set(train.files).isdisjoint(val.files) and set(train.files) | set(val.files) == set(strings.files)
    assert train.files == [f for f in strings.files if f in set(train.files)]  # labels.tsv's order kept
    for part in (train, val):
        for f, t, g in zip(part.files, part.texts, part.grays, strict=True):
            i = strings.files.index(f)
            assert t == strings.texts[i] and g is strings.grays[i]
    others = {tuple(split_strings(strings, 0.2, s)[1].files) for s in range(1, 6)}
    assert others != {tuple(val.files)}  # another seed, another hold-out


def test_split_edges(tmp_path: Path) -> None:
    make_folder(tmp_path, 3)
    strings = read_labelled_strings(tmp_path, min_strings=1)
    train, val = split_strings(strings, 0.0, 0)
    assert len(train) == 3 and len(val) == 0
    train, val = split_strings(strings, 0.9, 0)
    assert len(train) == 1 and len(val) == 2  # at least one string left to train on
    with pytest.raises(ValueError):
        split_strings(strings, 1.0, 0)
