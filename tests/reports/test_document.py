from reports.cells import Number, fmt_ms, number, signed_percent
from reports.document import Table, to_html, to_markdown


def test_alignment_comes_from_the_cell_type_not_from_its_text(tmp_path):
    table = Table(["impl", "median", "margin", "note"], [["loop", Number(1.5, fmt_ms), "-", "16 ms"]])
    html = to_html([table], "t")
    assert '<td class="num">1.5 ms</td>' in html
    assert "<td>16 ms</td>" in html and "<td>-</td>" in html  # text that reads as a number stays text


def test_a_number_is_written_with_its_format_and_note(tmp_path):
    margin = Number(0.0312, signed_percent, "(n.s.)")
    md = to_markdown([Table(["margin", "missing"], [[margin, number(float("nan"), fmt_ms)]])], tmp_path)
    assert "| +3.1% (n.s.) | - |" in md
    assert number(None) == "-" and number(16.0).text == "16"
