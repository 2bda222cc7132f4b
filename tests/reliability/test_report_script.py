"""The report's embedded JSON cannot end early, whatever a class name or path holds."""

from __future__ import annotations

import json

import pytest

from lossguided.report.html import json_for_script

NAMES = ["<!--<script>", "</script><script>alert(1)</script>", "<!--", "a<b", "\u2028line", "plain"]


@pytest.mark.parametrize("name", NAMES)
def test_no_text_can_end_the_data_script(name):
    text = json_for_script({"classes": [{"name": name, "path": f"img/{name}.png"}]})
    assert "<" not in text  # no tag, no comment opener: the HTML parser sees nothing but data
    assert json.loads(text)["classes"][0]["name"] == name  # JSON.parse in the page reads it back exactly
