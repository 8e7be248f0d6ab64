"""The experiment's HTML report shows what table.md says (tables, bold, code) and the plot."""

from __future__ import annotations

from satsynth.workflows.report import experiment_html, markdown_to_html

TABLE = """mIoU on the **test** split (selection on val).

| variant | R | test mIoU (mean ± SE) | paired Δ vs R=0 |
|---|---:|---:|---:|
| real | 0 | 0.5000 ± 0.0100 |  |
| mix | 1 | 0.5200 ± 0.0100 | +0.0200 |

Settings: arch=tiny, generator=`runs/gen <a&b>`.
"""


def test_markdown_tables_become_html_tables_with_the_same_cells():
    html = markdown_to_html(TABLE)
    assert html.count("<table>") == 1
    assert "<th>paired Δ vs R=0</th>" in html
    assert "<tr><td>mix</td><td>1</td><td>0.5200 ± 0.0100</td><td>+0.0200</td></tr>" in html
    assert "---" not in html  # the alignment row is not a row
    assert "<p>mIoU on the <b>test</b> split (selection on val).</p>" in html
    assert "<code>runs/gen &lt;a&amp;b&gt;</code>" in html  # escaped, never raw markup


def test_the_report_page_has_the_plot_and_the_table():
    page = experiment_html(TABLE, "plot.png", "tiny/w8d2, 16 real chips")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<img src="plot.png"' in page and "tiny/w8d2, 16 real chips" in page
    assert "<td>+0.0200</td>" in page
