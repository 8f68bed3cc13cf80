"""Packaging facts a user relies on."""

import subprocess
import sys

from xsam.cli import main


def test_import_xsam_is_cheap():
    code = "import sys, xsam; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_describe_prints_the_official_parameter_count(capsys):
    assert main(["describe", "--preset", "official"]) == 0
    out = capsys.readouterr().out
    assert "4,624,247,809" in out
    assert "1753" in out


def test_bundled_tokenizer_is_packaged():
    from xsam.tokens import default_tokenizer_dir

    assert (default_tokenizer_dir() / "tokenizer.json").is_file()


def test_public_names_resolve():
    import xsam

    assert xsam.Task("referring").value == "referring"
    for name in xsam.__all__:
        assert getattr(xsam, name) is not None
