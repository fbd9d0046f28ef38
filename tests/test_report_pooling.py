"""``aria results`` pools results files of one config as further seeds only where they are distinct samples:
different splits, and never the same (split, seed) twice (the same file twice, a copy, a re-run)."""

import subprocess
import sys

import pytest

from aria.errors import UserError
from aria.experiment import compare, report
from aria.files import write_json
from test_compare import SPLIT0, SPLIT1, SPLIT1_SETS, split_results
from test_compare import SPLIT_BASE as BASE


def pooled(*args):
    """``report.pooled_sections`` as single lines (a table is one item of its list)."""
    return "\n".join(report.pooled_sections(*args)).splitlines()


def headers(lines):
    return [line for line in lines if line.startswith("## ")]


def pooled_row(lines, name="seen discrepancy aria/rc"):
    return next(line for line in lines if line.startswith(f"| {name} |"))


def write(tmp_path, named):
    paths = []
    for name, res in named:
        paths.append(tmp_path / name / "results.json")
        write_json(paths[-1], res)
    return paths


def test_the_same_results_file_given_twice_is_refused(tmp_path):
    first, _ = split_results(SPLIT0, [0, 1, 2], BASE)
    (path,) = write(tmp_path, [("a", first)])
    doc = tmp_path / "RESULTS.md"
    with pytest.raises(UserError, match="given twice"):
        compare.results_doc([path, path], doc)
    with pytest.raises(UserError, match="given twice"):  # however it is spelled
        compare.results_doc([path, tmp_path / "a" / ".." / "a" / "results.json"], doc)
    assert not doc.exists()
    out = subprocess.run([sys.executable, "-m", "aria.cli", "results", "--results", str(path), "--results",
                          str(path), "--out", str(doc)], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "given twice" in out.stderr
    assert not doc.exists()


def test_a_copy_or_rerun_of_the_same_split_and_seeds_is_not_pooled(tmp_path, capsys):
    first, _ = split_results(SPLIT0, [0, 1, 2], BASE)
    rerun, _ = split_results(SPLIT0, [0, 1, 2], BASE)  # deterministic: the same numbers
    own = pooled_row(report.results_tables(first, None).splitlines())
    # in the document: the file's own table, and no pooled bar with n = 6 of three runs counted twice
    paths = write(tmp_path, [("a", first), ("b", rerun)])
    doc = tmp_path / "RESULTS.md"
    text = compare.results_doc(paths, doc)
    assert own in text.splitlines() and " | 6 | " not in text
    assert "## Across the splits of `c.yaml`: nothing pooled" in text and "`b/results.json` ran the same split" in text
    compare.results_doc(paths, doc, check=True)
    capsys.readouterr()
    lines = pooled([first, rerun], ["a/results.json", "b/results.json"])
    assert headers(lines) == ["## Across the splits of `c.yaml`: nothing pooled"]
    assert not any(line.startswith("| seen discrepancy aria/rc |") for line in lines)
    note = ("Not pooled: `b/results.json` ran the same split (the config's own) and seeds 0, 1, 2 as "
            "`a/results.json`, so its runs are not further samples.")
    assert note in lines and note in capsys.readouterr().err


def test_a_rerun_beside_another_split_is_left_out_of_the_pooled_bar():
    first, _ = split_results(SPLIT0, [0, 1, 2], BASE)
    second, _ = split_results(SPLIT1, [0, 1, 2], BASE + SPLIT1_SETS)
    rerun, _ = split_results(SPLIT1, [1, 2, 3], BASE + SPLIT1_SETS)  # shares seeds 1 and 2 with `second`
    rows = [line for line in pooled([first, second, rerun]) if line.startswith("| ")]
    assert rows == [line for line in pooled([first, second]) if line.startswith("| ")]
    assert pooled_row(rows).split(" | ")[4] == "6"  # n: two files of three seeds, not three files
    assert ("Not pooled: `s1-again` ran the same split (`data.concepts.seed=1`, `student.init_path=s1`) and "
            "seeds 1, 2 as `s1`, so its runs are not further samples.") in pooled([first, second, rerun],
                                                                                 ["s0", "s1", "s1-again"])


def test_further_seeds_of_one_split_and_other_splits_are_still_pooled():
    first, _ = split_results(SPLIT0, [0, 1, 2], BASE)
    more, _ = split_results(SPLIT0, [3, 4], BASE)  # the same split, new seeds: further samples
    second, _ = split_results(SPLIT1, [0, 1, 2], BASE + SPLIT1_SETS)  # the same seeds, another split
    lines = pooled([first, more, second])
    assert len(headers(lines)) == 1 and "nothing pooled" not in headers(lines)[0]
    assert not any(line.startswith("Not pooled") for line in lines)
    assert pooled_row(lines).split(" | ")[5] == "8"


def test_a_split_is_the_settings_its_set_values_resolve_to_however_spelled(capsys):
    """The split (and every other setting a group shares) is what the ``--set`` values resolve to, not their
    text: another order, ``01`` for 1, a path spelled ``./s1/``, spaces, a key set twice (the last wins)."""
    first, _ = split_results(SPLIT0, [0, 1, 2], BASE)
    second, _ = split_results(SPLIT1, [0, 1, 2], BASE + SPLIT1_SETS)
    respelled = (" --set data.concepts.seed=2 --set 'student.init_path=./s1/' --set 'data.concepts.seed= 01'")
    rerun, _ = split_results(SPLIT1, [1, 2, 3], BASE + respelled)  # the split of `second`, seeds 1 and 2 again
    lines = pooled([first, second, rerun], ["s0", "s1", "s1-again"])
    assert pooled_row(lines).split(" | ")[4] == "6"  # two files of three seeds: the rerun is left out
    assert ("Not pooled: `s1-again` ran the same split (`data.concepts.seed= 01`, `student.init_path=./s1/`) and "
            "seeds 1, 2 as `s1`, so its runs are not further samples.") in lines
    # the settings the files share, spelled another way: still one config's splits, pooled
    other = split_results(SPLIT1, [0, 1, 2], "aria compare --config c.yaml --set student.init_path=s1 "
                                            "--set 'encoder.path=/e/' --set data.concepts.seed=1")[0]
    assert pooled_row(pooled([first, other])).split(" | ")[4] == "6"
    capsys.readouterr()
