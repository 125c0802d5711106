# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ReSearch reproduction: results
#
# The main table in the paper's layout (methods × model in rows; HotpotQA, 2Wiki, MuSiQue and
# Bamboogle in columns; scores in % with bootstrap 95% intervals), the GRPO training curves, and how
# many searches each method made per question. Every number comes from `results/eval/**/metrics.json`
# and `results/models/*/metrics.jsonl`; the functions that build them live in `research_rl.report`.
#
# Run headless by `research-rl report --config FILE`, which sets the parameters below.

# %% tags=["parameters"]
config_path = "config/config.yaml"  # read when `cfg` is not given
cfg = None  # the loaded config itself (the report stage passes it)

# %%
from IPython.display import Image, Markdown, display

from research_rl import report
from research_rl.config import load_config

if cfg is None:
    cfg = load_config(config_path)
print(f"config: {cfg.get('name', '?')}; results under {cfg['paths']['results']}")

# %% [markdown]
# ## Main table

# %%
tables = report.write_tables(cfg)
if "markdown" in tables:
    display(Markdown(tables["markdown"].read_text()))
else:
    print("no evaluation results yet")
for kind, path in tables.items():
    print(f"{kind}: {path}")

# %% [markdown]
# ### The paper's Table 2 beside ours
#
# Per cell: our score with its bootstrap 95% interval, the paper's value (config/reference/paper_table2.csv),
# ours minus the paper's in points, and whether the paper's value lies inside our interval; EM and the
# LLM judge (LJ). Shown only on a config with `report.reference` (config/paper.yaml).

# %%
if "paper_vs_ours_markdown" in tables:
    display(Markdown(tables["paper_vs_ours_markdown"].read_text()))
else:
    display(Markdown(report.NOT_COMPARABLE))

# %% [markdown]
# ### What GRPO changed: ReSearch after RL minus before RL, paired by question
#
# The same rollout, prompt and greedy decoding on the checkpoint before GRPO (`research_base`) and on
# the trained one (`research`); the gain's 95% interval is a paired bootstrap over questions. `All`
# pools every benchmark's questions.

# %%
if "rl_gain_markdown" in tables:
    display(Markdown(tables["rl_gain_markdown"].read_text()))
else:
    print("no model evaluated both before and after RL")

# %% [markdown]
# ### Every evaluated cell (all metrics, n, mean searches)

# %%
metrics = report.collect_eval_metrics(cfg)
metrics

# %% [markdown]
# ## Training curves

# %%
curves = report.plot_training_curves(cfg)
if curves is not None:
    display(Image(filename=str(curves)))
else:
    print("no training metrics yet")

# %% [markdown]
# ## Searches per question

# %%
for figure in report.plot_search_histograms(cfg):
    display(Image(filename=str(figure)))
