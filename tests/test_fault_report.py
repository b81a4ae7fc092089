"""docs/reliability.md counts every fault test: one that failed before recording its run too."""

import json

from tests.faults import report


def write_junit(folder, stem, cases):
    body = "".join(f'<testcase classname="{file}" name="{name}">{"<failure/>" if failed else ""}</testcase>'
                   for file, name, failed in cases)
    (folder / f"junit-{stem}.xml").write_text(f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')


def test_a_fault_test_that_failed_before_its_verdict_counts_as_a_run_with_a_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "FAULTS_DIR", tmp_path)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/faults/test_faults.py::test_sigkill[pool-child-import-0] (call)")
    report.record_run({"fault": "sigkill-pool-child", "workload": "import", "backend": "pg-redis", "seed": 0,
                       "problems": [], "seconds": 1.0})
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/faults/test_partitions.py::test_cut[import-0] (call)")
    report.record_run({"fault": "partition-postgres", "workload": "import", "backend": "pg-redis", "seed": 0,
                       "problems": ["lost 3 rows"], "seconds": 1.0})
    assert json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])["test"] == (
        "tests.faults.test_faults::test_sigkill[pool-child-import-0]")
    write_junit(tmp_path, "pg-redis", [
        ("tests.faults.test_faults", "test_sigkill[pool-child-import-0]", False),
        ("tests.faults.test_faults", "test_sigkill[whole-worker-import-0]", True),  # no run recorded
        ("tests.faults.test_bad_input", "test_a_bad_row[nul-byte]", True),  # not a fault run: listed elsewhere
    ])
    write_junit(tmp_path, "pg-redis-partitions", [
        ("tests.faults.test_partitions", "test_cut[import-0]", True),  # failed at its verdict: recorded
    ])
    # The same test on another backend recorded nothing there.
    write_junit(tmp_path, "pg-rabbitmq", [("tests.faults.test_faults", "test_sigkill[pool-child-import-0]", True)])

    unrecorded = report.failed_before_a_verdict(report.load_runs(), report.junit_cases())

    assert sorted((case["backend"], case["name"]) for case in unrecorded) == [
        ("pg-rabbitmq", "test_sigkill[pool-child-import-0]"), ("pg-redis", "test_sigkill[whole-worker-import-0]")]
    written = tmp_path / "reliability.md"
    with open(written, "w") as out:
        report.main(out)
    text = written.read_text()
    assert "**4 fault runs, 3 with a problem (2 of them failed before their verdict)" in text, text[:2000]
    assert "- `tests.faults.test_faults::test_sigkill[whole-worker-import-0]` (pg-redis)" in text
