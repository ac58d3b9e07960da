"""Docs that must match the code."""

from pathlib import Path

from spikeformer.config import FIELDS, keys_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_doc_lists_every_config_key_as_the_code_declares_it():
    text = (DOCS / "cli.md").read_text()
    assert keys_markdown() in text, "docs/cli.md is stale: paste spikeformer.config.keys_markdown() into it"
    for key in FIELDS:
        assert f"`{key}`" in text


def test_equations_doc_holds_the_variant_table_of_the_code():
    from spikeformer.variants import variants_markdown

    text = (DOCS / "equations.md").read_text()
    assert variants_markdown() in text, "docs/equations.md is stale: paste spikeformer.variants.variants_markdown()"
