"""Reports: each study's page, the compare and hardware pages, the index, and their commands.

The package is split by job: :mod:`lowprec.report.render` turns a Result (or a list of blocks)
into Markdown and HTML; :mod:`~lowprec.report.compare_page`, :mod:`~lowprec.report.hardware_page`
and :mod:`~lowprec.report.index_page` build the pages that are not studies;
:mod:`lowprec.report.cli` adds ``lowprec run`` and ``lowprec report`` (:func:`register`). Layout
of ``reports/`` and the atomic-write rule: :mod:`lowprec.report.render`.
"""

from lowprec.report.cli import SECTIONS, register, run_and_write, run_sections
from lowprec.report.compare_page import (
    COMPARE_DIR,
    DEFAULT_CAPTURES,
    compare_blocks,
    compare_data,
    compare_summary,
    device_line,
    find_captures,
    measured_attention_line,
    output_meets_target,
    write_compare_report,
)
from lowprec.report.hardware_page import (
    DEFAULT_HW_DIR,
    HARDWARE_DIR,
    hardware_blocks,
    hardware_data,
    hardware_summary,
    write_hardware_report,
)
from lowprec.report.index_page import GATE_README, headline_numbers, opening_lines, write_index
from lowprec.report.render import (
    DEFAULT_OUT,
    fmt_raw,
    fmt_value,
    regenerate_command,
    remove_section,
    render_html,
    render_markdown,
    write_report,
)

__all__ = [
    "COMPARE_DIR",
    "DEFAULT_CAPTURES",
    "DEFAULT_HW_DIR",
    "DEFAULT_OUT",
    "GATE_README",
    "HARDWARE_DIR",
    "SECTIONS",
    "compare_blocks",
    "compare_data",
    "compare_summary",
    "device_line",
    "find_captures",
    "fmt_raw",
    "fmt_value",
    "hardware_blocks",
    "hardware_data",
    "hardware_summary",
    "headline_numbers",
    "measured_attention_line",
    "opening_lines",
    "output_meets_target",
    "regenerate_command",
    "register",
    "remove_section",
    "render_html",
    "render_markdown",
    "run_and_write",
    "run_sections",
    "write_compare_report",
    "write_hardware_report",
    "write_index",
    "write_report",
]
